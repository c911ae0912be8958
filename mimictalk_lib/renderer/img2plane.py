"""Canonical image -> tri-plane backbone (``cano_img2plane_backbone``) and the tri-grid v2
refinement (``plane2grid_module``) of Real3D-Portrait / MimicTalk.

Upstream: ``Img2PlaneModel`` ("composite" backbone, ``modules/img2plane/img2plane_model.py``)
built by ``OSAvatarSECC_Img2plane``, and ``Plane2GridModule`` (``modules/real3d/
img2plane_baseline.py``). Reference: ``mimictalk_architecture.md`` §2.3.

Data flow for a reference image ``[B, 3, R, R]`` in [-1, 1] (black background), R = 512:

    + (i/R, j/R) coordinate channels               -> [B, 5, R, R]
    low_reso_encoder (DeepLabV3, stride 8)         -> [B, 256, R/8, R/8]
    low_reso_vit (5 blocks @ R/16, shuffle, ×4)    -> [B, 96, R/2, R/2]
    high_reso_encoder (conv stride 2)              -> [B, 96, R/2, R/2]
    triplane_predictor_vit (1 block @ R/4, sr 2)   -> [B, 3·C·D, R/2, R/2]
    view + per-plane flips (``orient_planes``)     -> [B, 3, C·D, R/2, R/2]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import CheckpointError, InputError
from ..utils import check_shape
from .deeplab import OUTPUT_STRIDE, DeepLabV3Encoder
from .vit import OverlapPatchEmbed, TransformerBlock, encode_stage

NUM_PLANES = 3
"""Tri-plane order after ``orient_planes``: 0 = xy, 1 = xz, 2 = zy."""

COORD_CHANNELS = 2
"""``img2plane_input_mode='rgb'``: RGB plus the (i/R, j/R) pixel-position channels."""

LEAKY_SLOPE = 0.01
"""``nn.LeakyReLU(negative_slope=0.01)`` in the high-res encoder, predictor ViT and SECC head."""

CANO_SIDE_MULTIPLE = 2 * OUTPUT_STRIDE
"""The low-res ViT embeds the stride-8 DeepLab map with stride 2 and must shuffle back to R/8."""


# --- tri-plane layout -------------------------------------------------------------------------

def orient_planes(planes: torch.Tensor) -> torch.Tensor:
    """``[B, 3·C, H, W] -> [B, 3, C, H, W]`` with upstream's per-plane flips.

    Both image->plane backbones do this after their last conv ("borrowed from img2plane and
    hide-nerf"): xy and xz are flipped along H, zy along H and W. The renderer samples the
    planes as returned here.
    """
    planes = rearrange(planes, "b (k c) h w -> b k c h w", k=NUM_PLANES)
    xy, xz, zy = planes.unbind(1)
    return torch.stack([xy.flip(-2), xz.flip(-2), zy.flip(-2, -1)], dim=1)


def upsample2x_align_corners(x: torch.Tensor) -> torch.Tensor:
    """``nn.UpsamplingBilinear2d(scale_factor=2)``: bilinear with ``align_corners=True``."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


def check_square_image(x: torch.Tensor, channels: int, multiple: int, name: str) -> None:
    """Raise an InputError unless ``x`` is ``[B, channels, R, R]`` with ``R % multiple == 0``."""
    check_shape(x, (None, channels, None, None), name)
    h, w = x.shape[-2:]
    if h != w or h % multiple:
        raise InputError(
            f"{name}: expected a square image whose side is a multiple of {multiple}, got "
            f"{h}x{w}; resize it (the official models use 512x512)."
        )


# --- checkpoint shape helpers (shared with segformer.py) --------------------------------------

def shape_of(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """Shape of ``state_dict[key]``; a CheckpointError naming the key if it is missing."""
    if key not in state_dict:
        raise CheckpointError(f"checkpoint is missing the key {key!r}; it is not a "
                              "Real3D-Portrait / MimicTalk renderer state dict of a known layout")
    return tuple(state_dict[key].shape)


def count_indexed(state_dict: Mapping[str, torch.Tensor], pattern: str, start: int) -> int:
    """Number of consecutive indices ``i = start, start+1, ...`` for which some key starts with
    ``pattern.format(i)`` (e.g. ``'p.block{}.'``)."""
    n = 0
    while any(k.startswith(pattern.format(start + n)) for k in state_dict):
        n += 1
    return n


def verify_against(module: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str,
                   strict: bool = True) -> None:
    """Compare the ``prefix``-ed part of ``state_dict`` with ``module.state_dict()`` (build the
    module on the meta device) and raise a CheckpointError naming every missing, unexpected
    (when ``strict``) and mis-shaped key."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k[len(prefix):]: tuple(v.shape) for k, v in state_dict.items() if k.startswith(prefix)}
    problems = [f"missing {prefix}{k} {s}" for k, s in want.items() if k not in got]
    problems += [f"{prefix}{k}: expected {want[k]}, found {s}" for k, s in got.items()
                 if k in want and want[k] != s]
    if strict:
        problems += [f"unexpected {prefix}{k}" for k in got if k not in want]
    if problems:
        shown = "; ".join(problems[:12]) + ("; ..." if len(problems) > 12 else "")
        raise CheckpointError(
            f"{len(problems)} key(s) under {prefix!r} do not match the layout inferred from the "
            f"checkpoint's shapes ({type(module).__name__}): {shown}. The file is corrupt or of "
            "an unsupported renderer variant."
        )


def _build_on_meta(cls, cfg) -> nn.Module:
    with torch.device("meta"):
        return cls(cfg)


# --- canonical backbone -----------------------------------------------------------------------

@dataclass(frozen=True)
class CanoBackboneConfig:
    """Hyper-parameters of ``cano_img2plane_backbone`` (defaults: upstream 'standard' scale)."""

    resnet_widths: tuple[int, ...] = (64, 128, 256, 512)  # ResNet34 channels of layer1..4
    resnet_blocks: tuple[int, ...] = (3, 4, 6, 3)  # ResNet34 BasicBlocks per layer
    aspp_channels: int = 256  # DeepLabV3 decoder_channels
    aspp_rates: tuple[int, ...] = (12, 24, 36)  # ASPP atrous rates (not visible in shapes)
    vit_dim: int = 1024  # embed_dim of both ViTs (must be divisible by 4: PixelShuffle(2))
    vit_heads: int = 4  # attention heads of both ViTs (not visible in shapes)
    vit_mlp_ratio: int = 2  # Mix-FFN hidden = ratio · vit_dim
    low_res_depth: int = 5  # LowResolutionViT blocks (img2plane_backbone_scale 'standard')
    low_res_conv_channels: int = 128  # conv_after_upsample1/2 width
    feat_channels: int = 96  # low_reso_vit / high_reso_encoder output channels
    high_res_stem_channels: int = 64  # high_reso_encoder.first output channels
    high_res_num_convs: int = 4  # 3×3 convs (+LeakyReLU) in high_reso_encoder.conv_layers
    predictor_channels: tuple[int, int] = (256, 128)  # first/second conv (and after-cat) widths
    predictor_depth: int = 1  # TriplanePredictorViT blocks ('standard')
    predictor_sr_ratio: int = 2  # spatial reduction of the predictor's attention
    out_channels: int = 96  # 3·C·D: 96 (Real3D, C=32, D=1) or 288 (MimicTalk tri-grid D=3)

    @classmethod
    def full(cls, out_channels: int = 96) -> "CanoBackboneConfig":
        """The official configuration; ``out_channels`` 96 (Real3D-Portrait) or 288 (MimicTalk)."""
        return cls(out_channels=out_channels)

    @classmethod
    def tiny(cls, out_channels: int = 36) -> "CanoBackboneConfig":
        """Same structure and code paths with small widths, for tests (use 64² inputs)."""
        return cls(resnet_widths=(8, 16, 16, 32), resnet_blocks=(1, 2, 1, 1), aspp_channels=16,
                   aspp_rates=(2, 4, 6), vit_dim=32, vit_heads=2, low_res_depth=2,
                   low_res_conv_channels=16, feat_channels=8, high_res_stem_channels=8,
                   predictor_channels=(16, 8), out_channels=out_channels)

    @classmethod
    def infer(cls, state_dict: Mapping[str, torch.Tensor],
              prefix: str = "cano_img2plane_backbone.", base: Optional["CanoBackboneConfig"] = None,
              strict: bool = True) -> "CanoBackboneConfig":
        """Read the configuration from tensor shapes under ``prefix``; fields that leave no
        trace in shapes (heads, atrous rates) come from ``base`` (default ``full()``). Every key
        is then checked against the inferred layout (CheckpointError naming offenders)."""
        sd, p = state_dict, prefix
        enc, lv, tp = p + "low_reso_encoder.encoder.", p + "low_reso_vit.", p + "triplane_predictor_vit."
        in_ch = shape_of(sd, enc + "conv1.weight")[1]
        if in_ch != 3 + COORD_CHANNELS:
            raise CheckpointError(
                f"{enc}conv1.weight takes {in_ch} input channels; only img2plane_input_mode "
                f"'rgb' ({3 + COORD_CHANNELS} channels: RGB + 2 coordinates) is supported")
        n_layers = count_indexed(sd, enc + "layer{}.", 1)
        vit_dim = shape_of(sd, lv + "patch_embed.proj.weight")[0]
        sr_key = tp + "block1.attn.sr.weight"
        cfg = dataclasses.replace(
            base or cls.full(),
            resnet_widths=tuple(shape_of(sd, enc + f"layer{i}.0.conv1.weight")[0]
                                for i in range(1, n_layers + 1)),
            resnet_blocks=tuple(count_indexed(sd, enc + f"layer{i}.{{}}.", 0)
                                for i in range(1, n_layers + 1)),
            aspp_channels=shape_of(sd, p + "low_reso_encoder.decoder.1.weight")[0],
            vit_dim=vit_dim,
            vit_mlp_ratio=shape_of(sd, lv + "block1.mlp.fc1.weight")[0] // vit_dim,
            low_res_depth=count_indexed(sd, lv + "block{}.", 1),
            low_res_conv_channels=shape_of(sd, lv + "conv_after_upsample1.weight")[0],
            feat_channels=shape_of(sd, lv + "final_conv.weight")[0],
            high_res_stem_channels=shape_of(sd, p + "high_reso_encoder.first.weight")[0],
            # conv_layers interleaves convs (even indices) and activations (no keys)
            high_res_num_convs=sum(1 for k in sd if k.startswith(p + "high_reso_encoder.conv_layers.")
                                   and k.endswith(".weight")),
            predictor_channels=(shape_of(sd, tp + "first_conv.weight")[0],
                                shape_of(sd, tp + "second_conv.weight")[0]),
            predictor_depth=count_indexed(sd, tp + "block{}.", 1),
            predictor_sr_ratio=shape_of(sd, sr_key)[-1] if sr_key in sd else 1,
            out_channels=shape_of(sd, tp + "final_conv.weight")[0],
        )
        verify_against(_build_on_meta(CanoImg2PlaneBackbone, cfg), sd, p, strict)
        return cfg


class LowResolutionViT(nn.Module):
    """``low_reso_vit``: ViT on the DeepLab map, then PixelShuffle(2) and two bilinear ×2
    (``align_corners=True``) + conv + ReLU, and ``final_conv``.

    ``[B, aspp, R/8, R/8] -> [B, feat, R/2, R/2]``.
    """

    def __init__(self, cfg: CanoBackboneConfig):
        super().__init__()
        self.depth = cfg.low_res_depth
        self.patch_embed = OverlapPatchEmbed(cfg.aspp_channels, cfg.vit_dim, patch_size=3, stride=2)
        for i in range(1, self.depth + 1):
            setattr(self, f"block{i}", TransformerBlock(cfg.vit_dim, cfg.vit_heads,
                                                        mlp_ratio=cfg.vit_mlp_ratio))
        c = cfg.low_res_conv_channels
        self.conv_after_upsample1 = nn.Conv2d(cfg.vit_dim // 4, c, 3, padding=1)
        self.conv_after_upsample2 = nn.Conv2d(c, c, 3, padding=1)
        self.final_conv = nn.Conv2d(c, cfg.feat_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [getattr(self, f"block{i}") for i in range(1, self.depth + 1)]
        h = F.pixel_shuffle(encode_stage(self.patch_embed, blocks, x), 2)  # [B, dim/4, R/8, R/8]
        h = F.relu(self.conv_after_upsample1(upsample2x_align_corners(h)))  # @ R/4
        h = F.relu(self.conv_after_upsample2(upsample2x_align_corners(h)))  # @ R/2
        return self.final_conv(h)


class HighResoEncoder(nn.Module):
    """``high_reso_encoder``: 7×7 stride-2 conv (no activation after it, as upstream), then
    [3×3 conv -> LeakyReLU] × n (``conv_layers.{0,2,4,6}``) and ``final`` 3×3 conv.

    ``[B, 5, R, R] -> [B, feat, R/2, R/2]``.
    """

    def __init__(self, cfg: CanoBackboneConfig):
        super().__init__()
        c = cfg.feat_channels
        self.first = nn.Conv2d(3 + COORD_CHANNELS, cfg.high_res_stem_channels, 7, stride=2, padding=3)
        layers: list[nn.Module] = []
        for i in range(cfg.high_res_num_convs):
            layers += [nn.Conv2d(cfg.high_res_stem_channels if i == 0 else c, c, 3, padding=1),
                       nn.LeakyReLU(LEAKY_SLOPE)]
        self.conv_layers = nn.Sequential(*layers)
        self.final = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.conv_layers(self.first(x)))


class TriplanePredictorViT(nn.Module):
    """``triplane_predictor_vit``: convs on cat(low, high), a ViT at R/4 with spatial-reduction
    attention, PixelShuffle(2), skip-concat with the low-res features and convs to the planes.

    ``([B, feat, R/2, R/2], [B, feat, R/2, R/2]) -> [B, out, R/2, R/2]`` (unflipped).
    """

    def __init__(self, cfg: CanoBackboneConfig):
        super().__init__()
        c1, c2 = cfg.predictor_channels
        self.depth = cfg.predictor_depth
        self.first_conv = nn.Conv2d(2 * cfg.feat_channels, c1, 3, padding=1)
        self.second_conv = nn.Conv2d(c1, c2, 3, padding=1)
        self.patch_embed = OverlapPatchEmbed(c2, cfg.vit_dim, patch_size=3, stride=2)
        for i in range(1, self.depth + 1):
            setattr(self, f"block{i}", TransformerBlock(
                cfg.vit_dim, cfg.vit_heads, mlp_ratio=cfg.vit_mlp_ratio,
                sr_ratio=cfg.predictor_sr_ratio))
        self.first_conv_after_cat = nn.Conv2d(cfg.vit_dim // 4 + cfg.feat_channels, c1, 3, padding=1)
        self.second_conv_after_cat = nn.Conv2d(c1, c2, 3, padding=1)
        self.third_conv_after_cat = nn.Conv2d(c2, c2, 3, padding=1)
        self.final_conv = nn.Conv2d(c2, cfg.out_channels, 3, padding=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, LEAKY_SLOPE)  # noqa: E731
        h = act(self.second_conv(act(self.first_conv(torch.cat([low, high], dim=1)))))
        blocks = [getattr(self, f"block{i}") for i in range(1, self.depth + 1)]
        h = F.pixel_shuffle(encode_stage(self.patch_embed, blocks, h), 2)  # [B, dim/4, R/2, R/2]
        h = act(self.first_conv_after_cat(torch.cat([h, low], dim=1)))
        h = act(self.third_conv_after_cat(act(self.second_conv_after_cat(h))))
        return self.final_conv(h)


class CanoImg2PlaneBackbone(nn.Module):
    """Reference image -> canonical tri-planes (upstream ``Img2PlaneModel``, input mode 'rgb').

    ``forward(image [B, 3, R, R] in [-1, 1], black background) -> [B, 3, out/3, R/2, R/2]``,
    flipped per plane (``orient_planes``). For the tri-grid v2 layout pass the result through
    :class:`Plane2Grid`.
    """

    def __init__(self, cfg: CanoBackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.low_reso_encoder = DeepLabV3Encoder(
            3 + COORD_CHANNELS, widths=cfg.resnet_widths, blocks=cfg.resnet_blocks,
            aspp_channels=cfg.aspp_channels, aspp_rates=cfg.aspp_rates)
        self.high_reso_encoder = HighResoEncoder(cfg)
        self.low_reso_vit = LowResolutionViT(cfg)
        self.triplane_predictor_vit = TriplanePredictorViT(cfg)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_square_image(image, 3, CANO_SIDE_MULTIPLE, "reference image")
        b, _, r, _ = image.shape
        # Pixel-position channels, both divided by the height (upstream meshgrid 'ij').
        pos = torch.arange(r, device=image.device, dtype=torch.float32) / r
        rows, cols = torch.meshgrid(pos, pos, indexing="ij")
        coords = torch.stack([rows, cols]).to(image.dtype).expand(b, -1, -1, -1)
        x = torch.cat([image, coords], dim=1)  # [B, 5, R, R]
        low = self.low_reso_vit(self.low_reso_encoder(x))  # [B, feat, R/2, R/2]
        planes = self.triplane_predictor_vit(low, self.high_reso_encoder(x))
        return orient_planes(planes)  # [B, 3, out/3, R/2, R/2]


# --- tri-grid v2 ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plane2GridConfig:
    """Hyper-parameters of ``plane2grid_module`` (``triplane_feature_type='trigrid_v2'``)."""

    channels: int = 32  # C: triplane_hid_dim
    depth: int = 3  # D: triplane_depth (grid cells along each plane's normal)
    num_blocks: int = 1  # SameBlock3d count: upstream 1 if depth <= 3 else 2
    groups: int = 4  # GroupNorm groups
    alpha_init: float = 0.01  # initial residual scale (a learned parameter)

    @classmethod
    def full(cls, channels: int = 32, depth: int = 3) -> "Plane2GridConfig":
        return cls(channels=channels, depth=depth, num_blocks=1 if depth <= 3 else 2)

    @classmethod
    def tiny(cls) -> "Plane2GridConfig":
        """Matches ``CanoBackboneConfig.tiny()``'s 36 = 3 planes · C=4 · D=3 channels."""
        return cls(channels=4, depth=3)

    @property
    def plane_channels(self) -> int:
        """C·D, the channels of each plane."""
        return self.channels * self.depth

    @classmethod
    def infer(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = "plane2grid_module.",
              plane_channels: Optional[int] = None, base: Optional["Plane2GridConfig"] = None,
              strict: bool = True) -> "Plane2GridConfig":
        """Channels and block count from shapes; the depth D from ``plane_channels`` (C·D, e.g.
        288 // 3 from the backbone's output) when given, else from ``base`` (default 3)."""
        c = shape_of(state_dict, prefix + "res_blocks_3d.0.conv1.weight")[0]
        base = base or cls.full()
        depth = base.depth
        if plane_channels is not None:
            if plane_channels % c:
                raise CheckpointError(
                    f"{prefix}res_blocks_3d.0.conv1.weight has {c} channels, which does not "
                    f"divide the planes' {plane_channels} channels (C·D)")
            depth = plane_channels // c
        cfg = dataclasses.replace(base, channels=c, depth=depth,
                                  num_blocks=count_indexed(state_dict, prefix + "res_blocks_3d.{}.", 0))
        verify_against(_build_on_meta(Plane2Grid, cfg), state_dict, prefix, strict)
        return cfg


class SameBlock3d(nn.Module):
    """Pre-activation 3-D residual block: GroupNorm -> ReLU -> Conv3d 3³ (replicate padding),
    twice, added back with a learned scale ``alpha``."""

    def __init__(self, channels: int, groups: int, alpha_init: float):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, padding_mode="replicate")
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, padding_mode="replicate")
        self.norm1 = nn.GroupNorm(groups, channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.alpha = nn.Parameter(torch.tensor([alpha_init]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + self.alpha * out


class Plane2Grid(nn.Module):
    """Tri-grid v2: each plane's C·D channels, laid out ``(c d)``, become a C-channel grid of
    depth D refined by 3-D residual blocks (upstream ``Plane2GridModule``, applied to the
    flipped canonical planes in ``cal_cano_plane``).

    ``forward(planes [B, 3, C·D, H, W]) -> [B, 3, C·D, H, W]``.
    """

    def __init__(self, cfg: Plane2GridConfig):
        super().__init__()
        self.cfg = cfg
        self.res_blocks_3d = nn.Sequential(*[
            SameBlock3d(cfg.channels, cfg.groups, cfg.alpha_init) for _ in range(cfg.num_blocks)])

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        check_shape(planes, (None, NUM_PLANES, self.cfg.plane_channels, None, None), "tri-grid planes")
        grid = rearrange(planes, "b k (c d) h w -> (b k) c d h w", d=self.cfg.depth)
        grid = self.res_blocks_3d(grid)  # [B·3, C, D, H, W]
        return rearrange(grid, "(b k) c d h w -> b k (c d) h w", k=NUM_PLANES)
