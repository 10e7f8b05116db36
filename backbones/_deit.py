"""DeiT host (Touvron et al., ICML 2021, https://arxiv.org/abs/2012.12877) of Agent-DeiT, SLAB-DeiT, DeiT-PRepBN.

timm's `VisionTransformer` whose blocks also receive the token grid (`block(x, hw)`), for attention that pools,
convolves or biases on the 2-D patch grid; everything else is timm's. The attention is a per-block factory
`attn_layer(dim, num_heads=, qkv_bias=, attn_drop=, proj_drop=, grid_size=, block_idx=)`, called as
`attn(x, hw)` on (B, prefix + H*W, C) tokens. Position embeddings are resampled at run time (bicubic, class slot
kept, the official fine-tuning rule) when the input grid differs from the construction grid.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from timm.layers import Attention, DropPath, Mlp, to_2tuple
from timm.models import checkpoint
from timm.models._features import feature_take_indices  # timm exports no public name for it
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ._common import check_divisible, resize_token_grid

torch.fx.wrap("check_divisible")
torch.fx.wrap("resize_token_grid")

__all__ = ["GridAttention", "GridBlock", "GridVisionTransformer"]


class GridAttention(Attention):
    """timm's softmax self-attention, called as `attn(x, hw)` (the grid is not needed)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, **_):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        x = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class GridBlock(nn.Module):
    """Pre-norm ViT block (timm's names: norm1, attn, norm2, mlp) whose attention receives the token grid."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            mlp_layer: type[nn.Module] = Mlp,
            attn_layer: Callable[..., nn.Module] = GridAttention,
            depth: int = 0,
            grid_size: tuple[int, int] = (14, 14),
            **_,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                               grid_size=grid_size, block_idx=depth)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), hw))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class GridVisionTransformer(VisionTransformer):
    """timm's VisionTransformer with grid-aware blocks (`attn_layer` is the per-block factory above).

    Any input whose sides are multiples of the patch size runs (position embeddings resampled); attention
    modules tied to the construction grid raise their own error otherwise. `forward_features` is NLC (prefix
    tokens first).
    """

    output_fmt = "NLC"

    def __init__(self, img_size=224, patch_size=16, attn_layer: Callable[..., nn.Module] = GridAttention,
                 block_fn: type[nn.Module] = GridBlock, **kwargs):
        grid = tuple(s // p for s, p in zip(to_2tuple(img_size), to_2tuple(patch_size)))
        super().__init__(img_size=img_size, patch_size=patch_size, dynamic_img_size=True, attn_layer=attn_layer,
                         block_fn=partial(block_fn, grid_size=grid), **kwargs)
        self.grid_size = grid

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = check_divisible(x, self.patch_embed.patch_size[0], "patch_size")
        x = self.patch_embed(x)  # NHWC
        hw = (x.shape[1], x.shape[2])
        # token-major memory: the conv's NHWC view is channel-major, and a stream that stays so (no class token
        # to concatenate) feeds every Linear a transposed input (matmul + bias add instead of addmm, slower GEMM)
        x = x.flatten(1, 2).contiguous()
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        pos = resize_token_grid(self.pos_embed, self.grid_size, hw, prefix, mode="bicubic")
        to_cat = []
        if self.cls_token is not None:
            to_cat.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.reg_token is not None:
            to_cat.append(self.reg_token.expand(x.shape[0], -1, -1))
        if self.no_embed_class:
            x = x + pos
            if to_cat:
                x = torch.cat(to_cat + [x], dim=1)
        else:
            if to_cat:
                x = torch.cat(to_cat + [x], dim=1)
            x = x + pos
        x = self.norm_pre(self.patch_drop(self.pos_drop(x)))
        return x, hw

    def _block(self, blk: nn.Module, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, hw)
        return blk(x, hw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, hw = self._embed(x)
        for blk in self.blocks:
            x = self._block(blk, x, hw)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, output_dict: bool = False):
        """Block outputs (timm's ViT semantics: NCHW maps or NLC tokens, optional prefix tokens / final norm)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        b = x.shape[0]
        x, hw = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x, hw)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        p = self.num_prefix_tokens
        prefix_tokens = [y[:, :p] for y in intermediates] if p else None
        intermediates = [y[:, p:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.reshape(b, hw[0], hw[1], y.shape[-1]).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if output_dict:
            out = {"image_intermediates": intermediates}
            if prefix_tokens is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates
