"""ICS-A2M network: audio encoders + the in-context flow-matching transformer
(MimicTalk §ICS-A2M; upstream `icl_audio2motion_model.InContextAudio2MotionModel` with
`icl_transformer.InContextTransformerAudio2Motion` inside `cfm_wrapper.ConditionalFlowMatcherWrapper`).

The network predicts the flow-matching velocity v(x_t, t) of 64-d BFM expression motion at 25 fps:

    to_embed(cat[x_t * m, audio_emb, cond * ~m])  ->  + depthwise conv  ->  transformer  ->  to_pred

where m (cond_mask) is True on frames to predict and cond holds the reference ("style prompt")
motion on the other frames. audio_emb is `to_cond_emb` of the 50 Hz audio condition
(HuBERT encoder output, plus pitch/blink/mouth-amplitude embeddings when the checkpoint has
them) linearly resampled to the motion length. Classifier-free guidance replaces the whole
reference motion by `null_cond` (drop_cond=True).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..utils import check_device_dtype
from .config import A2MConfig, infer_a2m_config
from .pitch import f0_to_coarse
from .transformer import Transformer, randn_parameter


def _conv_encoder(channels_in: int, channels: int) -> nn.Sequential:
    """Conv1d(k3, no bias) -> BatchNorm1d -> GELU -> Conv1d(k3, no bias), 'same' padding."""
    return nn.Sequential(
        nn.Conv1d(channels_in, channels, 3, 1, 1, bias=False),
        nn.BatchNorm1d(channels),
        nn.GELU(),
        nn.Conv1d(channels, channels, 3, 1, 1, bias=False),
    )


class LearnedSinusoidalPosEmb(nn.Module):
    """Fourier features of the flow time t with learned frequencies (Crowson's variant):
    t [B] -> cat[sin(2*pi*t*w), cos(2*pi*t*w)] [B, 2*len(w)]."""

    def __init__(self, dim: int):
        super().__init__()
        self.weights = randn_parameter(dim // 2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # in (at least) fp32 like upstream under autocast, then in the weights' dtype
        w = self.weights
        t32 = t.to(torch.promote_types(t.dtype, torch.float32))
        freqs = t32.unsqueeze(-1) * w.to(t32.dtype).unsqueeze(0) * 2 * math.pi  # [B, dim/2]
        return torch.cat((freqs.sin(), freqs.cos()), dim=-1).to(w.dtype)


class ConvPositionEmbed(nn.Module):
    """Depthwise Conv1d + GELU over time (used as a residual: x + conv_embed(x))."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.dw_conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2), nn.GELU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw_conv1d(x.transpose(1, 2)).transpose(1, 2)  # [B, N, C] in and out


class InContextTransformer(nn.Module):
    """The velocity network (upstream `InContextTransformerAudio2Motion`)."""

    def __init__(self, cfg: A2MConfig):
        super().__init__()
        self.null_cond = nn.Parameter(torch.zeros(cfg.motion_dim))
        self.sinu_pos_emb = nn.Sequential(
            LearnedSinusoidalPosEmb(cfg.dim), nn.Linear(cfg.dim, cfg.time_dim), nn.SiLU()
        )
        self.to_cond_emb = nn.Linear(cfg.cond_audio_dim, cfg.motion_dim)
        self.to_embed = nn.Linear(cfg.motion_dim * 3, cfg.dim)
        self.conv_embed = ConvPositionEmbed(cfg.dim, cfg.conv_kernel)
        self.transformer = Transformer(cfg)
        self.to_pred = nn.Linear(cfg.dim, cfg.motion_dim, bias=False)

    def embed_audio(self, cond_audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        """[B, T_a, cond_audio_dim] at 50 Hz -> [B, num_frames, motion_dim] at 25 fps."""
        emb = self.to_cond_emb(cond_audio)
        if emb.shape[1] == num_frames:
            return emb
        # [B, 2T, 64] -> [B, T, 64]; align_corners=False as upstream's bilinear interpolate_1d
        # (with exactly 2T inputs each output is the mean of frames 2i and 2i+1), computed in fp32
        emb = F.interpolate(
            emb.float().transpose(1, 2), size=num_frames, mode="linear", align_corners=False
        )
        return emb.transpose(1, 2).to(cond_audio.dtype)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        audio_emb: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor,
        drop_cond: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Velocity [B, T, motion_dim].

        x_t [B, T, 64] flow state; t [B] flow time; audio_emb [B, T, 64] from `embed_audio`;
        cond [B, T, 64] reference motion; cond_mask [B, T] bool, True = frame to predict;
        drop_cond [B] bool, True = replace the whole reference by `null_cond` (CFG null branch);
        key_mask [B, T] bool, True = real (unpadded) frame, or None."""
        m = cond_mask.unsqueeze(-1)
        x_t = x_t * m  # reference frames of the state are zeroed (Voicebox §3.2)
        cond = cond * ~m  # frames to predict are hidden from the reference
        null = self.null_cond.to(cond.dtype).expand_as(cond)
        cond = torch.where(drop_cond.view(-1, 1, 1), null, cond)
        h = self.to_embed(torch.cat([x_t, audio_emb, cond], dim=-1))  # [B, T, 192] -> [B, T, D]
        h = self.conv_embed(h) + h
        time_emb = self.sinu_pos_emb(t)  # [B, time_dim]
        h = self.transformer(h, time_emb, key_mask)
        return self.to_pred(h)


class FlowMatchingBackbone(nn.Module):
    """Holds the velocity network under upstream's name (`ConditionalFlowMatcherWrapper`);
    the sampler lives in `sampler.py`, apart from the weights."""

    def __init__(self, cfg: A2MConfig):
        super().__init__()
        self.icl_transformer_model = InContextTransformer(cfg)


class InContextAudio2MotionModel(nn.Module):
    """ICS-A2M: audio condition encoders + flow-matching velocity network.

    Build with a config (`A2MConfig.full()` / `tiny()` / `infer(sd)`), or from weights with
    `build_a2m(state_dict, device, dtype)`. Use `mimictalk_lib.a2m.sample_motion` to sample."""

    def __init__(self, cfg: A2MConfig):
        super().__init__()
        self.cfg = cfg
        self.hubert_encoder = _conv_encoder(cfg.audio_dim, cfg.audio_feat_dim)
        if cfg.use_aux_features:
            # nn.Embedding initialises N(0, 1) too; _weight keeps that off the meta device
            self.pitch_embed = nn.Embedding(
                cfg.pitch_bins, cfg.aux_dim, _weight=randn_parameter(cfg.pitch_bins, cfg.aux_dim).data
            )
            self.pitch_encoder = _conv_encoder(cfg.aux_dim, cfg.aux_dim)
            self.blink_embed = nn.Embedding(2, cfg.aux_dim, _weight=randn_parameter(2, cfg.aux_dim).data)
            self.null_blink_embed = randn_parameter(cfg.aux_dim)
            self.mouth_amp_embed = randn_parameter(cfg.aux_dim)
            self.null_mouth_amp_embed = randn_parameter(cfg.aux_dim)
        self.backbone = FlowMatchingBackbone(cfg)

    @property
    def velocity_net(self) -> InContextTransformer:
        return self.backbone.icl_transformer_model

    def encode_audio(
        self,
        hubert: torch.Tensor,
        f0: Optional[torch.Tensor] = None,
        blink: Optional[torch.Tensor] = None,
        mouth_amp: Optional[torch.Tensor] = None,
        null_aux: bool = False,
    ) -> torch.Tensor:
        """50 Hz audio condition [B, T_a, cond_audio_dim].

        hubert [B, T_a, audio_dim]; f0 [B, T_a] in Hz (0 = unvoiced); blink [B, T_a] 0/1;
        mouth_amp [B] (upstream default 1). f0/blink/mouth_amp matter only with auxiliary
        features; null_aux uses the learned null blink / mouth-amplitude vectors (upstream's
        `batch['null_cond']`)."""
        feats = [self.hubert_encoder(hubert.transpose(1, 2)).transpose(1, 2)]  # [B, T_a, 256]
        if self.cfg.use_aux_features:
            b, n = hubert.shape[:2]
            f0 = hubert.new_zeros(b, n) if f0 is None else f0
            pitch = self.pitch_embed(f0_to_coarse(f0.float()))  # [B, T_a, 32]
            feats.append(self.pitch_encoder(pitch.transpose(1, 2)).transpose(1, 2))
            if null_aux:
                blink_feat = self.null_blink_embed.expand(b, n, -1)
                amp_feat = self.null_mouth_amp_embed.expand(b, n, -1)
            else:
                blink = torch.zeros(b, n, dtype=torch.long, device=hubert.device) if blink is None else blink
                mouth_amp = hubert.new_ones(b) if mouth_amp is None else mouth_amp
                blink_feat = self.blink_embed(blink.long())
                amp_feat = (mouth_amp.view(b, 1, 1) * self.mouth_amp_embed).expand(b, n, -1)
            feats += [blink_feat.to(feats[0].dtype), amp_feat.to(feats[0].dtype)]
        return torch.cat(feats, dim=-1)

    def velocity(self, x_t, t, audio_emb, cond, cond_mask, drop_cond, key_mask=None):
        """Flow velocity; see `InContextTransformer.forward`. The sampler calls this method only,
        so tests can substitute a closed-form field."""
        return self.velocity_net(x_t, t, audio_emb, cond, cond_mask, drop_cond, key_mask)


def build_a2m(
    state_dict: Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InContextAudio2MotionModel:
    """Infer the config from `state_dict` (upstream `state_dict['model']` keys), build the model,
    load strictly, cast and return it in eval mode. The model adopts the given tensors (no copy
    when they already have the target device and dtype).

    ``dtype=torch.bfloat16`` on the CPU is an opt-in fast mode for CPUs with native bf16
    (AVX512-BF16 / AMX; refused elsewhere, fp16 always): sampling 1.7-2x faster than fp32, the
    motion within about 2% of its standard deviation of fp32's (docs/benchmarks.md, "Audio to
    motion"). The ODE state and output stay fp32; fp32 remains the default."""
    check_device_dtype(device, dtype, cpu_bf16=True)
    cfg = infer_a2m_config(state_dict)
    with torch.device("meta"):  # no random init: every tensor comes from the state dict
        model = InContextAudio2MotionModel(cfg)
    missing, unexpected = _key_diff(model, state_dict)
    if missing or unexpected:
        raise CheckpointError(
            f"ICS-A2M state dict does not match the inferred layout ({cfg}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def load_a2m(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InContextAudio2MotionModel:
    """:func:`build_a2m` from a file or folder: an upstream ``model_ckpt_steps_<N>.ckpt`` (its
    ``state_dict['model']``; a folder: the latest step) or a converted ``model.safetensors``.
    ``dtype``: as :func:`build_a2m` (bf16 on the CPU is an opt-in for CPUs with native bf16)."""
    from ..checkpoint import load_model_state_dict

    return build_a2m(load_model_state_dict(path), device, dtype)


def _key_diff(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[list, list]:
    ours = model.state_dict()
    missing = sorted(k for k in ours if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in ours)
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in ours.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    return missing + wrong, unexpected
