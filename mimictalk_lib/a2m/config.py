"""Configuration of the ICS-A2M network (MimicTalk, in-context stylised audio-to-motion).

Upstream builds `InContextAudio2MotionModel` with hard-coded sizes plus one switch,
`use_aux_features`, read from the checkpoint's `config.yaml` (not public). We read every size
back from the state dict instead (`A2MConfig.infer`), so a checkpoint with either key layout
(`ics_a2m_flowmatching_auxfeat.tsv` / `..._noaux.tsv`) loads strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import CheckpointError

TRANSFORMER_PREFIX = "backbone.icl_transformer_model."
"""Upstream key prefix: `ConditionalFlowMatcherWrapper.icl_transformer_model`."""


@dataclass(frozen=True)
class A2MConfig:
    """Hyper-parameters of `InContextAudio2MotionModel`; defaults are the upstream values."""

    motion_dim: int = 64  # dim_in: BFM expression coefficients per 25 fps frame
    audio_dim: int = 1024  # HuBERT-large hidden size fed to hubert_encoder
    audio_feat_dim: int = 256  # feat_dim: hubert_encoder output channels
    use_aux_features: bool = False  # pitch / blink / mouth-amplitude embeddings present
    aux_dim: int = 32  # aux_feat_dim of each auxiliary embedding
    pitch_bins: int = 300  # rows of pitch_embed (f0_to_coarse uses 1..255)
    dim: int = 256  # transformer width
    depth: int = 16  # transformer layers
    heads: int = 8  # attention heads
    dim_head: int = 64  # per-head width; also the RoPE dimension
    ff_inner: int = 682  # GEGLU inner width = int(dim * ff_mult(4) * 2 / 3)
    time_dim: int = 1024  # time-embedding width = dim * 4 (adaptive RMSNorm condition)
    num_register_tokens: int = 16  # learned tokens prepended to the sequence
    conv_kernel: int = 31  # depthwise ConvPositionEmbed kernel
    rope_theta: float = 50_000.0  # RotaryEmbedding base (upstream default theta)
    qk_norm_scale: float = 10.0  # attention logit scale after qk-RMSNorm (upstream qk_norm_scale)
    register_position: int = -10_000  # rotary position given to register tokens

    @property
    def cond_audio_dim(self) -> int:
        """Width of the audio condition fed to `to_cond_emb` (256, or 352 with auxiliaries)."""
        return self.audio_feat_dim + (3 * self.aux_dim if self.use_aux_features else 0)

    @classmethod
    def full(cls, use_aux_features: bool = True) -> "A2MConfig":
        """The released model's sizes (about 35 M parameters)."""
        return cls(use_aux_features=use_aux_features)

    @classmethod
    def tiny(cls, use_aux_features: bool = True) -> "A2MConfig":
        """A few-thousand-parameter model for CPU tests (paired with a 32-d tiny HuBERT)."""
        return cls(
            motion_dim=8, audio_dim=32, audio_feat_dim=16, use_aux_features=use_aux_features,
            aux_dim=4 if use_aux_features else cls.aux_dim, pitch_bins=300, dim=32, depth=2, heads=2, dim_head=16,
            ff_inner=int(32 * 4 * 2 / 3), time_dim=128, num_register_tokens=4, conv_kernel=7,
        )

    @classmethod
    def infer(cls, state_dict: Mapping[str, torch.Tensor]) -> "A2MConfig":
        """Read the configuration from an upstream-layout state dict (tensor shapes only).

        Raises CheckpointError naming the offending key when the layout is not ICS-A2M."""
        return infer_a2m_config(state_dict)


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(
            f"not an ICS-A2M state dict: key '{key}' is missing "
            f"({len(sd)} keys, e.g. {sorted(sd)[:3]}). Load an audio-to-motion checkpoint "
            "(upstream 240112_icl_audio2secc_vox2_cmlr, state_dict['model'])."
        )
    return tuple(sd[key].shape)


def infer_a2m_config(state_dict: Mapping[str, torch.Tensor]) -> A2MConfig:
    """Infer `A2MConfig` from the shapes of an upstream ICS-A2M state dict."""
    p = TRANSFORMER_PREFIX
    feat, audio, _k = _shape(state_dict, "hubert_encoder.0.weight")
    motion_dim, cond_audio_dim = _shape(state_dict, p + "to_cond_emb.weight")
    dim, embed_in = _shape(state_dict, p + "to_embed.weight")
    if embed_in != 3 * motion_dim:
        raise CheckpointError(
            f"{p}to_embed.weight has {embed_in} inputs, expected 3 x motion_dim = {3 * motion_dim} "
            "(cat[x_t, audio embedding, masked reference motion])."
        )
    use_aux = "pitch_embed.weight" in state_dict
    aux_dim, pitch_bins = 32, 300
    if use_aux:
        pitch_bins, aux_dim = _shape(state_dict, "pitch_embed.weight")
    if cond_audio_dim != feat + (3 * aux_dim if use_aux else 0):
        raise CheckpointError(
            f"{p}to_cond_emb.weight takes {cond_audio_dim} inputs but hubert_encoder gives {feat} "
            f"and auxiliary features are {'present' if use_aux else 'absent'} (aux dim {aux_dim}); "
            "the checkpoint mixes the two ICS-A2M layouts."
        )
    depth = 0
    while f"{p}transformer.layers.{depth}.3.to_qkv.weight" in state_dict:
        depth += 1
    if depth == 0:
        _shape(state_dict, p + "transformer.layers.0.3.to_qkv.weight")
    heads, _one, dim_head = _shape(state_dict, p + "transformer.layers.0.3.q_norm.gamma")
    ff_inner = _shape(state_dict, p + "transformer.layers.0.5.3.weight")[1]
    time_dim = _shape(state_dict, p + "sinu_pos_emb.1.weight")[0]
    registers = _shape(state_dict, p + "transformer.register_tokens")[0]
    kernel = _shape(state_dict, p + "conv_embed.dw_conv1d.0.weight")[-1]
    inv_freq = state_dict[p + "transformer.rotary_emb.inv_freq"] if (
        p + "transformer.rotary_emb.inv_freq") in state_dict else None
    theta = A2MConfig.rope_theta
    if inv_freq is not None and inv_freq.numel() > 1 and inv_freq.device.type != "meta":
        # inv_freq[i] = theta ** (-2i / dim_head)  ->  theta = inv_freq[1] ** (-dim_head / 2)
        theta = float(round(float(inv_freq[1].double() ** (-dim_head / 2))))
        if not math.isfinite(theta) or theta <= 1:
            raise CheckpointError(f"rotary_emb.inv_freq gives an invalid RoPE base {theta}")
    return A2MConfig(
        motion_dim=motion_dim, audio_dim=audio, audio_feat_dim=feat, use_aux_features=use_aux,
        aux_dim=aux_dim, pitch_bins=pitch_bins, dim=dim, depth=depth, heads=heads,
        dim_head=dim_head, ff_inner=ff_inner, time_dim=time_dim, num_register_tokens=registers,
        conv_kernel=kernel, rope_theta=theta,
    )
