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
    with pytest.raises(RuntimeError, match="does not match"):
        dense.build_dense("gcvit_tiny", pretrained=str(path), **SMALL["gcvit_tiny"])


def test_slab_batchnorms_stay_frozen_in_train():
    model = dense.build_dense("slab_swin_t", **SMALL["slab_swin_t"]).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
