"""The official dense backbones (visionattn.mm.dense) at the sizes mmdet / mmseg feed, without OpenMMLab:
COCO's 800x1333 (and padded to 32), ADE20K's 512-short-side 512x683, odd sizes; checkpoint key mapping and
strict loading; official arguments are accepted and bad ones refused (issue 24)."""
from __future__ import annotations

import math

import pytest
import torch

from visionattn.mm import dense

# the smallest configuration of each dense backbone, official argument names
SMALL = {
    "nat_mini": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
    "dinat_s_tiny": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                         dilations=[[8], [4], [2], [1]]),
    "biformer_s": dict(depth=(1, 1, 1, 1), embed_dim=(32, 64, 96, 128), qk_dims=(32, 64, 96, 128), head_dim=32,
                       n_win=8),
    "agent_swin_t": dict(embed_dim=16, depths=(1, 1, 1, 2), num_heads=(1, 2, 4, 8)),
    "agent_pvt_t": dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1)),
    "gcvit_tiny": dict(dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
    "slab_swin_t": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
}


def _expected(name: str, h: int, w: int, stride: int) -> tuple[int, int]:
    if name.startswith("agent_pvt"):  # unpadded stride convs: floor, as the official AgentPVT
        return h // stride, w // stride
    if name.startswith("biformer"):
        return math.ceil(h / stride), math.ceil(w / stride)
    return math.ceil(h / stride), math.ceil(w / stride)


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("hw", [(800, 1333), (512, 683), (97, 131)], ids=["coco", "ade20k", "odd"])
def test_real_sizes(name, hw):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = dense.build_dense(name, drop_path_rate=0.0, **SMALL[name]).eval()
    with torch.no_grad():
        ys = model(torch.randn(1, 3, *hw))
    assert len(ys) == 4
    for i, y in enumerate(ys):
        assert tuple(y.shape[-2:]) == _expected(name, *hw, 4 * 2 ** i), (name, hw, i, tuple(y.shape))
        assert torch.isfinite(y).all()


# the 3-stage (strides 16 / 32 / 64) official dense backbones built on timm's models
SMALL3 = {
    "shvit_s4": dict(embed_dim=(16, 24, 32), partial_dim=(8, 8, 16), qk_dim=(4, 4, 8), depth=(1, 1, 1)),
    "efficientvim_m4": dict(embed_dim=(16, 24, 32), depths=(1, 1, 1), state_dim=(8, 4, 4)),
}


@pytest.mark.parametrize("name", list(SMALL3))
@pytest.mark.parametrize("hw", [(800, 1333), (512, 683), (97, 131)], ids=["coco", "ade20k", "odd"])
def test_real_sizes_3_stage(name, hw):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = dense.build_dense(name, **SMALL3[name]).eval()
    with torch.no_grad():
        ys = model(torch.randn(1, 3, *hw))
    assert [tuple(y.shape[-2:]) for y in ys] == [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in (16, 32, 64)]
    assert all(torch.isfinite(y).all() for y in ys)
    with torch.no_grad():  # out_indices picks maps (and stops early)
        last = dense.build_dense(name, out_indices=(1,), **SMALL3[name]).eval()
        last.load_state_dict(model.state_dict())
        torch.testing.assert_close(last(torch.randn(1, 3, 64, 96).fill_(0.5))[0],
                                   model(torch.randn(1, 3, 64, 96).fill_(0.5))[1])


def test_shvit_efficientvim_official_arguments():
    with pytest.raises(ValueError, match="out_indices"):
        dense.build_dense("shvit_s4", out_indices=(0, 3))
    with pytest.raises(ValueError, match="patch_size"):
        dense.build_dense("shvit_s4", patch_size=8)
    with pytest.raises(ValueError, match="in_channels"):  # the official class swallows it; configs leave it out
        dense.build_dense("efficientvim_m4", in_channels=[224, 320, 512])
    model = dense.build_dense("efficientvim_m4", frozen_stages=0, **SMALL3["efficientvim_m4"]).train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_efficientvim_classification_checkpoint_maps(tmp_path):
    """An official EfficientViM classification file: `model` (not the EMA copy) is read, (1, C, 1) LayerNorm
    parameters are reshaped, the multi-stage head is dropped; anything else unknown is an error."""
    import timm

    cls_model = timm.create_model("efficientvim_m1", embed_dim=(16, 24, 32), depths=(1, 1, 1), state_dim=(8, 4, 4),
                                  num_classes=10)
    sd = {k: (v.reshape(1, -1, 1) if k.endswith((".norm.weight", ".norm.bias")) and ".blocks." in k else v)
          for k, v in cls_model.state_dict().items()}
    ema = {k: torch.zeros_like(v) for k, v in sd.items()}
    path = tmp_path / "EfficientViM_M1_e450.pth"
    torch.save({"model": sd, "model_ema": ema, "epoch": 450}, path)
    model = dense.build_dense("efficientvim_m1", pretrained=str(path), **SMALL3["efficientvim_m4"])
    torch.testing.assert_close(model.stages[0].blocks[0].norm.weight, cls_model.stages[0].blocks[0].norm.weight)
    torch.testing.assert_close(model.stages[2].blocks[0].mixer.A, cls_model.stages[2].blocks[0].mixer.A)
    sd["stages.0.blocks.0.unknown.weight"] = torch.ones(3)
    torch.save({"model": sd}, path)
    with pytest.raises(RuntimeError, match="unknown"):
        dense.build_dense("efficientvim_m1", pretrained=str(path), **SMALL3["efficientvim_m4"])


def test_every_dense_variant_builds_with_official_defaults():
    for name in dense.DENSE_VARIANTS:
        with torch.device("meta"):
            model = dense.build_dense(name)
        assert sum(p.numel() for p in model.parameters()) > 1e6, name


def test_agent_downstream_shapes_change_the_function():
    """Pooling to the official downstream agent grid is not the classification 3x3 / 4x4 / 7x7 grid."""
    torch.manual_seed(0)
    kw = dict(SMALL["agent_swin_t"], drop_path_rate=0.0)
    a = dense.build_dense("agent_swin_t", **kw).eval()
    with torch.no_grad():
        for p in a.parameters():  # sharp attention, so the agent grid matters
            p.add_(0.3 * torch.randn_like(p))
    b = dense.build_dense("agent_swin_t", downstream_agent_shapes=[(3, 3), (4, 4), (7, 7), (7, 7)], **kw).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        assert max((ya - yb).abs().max() for ya, yb in zip(a(x), b(x))) > 1e-3
    with pytest.raises(ValueError, match="downstream_agent_shapes"):
        dense.build_dense("agent_swin_t", downstream_agent_shapes=[(9, 9)], **kw)


def test_unsupported_official_arguments_raise():
    with pytest.raises(ValueError, match="ape"):
        dense.build_dense("agent_swin_t", ape=True)
    with pytest.raises(ValueError, match="use_rel_pos_bias"):
        dense.build_dense("gcvit_tiny", use_rel_pos_bias=False)
    with pytest.raises(ValueError, match="model_name"):
        dense.build_dense("resnet50")


def test_checkpoint_of_another_architecture_raises(tmp_path):
    path = tmp_path / "nat.pth"
    torch.save({"state_dict": dense.build_dense("nat_mini", **SMALL["nat_mini"]).state_dict()}, path)
    # GC ViT's key map names the first NAT key it cannot map; the others fail the shape / key check
    with pytest.raises((RuntimeError, ValueError), match="does not match|no timm counterpart"):
        dense.build_dense("gcvit_tiny", pretrained=str(path), **SMALL["gcvit_tiny"])


def test_slab_batchnorms_stay_frozen_in_train():
    model = dense.build_dense("slab_swin_t", **SMALL["slab_swin_t"]).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
