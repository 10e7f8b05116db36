"""mmdet / mmseg integration: the repo's configs build, train 2 iterations and predict for every family on tiny
synthetic data (CPU); backbone freezing, norm_eval, odd input sizes, checkpoint loading; a short det_train /
det_test run (slow)."""
from __future__ import annotations

import copy
import json
import math
import os
import os.path as osp

import pytest
import torch

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SIZE = (128, 160)  # H, W of the synthetic images

# family -> (det config, seg config or None, smallest-model overrides of the backbone: official argument names)
FAMILIES = {
    "biformer": ("mask_rcnn_biformer_s_1x_coco", "upernet_biformer_s_160k_ade20k",
                 dict(model_name="biformer_s", depth=(1, 1, 1, 1), embed_dim=(32, 64, 96, 128),
                      qk_dims=(32, 64, 96, 128), head_dim=32, n_win=4, drop_path_rate=0.0)),
    "nat": ("mask_rcnn_nat_mini_3x_coco", "upernet_nat_mini_160k_ade20k",
            dict(model_name="nat_mini", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                 drop_path_rate=0.0)),
    "dinat": ("mask_rcnn_dinat_s_tiny_3x_coco", "upernet_dinat_mini_160k_ade20k",
              dict(model_name="dinat_s_tiny", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                   dilations=[[4], [2], [1], [1]], drop_path_rate=0.0)),
    "agent_attention": ("mask_rcnn_agent_swin_t_1x_coco", "upernet_agent_swin_t_160k_ade20k",
                        dict(model_name="agent_swin_t", embed_dim=16, depths=(1, 1, 1, 2), num_heads=(1, 2, 4, 8),
                             drop_path_rate=0.0)),
    "slab": ("mask_rcnn_slab_swin_t_1x_coco", None,
             dict(model_name="slab_swin_t", embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                  drop_path_rate=0.0)),
    "gcvit": ("mask_rcnn_gcvit_tiny_3x_coco", None,
              dict(model_name="gcvit_tiny", dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                   drop_path_rate=0.0)),
    "shvit": ("mask_rcnn_shvit_s4_1x_coco", "upernet_shvit_s4_160k_ade20k", dict(model_name="shvit_s1")),
    "efficientvim": ("mask_rcnn_efficientvim_m4_1x_coco", "upernet_efficientvim_m4_160k_ade20k",
                     dict(model_name="efficientvim_m1")),
}
# per registry-family argument sets of the smallest models, for configs of every size (the sweep)
SMALL_BY_CLASS = {
    "agent_pvt": dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), drop_path_rate=0.0),
}


@pytest.fixture(scope="module")
def mm():
    pytest.importorskip("mmcv.ops")
    pytest.importorskip("mmdet.models")
    pytest.importorskip("mmseg.models")
    from mmdet.utils import register_all_modules as det_register
    from mmseg.utils import register_all_modules as seg_register

    det_register(init_default_scope=False)
    seg_register(init_default_scope=False)
    import visionattn.mm

    visionattn.mm.register_all()
    return visionattn.mm


@pytest.fixture(scope="module")
def synth(tmp_path_factory, mm):
    from visionattn.mm.synthetic import make_ade, make_coco

    root = tmp_path_factory.mktemp("synth")
    coco = make_coco(str(root / "coco"), n_train=8, n_val=4, size=SIZE)
    ade = make_ade(str(root / "ade"), n_train=4, n_val=2, size=SIZE)
    return coco + "/", ade


def _f(x) -> float:
    return float(torch.as_tensor(x).detach())


def _num_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


# ------------------------------------------------------------------------------------------------------------
# config surgery: tiny models, the synthetic data, no workers

def _loader(cfg_loader, data_root, batch_size):
    cfg_loader.batch_size = batch_size
    cfg_loader.num_workers = 0
    cfg_loader.persistent_workers = False
    cfg_loader.dataset.data_root = data_root
    return cfg_loader


def det_config(name: str, coco_root: str, backbone: dict | None = None, tiny_heads: bool = True):
    from mmengine.config import Config

    from visionattn.mm.synthetic import COCO_CLASSES

    cfg = Config.fromfile(osp.join(ROOT, "configs", "det", name + ".py"))
    if backbone:
        cfg.model.backbone.update(backbone)
    bb = cfg.model.backbone
    chans = _channels(bb)
    scale = (SIZE[1], SIZE[0])
    for pipe in (cfg.train_pipeline, cfg.test_pipeline):
        _shrink(pipe, scale)
    meta = dict(classes=COCO_CLASSES)
    for key, bs in (("train_dataloader", 2), ("val_dataloader", 1), ("test_dataloader", 1)):
        loader = _loader(cfg[key], coco_root, bs)
        loader.dataset.metainfo = meta
        loader.dataset.pipeline = cfg.train_pipeline if key == "train_dataloader" else cfg.test_pipeline
        if key == "train_dataloader":
            loader.dataset.filter_cfg = dict(filter_empty_gt=True, min_size=4)
    for key in ("val_evaluator", "test_evaluator"):
        cfg[key].ann_file = coco_root + "annotations/instances_val2017.json"
    m = cfg.model
    n_cls = len(COCO_CLASSES)
    neck = m.neck
    neck.in_channels = chans
    if tiny_heads:
        c = 32
        neck.out_channels = c
        m.rpn_head.in_channels = m.rpn_head.feat_channels = c
        r = m.roi_head
        r.bbox_roi_extractor.out_channels = r.mask_roi_extractor.out_channels = c
        r.bbox_head.update(in_channels=c, fc_out_channels=64)
        r.mask_head.update(in_channels=c, conv_out_channels=c, num_convs=2)
        m.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        m.train_cfg.rcnn.sampler.num = 64
        m.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    m.roi_head.bbox_head.num_classes = m.roi_head.mask_head.num_classes = n_cls
    return cfg


def _shrink(pipe, scale):
    """Resize steps (also inside the 3x recipes' RandomChoice) to the synthetic image size."""
    for t in pipe:
        if isinstance(t, (list, tuple)):
            _shrink(t, scale)
            continue
        if t["type"] == "Resize":
            t["scale"] = scale
        elif t["type"] == "RandomChoiceResize":
            t["scales"] = [scale, (scale[0] - 32, scale[1] - 32)]
        elif t["type"] == "RandomCrop" and t.get("crop_type") == "absolute_range":
            t["crop_size"] = (96, 128)
        elif t["type"] == "RandomChoice":
            _shrink(t["transforms"], scale)


def seg_config(name: str, ade_root: str, backbone: dict | None = None):
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(ROOT, "configs", "seg", name + ".py"))
    if backbone:
        cfg.model.backbone.update(backbone)
    m = cfg.model
    crop = (SIZE[0], SIZE[0])
    m.data_preprocessor.size = crop
    train_pipe = [
        dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75), dict(type="RandomFlip", prob=0.5),
        dict(type="PackSegInputs"),
    ]
    test_pipe = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
                 dict(type="PackSegInputs")]
    for key, bs in (("train_dataloader", 2), ("val_dataloader", 1), ("test_dataloader", 1)):
        loader = _loader(cfg[key], ade_root, bs)
        loader.dataset.pipeline = train_pipe if key == "train_dataloader" else test_pipe
    chans = _channels(m.backbone)
    if m.get("neck") is not None:
        m.neck.update(in_channels=chans, out_channels=32)
        m.decode_head.in_channels = [32] * 4
    else:
        m.decode_head.in_channels = chans
    m.decode_head.channels = 32
    # the synthetic labels are 1..4 (0 = ignore); with reduce_zero_label they become 0..3
    m.decode_head.num_classes = 4
    if m.get("auxiliary_head") is not None:
        m.auxiliary_head.update(in_channels=32 if m.get("neck") is not None else chans[2], channels=16, num_classes=4)
    return cfg


def _channels(bb: dict) -> list[int]:
    """Output channels of a config's backbone (built through the registry class, random weights)."""
    import visionattn.mm as vmm

    kw = {k: v for k, v in dict(bb).items() if k not in ("type", "init_cfg", "_delete_")}
    return list(getattr(vmm, bb.get("type", "ZooBackboneMM"))(**kw).channels)


def _small(bb) -> dict:
    """The smallest-model overrides for a config's backbone (family of its model_name)."""
    import visionattn

    name = bb["model_name"]
    if name.startswith("agent_pvt"):
        return SMALL_BY_CLASS["agent_pvt"]
    small = dict(FAMILIES[visionattn.get_family(name)][2])
    if visionattn.get_family(name) not in ("shvit", "efficientvim"):
        small.pop("model_name")  # keep the config's variant (DiNAT vs DiNAT_s, Swin vs PVT layouts)
    return small


def _train_two_iters(cfg, scope: str):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    with DefaultScope.overwrite_default_scope(scope):
        registry = __import__(f"{scope}.registry", fromlist=["MODELS"]).MODELS
        model = registry.build(cfg.model)
        model.init_weights()
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
        loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
        model.train()
        logs = []
        it = iter(loader)
        for _ in range(2):
            logs.append(model.train_step(next(it), optim))
        model.eval()
        val_loader = Runner.build_dataloader(cfg.val_dataloader, seed=0)
        data = next(iter(val_loader))
        with torch.no_grad():
            preds = model.val_step(data)
    return model, logs, data, preds


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mask_rcnn_family(family, synth, mm):
    _num_threads()
    det_name, _, bb = FAMILIES[family]
    cfg = det_config(det_name, synth[0], bb)
    model, logs, data, preds = _train_two_iters(cfg, "mmdet")
    for log in logs:
        for k in ("loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"):
            assert k in log and math.isfinite(_f(log[k])), (k, log)
    pred = preds[0]
    h, w = pred.ori_shape
    inst = pred.pred_instances
    n = inst.bboxes.shape[0]
    assert inst.bboxes.shape == (n, 4) and inst.scores.shape == (n,) and inst.labels.shape == (n,)
    assert inst.masks.shape == (n, h, w)
    # The backbone also takes odd sizes (the mm data preprocessor pads to 32, a user may not).
    with torch.no_grad():
        outs = model.backbone(torch.randn(1, 3, 97, 131))
    for r, y in zip(model.backbone.reductions, outs):
        assert tuple(y.shape[-2:]) == (math.ceil(97 / r), math.ceil(131 / r))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_upernet_family(family, synth, mm):
    _num_threads()
    _, seg_name, bb = FAMILIES[family]
    if seg_name is None:
        pytest.skip(f"{family}: no official segmentation recipe, no config")
    cfg = seg_config(seg_name, synth[1], bb)
    _, logs, data, preds = _train_two_iters(cfg, "mmseg")
    for log in logs:
        assert "decode.loss_ce" in log and math.isfinite(_f(log["decode.loss_ce"])), log
        assert math.isfinite(_f(log["aux.loss_ce"]))
    seg = preds[0].pred_sem_seg.data
    assert seg.shape == (1, *SIZE) and seg.dtype == torch.int64 and 0 <= int(seg.min()) <= int(seg.max()) < 4


@pytest.mark.parametrize("family", ["shvit", "efficientvim"])
def test_retinanet_and_fpn_3_stage(family, synth, mm):
    """The 3-stage families' RetinaNet (1 transposed conv + extra conv) and Semantic FPN configs."""
    _num_threads()
    model_name = FAMILIES[family][2]["model_name"]
    big = FAMILIES[family][0].split("_", 2)[2].rsplit("_1x", 1)[0]  # e.g. shvit_s4
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    cfg = Config.fromfile(osp.join(ROOT, "configs", "det", f"retinanet_{big}_1x_coco.py"))
    cfg.model.backbone.model_name = model_name
    cfg.model.neck.in_channels = _channels(cfg.model.backbone)
    with DefaultScope.overwrite_default_scope("mmdet"):
        from mmdet.registry import MODELS

        model = MODELS.build(cfg.model).eval()
        with torch.no_grad():
            feats = model.extract_feat(torch.randn(1, 3, 128, 160))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    seg = seg_config(f"fpn_{big}_80k_ade20k", synth[1], dict(model_name=model_name))
    _, logs, _, preds = _train_two_iters(seg, "mmseg")
    assert math.isfinite(_f(logs[-1]["decode.loss_ce"]))
    assert preds[0].pred_sem_seg.data.shape == (1, *SIZE)


def test_every_config_builds(mm):
    """All det/seg configs parse and build (backbone swapped for the family's smallest model); the feature
    pyramid the heads see has the levels and strides the heads expect."""
    import glob

    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import visionattn

    _num_threads()
    files = sorted(glob.glob(osp.join(ROOT, "configs", "det", "*.py")) + glob.glob(osp.join(ROOT, "configs", "seg",
                                                                                              "*.py")))
    assert len(files) >= 4 * len(FAMILIES)
    fams = set()
    x = torch.randn(1, 3, 128, 160)
    for f in files:
        cfg = Config.fromfile(f)
        bb = cfg.model.backbone
        fam = visionattn.get_family(bb.model_name)
        fams.add(fam)
        small = _small(bb)
        bb.update(small)
        if "dilations" in bb and "dilations" not in small:
            bb.pop("dilations")
        chans = _channels(bb)
        m = cfg.model
        if m.get("neck") is not None:
            m.neck.in_channels = chans
        else:
            m.decode_head.in_channels = chans
            m.auxiliary_head.in_channels = chans[m.auxiliary_head.in_index]
        scope = "mmdet" if osp.basename(osp.dirname(f)) == "det" else "mmseg"
        with DefaultScope.overwrite_default_scope(scope):
            registry = __import__(f"{scope}.registry", fromlist=["MODELS"]).MODELS
            model = registry.build(m).eval()
            with torch.no_grad():
                feats = model.extract_feat(x)
        sizes = [tuple(y.shape[-2:]) for y in feats]
        name = osp.basename(f)
        if name.startswith(("mask_rcnn", "cascade_mask_rcnn")):
            expect = [(128 // s, 160 // s) for s in (4, 8, 16, 32)] + [(2, 3)]
        elif name.startswith("retinanet"):
            expect = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
        elif fam == "efficientvim" and name.startswith("fpn"):  # the official config: strides 16..128
            expect = [(8, 10), (4, 5), (2, 3), (1, 2)]
        else:
            expect = [(128 // s, 160 // s) for s in (4, 8, 16, 32)]
        assert sizes == expect, (name, sizes)
    assert fams == set(FAMILIES)


# ------------------------------------------------------------------------------------------------------------
# backbone behaviour

@pytest.mark.parametrize("name,cls", [("biformer_t", "BiFormerMM"), ("shvit_s1", "SHViTMM"),
                                      ("slab_pvt_t", "SLABMM")])
def test_frozen_stages_and_norm_eval(name, cls, mm):
    _num_threads()
    kw = dict(img_size=96) if name.startswith("slab") else {}
    out = (0, 1, 2) if name.startswith("shvit") else (0, 1, 2, 3)
    bb = getattr(mm, cls)(model_name=name, out_indices=out, frozen_stages=1, norm_eval=True, **kw)
    bb.train()
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert frozen, "frozen_stages=1 froze nothing"
    stem, stage0 = bb._stage_params[0], bb._stage_params[1]
    assert stage0 and {f"model.{n}" for n in stem | stage0} <= frozen  # (SLAB-PVT has its stem inside stage 0)
    assert not any(n.startswith(f"model.{next(iter(bb._stage_params[3]))}") for n in frozen)
    before = copy.deepcopy(bb.state_dict())
    opt = torch.optim.AdamW(bb.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(2, 3, 96, 96)
    loss = sum(y.square().mean() for y in bb(x))
    loss.backward()
    opt.step()
    after = bb.state_dict()
    for n in frozen:
        assert torch.equal(before[n], after[n]), n
    changed = [n for n, p in bb.named_parameters() if p.requires_grad and not torch.equal(before[n], after[n])]
    assert changed
    # norm_eval: BatchNorm running statistics do not move in train mode
    bns = [n for n, m in bb.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for n in bns:
        for s in ("running_mean", "running_var"):
            assert torch.equal(before[f"{n}.{s}"], after[f"{n}.{s}"]), (n, s)
    bb.train()  # frozen modules stay in eval after another train()
    assert all(not m.training for n, m in bb.named_modules() if n in bns)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_parameter_used(family, mm):
    """RetinaNet-style out_indices (1, 2, 3): every trainable backbone parameter gets a gradient (DDP without
    find_unused_parameters needs that)."""
    _num_threads()
    kw = dict(FAMILIES[family][2])
    kw.pop("dilations", None)
    out = (1, 2) if family in ("shvit", "efficientvim") else (1, 2, 3)
    bb = mm.ZooBackboneMM(out_indices=out, **kw).train()
    sum(y.mean() for y in bb(torch.randn(1, 3, 128, 128))).backward()
    unused = [n for n, p in bb.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


def test_norm_eval_off_updates_bn(mm):
    bb = mm.SHViTMM(model_name="shvit_s1", out_indices=(0, 1, 2), norm_eval=False).train()
    bn = next(m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert not torch.equal(before, bn.running_mean)


@pytest.mark.parametrize("name,cls,kw", [("nat_mini", "NATMM", {}), ("agent_pvt_t", "AgentAttentionMM", {}),
                                         ("gcvit_xxtiny", "GCViTMM", {})])
def test_pretrained_checkpoint(name, cls, kw, mm, tmp_path):
    """init_cfg Pretrained: an mmdet-style (`state_dict` + `backbone.`) file and a classification file."""
    import timm

    src = getattr(mm, cls)(model_name=name, **kw).eval()
    for p in src.parameters():  # make the per-output norms non-trivial
        p.data.add_(0.01 * torch.randn_like(p))
    det_file = tmp_path / "det.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.state_dict().items()},
                "meta": {"epoch": 12}}, det_file)
    dst = getattr(mm, cls)(model_name=name, init_cfg=dict(type="Pretrained", checkpoint=str(det_file)), **kw)
    dst.init_weights()
    dst.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(src(x), dst(x)):
            torch.testing.assert_close(a, b)
    # a classification checkpoint (the model with its head, at 224: GC ViT's window tables get resized) loads
    cls_model = timm.create_model(name, pretrained=False)
    cls_file = tmp_path / "cls.pth"
    torch.save({"model": cls_model.state_dict()}, cls_file)
    bb = getattr(mm, cls)(model_name=name, **kw)
    missing, unexpected = bb.load_checkpoint(str(cls_file))
    assert not [k for k in missing if not k.startswith(("norm", "out_norms."))], missing
    ref = cls_model.state_dict()
    for k, v in bb.model.state_dict().items():
        if k in ref and ref[k].shape == v.shape:
            torch.testing.assert_close(v, ref[k])


def test_bad_arguments(mm):
    with pytest.raises(ValueError, match="biformer"):
        mm.NATMM(model_name="biformer_t")
    with pytest.raises(ValueError, match="out_indices"):
        mm.SHViTMM(model_name="shvit_s1", out_indices=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="frozen_stages"):
        mm.BiFormerMM(model_name="biformer_t", frozen_stages=7)
    with pytest.raises(ValueError, match="img_size"):  # the official dense GC ViT has no such argument
        mm.GCViTMM(model_name="gcvit_xxtiny", img_size=64)
    with pytest.raises(ValueError, match="downstream_agent_shapes"):
        mm.AgentAttentionMM(model_name="agent_swin_t", downstream_agent_shapes=[(9, 9)])


# ------------------------------------------------------------------------------------------------------------
# the tools

@pytest.mark.slow
def test_det_train_and_test_tools(synth, mm, tmp_path):
    """~48 iterations of Mask R-CNN (EfficientViM-M1, 128x160 synthetic images) lower the loss; det_test
    reports COCO bbox and segm mAP."""
    _num_threads()
    from mmengine.config import Config

    from visionattn.mm.runner import test_main, train_main

    cfg = det_config("mask_rcnn_efficientvim_m4_1x_coco", synth[0], dict(model_name="efficientvim_m1"))
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=12, val_interval=100)
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=8)]
    cfg.optim_wrapper.optimizer.lr = 4e-4
    cfg.default_hooks.logger.interval = 4
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=12, max_keep_ckpts=1)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook")
    cfg.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=True)
    cfg.train_dataloader.batch_sampler = None
    cfg.randomness = dict(seed=0)
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # a 48-iteration model is not confident yet: keep every box
    cfg_file = tmp_path / "cfg.py"
    Config(cfg.to_dict()).dump(str(cfg_file))
    work = tmp_path / "work"
    train_main([str(cfg_file), "--work-dir", str(work)], scope="mmdet")
    logs = []
    for root, _, files in os.walk(work):
        for f in files:
            if f == "scalars.json":
                with open(osp.join(root, f)) as fh:
                    logs += [json.loads(line) for line in fh if '"loss"' in line]
    losses = [r["loss"] for r in logs]
    assert len(losses) >= 10, losses
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, losses
    metrics = test_main([str(cfg_file), str(work / "epoch_12.pth"), "--work-dir", str(work)], scope="mmdet")
    assert "coco/bbox_mAP" in metrics and "coco/segm_mAP" in metrics, metrics
    assert metrics["coco/bbox_mAP"] >= 0.0


def test_seg_train_and_test_tools(synth, mm, tmp_path):
    """seg_train (4 iterations of UPerNet / SHViT-S1, then --resume to 6) and seg_test (mIoU)."""
    _num_threads()
    from mmengine.config import Config

    from visionattn.mm.runner import test_main, train_main

    cfg = seg_config("upernet_shvit_s4_160k_ade20k", synth[1], dict(model_name="shvit_s1"))
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=4, val_interval=100)
    cfg.param_scheduler = [dict(type="PolyLR", eta_min=0.0, power=1.0, begin=0, end=6, by_epoch=False)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=2, max_keep_ckpts=1)
    cfg.default_hooks.logger.interval = 1
    cfg_file = tmp_path / "cfg.py"
    Config(cfg.to_dict()).dump(str(cfg_file))
    work = tmp_path / "work"
    train_main([str(cfg_file), "--work-dir", str(work)], scope="mmseg")
    assert (work / "iter_4.pth").exists()
    train_main([str(cfg_file), "--work-dir", str(work), "--resume", "--cfg-options", "train_cfg.max_iters=6"],
               scope="mmseg")
    assert (work / "iter_6.pth").exists()
    metrics = test_main([str(cfg_file), str(work / "iter_6.pth"), "--work-dir", str(work)], scope="mmseg")
    assert "mIoU" in metrics and 0.0 <= metrics["mIoU"] <= 100.0, metrics
    # multi-scale + flip (the config's tta_pipeline / tta_model)
    metrics = test_main([str(cfg_file), str(work / "iter_6.pth"), "--work-dir", str(work), "--tta"], scope="mmseg")
    assert "mIoU" in metrics, metrics


@pytest.mark.parametrize("name,cls,kw", [("nat_mini", "NATMM", {}), ("biformer_t", "BiFormerMM", {}),
                                         ("agent_pvt_t", "AgentAttentionMM", {})])
def test_pretrained_checkpoint_must_match(name, cls, kw, mm, tmp_path):
    """init_cfg Pretrained follows timm.create_model(pretrained=True): a file of another architecture (or
    another size of the same one) raises instead of loading nothing and logging it."""
    import timm

    other = tmp_path / "resnet.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in timm.create_model("resnet18").state_dict().items()}},
               other)
    bb = getattr(mm, cls)(model_name=name, init_cfg=dict(type="Pretrained", checkpoint=str(other)), **kw)
    with pytest.raises(RuntimeError, match="does not match"):
        bb.init_weights()
    bigger = {"nat_mini": "nat_tiny", "biformer_t": "biformer_s", "agent_pvt_t": "agent_pvt_s"}[name]
    sized = tmp_path / "other_size.pth"
    torch.save({"model": timm.create_model(bigger).state_dict()}, sized)
    with pytest.raises(RuntimeError, match="does not match"):
        getattr(mm, cls)(model_name=name, **kw).load_checkpoint(str(sized))


def test_pretrained_official_file_through_filter(mm, tmp_path):
    """An official NAT classification checkpoint (official key names) loads through the family filter; the
    out norms it lacks keep their init; the backbone computes the official model's stage maps."""
    from parity_utils import load_case

    meta, tensors, sd = load_case("nat", "nat_mini")
    path = tmp_path / "nat_official.pth"
    torch.save(sd, path)
    kw = {k: meta["official_kwargs"][k] for k in ("embed_dim", "depths", "num_heads", "mlp_ratio")}
    bb = mm.NATMM(model_name="nat_mini", init_cfg=dict(type="Pretrained", checkpoint=str(path)), **kw)
    bb.init_weights()
    torch.testing.assert_close(bb.model.stages[1].downsample.reduction.weight,
                               sd["levels.0.downsample.reduction.weight"])
    torch.testing.assert_close(bb.model.stages[3].blocks[0].attn.rpb, sd["levels.3.blocks.0.attn.rpb"])


# ------------------------------------------------------------------------------------------------------------
# official dense checkpoints through the test tools (issue 24)

def _dense_fixture(family: str, case: str):
    import test_dense_parity as tdp

    return tdp._load(family, case)


def _mmcv1_checkpoint(path, state_dict: dict):
    """An mmcv 1.x / mmdet 2.x file: `meta` with numpy values (as evaluation hooks write them), `optimizer`."""
    import numpy as np

    meta = dict(mmdet_version="2.28.2", mmcv_version="1.7.1", config="model = dict(type='MaskRCNN')",
                env_info="sys.platform: linux", seed=np.int64(0), exp_name="mask_rcnn_nat_mini_3x_coco.py",
                CLASSES=("square", "disc", "triangle"), epoch=36, iter=175000, time="Tue Jun 14 10:00:00 2022",
                hook_msgs=dict(last_ckpt="work_dirs/x/epoch_36.pth", best_score=np.float64(0.43)),
                PALETTE=[(220, 20, 60), (119, 11, 32), (0, 0, 142)])
    optimizer = dict(state={}, param_groups=[dict(lr=1e-4, weight_decay=0.05, params=[0, 1])])
    torch.save(dict(meta=meta, state_dict=state_dict, optimizer=optimizer), path)


def _official_nat_detector(synth, tmp_path):
    """A Mask R-CNN config on NAT (the fixture's small official NAT) and an mmdet 2.x checkpoint of it whose backbone
    keys are the official ones (`backbone.levels.*`, `backbone.norm{i}`)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    meta, outs, sd, inputs = _dense_fixture("nat", "nat")
    kw = {k: v for k, v in meta["official_kwargs"].items() if k != "out_indices"}
    cfg = det_config("mask_rcnn_nat_mini_3x_coco", synth[0], dict(kw, model_name="nat_mini"))
    with DefaultScope.overwrite_default_scope("mmdet"):
        from mmdet.registry import MODELS

        det = MODELS.build(cfg.model)
    heads = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in det.state_dict().items()
             if not k.startswith("backbone.")}
    ckpt = {**{f"backbone.{k}": v for k, v in sd.items()}, **heads}
    cfg_file = tmp_path / "cfg.py"
    Config(cfg.to_dict()).dump(str(cfg_file))
    return cfg_file, ckpt, (meta, outs, inputs)


def test_det_test_loads_official_detector_backbone(synth, mm, tmp_path):
    """det_test.py with an official mmdet 2.x NAT detector: the backbone gets the official weights (old code: they
    were ignored with a warning and the backbone stayed random), mmcv 1.x `meta` loads under weights_only."""
    _num_threads()
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    from visionattn.mm.runner import test_main

    cfg_file, ckpt, (meta, outs, inputs) = _official_nat_detector(synth, tmp_path)
    path = tmp_path / "official_nat_mask_rcnn.pth"
    _mmcv1_checkpoint(path, ckpt)
    seen = {}

    @HOOKS.register_module(name="_CaptureBackbone", force=True)
    class _CaptureBackbone(Hook):
        def before_test(self, runner):
            bb = copy.deepcopy(runner.model.backbone).double().eval()
            with torch.no_grad():
                seen["feats"] = bb(inputs["input.0"].double())

    from mmengine.config import Config

    cfg = Config.fromfile(str(cfg_file))
    cfg.custom_hooks = [*cfg.get("custom_hooks", []), dict(type="_CaptureBackbone")]
    cfg.dump(str(cfg_file))
    metrics = test_main([str(cfg_file), str(path), "--work-dir", str(tmp_path / "w")], scope="mmdet")
    assert isinstance(metrics, dict)  # random heads may detect nothing (then CocoMetric reports no numbers)
    for j, y in enumerate(seen["feats"]):
        assert (y - outs[f"features.0.{j}"].double()).abs().max().item() <= meta["tolerance"], j


def test_det_test_refuses_unmappable_backbone(synth, mm, tmp_path):
    """A backbone key that maps to nothing, or a detector file without backbone weights, is an error naming it."""
    _num_threads()
    from visionattn.mm.runner import test_main

    cfg_file, ckpt, _ = _official_nat_detector(synth, tmp_path)
    bad = dict(ckpt)
    bad["backbone.levels.0.blocks.0.attn.qkv_typo.weight"] = bad.pop("backbone.levels.0.blocks.0.attn.qkv.weight")
    _mmcv1_checkpoint(tmp_path / "bad.pth", bad)
    with pytest.raises(RuntimeError, match="qkv_typo"):
        test_main([str(cfg_file), str(tmp_path / "bad.pth"), "--work-dir", str(tmp_path / "w")], scope="mmdet")
    headless = {k: v for k, v in ckpt.items() if not k.startswith("backbone.")}
    _mmcv1_checkpoint(tmp_path / "headless.pth", headless)
    with pytest.raises(RuntimeError, match="no `backbone"):
        test_main([str(cfg_file), str(tmp_path / "headless.pth"), "--work-dir", str(tmp_path / "w2")], scope="mmdet")


@pytest.mark.parametrize("family,case", [("agent_attention", "agent_swin"), ("gcvit", "gcvit_ls_from_cls"),
                                         ("slab", "slab_swin")])
def test_official_checkpoint_through_init_cfg(family, case, mm, tmp_path):
    """An official classification / dense checkpoint through init_cfg, inside an mmcv 1.x envelope."""
    import test_dense_parity as tdp

    meta, outs, sd, inputs = tdp._load(family, case)
    path = tmp_path / "official.pth"
    if meta.get("from_classification_checkpoint"):
        _mmcv1_checkpoint(path, sd)
    else:
        _mmcv1_checkpoint(path, {f"backbone.{k}": v for k, v in sd.items()})
    dtype = getattr(torch, meta.get("dtype", "float64").split()[0])
    model = tdp._build(family, case, meta, str(path)).to(dtype)
    with torch.no_grad():
        ys = model(inputs["input.3"].to(dtype))
    for j, y in enumerate(ys):
        assert (y - outs[f"features.3.{j}"].double()).abs().max().item() <= meta["tolerance"]
