"""SECC motion adapter ``secc_img2plane_backbone``: SECC maps -> expression tri-planes.

Upstream: ``SegFormerSECC2PlaneBackbone`` (``modules/real3d/segformer.py``, scale 'b0',
``pncc_cond_mode='cano_src_tgt'``); reference ``mimictalk_architecture.md`` §2.4. The SegFormer
parts follow Xie et al., NeurIPS 2021 (MiT encoder + all-MLP head).

    cat(cano, src, drv SECC) [B, 9, R, R] in [-1, 1]
    prenet: equalized-lr 1×1 conv 9->3                          -> [B, 3, R, R]
    mix_vit: MiT-b0, stages at R/4, R/8, R/16, R/32             -> 4 feature maps
    fuse_head: per-stage Linear -> resize to R/4 -> concat [c4, c3, c2, c1] -> 1×1 conv+BN+ReLU
                                                                -> [B, 256, R/4, R/4]
    to_plane_cnn: 3 × (3×3 conv, LeakyReLU) -> bilinear ×2 (align_corners=True) -> 3×3 conv
                                                                -> [B, 3·C·D, R/2, R/2]
    view + per-plane flips (``orient_planes``)                  -> [B, 3, C·D, R/2, R/2]

MimicTalk's personalised checkpoints add LoRA to ``prenet`` and ``to_plane_cnn.{0,2,4,7}``; this
module is the base network only (``to_plane_cnn`` convs are plain ``nn.Conv2d`` so peft can wrap
them; official LoRA keys are handled by the renderer loader).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .img2plane import (LEAKY_SLOPE, check_square_image, count_indexed, orient_planes,
                        shape_of, verify_against)
from .stylegan import Conv2dLayer
from .vit import OverlapPatchEmbed, TransformerBlock, encode_stage

MIT_NUM_STAGES = 4
SECC_SIDE_MULTIPLE = 4
"""Stage 1 has stride 4 and the head works at its resolution; the planes come out at R/2."""


@dataclass(frozen=True)
class SeccBackboneConfig:
    """Hyper-parameters of ``secc_img2plane_backbone`` (defaults: upstream MiT-b0 / 'b0' head)."""

    in_channels: int = 9  # cat(cano, src, drv) SECC maps (pncc_cond_mode 'cano_src_tgt'; 6 = 'cano_tgt')
    prenet_channels: int = 3  # prenet output = MiT input channels
    embed_dims: tuple[int, ...] = (32, 64, 160, 256)  # MiT-b0 stage widths
    num_heads: tuple[int, ...] = (1, 2, 5, 8)  # MiT-b0 heads per stage (not visible in shapes)
    mlp_ratio: int = 4  # Mix-FFN hidden = ratio · width
    depths: tuple[int, ...] = (2, 2, 2, 2)  # MiT-b0 blocks per stage
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # spatial reduction per stage
    norm_eps: float = 1e-6  # LayerNorm eps of the MiT block and stage norms
    drop_path_rate: float = 0.1  # MiT stochastic depth, linear over all blocks (training only)
    head_channels: int = 256  # SegFormerHead embedding_dim
    head_dropout: float = 0.1  # Dropout2d after linear_fuse (training only)
    plane_cnn_channels: int = 256  # to_plane_cnn hidden width
    out_channels: int = 96  # 3·C·D: 96 (Real3D) or 288 (MimicTalk tri-grid D=3)

    @classmethod
    def full(cls, out_channels: int = 96) -> "SeccBackboneConfig":
        """The official configuration; ``out_channels`` 96 (Real3D-Portrait) or 288 (MimicTalk)."""
        return cls(out_channels=out_channels)

    @classmethod
    def tiny(cls, out_channels: int = 36) -> "SeccBackboneConfig":
        """Same structure and code paths with small widths, for tests (use 64² inputs)."""
        return cls(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 2, 1, 1),
                   head_channels=16, plane_cnn_channels=16, out_channels=out_channels)

    @classmethod
    def infer(cls, state_dict: Mapping[str, torch.Tensor],
              prefix: str = "secc_img2plane_backbone.", base: Optional["SeccBackboneConfig"] = None,
              strict: bool = True) -> "SeccBackboneConfig":
        """Read the configuration from tensor shapes under ``prefix``; heads and eps come from
        ``base`` (default ``full()``). Every key is then checked against the inferred layout
        (CheckpointError naming offenders). ``strict=False`` tolerates extra keys (LoRA)."""
        sd, p, m = state_dict, prefix, prefix + "mix_vit."
        prenet = shape_of(sd, p + "prenet.weight")
        dims = tuple(shape_of(sd, m + f"patch_embed{i}.proj.weight")[0]
                     for i in range(1, MIT_NUM_STAGES + 1))
        sr = tuple(shape_of(sd, m + f"block{i}.0.attn.sr.weight")[-1]
                   if m + f"block{i}.0.attn.sr.weight" in sd else 1
                   for i in range(1, MIT_NUM_STAGES + 1))
        cfg = dataclasses.replace(
            base or cls.full(),
            in_channels=prenet[1],
            prenet_channels=prenet[0],
            embed_dims=dims,
            mlp_ratio=shape_of(sd, m + "block1.0.mlp.fc1.weight")[0] // dims[0],
            depths=tuple(count_indexed(sd, m + f"block{i}.{{}}.", 0)
                         for i in range(1, MIT_NUM_STAGES + 1)),
            sr_ratios=sr,
            head_channels=shape_of(sd, p + "fuse_head.linear_c1.proj.weight")[0],
            plane_cnn_channels=shape_of(sd, p + "to_plane_cnn.0.weight")[0],
            out_channels=shape_of(sd, p + "to_plane_cnn.7.weight")[0],
        )
        with torch.device("meta"):
            module = SeccImg2PlaneBackbone(cfg)
        verify_against(module, sd, p, strict)
        return cfg


class MixVisionTransformer(nn.Module):
    """MiT encoder (``mix_vit``): four stages of overlapping patch embedding (7×7/4, then
    3×3/2), transformer blocks and a stage LayerNorm. Returns the four maps
    ``[B, dims[i], R/2^(i+2), R/2^(i+2)]``."""

    def __init__(self, cfg: SeccBackboneConfig):
        super().__init__()
        n_blocks = sum(cfg.depths)
        rates = torch.linspace(0, cfg.drop_path_rate, n_blocks, device="cpu").tolist()
        widths = (cfg.prenet_channels,) + tuple(cfg.embed_dims)
        # Registration order as upstream (all patch embeddings, then blocks/norm per stage).
        for i in range(1, MIT_NUM_STAGES + 1):
            patch, stride = (7, 4) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(
                widths[i - 1], widths[i], patch_size=patch, stride=stride))
        cur = 0
        for i, (dim, heads, depth, sr) in enumerate(
                zip(cfg.embed_dims, cfg.num_heads, cfg.depths, cfg.sr_ratios), start=1):
            setattr(self, f"block{i}", nn.ModuleList([
                TransformerBlock(dim, heads, mlp_ratio=cfg.mlp_ratio, sr_ratio=sr,
                                 norm_eps=cfg.norm_eps, drop_path=rates[cur + j])
                for j in range(depth)]))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=cfg.norm_eps))
            cur += depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(1, MIT_NUM_STAGES + 1):
            x = encode_stage(getattr(self, f"patch_embed{i}"), getattr(self, f"block{i}"), x,
                             norm=getattr(self, f"norm{i}"))
            feats.append(x)
        return feats


class LinearEmbed(nn.Module):
    """Per-pixel Linear on a map (upstream ``HeadMLP``; key ``proj``): ``[B, C, H, W] -> [B, E, H, W]``."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.movedim(1, -1)).movedim(-1, 1)


class ConvBNReLU(nn.Module):
    """mmcv ``ConvModule`` (1×1 conv without bias -> BatchNorm -> ReLU), keys ``conv``, ``bn``."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class SegFormerHead(nn.Module):
    """All-MLP decoder: embed each stage, resize to stage 1 (bilinear, ``align_corners=False``),
    concatenate in the order [c4, c3, c2, c1], fuse, Dropout2d. ``-> [B, E, R/4, R/4]``."""

    def __init__(self, cfg: SeccBackboneConfig):
        super().__init__()
        e = cfg.head_channels
        # Registered c4 first, as upstream, so the state_dict order matches too.
        for i in reversed(range(1, MIT_NUM_STAGES + 1)):
            setattr(self, f"linear_c{i}", LinearEmbed(cfg.embed_dims[i - 1], e))
        self.linear_fuse = ConvBNReLU(MIT_NUM_STAGES * e, e)
        self.dropout = nn.Dropout2d(cfg.head_dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        maps = []
        for i in reversed(range(1, MIT_NUM_STAGES + 1)):
            m = getattr(self, f"linear_c{i}")(feats[i - 1])
            if i > 1:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            maps.append(m)
        return self.dropout(self.linear_fuse(torch.cat(maps, dim=1)))


class SeccImg2PlaneBackbone(nn.Module):
    """SECC maps -> expression tri-planes (upstream ``SegFormerSECC2PlaneBackbone``).

    ``forward(secc [B, in, R, R] in [-1, 1]) -> [B, 3, out/3, R/2, R/2]``, flipped per plane like
    the canonical planes (``orient_planes``), ready to be added to them.
    """

    def __init__(self, cfg: SeccBackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.prenet = Conv2dLayer(cfg.in_channels, cfg.prenet_channels, kernel_size=1)
        self.mix_vit = MixVisionTransformer(cfg)
        self.fuse_head = SegFormerHead(cfg)
        c = cfg.plane_cnn_channels
        self.to_plane_cnn = nn.Sequential(
            nn.Conv2d(cfg.head_channels, c, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.UpsamplingBilinear2d(scale_factor=2.0),  # align_corners=True
            nn.Conv2d(c, cfg.out_channels, 3, padding=1),
        )

    def forward(self, secc: torch.Tensor) -> torch.Tensor:
        check_square_image(secc, self.cfg.in_channels, SECC_SIDE_MULTIPLE, "SECC condition")
        feats = self.mix_vit(self.prenet(secc))
        planes = self.to_plane_cnn(self.fuse_head(feats))  # [B, out, R/2, R/2]
        return orient_planes(planes)
