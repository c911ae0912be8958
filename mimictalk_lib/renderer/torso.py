"""Torso warp model of Real3D-Portrait's super-resolution (``superresolution.torso_model.*``).

A face-vid2vid-style warp (Wang et al., CVPR 2021, "One-shot free-view neural talking-head
synthesis"), as adapted by Real3D-Portrait (upstream ``modules/real3d/facev2v_warp/model2.py``,
``WarpBasedTorsoModelMediaPipe('standard')``, torso model version v2): the inpainted torso of the
reference frame is lifted to a 3-D feature volume, warped by a dense motion field estimated from
a few 2-D face keypoints (source frame -> driving frame) and the rendered head, and decoded to a
torso image, a hidden feature map and the torso alpha ``occlusion_2``.

Conventions kept from upstream (they decide parity):

* Keypoints are 68-point landmarks in [-1, 1] (x right, y down, z = 0); only ``kp[:, (0, 8, 16,
  27)]`` are used (jaw ends, chin, nose bridge). Rotations are identity, so the motion of
  keypoint k maps a driving point p to ``(p - kp_d[k]) + kp_s[k]``.
* Coordinate grids span [-1, 1] over pixel centres (``align_corners=True`` everywhere in
  ``grid_sample``). The per-keypoint deformed source uses zero padding, the final feature warp
  border padding.
* The generator's convolutions carry spectral normalisation (``weight_orig``, ``weight_u``,
  ``weight_v``, as legacy ``torch.nn.utils.spectral_norm``: in eval mode the stored ``u, v`` are
  used as they are, in training one power iteration per call updates them). BatchNorm stands in
  for upstream's SyncBatchNorm (identical outside multi-process training).
* The training-only regularisation losses and the 0.1 gradient scaling of the motion outputs are
  omitted: the torso model is frozen in every released training script and the scaling leaves
  forward values unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KP_VARIANCE = 0.01
"""Variance of the 3-D Gaussian keypoint heatmaps (face-vid2vid ``kp2gaussian``)."""

TORSO_SEG_CLASSES = (2, 4)
"""MediaPipe multiclass segmentation channels of the torso: 2 = body skin, 4 = clothes."""

KEYPOINT_INDICES = {4: (0, 8, 16, 27), 9: (0, 3, 6, 8, 10, 13, 16, 27, 33)}
"""lm68 landmarks used as torso keypoints, by keypoint count (upstream ``torso_kp_num``)."""

COMPRESSED_CHANNELS = 4
"""Appearance channels kept (1x1x1 conv) for the keypoint-wise deformed sources."""


@dataclass(frozen=True)
class TorsoConfig:
    in_channels: int = 3  # 3 = rgb; 5 = rgb + torso segmentation (Real3D ``torso_inp_mode: rgb_alpha``)
    resolution: int = 256  # torso image in/out size; features live at resolution / 4
    appearance_channels: tuple[int, ...] = (64, 128, 256)  # in_conv, then one DownBlock2D (/2) per step
    feature_channels: int = 32  # C of the 3-D appearance volume [B, C, D, H, W]
    feature_depth: int = 16  # D of that volume
    num_res_appearance: int = 6  # ResBlock3D after the lift
    num_keypoints: int = 4  # K (``torso_kp_num``)
    unet_channels: tuple[int, ...] = (64, 128, 256, 512, 1024)  # 3-D hourglass encoder, /2 in H, W each
    unet_out_channels: int = 32  # last decoder width of the hourglass
    head_channels: int = 32  # rendered-head encoder and fused motion features
    num_res_head: int = 3
    head_resolution: int = 128  # the rendered head rgb+alpha is resized to this before encoding
    generator_channels: tuple[int, ...] = (256, 128, 64)  # in_conv width, then one UpBlock2D (x2) per step
    num_res_generator: int = 6
    occlusion_hidden: int = 32  # occlusion_2_predictor width
    mask_dilate_ksize: int = 7  # max-pool dilation of the torso mask at the feature resolution

    @classmethod
    def full(cls, in_channels: int = 3) -> "TorsoConfig":
        return cls(in_channels=in_channels)

    @classmethod
    def tiny(cls, in_channels: int = 3) -> "TorsoConfig":
        return cls(
            in_channels=in_channels, resolution=32, appearance_channels=(8, 8, 16), feature_channels=4,
            feature_depth=4, num_res_appearance=1, unet_channels=(8, 16), unet_out_channels=8, head_channels=8,
            num_res_head=1, head_resolution=16, generator_channels=(16, 8, 8), num_res_generator=1, occlusion_hidden=8,
        )

    @property
    def feature_resolution(self) -> int:
        return self.resolution // 2 ** (len(self.appearance_channels) - 1)

    @property
    def hidden_channels(self) -> int:
        """Channels of ``deformed_torso_hid`` (input of the SR ``torso_encoder``)."""
        return self.generator_channels[-1]


# --------------------------------------------------------------------------------------------
# Building blocks (upstream ``facev2v_warp/layers.py``): each keeps its modules in a ``layers``
# Sequential, which is what the checkpoint keys index.
# --------------------------------------------------------------------------------------------


SPECTRAL_NORM_EPS = 1e-12
"""``eps`` of the vector normalisation in the power iteration (torch.nn.utils.spectral_norm)."""


class SpectralNormConv2d(nn.Module):
    """Conv2d with spectral normalisation, state-compatible with the legacy
    ``torch.nn.utils.spectral_norm(nn.Conv2d(...))`` used upstream.

    Parameters ``weight_orig`` [O, I, k, k] and ``bias`` [O]; buffers ``weight_u`` [O] and
    ``weight_v`` [I*k*k]. The kernel is ``weight_orig / sigma`` with ``sigma = u . (W v)``,
    W = weight_orig viewed as [O, I*k*k]. In training mode one power iteration first updates
    u and v in place (as the legacy hook does); in eval mode the stored vectors are used as
    they are.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        init = nn.Conv2d(in_ch, out_ch, kernel, stride, padding)  # PyTorch's default initialisation
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(init.bias.detach())
        self.weight_orig = nn.Parameter(init.weight.detach())
        self.register_buffer("weight_u", torch.randn(out_ch))  # unit length after init_spectral_norm_vectors
        self.register_buffer("weight_v", torch.randn(in_ch * kernel * kernel))

    @property
    def weight(self) -> torch.Tensor:
        """The normalised kernel (one power iteration first when training)."""
        w = self.weight_orig.flatten(1)  # [O, I*k*k]
        u, v = self.weight_u, self.weight_v
        if self.training:
            with torch.no_grad():
                F.normalize(torch.mv(w.t(), u), dim=0, eps=SPECTRAL_NORM_EPS, out=v)
                F.normalize(torch.mv(w, v), dim=0, eps=SPECTRAL_NORM_EPS, out=u)
            u, v = u.clone(), v.clone()  # autograd must see the values used, not later updates
        sigma = torch.dot(u, torch.mv(w, v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight_orig.shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class LayerStack(nn.Module):
    """A ``layers`` Sequential run in order (ConvBlock / DownBlock / UpBlock of upstream)."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def conv_block(
    pattern: str, in_ch: int, out_ch: int, kernel: int, dim: int = 2, spectral: bool = False, act: str = "relu"
) -> LayerStack:
    """Conv (C, stride 1, 'same' padding), BatchNorm (N) and activation (A) in ``pattern`` order.

    The norm acts on the conv's output channels when C comes first, else on its input.
    """
    conv_cls, bn_cls = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv3d, nn.BatchNorm3d)
    norm_ch = out_ch if pattern.index("C") < pattern.index("N") else in_ch
    if spectral and dim != 2:
        raise ValueError("spectral normalisation is only used on 2-D convolutions")
    conv_cls = SpectralNormConv2d if spectral else conv_cls
    make = {
        "C": lambda: conv_cls(in_ch, out_ch, kernel, 1, kernel // 2),
        "N": lambda: bn_cls(norm_ch),
        "A": lambda: nn.LeakyReLU(0.2) if act == "leakyrelu" else nn.ReLU(),
    }
    return LayerStack(*[make[c]() for c in pattern])


class ResBlock(LayerStack):
    """``x + (BN -> ReLU -> conv3) x 2``; resolution and width preserved."""

    def __init__(self, ch: int, dim: int = 2, spectral: bool = False) -> None:
        super().__init__(*[conv_block("NAC", ch, ch, 3, dim, spectral) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class AvgPool3d(nn.AvgPool3d):
    """``nn.AvgPool3d``, computed in fp32 for bf16 input on the CPU (PyTorch has no bf16 CPU
    kernel for it; the bf16 fast mode of :meth:`Renderer.iter_chunks`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def down_block(in_ch: int, out_ch: int, dim: int) -> LayerStack:
    """Conv-BN-ReLU then 2x average pooling over H, W (the depth of a 3-D volume is kept)."""
    pool = nn.AvgPool2d((2, 2)) if dim == 2 else AvgPool3d((1, 2, 2))
    return LayerStack(conv_block("CNA", in_ch, out_ch, 3, dim), pool)


def up_block(in_ch: int, out_ch: int, dim: int, spectral: bool = False) -> LayerStack:
    """2x nearest upsampling over H, W then Conv-BN-ReLU."""
    scale = (2.0, 2.0) if dim == 2 else (1.0, 2.0, 2.0)
    return LayerStack(nn.Upsample(scale_factor=scale), conv_block("CNA", in_ch, out_ch, 3, dim, spectral))


# --------------------------------------------------------------------------------------------
# Geometry helpers.
# --------------------------------------------------------------------------------------------


SPECTRAL_NORM_INIT_ITERATIONS = 10
"""Power iterations run at construction so that a freshly built (random) generator has a
sensible spectral norm estimate; loading a checkpoint replaces ``weight_u`` / ``weight_v``."""


@torch.no_grad()
def init_spectral_norm_vectors(module: nn.Module, iterations: int = SPECTRAL_NORM_INIT_ITERATIONS) -> None:
    """Power-iterate the stored ``weight_u`` / ``weight_v`` of every spectral-normalised conv.

    ``torch.nn.utils.spectral_norm`` starts from random vectors and only iterates in training
    mode, so an untrained model used in eval mode would divide by an arbitrary, possibly tiny,
    sigma. Upstream never meets this (its weights are trained); our random test models do.
    """
    for sub in module.modules():
        if isinstance(sub, SpectralNormConv2d) and sub.weight_u.device.type != "meta":
            w = sub.weight_orig.flatten(1)  # [O, I*k*k]
            u = sub.weight_u
            for _ in range(iterations):
                v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
                u = F.normalize(w @ v, dim=0, eps=1e-12)
            sub.weight_u.copy_(u)
            sub.weight_v.copy_(v)


def coordinate_grid_3d(depth: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """[D, H, W, 3] grid of (x, y, z) in [-1, 1] over pixel centres (grid_sample order,
    ``align_corners=True``), computed as upstream: ``2 * i / (n - 1) - 1``."""
    axes = [2 * (torch.arange(n, device=device) / (n - 1)) - 1 for n in (depth, height, width)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([x, y, z], dim=-1)
    return grid if dtype is None else grid.to(dtype)


def dilate_mask(mask: torch.Tensor, ksize: int) -> torch.Tensor:
    """Binary dilation of ``mask [B, 1, H, W]`` by a ``ksize`` square (reflect-padded max pool)."""
    pad = (ksize - 1) // 2
    return F.max_pool2d(F.pad(mask, [pad] * 4, mode="reflect"), kernel_size=ksize, stride=1)


def _resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize, ``align_corners=False``, no antialias (upstream default inside the torso model)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# Networks.
# --------------------------------------------------------------------------------------------


class AppearanceFeatureExtractor(nn.Module):
    """Torso image -> 3-D appearance volume.

    [B, Cin, R, R] -> in_conv 7x7 -> DownBlock2D x2 -> [B, 256, R/4, R/4] -> 1x1 to C*D
    -> view [B, C, D, R/4, R/4] -> ResBlock3D x n.
    """

    def __init__(self, cfg: TorsoConfig) -> None:
        super().__init__()
        ch = cfg.appearance_channels
        self.C, self.D = cfg.feature_channels, cfg.feature_depth
        self.in_conv = conv_block("CNA", cfg.in_channels, ch[0], 7)
        self.down = nn.Sequential(*[down_block(ch[i], ch[i + 1], 2) for i in range(len(ch) - 1)])
        self.mid_conv = nn.Conv2d(ch[-1], self.C * self.D, 1)
        self.res = nn.Sequential(*[ResBlock(self.C, dim=3) for _ in range(cfg.num_res_appearance)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_conv(self.down(self.in_conv(x)))
        b, _, h, w = x.shape
        return self.res(x.view(b, self.C, self.D, h, w))  # [B, C*D, h, w] -> [B, C, D, h, w]


class MotionFieldEstimator(nn.Module):
    """Dense 3-D motion from K keypoints, conditioned on the rendered head.

    Per keypoint (plus an identity "background" motion): a Gaussian heatmap difference and the
    compressed appearance volume warped by that keypoint's translation, all through a 3-D
    hourglass; fused with an encoding of the rendered head rgb+alpha; a softmax over the K+1
    motions gives the dense deformation. Two 2-D heads predict occlusion maps from the same
    features.
    """

    def __init__(self, cfg: TorsoConfig) -> None:
        super().__init__()
        k, d, hc = cfg.num_keypoints, cfg.feature_depth, cfg.head_channels
        self.num_keypoints, self.head_resolution = k, cfg.head_resolution
        unet_in = (k + 1) * (1 + COMPRESSED_CHANNELS)
        down = (unet_in,) + tuple(cfg.unet_channels)
        up = tuple(reversed(cfg.unet_channels)) + (cfg.unet_out_channels,)
        self.compress = nn.Conv3d(cfg.feature_channels + len(TORSO_SEG_CLASSES), COMPRESSED_CHANNELS, 1)
        self.down = nn.Sequential(*[down_block(down[i], down[i + 1], 3) for i in range(len(down) - 1)])
        self.up = nn.Sequential(*[up_block(up[i], up[i + 1], 3) for i in range(len(up) - 1)])
        self.tgt_head_encoder = nn.Sequential(
            conv_block("CNA", 3 + 1, hc, 7), *[ResBlock(hc) for _ in range(cfg.num_res_head)]
        )
        self.tgt_head_fuser = nn.Conv3d(hc + unet_in + cfg.unet_out_channels, hc, 7, 1, 3)
        self.mask_conv = nn.Conv3d(hc, k + 1, 7, 1, 3)
        self.occlusion_conv = nn.Conv2d(hc * d, 1, 7, 1, 3)
        self.occlusion_conv2 = nn.Conv2d(hc * d, 1, 7, 1, 3)

    @staticmethod
    def sparse_motions(grid: torch.Tensor, kp_s: torch.Tensor, kp_d: torch.Tensor) -> torch.Tensor:
        """[B, K+1, D, H, W, 3] sampling positions: identity, then ``p - kp_d[k] + kp_s[k]``."""
        b, k = kp_s.shape[:2]
        kp_shape = (b, k, 1, 1, 1, 3)
        driving_to_source = (grid - kp_d.reshape(kp_shape)) + kp_s.reshape(kp_shape)
        return torch.cat([grid.expand(b, 1, *grid.shape[2:]), driving_to_source], dim=1)

    @staticmethod
    def heatmaps(grid: torch.Tensor, kp_s: torch.Tensor, kp_d: torch.Tensor) -> torch.Tensor:
        """[B, K+1, 1, D, H, W]: zeros (identity motion), then Gaussian(kp_d) - Gaussian(kp_s)."""
        b, k = kp_s.shape[:2]

        def gaussian(kp: torch.Tensor) -> torch.Tensor:
            diff = grid - kp.reshape(b, k, 1, 1, 1, 3)  # [B, K, D, H, W, 3]
            return torch.exp(-0.5 * diff.square().sum(-1) / KP_VARIANCE)

        heat = gaussian(kp_d) - gaussian(kp_s)
        return torch.cat([heat.new_zeros(b, 1, *heat.shape[2:]), heat], dim=1).unsqueeze(2)

    def forward(
        self, volume: torch.Tensor, kp_s: torch.Tensor, kp_d: torch.Tensor, head_rgb: torch.Tensor, head_alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """volume [B, C+2, D, h, w]; kp_* [B, K, 3]; head_rgb [B, 3, R, R]; head_alpha [B, 1, R, R]
        -> deformation [B, D, h, w, 3], occlusion [B, 1, h, w], occlusion_2 [B, 1, h, w]."""
        b, _, d, h, w = volume.shape
        k1 = self.num_keypoints + 1
        source = self.compress(volume)  # [B, 4, D, h, w]
        grid = coordinate_grid_3d(d, h, w, device=volume.device, dtype=volume.dtype)[None, None]  # [1, 1, D, h, w, 3]
        motions = self.sparse_motions(grid, kp_s, kp_d)  # [B, K+1, D, h, w, 3]
        # Warp the compressed volume once per motion: [B*(K+1), 4, D, h, w] (zero padding)
        repeated = source.unsqueeze(1).expand(b, k1, *source.shape[1:]).reshape(b * k1, *source.shape[1:])
        deformed = F.grid_sample(repeated, motions.reshape(b * k1, d, h, w, 3), align_corners=True)
        deformed = deformed.reshape(b, k1, COMPRESSED_CHANNELS, d, h, w)
        # [B, K+1, 1+4, D, h, w] -> [B, (K+1)*5, D, h, w]
        motion_in = torch.cat([self.heatmaps(grid, kp_s, kp_d), deformed], dim=2).reshape(b, -1, d, h, w)
        x = torch.cat([motion_in, self.up(self.down(motion_in))], dim=1)

        head = _resize(torch.cat([head_rgb, head_alpha], dim=1), (self.head_resolution, self.head_resolution))
        head = _resize(self.tgt_head_encoder(head), (h, w))  # [B, hc, h, w]
        x = self.tgt_head_fuser(torch.cat([x, head.unsqueeze(2).expand(-1, -1, d, -1, -1)], dim=1))  # [B, hc, D, h, w]

        weights = torch.softmax(self.mask_conv(x), dim=1).unsqueeze(-1)  # [B, K+1, D, h, w, 1]
        deformation = (motions * weights).sum(dim=1)  # [B, D, h, w, 3]
        flat = x.reshape(b, -1, h, w)  # [B, hc*D, h, w], channels ordered (c, d)
        return deformation, torch.sigmoid(self.occlusion_conv(flat)), torch.sigmoid(self.occlusion_conv2(flat))


class Generator(nn.Module):
    """Warps the appearance volume and decodes it: [B, C, D, h, w] -> rgb [B, 3, R, R] and the
    hidden features [B, 64, R, R]. Spectral-normalised convolutions, LeakyReLU(0.2) after the
    first conv, ReLU elsewhere."""

    def __init__(self, cfg: TorsoConfig) -> None:
        super().__init__()
        ch = cfg.generator_channels
        self.in_conv = conv_block("CNA", cfg.feature_channels * cfg.feature_depth, ch[0], 3, spectral=True, act="leakyrelu")
        self.mid_conv = nn.Conv2d(ch[0], ch[0], 1)
        self.res = nn.Sequential(*[ResBlock(ch[0], spectral=True) for _ in range(cfg.num_res_generator)])
        self.up = nn.Sequential(*[up_block(ch[i], ch[i + 1], 2, spectral=True) for i in range(len(ch) - 1)])
        self.out_conv = nn.Conv2d(ch[-1], 3, 7, 1, 3)

    def forward(self, volume: torch.Tensor, deformation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, _, h, w = volume.shape
        warped = F.grid_sample(volume, deformation, align_corners=True, padding_mode="border")
        hid = self.up(self.res(self.mid_conv(self.in_conv(warped.reshape(b, -1, h, w)))))  # [B, C*D, h, w] -> [B, 64, R, R]
        return self.out_conv(hid), hid


class TorsoWarpModel(nn.Module):
    """``superresolution.torso_model``: the v2 torso warp (see the module docstring)."""

    def __init__(self, cfg: TorsoConfig) -> None:
        super().__init__()
        if cfg.in_channels not in (3, 5):
            raise ValueError(f"TorsoConfig.in_channels must be 3 (rgb) or 5 (rgb + torso segmentation), got {cfg.in_channels}")
        if cfg.num_keypoints not in KEYPOINT_INDICES:
            raise ValueError(f"TorsoConfig.num_keypoints must be one of {sorted(KEYPOINT_INDICES)}, got {cfg.num_keypoints}")
        if len(cfg.appearance_channels) != len(cfg.generator_channels):
            raise ValueError("TorsoConfig: the generator must upsample as often as the appearance extractor downsamples")
        self.cfg = cfg
        self.appearance_extractor = AppearanceFeatureExtractor(cfg)
        self.motion_field_estimator = MotionFieldEstimator(cfg)
        self.deform_based_generator = Generator(cfg)
        hid, oh = cfg.hidden_channels, cfg.occlusion_hidden
        self.occlusion_2_predictor = nn.Sequential(
            nn.Conv2d(hid + 1, oh, 3, 1, 1), nn.ReLU(), nn.Conv2d(oh, oh, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(oh, 1, 3, 1, 1), nn.Sigmoid(),
        )
        init_spectral_norm_vectors(self.deform_based_generator)

    def encode(self, torso_img: torch.Tensor, segmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference part, independent of the driving frame (so it can be computed once per clip).

        torso_img [B, 3, R, R] in [-1, 1] (inpainted reference torso); segmap [B, 6, Hs, Ws]
        MediaPipe one-hot classes of the reference frame (0 background, 1 hair, 2 body skin,
        3 face skin, 4 clothes, 5 other). Returns the masked appearance volume [B, C, D, h, w]
        and the torso segmentation at the feature resolution [B, 2, h, w] (h = R / 4).
        """
        seg = segmap[:, list(TORSO_SEG_CLASSES)].to(torso_img.dtype)  # [B, 2, Hs, Ws]
        if self.cfg.in_channels == 5:
            torso_img = torch.cat([torso_img, _resize(seg, torso_img.shape[-2:])], dim=1)
        volume = self.appearance_extractor(torso_img)  # [B, C, D, h, w]
        seg = _resize(seg, volume.shape[-2:])
        mask = dilate_mask(seg.sum(dim=1, keepdim=True), self.cfg.mask_dilate_ksize)  # [B, 1, h, w]
        return volume * mask.unsqueeze(1), seg

    def warp(
        self,
        volume: torch.Tensor,
        seg: torch.Tensor,
        kp_s: torch.Tensor,
        kp_d: torch.Tensor,
        head_rgb: torch.Tensor,
        head_alpha: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Driving part. volume / seg from :meth:`encode` (batch B or 1, broadcast);
        kp_s / kp_d [B, 68, 3] lm68 in [-1, 1], z = 0 (source / driving frame); head_rgb
        [B, 3, R, R] in [-1, 1] and head_alpha [B, 1, R, R] in [0, 1]: the rendered head and its
        NeRF opacity. Returns ``rgb`` [B, 3, R, R], ``hid`` [B, 64, R, R], ``occlusion``
        [B, 1, h, w], ``occlusion_2`` [B, 1, R, R] (torso alpha in (0, 1)) and ``kp_src`` /
        ``kp_drv`` [B, K, 3] (the keypoints used).
        """
        b = kp_d.shape[0]
        volume = volume.expand(b, *volume.shape[1:])
        seg_volume = seg.expand(b, *seg.shape[1:]).unsqueeze(2).expand(-1, -1, volume.shape[2], -1, -1)  # [B, 2, D, h, w]
        idx = list(KEYPOINT_INDICES[self.cfg.num_keypoints])
        kp_s, kp_d = kp_s[:, idx].expand(b, -1, -1), kp_d[:, idx]
        deformation, occlusion, occlusion_2 = self.motion_field_estimator(
            torch.cat([volume, seg_volume], dim=1), kp_s, kp_d, head_rgb, head_alpha
        )
        rgb, hid = self.deform_based_generator(volume, deformation)
        occlusion_2 = self.occlusion_2_predictor(torch.cat([hid, _resize(occlusion_2, hid.shape[-2:])], dim=1))
        return {"rgb": rgb, "hid": hid, "occlusion": occlusion, "occlusion_2": occlusion_2, "kp_src": kp_s, "kp_drv": kp_d}

    def forward(
        self,
        torso_img: torch.Tensor,
        segmap: torch.Tensor,
        kp_s: torch.Tensor,
        kp_d: torch.Tensor,
        head_rgb: torch.Tensor,
        head_alpha: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """:meth:`encode` then :meth:`warp` (see both for shapes)."""
        return self.warp(*self.encode(torso_img, segmap), kp_s, kp_d, head_rgb, head_alpha)
