"""Configuration of the whole renderer (``OSAvatarSECC_Img2plane_Torso``) and its inference
from checkpoint shapes.

The two official layouts (architecture reference §2.1, §2.2, §2.6):

============  ==========  =====  ==============  ============  =========  ====
layout        feature     C·D    plane2grid      torso input   threshold  keys
============  ==========  =====  ==============  ============  =========  ====
MimicTalk     trigrid_v2  288    yes (D = 3)     3 (rgb)       1.0        1039
Real3D        triplane    96     no  (D = 1)     5 (rgb+seg)   0.9        1030
personalised  trigrid_v2  288    yes             3             1.0        1085 (+ LoRA r=2)
============  ==========  =====  ==============  ============  =========  ====

``htbsr_head_threshold`` leaves no trace in the weights: MimicTalk's inference forces 1.0, the
Real3D-Portrait yaml has 0.9 (its CLI default leaves it). Everything else is read from shapes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from ..errors import CheckpointError
from .img2plane import CanoBackboneConfig, Plane2GridConfig
from .segformer import SeccBackboneConfig
from .official_lora import has_official_lora, split_official_lora
from .superres import SuperResConfig

MIMICTALK_HEAD_THRESHOLD = 1.0
"""``htbsr_head_threshold`` MimicTalk forces at inference and in adaptation."""

REAL3D_HEAD_THRESHOLD = 0.9
"""``htbsr_head_threshold`` of the Real3D-Portrait ``secc2plane_torso_orig`` yaml."""

NUM_KEYS = {"mimictalk": 1039, "real3d": 1030, "personalised": 1085}
"""Key counts of the official renderer state dicts (``state_dict['model']``), for messages."""

LAYOUTS = ("mimictalk", "real3d")

_BOUNDS = {
    "num_coarse": (1, 512), "num_fine": (0, 512), "plane_resolution": (1, 1024), "image_resolution": (1, 4096),
    "neural_resolution": (1, 1024), "triplane_hid_dim": (1, 1024), "triplane_depth": (1, 64),
    "decoder_hidden": (1, 4096), "box_warp": (1e-3, 100.0), "decoder_lr_mul": (1e-6, 1e3), "lora_rank": (0, 1024),
    # settings that leave no trace in the weights but size tensors at run time
    "sr.torso.resolution": (1, 2048), "sr.torso.head_resolution": (1, 2048), "sr.torso.feature_depth": (1, 256),
    "sr.torso.mask_dilate_ksize": (1, 255), "cano.aspp_rates": (1, 512), "cano.vit_heads": (1, 1024),
    "secc.num_heads": (1, 1024), "secc.sr_ratios": (1, 256), "cano.predictor_sr_ratio": (1, 256),
}
"""Ranges of the sizes and counts a configuration file may set (far above the official values:
48 + 48 samples, 256² planes, 512² images); beyond them a file is damaged or hostile, and its
numbers must not size an allocation."""


@dataclass(frozen=True)
class RendererConfig:
    """Everything needed to build :class:`~mimictalk_lib.renderer.model.Renderer`.

    Defaults are the MimicTalk base renderer; use :meth:`full`, :meth:`tiny` or
    :func:`infer_renderer_config` rather than the constructor.
    """

    cano: CanoBackboneConfig  # cano_img2plane_backbone: reference image -> canonical planes
    secc: SeccBackboneConfig  # secc_img2plane_backbone: 9-channel SECC -> expression planes
    sr: SuperResConfig  # superresolution: HTB-SR with the torso warp model
    plane2grid: Optional[Plane2GridConfig] = None  # plane2grid_module, present iff trigrid_v2
    triplane_hid_dim: int = 32  # C: features per plane cell (= decoder input)
    triplane_depth: int = 3  # D: grid cells along each plane's normal (1 = plain tri-plane)
    image_resolution: int = 512  # final_resolution (output of the SR)
    neural_resolution: int = 128  # neural_rendering_resolution (rays per side)
    plane_resolution: int = 256  # tri-plane side (= SECC / reference input side / 2)
    num_coarse: int = 48  # num_samples_coarse (stratified)
    num_fine: int = 48  # num_samples_fine (importance)
    box_warp: float = 1.0  # side of the rendered cube [-b/2, b/2]³ in world units
    decoder_hidden: int = 64  # OSGDecoder hidden width
    decoder_lr_mul: float = 1.0  # decoder_lr_mul (equalized-lr multiplier of the decoder FCs)
    plane_fusion: str = "add"  # phase1_plane_fusion_mode: planes = cano + secc
    lora_rank: int = 0  # r of the official LoRA layout held in the model (0 = none)
    lora_mode: str = "none"  # upstream lora_mode of that layout ('secc2plane_sr' when r > 0)

    def __post_init__(self) -> None:
        for name, (low, high) in _BOUNDS.items():  # values a config.json / config.yaml may carry
            value = self
            for part in name.split("."):
                value = getattr(value, part)
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                    raise ValueError(f"RendererConfig: {name} = {value!r} is outside [{low}, {high}]")
        if self.plane_fusion != "add":
            raise ValueError(f"RendererConfig: only phase1_plane_fusion_mode 'add' is supported, got {self.plane_fusion!r}")
        cd = self.plane_channels
        if self.cano.out_channels != 3 * cd or self.secc.out_channels != 3 * cd:
            raise ValueError(
                f"RendererConfig: backbones output {self.cano.out_channels} / {self.secc.out_channels} channels, "
                f"expected 3 planes x C={self.triplane_hid_dim} x D={self.triplane_depth} = {3 * cd}")
        if self.plane2grid is not None and self.plane2grid.plane_channels != cd:
            raise ValueError(f"RendererConfig: plane2grid works on {self.plane2grid.plane_channels} channels, planes have {cd}")
        if self.sr.feature_channels != self.triplane_hid_dim or self.sr.neural_resolution != self.neural_resolution:
            raise ValueError("RendererConfig: the SR input must be the decoder's feature image "
                             f"({self.triplane_hid_dim} channels at {self.neural_resolution}²)")
        if self.sr.final_resolution != self.image_resolution:
            raise ValueError(f"RendererConfig: SR output {self.sr.final_resolution}² != image_resolution {self.image_resolution}")
        if (self.lora_rank > 0) != (self.lora_mode != "none"):
            raise ValueError(f"RendererConfig: lora_rank {self.lora_rank} and lora_mode {self.lora_mode!r} disagree")

    # --- derived ------------------------------------------------------------------------------

    @property
    def plane_channels(self) -> int:
        """C·D channels per plane (32 Real3D, 96 MimicTalk)."""
        return self.triplane_hid_dim * self.triplane_depth

    @property
    def feature_type(self) -> str:
        """Upstream ``triplane_feature_type``: 'trigrid_v2' (plane2grid), 'trigrid' or 'triplane'."""
        if self.plane2grid is not None:
            return "trigrid_v2"
        return "trigrid" if self.triplane_depth > 1 else "triplane"

    @property
    def secc_resolution(self) -> int:
        """Side of the SECC maps and of the reference image (2 x plane side: 512 full)."""
        return 2 * self.plane_resolution

    @property
    def head_threshold(self) -> float:
        return self.sr.head_threshold

    @property
    def torso_in_channels(self) -> int:
        return self.sr.torso.in_channels

    def with_lora(self, rank: int, mode: str = "secc2plane_sr") -> "RendererConfig":
        """This configuration holding an official-layout LoRA of ``rank`` (0 removes it)."""
        return dataclasses.replace(self, lora_rank=rank, lora_mode=mode if rank > 0 else "none")

    def describe(self) -> str:
        lora = f", LoRA r={self.lora_rank} ({self.lora_mode})" if self.lora_rank else ""
        return (f"{self.feature_type} C={self.triplane_hid_dim} D={self.triplane_depth}, planes {self.plane_resolution}², "
                f"neural {self.neural_resolution}² -> {self.image_resolution}², torso input {self.torso_in_channels} ch, "
                f"head threshold {self.head_threshold}{lora}")

    # --- presets ------------------------------------------------------------------------------

    @classmethod
    def full(cls, layout: str = "mimictalk") -> "RendererConfig":
        """The official configuration: ``'mimictalk'`` (base renderer, tri-grid v2 D=3) or
        ``'real3d'`` (Real3D-Portrait one-shot renderer, tri-plane)."""
        if layout == "mimictalk":
            return cls(cano=CanoBackboneConfig.full(288), secc=SeccBackboneConfig.full(288),
                       sr=SuperResConfig.full(3, MIMICTALK_HEAD_THRESHOLD), plane2grid=Plane2GridConfig.full(32, 3),
                       triplane_depth=3)
        if layout == "real3d":
            return cls(cano=CanoBackboneConfig.full(96), secc=SeccBackboneConfig.full(96),
                       sr=SuperResConfig.full(5, REAL3D_HEAD_THRESHOLD), plane2grid=None, triplane_depth=1)
        raise ValueError(f"RendererConfig.full: layout must be one of {LAYOUTS}, got {layout!r}")

    @classmethod
    def tiny(cls, layout: str = "mimictalk") -> "RendererConfig":
        """Same code paths and module structure with small widths, for tests: 64² SECC and
        reference inputs, 32² planes, C=4, 16² rays x (8 + 8) samples, 64² output."""
        if layout not in LAYOUTS:
            raise ValueError(f"RendererConfig.tiny: layout must be one of {LAYOUTS}, got {layout!r}")
        trigrid = layout == "mimictalk"
        depth, hid = (3 if trigrid else 1), 4
        out = 3 * hid * depth
        sr = SuperResConfig.tiny(3 if trigrid else 5, MIMICTALK_HEAD_THRESHOLD if trigrid else REAL3D_HEAD_THRESHOLD)
        sr = dataclasses.replace(sr, feature_channels=hid)
        return cls(cano=CanoBackboneConfig.tiny(out), secc=SeccBackboneConfig.tiny(out), sr=sr,
                   plane2grid=Plane2GridConfig.full(hid, depth) if trigrid else None,
                   triplane_hid_dim=hid, triplane_depth=depth, image_resolution=sr.final_resolution,
                   neural_resolution=sr.neural_resolution, plane_resolution=32, num_coarse=8, num_fine=8,
                   decoder_hidden=8)


# --- inference from a state dict --------------------------------------------------------------


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(
            f"renderer checkpoint: key {key!r} is missing; this is not a Real3D-Portrait / MimicTalk renderer "
            f"(official layouts have {NUM_KEYS['mimictalk']} keys for the MimicTalk base model "
            f"'mimictalk_orig/os_secc2plane_torso', {NUM_KEYS['real3d']} for Real3D-Portrait "
            f"'secc2plane_torso_orig', {NUM_KEYS['personalised']} for a personalised checkpoint)")
    return tuple(sd[key].shape)


def infer_renderer_config(state_dict: Mapping[str, torch.Tensor], *, head_threshold: Optional[float] = None,
                          base: Optional[RendererConfig] = None) -> RendererConfig:
    """The :class:`RendererConfig` of a renderer state dict (official key names), read from shapes.

    Reads C from the decoder input, C·D from the SECC backbone's last conv, tri-grid v2 from
    the presence of ``plane2grid_module.*``, the torso input channels, and the LoRA rank /
    mode from ``lora_A`` keys. Every key is checked by the sub-configs' ``infer``; a mismatch
    raises a CheckpointError naming the offending keys. ``head_threshold`` defaults to the
    layout's official value (1.0 for tri-grid / MimicTalk, 0.9 for the Real3D tri-plane).
    Settings that leave no trace in the weights (attention heads, ASPP rates, samples per ray,
    plane resolution) come from ``base`` (default: the official configuration); pass
    ``RendererConfig.tiny()`` for tiny test checkpoints.
    """
    sd = state_dict
    hid = _shape(sd, "decoder.net.0.weight")[1]
    decoder_hidden = _shape(sd, "decoder.net.0.weight")[0]
    if _shape(sd, "decoder.net.2.weight") != (1 + hid, decoder_hidden):
        raise CheckpointError(
            f"renderer checkpoint: decoder.net.2.weight has shape {list(_shape(sd, 'decoder.net.2.weight'))}, "
            f"expected {[1 + hid, decoder_hidden]} (sigma + {hid} features)")
    secc_key = ("secc_img2plane_backbone.to_plane_cnn.7.conv.weight"
                if "secc_img2plane_backbone.to_plane_cnn.7.conv.weight" in sd else "secc_img2plane_backbone.to_plane_cnn.7.weight")
    out = _shape(sd, secc_key)[0]
    if out % (3 * hid):
        raise CheckpointError(f"renderer checkpoint: {secc_key} outputs {out} channels, not 3 planes x C={hid} x D")
    depth = out // (3 * hid)
    trigrid_v2 = any(k.startswith("plane2grid_module.") for k in sd)
    base = base or RendererConfig.full("mimictalk" if depth > 1 else "real3d")
    base_sd, rank, mode = _split_lora(sd)

    threshold = head_threshold if head_threshold is not None else (
        MIMICTALK_HEAD_THRESHOLD if depth > 1 else REAL3D_HEAD_THRESHOLD)
    sr = SuperResConfig.infer(base_sd, head_threshold=threshold)
    cano = CanoBackboneConfig.infer(base_sd, base=base.cano)
    secc = SeccBackboneConfig.infer(base_sd, base=base.secc)
    p2g = Plane2GridConfig.infer(base_sd, plane_channels=out // 3, base=base.plane2grid) if trigrid_v2 else None
    extra = sorted(k for k in base_sd if k.split(".")[0] not in _TOP_LEVEL)
    if extra:
        raise CheckpointError(f"renderer checkpoint: unexpected top-level keys {extra[:8]}; "
                              "not a Real3D-Portrait / MimicTalk renderer state dict")
    try:
        return dataclasses.replace(
            base, cano=cano, secc=secc, sr=sr, plane2grid=p2g, triplane_hid_dim=hid, triplane_depth=depth,
            image_resolution=sr.final_resolution, neural_resolution=sr.neural_resolution,
            decoder_hidden=decoder_hidden, lora_rank=rank, lora_mode=mode)
    except ValueError as e:
        raise CheckpointError(f"renderer checkpoint: inconsistent sub-network shapes: {e}") from e


_TOP_LEVEL = frozenset({"cano_img2plane_backbone", "plane2grid_module", "secc_img2plane_backbone", "decoder",
                        "superresolution", "lambda_pertube_blink_secc", "lambda_pertube_secc"})


def _split_lora(sd: Mapping[str, torch.Tensor]) -> tuple[Mapping[str, torch.Tensor], int, str]:
    """(base-layout view without LoRA keys and conv aliases, LoRA rank, LoRA mode)."""
    if not has_official_lora(sd):
        return sd, 0, "none"
    base, info = split_official_lora(sd)
    return base, info.r, info.lora_mode


# --- the checkpoint folder's config.yaml ------------------------------------------------------------

YAML_SETTINGS = {
    "htbsr_head_threshold": ("head_threshold", float, 0.0, 1.0),
    "num_samples_coarse": ("num_coarse", int, *_BOUNDS["num_coarse"]),
    "num_samples_fine": ("num_fine", int, *_BOUNDS["num_fine"]),
    "box_warp": ("box_warp", float, *_BOUNDS["box_warp"]),
    "decoder_lr_mul": ("decoder_lr_mul", float, *_BOUNDS["decoder_lr_mul"]),
}
"""Upstream hparams that leave no trace in the weights and that the renderer uses: yaml key ->
(our field, type, min, max). What the yaml leaves out keeps the official default."""

MAX_YAML_BYTES = 1 << 20
"""An upstream config.yaml is a few KB; a larger one is not read."""


def read_config_yaml(path) -> dict:
    """An upstream ``config.yaml`` (written with yaml.safe_dump) as a dict, read with
    ``yaml.safe_load`` after a size check; CheckpointError when it is not a readable mapping."""
    import os

    import yaml

    try:
        if os.path.getsize(path) > MAX_YAML_BYTES:
            raise CheckpointError(f"{path} is {os.path.getsize(path):,} bytes; an upstream config.yaml is a few KB, "
                                  "so this is not one: remove it or replace it with the checkpoint's own config.yaml")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"cannot read {path}: {e}. Replace it with the checkpoint's own config.yaml or remove it "
                              "(the official defaults are used then)") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a yaml mapping of hyper-parameters; replace it with the checkpoint's own "
                              "config.yaml or remove it")
    return data


def yaml_settings(hparams: Mapping, source: str) -> dict:
    """{our field: value} for the :data:`YAML_SETTINGS` keys present in ``hparams``, each checked
    for type and range (CheckpointError naming the key otherwise)."""
    out = {}
    for key, (name, kind, low, high) in YAML_SETTINGS.items():
        if key not in hparams or hparams[key] is None:
            continue
        value = hparams[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise CheckpointError(f"{source}: {key} is {value!r}, expected a{'n integer' if kind is int else ' number'}")
        if not low <= value <= high:
            raise CheckpointError(f"{source}: {key} = {value} is outside [{low}, {high}]; the yaml is damaged")
        out[name] = kind(value)
    return out


def yaml_facts(cfg: RendererConfig) -> dict:
    """Upstream hparams that leave a trace in the weights, as the weights say (architecture §2.1):
    a yaml stating otherwise does not belong to them."""
    facts = {
        "triplane_feature_type": cfg.feature_type,
        "triplane_depth": cfg.triplane_depth,
        "triplane_hid_dim": cfg.triplane_hid_dim,
        "torso_inp_mode": "rgb_alpha" if cfg.torso_in_channels == 5 else "rgb",
        "neural_rendering_resolution": cfg.neural_resolution,
        "final_resolution": cfg.image_resolution,
    }
    if cfg.lora_rank:
        facts.update(lora_r=cfg.lora_rank, lora_mode=cfg.lora_mode)
    return facts


YAML_DEFAULTS = {"torso_inp_mode": "rgb"}
"""Values upstream assumes when the yaml omits the key (MimicTalk's renderer yaml has no
torso_inp_mode: its torso takes 3-channel rgb)."""


def yaml_conflicts(cfg: RendererConfig, hparams: Mapping) -> list[str]:
    """'key: yaml says X, the weights say Y' for each :func:`yaml_facts` entry the yaml states
    and contradicts."""
    wrong = []
    for key, value in yaml_facts(cfg).items():
        declared = hparams.get(key)
        if declared is not None and declared != value:
            wrong.append(f"{key}: yaml says {declared!r}, the weights say {value!r}")
    return wrong


def apply_yaml(cfg: RendererConfig, hparams: Mapping, source: str, *, head_threshold: Optional[float] = None) -> RendererConfig:
    """``cfg`` with what the checkpoint's ``config.yaml`` states (:data:`YAML_SETTINGS`); a conflict
    with the weights is logged (the weights win). ``htbsr_head_threshold`` applies to the
    Real3D-Portrait layout; MimicTalk layouts run at 1.0 whatever the yaml says, as MimicTalk's
    inference forces it (said in the log when the yaml differs). An explicit ``head_threshold``
    wins over both."""
    from ..utils import logger

    settings = yaml_settings(hparams, source)
    wrong = yaml_conflicts(cfg, hparams)
    if wrong:
        logger.warning("MimicTalk: %s disagrees with the weights (%s); the weights are used", source, "; ".join(wrong))
    threshold = settings.pop("head_threshold", None)
    if head_threshold is None and threshold is not None:
        if cfg.feature_type == "triplane":
            cfg = dataclasses.replace(cfg, sr=dataclasses.replace(cfg.sr, head_threshold=threshold))
        elif threshold != MIMICTALK_HEAD_THRESHOLD:
            logger.info("MimicTalk: %s sets htbsr_head_threshold %s; MimicTalk renders its tri-grid renderers at %s "
                        "as upstream forces (pass head_threshold to override)", source, threshold, MIMICTALK_HEAD_THRESHOLD)
    try:
        return dataclasses.replace(cfg, **settings)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
