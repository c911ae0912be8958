"""The ICS-A2M transformer trunk (MimicTalk §ICS-A2M; upstream `modules/audio2motion/cfm/module.py`
`Transformer`, a Voicebox-style design).

Per layer: pre-norm adaptive RMSNorm (gamma/beta from the time embedding) -> multi-head attention
with qk-RMSNorm (logit scale 10) and rotary position embeddings -> adaptive RMSNorm -> GEGLU
feed-forward; both residual. 16 learned register tokens are prepended, with rotary position
-10000, and removed at the end; a final RMSNorm follows. Attribute names equal the upstream keys
(`layers.{i}.{2,3,4,5}`, `rotary_emb.inv_freq`, `register_tokens`, `final_norm.gamma`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import A2MConfig


def randn_parameter(*shape: int) -> nn.Parameter:
    """N(0, 1) parameter as upstream's `torch.randn`, left uninitialised on the meta device (a meta
    `randn` first imports torch._dynamo, seconds of start-up for values a checkpoint overwrites)."""
    t = torch.empty(*shape)
    if t.device.type != "meta":
        t.normal_()
    return nn.Parameter(t)


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(dim) * gamma (upstream `RMSNorm`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1).mul_(self.scale).mul_(self.gamma)


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose gain and bias are predicted from the time embedding (upstream
    `AdaptiveRMSNorm`; `to_gamma` starts as the identity: weight 0, bias 1)."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.to_gamma = nn.Linear(cond_dim, dim)
        self.to_beta = nn.Linear(cond_dim, dim)
        nn.init.zeros_(self.to_gamma.weight)
        nn.init.ones_(self.to_gamma.bias)
        nn.init.zeros_(self.to_beta.weight)
        nn.init.zeros_(self.to_beta.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: [B, N, D]; cond: [B, time_dim] -> gamma, beta: [B, 1, D]
        gamma = self.to_gamma(cond).unsqueeze(1)
        beta = self.to_beta(cond).unsqueeze(1)
        # the same operations in the same order as (normalize * scale * gamma + beta), in place
        return F.normalize(x, dim=-1).mul_(self.scale).mul_(gamma).add_(beta)


class MultiheadRMSNorm(nn.Module):
    """Per-head RMSNorm of queries/keys, gamma of shape [heads, 1, dim_head]."""

    def __init__(self, dim_head: int, heads: int):
        super().__init__()
        self.scale = dim_head**0.5
        self.gamma = nn.Parameter(torch.ones(heads, 1, dim_head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, H, N, d]; upstream multiplies gamma before the sqrt(d) scale
        return F.normalize(x, dim=-1) * self.gamma * self.scale


class RotaryEmbedding(nn.Module):
    """RoPE angles (RoFormer, arXiv 2104.09864) in the "rotate_half" layout: the 32 frequencies
    are repeated, angles = cat[pos * inv_freq, pos * inv_freq], applied to all 64 head dims.

    `inv_freq` is a persistent buffer (it is in the official state dict). It stays fp32 when the
    module is cast to half precision: positions reach thousands and register tokens sit at
    -10000, where a bf16 frequency would be off by whole radians."""

    def __init__(self, dim: int, theta: float):
        super().__init__()
        # computed on the CPU: the same arithmetic on the meta device imports sympy (seconds)
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device="cpu").float() / dim))
        self.register_buffer("inv_freq", inv_freq.to(torch.empty(0).device))

    def _apply(self, fn, recurse=True):
        exact = self.inv_freq
        super()._apply(fn, recurse)
        if self.inv_freq.dtype in (torch.float16, torch.bfloat16):
            self.inv_freq = exact.float().to(self.inv_freq.device)
        return self

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N] -> (cos, sin), each [N, dim] fp32."""
        freqs = torch.outer(positions.to(self.inv_freq), self.inv_freq)  # [N, dim/2]
        # (fp32 as upstream's type_as(inv_freq); an fp64 model keeps fp64 frequencies)
        freqs = torch.cat((freqs, freqs), dim=-1)  # [N, dim]
        return freqs.cos(), freqs.sin()


def signed_sine(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x) * sin == swap_halves(x) * signed_sine(sin)
    exactly (IEEE negation commutes with rounding), so :func:`apply_rotary` needs no negation pass."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the two halves of the last dim (not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, H, N, d] queries or keys by the angles of their positions (at least fp32)."""
    x32 = _at_least_fp32(x)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def _rotate_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary` (without casts) with the same products and sum, in fewer passes:
    x * cos + [x2, x1] * signed_sin, the swapped product written straight into its halves."""
    half = x.shape[-1] // 2
    if torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or signed_sin.requires_grad):
        # autograd cannot record ``out=``: the same products and sum, out of place
        return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin
    swapped = torch.empty_like(x)
    torch.mul(x[..., half:], signed_sin[..., :half], out=swapped[..., :half])
    torch.mul(x[..., :half], signed_sin[..., half:], out=swapped[..., half:])
    return torch.mul(x, cos, out=x.new_empty(x.shape)).add_(swapped)


class Attention(nn.Module):
    """Multi-head self-attention with qk-RMSNorm and RoPE (upstream `Attention` + `Attend`,
    non-flash path): softmax(q.k * 10) v over the whole sequence. A key-padding mask (True =
    attend) removes padded keys; register tokens are never masked, so no row is empty and
    `scaled_dot_product_attention` equals upstream's masked_fill(-max) + softmax."""

    def __init__(self, dim: int, dim_head: int, heads: int, qk_norm_scale: float):
        super().__init__()
        self.heads = heads
        self.logit_scale = qk_norm_scale
        self.q_norm = MultiheadRMSNorm(dim_head, heads)
        self.k_norm = MultiheadRMSNorm(dim_head, heads)
        self.to_qkv = nn.Linear(dim, dim_head * heads * 3, bias=False)
        self.to_out = nn.Linear(dim_head * heads, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(x).view(b, n, 3, self.heads, -1)
        v = qkv[:, :, 2].transpose(1, 2)  # [B, H, N, d]
        # queries and keys together, [2, B, H, N, d]: qk-norm (normalize * gamma * sqrt(d), the
        # per-head gains stacked) and rotation in fp32 (upstream disables autocast for RoPE)
        qk = F.normalize(_at_least_fp32(qkv[:, :, :2]).permute(2, 0, 3, 1, 4), dim=-1)
        gains = torch.stack((self.q_norm.gamma, self.k_norm.gamma))[:, None].to(qk.dtype)  # [2, 1, H, 1, d]
        scale = self.q_norm.scale
        if math.frexp(scale)[0] == 0.5:  # a power of two (sqrt(64) = 8): x * g * s == x * (g * s) exactly
            qk.mul_(gains * scale)
        else:
            qk.mul_(gains).mul_(scale)
        if len(rope) == 3:  # (cos, sin, signed sin) from Transformer.forward
            qk = _rotate_(qk, rope[0], rope[2])
        else:
            qk = apply_rotary(qk, *rope[:2])
        q, k = qk.to(v.dtype).unbind(0)
        mask = None if key_mask is None else rearrange(key_mask, "b j -> b 1 1 j")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.logit_scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """x, gate = chunk(2); gelu(gate) * x (exact-erf GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate).mul_(x)  # gelu(gate) * x, in place


def feed_forward(dim: int, inner: int) -> nn.Sequential:
    """Linear(dim, 2*inner) -> GEGLU -> (dropout slot) -> Linear(inner, dim); keys .0 and .3."""
    return nn.Sequential(nn.Linear(dim, inner * 2), GEGLU(), nn.Identity(), nn.Linear(inner, dim))


class TransformerLayer(nn.ModuleList):
    """One pre-norm block, stored as upstream's 6-slot ModuleList: slots 0 (U-Net skip combiner)
    and 1 (GateLoop) are None in the released model and hold no weights."""

    def __init__(self, cfg: A2MConfig):
        super().__init__([
            None,
            None,
            AdaptiveRMSNorm(cfg.dim, cfg.time_dim),
            Attention(cfg.dim, cfg.dim_head, cfg.heads, cfg.qk_norm_scale),
            AdaptiveRMSNorm(cfg.dim, cfg.time_dim),
            feed_forward(cfg.dim, cfg.ff_inner),
        ])

    def forward(self, x, time_emb, rope, key_mask=None):
        attn_norm, attn, ff_norm, ff = self[2], self[3], self[4], self[5]
        x = attn(attn_norm(x, time_emb), rope, key_mask).add_(x)  # residuals in place (a + b == b + a)
        return ff(ff_norm(x, time_emb)).add_(x)


class Transformer(nn.Module):
    """Register tokens + `depth` TransformerLayers + final RMSNorm (upstream `Transformer` with
    adaptive_rmsnorm=True, no U-Net skips, no GateLoop)."""

    def __init__(self, cfg: A2MConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.depth)])
        self.rotary_emb = RotaryEmbedding(cfg.dim_head, cfg.rope_theta)
        self.register_tokens = randn_parameter(cfg.num_register_tokens, cfg.dim)
        self.final_norm = RMSNorm(cfg.dim)

    def forward(
        self, x: torch.Tensor, time_emb: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """x [B, N, dim], time_emb [B, time_dim], key_mask [B, N] bool (True = real frame)."""
        batch, seq_len, _ = x.shape
        r = self.cfg.num_register_tokens
        registers = self.register_tokens.to(x.dtype).expand(batch, r, -1)
        x = torch.cat([registers, x], dim=1)  # [B, N, D] -> [B, R + N, D]
        if key_mask is not None:
            key_mask = F.pad(key_mask.bool(), (r, 0), value=True)
        positions = torch.cat([
            torch.full((r,), self.cfg.register_position, device=x.device, dtype=torch.long),
            torch.arange(seq_len, device=x.device, dtype=torch.long),
        ])
        cos, sin = self.rotary_emb(positions)
        rope = (cos, sin, signed_sine(sin))
        for layer in self.layers:
            x = layer(x, time_emb, rope, key_mask)
        return self.final_norm(x[:, r:])  # [B, R + N, D] -> [B, N, D]
