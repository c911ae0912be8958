"""Mix Transformer pieces (SegFormer, Xie et al., NeurIPS 2021), shared by the renderer's three
vision transformers.

Users (Real3D-Portrait / MimicTalk upstream):

- ``secc_img2plane_backbone.mix_vit``: the MiT-b0 encoder of the SECC motion adapter
  (``modules/real3d/segformer.py``), LayerNorm eps 1e-6 in the blocks and stage norms;
- ``cano_img2plane_backbone.low_reso_vit`` and ``.triplane_predictor_vit``: the ViTs of the
  canonical image-to-plane model (``modules/img2plane/segformer``), LayerNorm eps 1e-5 throughout.

In both upstream copies the patch-embedding norm and the spatial-reduction norm (``attn.norm``)
are plain ``nn.LayerNorm`` (eps 1e-5); only the block norms (``norm1``/``norm2``) and MiT's stage
norms take the configurable eps.

Tokens are kept as ``[B, N, C]`` with ``N = H·W`` in row-major order, as upstream.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

LAYER_NORM_EPS = 1e-5
"""``nn.LayerNorm``'s default, used upstream by the patch embeddings and ``attn.norm``."""


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, H·W, C] -> [B, C, H, W]`` (row-major tokens)."""
    return rearrange(x, "b (h w) c -> b c h w", h=h, w=w)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, H·W, C]``."""
    return rearrange(x, "b c h w -> b (h w) c")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (timm ``DropPath``): zero whole samples with probability ``p`` and scale
    the survivors by ``1/(1-p)``. Identity in eval mode or when ``p == 0``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided conv (padding ``k // 2``) then LayerNorm on tokens.

    Returns ``(tokens [B, H'·W', dim], H', W')``.
    """

    def __init__(self, in_channels: int, dim: int, *, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(map_to_tokens(x)), h, w


class EfficientSelfAttention(nn.Module):
    """SegFormer's efficient self-attention: keys/values come from the token map shrunk by a
    ``sr_ratio``-strided conv (``sr``) + LayerNorm (``norm``) when ``sr_ratio > 1``.

    ``kv`` packs keys then values, each split into heads: ``(two heads d)``. Softmax scale is
    ``head_dim ** -0.5`` (upstream ``qk_scale=None``).
    """

    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int = 1, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (heads d) -> b heads n d", heads=self.num_heads)
        context = x
        if self.sr_ratio > 1:
            # [B, H·W, C] -> [B, C, H, W] -> [B, C, H/r, W/r] -> [B, H·W/r², C]
            context = self.norm(map_to_tokens(self.sr(tokens_to_map(x, h, w))))
        kv = rearrange(self.kv(context), "b n (two heads d) -> two b heads n d", two=2,
                       heads=self.num_heads)
        # Memory-efficient kernel: the predictor ViT attends 16384 queries to 4096 keys.
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj(rearrange(out, "b heads n d -> b n (heads d)"))


class DepthwiseConv(nn.Module):
    """3×3 depthwise conv applied to tokens (upstream ``DWConv``; key ``dwconv.dwconv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, h, w)))


class MixFFN(nn.Module):
    """Mix-FFN: ``fc1`` -> depthwise 3×3 (``dwconv``) -> GELU (exact erf) -> ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, with stochastic depth
    ``drop_path`` on both residual branches during training."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: int, sr_ratio: int = 1,
                 norm_eps: float = LAYER_NORM_EPS, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio=sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), h, w), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x), h, w), self.drop_path, self.training)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path}" if self.drop_path else ""


def encode_stage(patch_embed: OverlapPatchEmbed, blocks: Iterable[TransformerBlock],
                 x: torch.Tensor, norm: Optional[nn.LayerNorm] = None) -> torch.Tensor:
    """One transformer stage on a feature map: embed, run the blocks, optionally normalise,
    and return the map ``[B, dim, H', W']``."""
    tokens, h, w = patch_embed(x)
    for block in blocks:
        tokens = block(tokens, h, w)
    if norm is not None:
        tokens = norm(tokens)
    return tokens_to_map(tokens, h, w)
