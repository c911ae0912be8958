"""Super-resolution with head / torso / background compositing (``superresolution.*``).

Real3D-Portrait's ``SuperresolutionHybrid8XDC_Warp`` (upstream
``modules/real3d/super_resolution/sr_with_ref.py``, built on EG3D's ``SuperresolutionHybrid8XDC``),
in the configuration both official renderers use: torso model v2, ``weight_fuse: true``,
``htbsr_head_weight_fuse_mode: v2``, no fp16 and no conv clamp (``sr_num_fp16_res = 0``).

Data flow for a 128² neural rendering and a 512² output (full preset):

1. The NeRF features ``x`` [B, 32, 128, 128] (their first 3 channels are ``rgb``) go through
   ``block0`` (StyleGAN2 synthesis block, x2) -> x [B, 256, 256, 256], rgb at 256.
2. The torso warp model (:mod:`.torso`) warps the reference torso to the driving keypoints,
   conditioned on the 256² head rgb and NeRF opacity; it returns the torso rgb, its hidden
   features (-> ``torso_encoder``) and the torso alpha ``occlusion_2``.
3. Fuse v2: ``alpha`` = NeRF opacity at 256. ``rgb = rgb * alpha + torso * (1 - alpha)``,
   ``x = fuse_head_torso_convs([x * alpha, x_torso * (1 - alpha)])``, then ``head_torso_block``
   (synthesis block without upsampling). The person alpha is ``clamp(torso_alpha + head_occ)``
   with ``head_occ = alpha`` except where alpha > ``head_threshold`` (set to 1); the
   background (``bg_encoder`` features, 256² background image) is composited behind it and
   ``fuse_fg_bg_convs`` mixes the features.
4. ``block1`` (x2, last) -> the final image [B, 3, 512, 512].

The styles are constant (upstream feeds ``ws = ones`` and uses its last vector for all three
layers of each block); no noise at inference (``superresolution_noise_mode = 'none'``).
``head_torso_alpha_predictor`` exists only for fuse mode v3 and is kept so that checkpoints load
strictly; it is never run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..utils import check_shape
from .stylegan import SynthesisBlock, SynthesisBlockNoUp
from .torso import KEYPOINT_INDICES, TorsoConfig, TorsoWarpModel

FUSE_LRELU_SLOPE = 0.01
"""Negative slope of the plain ``nn.LeakyReLU()`` in the fuse / background convs (PyTorch default)."""

NUM_SEG_CLASSES = 6
"""MediaPipe multiclass segmentation: background, hair, body skin, face skin, clothes, other."""

NUM_LANDMARKS = 68
"""Keypoints are the 68-point (iBUG) landmarks of the source / driving 3DMM fits."""

STYLE_VECTORS_PER_BLOCK = 3
"""conv0, conv1 and torgb of each synthesis block each take one (constant) style vector."""


@dataclass(frozen=True)
class SuperResConfig:
    feature_channels: int = 32  # channels of the NeRF feature image x (decoder output; rgb = x[:, :3])
    w_dim: int = 512  # style dimension (``w_dim``); styles are constant ones
    neural_resolution: int = 128  # SR input size (``input_resolution``); x is resized to it if needed
    block0_channels: int = 256  # block0 / head_torso_block / fuse widths, at 2 x neural_resolution
    block1_channels: int = 128  # block1 width, at 4 x neural_resolution (the final image)
    bg_hidden: int = 64  # bg_encoder first conv width
    fuse_fg_bg_hidden: int = 64  # fuse_fg_bg_convs first (1x1) conv width
    alpha_hidden: int = 32  # head_torso_alpha_predictor width (fuse v3 only; kept for loading)
    head_threshold: float = 1.0  # ``htbsr_head_threshold``: MimicTalk forces 1.0; Real3D yaml 0.9, its CLI 0.5
    antialias: bool = True  # ``sr_antialias`` of the bilinear resizes at the SR input
    torso: TorsoConfig = field(default_factory=TorsoConfig)

    @property
    def mid_resolution(self) -> int:
        """Resolution of block0, the torso branch and the compositing (256 in the full preset)."""
        return 2 * self.neural_resolution

    @property
    def final_resolution(self) -> int:
        return 4 * self.neural_resolution

    @classmethod
    def full(cls, torso_in_channels: int = 3, head_threshold: float = 1.0) -> "SuperResConfig":
        """The official configuration; ``torso_in_channels`` 3 for MimicTalk, 5 for Real3D-Portrait."""
        return cls(head_threshold=head_threshold, torso=TorsoConfig.full(torso_in_channels))

    @classmethod
    def tiny(cls, torso_in_channels: int = 3, head_threshold: float = 1.0) -> "SuperResConfig":
        """Same structure and code paths, small widths: neural 16², final 64², torso at 32²."""
        return cls(
            w_dim=16, neural_resolution=16, block0_channels=16, block1_channels=8, bg_hidden=8,
            fuse_fg_bg_hidden=8, alpha_hidden=8, head_threshold=head_threshold,
            torso=TorsoConfig.tiny(torso_in_channels),
        )

    @classmethod
    def infer(
        cls, state_dict: Mapping[str, torch.Tensor], prefix: str = "superresolution.", head_threshold: float = 1.0
    ) -> "SuperResConfig":
        """Read the configuration from tensor shapes and check every key and shape against it.

        LoRA tensors (``lora_A`` / ``lora_B``) are ignored here. ``head_threshold`` leaves no
        trace in the weights and is taken from the argument. Raises CheckpointError naming the
        missing, unexpected or mis-shaped keys.
        """
        sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix) and ".lora_" not in k}

        def shape(key: str) -> tuple[int, ...]:
            if key not in sd:
                raise CheckpointError(f"super-resolution weights: key '{prefix}{key}' is missing; is this a Real3D-Portrait / MimicTalk renderer with torso?")
            return tuple(sd[key].shape)

        def count(head: str) -> int:
            return len({k[len(head):].split(".")[0] for k in sd if k.startswith(head)})

        b0, fc = shape("block0.conv0.weight")[:2]
        mid_res = shape("block0.conv0.noise_const")[0]
        t = "torso_model."
        ae, mfe, gen = t + "appearance_extractor.", t + "motion_field_estimator.", t + "deform_based_generator."
        feat_c = shape(ae + "res.0.layers.0.layers.0.weight")[0]
        n_unet = count(mfe + "down.")
        n_gen_up = count(gen + "up.")
        torso = TorsoConfig(
            in_channels=shape(ae + "in_conv.layers.0.weight")[1],
            resolution=mid_res,
            appearance_channels=(shape(ae + "in_conv.layers.0.weight")[0],)
            + tuple(shape(f"{ae}down.{i}.layers.0.layers.0.weight")[0] for i in range(count(ae + "down."))),
            feature_channels=feat_c,
            feature_depth=shape(ae + "mid_conv.weight")[0] // feat_c,
            num_res_appearance=count(ae + "res."),
            num_keypoints=shape(mfe + "mask_conv.weight")[0] - 1,
            unet_channels=tuple(shape(f"{mfe}down.{i}.layers.0.layers.0.weight")[0] for i in range(n_unet)),
            unet_out_channels=shape(f"{mfe}up.{n_unet - 1}.layers.1.layers.0.weight")[0],
            head_channels=shape(mfe + "tgt_head_fuser.weight")[0],
            num_res_head=count(mfe + "tgt_head_encoder.") - 1,
            head_resolution=mid_res // 2,
            generator_channels=(shape(gen + "in_conv.layers.0.weight_orig")[0],)
            + tuple(shape(f"{gen}up.{i}.layers.1.layers.0.weight_orig")[0] for i in range(n_gen_up)),
            num_res_generator=count(gen + "res."),
            occlusion_hidden=shape(t + "occlusion_2_predictor.0.weight")[0],
        )
        if torso.in_channels not in (3, 5) or torso.num_keypoints not in KEYPOINT_INDICES:
            raise CheckpointError(
                f"super-resolution weights: torso input channels {torso.in_channels} (expected 3 or 5) / keypoints "
                f"{torso.num_keypoints} (expected one of {sorted(KEYPOINT_INDICES)}) in '{prefix}torso_model.*' are not a known layout"
            )
        cfg = cls(
            feature_channels=fc, w_dim=shape("block0.conv0.affine.weight")[1], neural_resolution=mid_res // 2,
            block0_channels=b0, block1_channels=shape("block1.conv0.weight")[0], bg_hidden=shape("bg_encoder.0.weight")[0],
            fuse_fg_bg_hidden=shape("fuse_fg_bg_convs.0.weight")[0], alpha_hidden=shape("head_torso_alpha_predictor.0.weight")[0],
            head_threshold=head_threshold, torso=torso,
        )
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in SuperResolution(cfg).state_dict().items()}
        got = {k: tuple(v.shape) for k, v in sd.items()}
        problems = [f"missing '{prefix}{k}'" for k in expected if k not in got]
        problems += [f"unexpected '{prefix}{k}'" for k in got if k not in expected]
        problems += [f"'{prefix}{k}' has shape {list(got[k])}, expected {list(expected[k])}" for k in expected if k in got and got[k] != expected[k]]
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
            raise CheckpointError(f"super-resolution weights do not match the layout read from their shapes: {shown}")
        return cfg

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name != "torso")


@dataclass
class SRReference:
    """Per-clip reference inputs of the SR, encoded once (:meth:`SuperResolution.encode_reference`).

    Tensors have batch 1 (broadcast over frames) or the frame batch size.
    """

    torso_volume: torch.Tensor  # [B, C, D, h, w] masked torso appearance volume
    torso_seg: torch.Tensor  # [B, 2, h, w] torso segmentation at the feature resolution
    bg: torch.Tensor  # [B, 3, R_mid, R_mid] background image at the compositing resolution
    bg_features: torch.Tensor  # [B, block0_channels, R_mid, R_mid] = bg_encoder(bg)


def _lrelu_convs(*widths_and_kernels: tuple[int, int, int]) -> nn.Sequential:
    """Conv2d layers ('same' padding) separated by LeakyReLU(0.01); (in, out, kernel) each."""
    layers: list[nn.Module] = []
    for i, (cin, cout, k) in enumerate(widths_and_kernels):
        if i:
            layers.append(nn.LeakyReLU(FUSE_LRELU_SLOPE))
        layers.append(nn.Conv2d(cin, cout, k, 1, k // 2))
    return nn.Sequential(*layers)


class SuperResolution(nn.Module):
    """``superresolution``: HTB-SR (head-torso-background super-resolution), fuse mode v2."""

    def __init__(self, cfg: SuperResConfig) -> None:
        super().__init__()
        if cfg.torso.resolution != cfg.mid_resolution:
            raise ValueError(f"SuperResConfig: torso resolution {cfg.torso.resolution} must equal 2 x neural_resolution = {cfg.mid_resolution}")
        self.cfg = cfg
        b0, b1, w_dim = cfg.block0_channels, cfg.block1_channels, cfg.w_dim
        self.block0 = SynthesisBlock(cfg.feature_channels, b0, w_dim, cfg.mid_resolution, img_channels=3)
        self.block1 = SynthesisBlock(b0, b1, w_dim, cfg.final_resolution, img_channels=3, is_last=True)
        self.torso_model = TorsoWarpModel(cfg.torso)
        self.torso_encoder = nn.Sequential(nn.Conv2d(cfg.torso.hidden_channels, b0, 1))
        self.bg_encoder = _lrelu_convs((3, cfg.bg_hidden, 3), (cfg.bg_hidden, b0, 3), (b0, b0, 3))
        self.head_torso_alpha_predictor = nn.Sequential(
            *_lrelu_convs((3 + 1 + 3, cfg.alpha_hidden, 3), (cfg.alpha_hidden, cfg.alpha_hidden, 3), (cfg.alpha_hidden, 1, 3)),
            nn.Sigmoid(),
        )
        self.fuse_head_torso_convs = _lrelu_convs((2 * b0, b0, 3), (b0, b0, 3))
        self.head_torso_block = SynthesisBlockNoUp(b0, b0, w_dim, cfg.mid_resolution, img_channels=3)
        self.fuse_fg_bg_convs = _lrelu_convs((2 * b0, cfg.fuse_fg_bg_hidden, 1), (cfg.fuse_fg_bg_hidden, b0, 3), (b0, b0, 3))

    def _resize(self, img: torch.Tensor, size: int) -> torch.Tensor:
        """Bilinear, align_corners=False, antialias = ``sr_antialias`` (upstream SR input resizes);
        in fp32 for bf16 on the CPU, where PyTorch has no bf16 antialiased kernel."""
        if img.dtype == torch.bfloat16 and img.device.type == "cpu":
            return self._resize(img.float(), size).to(img.dtype)
        return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=self.cfg.antialias)

    def encode_reference(self, ref_torso: torch.Tensor, bg: torch.Tensor, segmap: torch.Tensor) -> SRReference:
        """Encode the inputs shared by every frame of a clip.

        ref_torso [B, Ct, H, W] in [-1, 1]: the reference frame with the head removed and the
        torso inpainted (Ct = 3; the 5-channel Real3D variant appends the segmentation itself);
        bg [B, 3, H', W'] in [-1, 1]: the background plate; segmap [B, 6, Hs, Ws] one-hot
        MediaPipe classes of the reference frame (floats 0 / 1; 512² upstream). Any sizes; they
        are resized to the compositing resolution (256² full).
        """
        check_shape(ref_torso, (None, 3, None, None), "ref_torso")
        check_shape(bg, (None, 3, None, None), "bg")
        check_shape(segmap, (None, NUM_SEG_CLASSES, None, None), "segmap")
        mid = self.cfg.mid_resolution
        volume, seg = self.torso_model.encode(self._resize(ref_torso, mid), segmap)
        bg = self._resize(bg, mid)
        return SRReference(torso_volume=volume, torso_seg=seg, bg=bg, bg_features=self.bg_encoder(bg))

    def forward(
        self,
        rgb: torch.Tensor,
        x: torch.Tensor,
        weights: torch.Tensor,
        kp_s: torch.Tensor,
        kp_d: torch.Tensor,
        reference: SRReference,
        *,
        noise_mode: str = "none",
        fused_modconv: Optional[bool] = None,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, torch.Tensor]:
        """Super-resolve a batch of neural renderings and composite head, torso and background.

        Inputs (R = final resolution, 512 full; Rm = R / 2; h = w = neural resolution, 128):

        * rgb [B, 3, h, w]: the raw NeRF rgb in about [-1, 1] (``x[:, :3]``, not clamped);
        * x [B, feature_channels, h, w]: the NeRF feature image (resized to h if it differs);
        * weights [B, 1, h, w]: NeRF accumulated opacity in [0, 1];
        * kp_s / kp_d [B or 1, 68, 3] / [B, 68, 3]: lm68 keypoints of the source (reference) and
          driving frames, x and y in [-1, 1] (image left/top = -1), z = 0;
        * reference: the per-identity torso and background inputs, encoded once
          (:meth:`encode_reference`; batch B or 1);
        * noise_mode: 'none' (upstream inference and adaptation), 'const' or 'random'
          (``generator``); fused_modconv: None = fused in eval mode, unfused in training.

        Returns ``image`` [B, 3, R, R] (NOT clamped; upstream clamps it to [-1, 1] afterwards),
        ``rgb_torso`` [B, 3, Rm, Rm] (warped torso), ``occlusion_2`` [B, 1, Rm, Rm] (torso alpha),
        ``person_occlusion`` [B, 1, Rm, Rm] (head + torso alpha used for the background blend),
        ``occlusion`` [B, 1, Rm/4, Rm/4], ``deformed_torso_hid`` [B, 64, Rm, Rm] and
        ``kp_src`` / ``kp_drv`` [B, K, 3] (the torso keypoints used).
        """
        if not isinstance(reference, SRReference):
            raise TypeError(f"SuperResolution: reference must be an SRReference (encode_reference(...)), got {type(reference).__name__}")
        cfg = self.cfg
        check_shape(x, (None, cfg.feature_channels, None, None), "x (SR feature image)")
        batch = x.shape[0]
        check_shape(rgb, (batch, 3, x.shape[2], x.shape[3]), "rgb (SR input image)")
        check_shape(weights, (batch, 1, None, None), "weights (NeRF opacity)")
        check_shape(kp_d, (batch, NUM_LANDMARKS, 3), "kp_d (driving keypoints)")
        check_shape(kp_s, (None, NUM_LANDMARKS, 3), "kp_s (source keypoints)")

        mid, neural = cfg.mid_resolution, cfg.neural_resolution
        weights = weights.detach()  # upstream: no gradient reaches the NeRF opacity through the SR
        if x.shape[-1] != neural:
            x, rgb = self._resize(x, neural), self._resize(rgb, neural)
        rgb_mid = self._resize(rgb, mid)
        alpha = self._resize(weights, mid)  # head alpha at the compositing resolution
        ws = x.new_ones(1, STYLE_VECTORS_PER_BLOCK, cfg.w_dim)  # constant styles shared by the batch
        block_kw = dict(noise_mode=noise_mode, fused_modconv=fused_modconv, generator=generator)

        x, rgb = self.block0(x, rgb, ws, **block_kw)  # [B, b0, Rm, Rm], [B, 3, Rm, Rm]
        torso = self.torso_model.warp(reference.torso_volume, reference.torso_seg, kp_s, kp_d, rgb_mid.detach(), alpha)
        x_torso = self.torso_encoder(torso["hid"])
        bg_mid = reference.bg.expand(batch, -1, -1, -1)
        x_bg = reference.bg_features.expand(batch, -1, -1, -1)

        # Fuse v2: alpha-weighted concatenation of head and torso features.
        rgb = rgb * alpha + torso["rgb"] * (1 - alpha)
        x = self.fuse_head_torso_convs(torch.cat([x * alpha, x_torso * (1 - alpha)], dim=1))
        x, rgb = self.head_torso_block(x, rgb, ws, **block_kw)
        head_occ = torch.where(alpha > cfg.head_threshold, torch.ones_like(alpha), alpha)
        torso_occ = self._resize(torso["occlusion_2"], mid)
        person = (torso_occ + head_occ).clamp(0, 1)
        rgb = rgb * person + bg_mid * (1 - person)
        x = self.fuse_fg_bg_convs(torch.cat([x * person, x_bg * (1 - person)], dim=1))
        _, image = self.block1(x, rgb, ws, **block_kw)  # [B, 3, R, R]
        return {
            "image": image,
            "rgb_torso": torso["rgb"],
            "occlusion_2": torso["occlusion_2"],
            "person_occlusion": person,
            "occlusion": torso["occlusion"],
            "deformed_torso_hid": torso["hid"],
            "kp_src": torso["kp_src"],
            "kp_drv": torso["kp_drv"],
        }

    def extra_repr(self) -> str:
        return self.cfg.describe()

