"""One call to build the right renderer from official or converted weights.

``load_renderer(source)`` accepts a state dict, a full upstream checkpoint dict, an upstream
``model_ckpt_steps_N.ckpt`` (file or folder), or our ``model.safetensors`` (+ ``config.json``),
detects the layout (architecture reference §2.2, §2.6, §3.6):

* MimicTalk base renderer (1039 keys, tri-grid v2 D=3, 288-channel planes);
* Real3D-Portrait renderer (1030 keys, tri-plane, 96 channels, 5-channel torso input);
* personalised MimicTalk checkpoint (1085 keys: + LoRA r=2 on ``secc2plane_sr`` and the loralib
  ``.conv.weight`` aliases), with ``learnable_triplane``, ``lora_args`` and ``person_ds`` when
  the full checkpoint dict or file is given,

infers the :class:`RendererConfig` from shapes, loads strictly and returns a
:class:`LoadedRenderer`. Official LoRA is merged into the base weights at load
(:func:`mimictalk_lib.renderer.official_lora.merge_official_lora`: exact maths, the alias keys are folded
there) unless ``merge_lora=False``, which keeps the 1085-key layout and applies it on the fly.
Our own state dicts keep the upstream key names, so one loader serves every format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import CheckpointError
from ..utils import check_device_dtype, logger
from .config import NUM_KEYS, RendererConfig, infer_renderer_config
from .model import Renderer
from .official_lora import merge_official_lora

Source = Union[str, os.PathLike, Mapping[str, Any]]

LEARNABLE_TRIPLANE = "learnable_triplane"
"""Key of the personalised tri-grid [1, 3, C·D, 256, 256] (in ``state_dict`` of the checkpoint,
or at the top level of our safetensors files)."""


PERSON_FIELDS = ("src_frame", "id", "src_kp", "src_exp", "src_euler", "src_trans", "bg", "torso_ref", "segmap")


@dataclass
class PersonData:
    """What a personalised renderer knows about its person (CPU tensors; optional fields may be
    None). An official checkpoint's ``person_ds`` (§3.6) fills ``src_frame`` (upstream
    ``gt_img``), ``id``, ``src_kp`` and ``video_id``; an adapter of this pack fills them all."""

    src_frame: Optional[torch.Tensor] = None  # [1, 3, S, S] in [-1, 1]: frame 0 of the training video
    id: Optional[torch.Tensor] = None  # [1, 80] BFM identity coefficients
    src_kp: Optional[torch.Tensor] = None  # [68, 3] frame-0 lm68 keypoints in [-1, 1], z = 0
    src_exp: Optional[torch.Tensor] = None  # [1, 64] frame-0 expression (source SECC)
    src_euler: Optional[torch.Tensor] = None  # [1, 3] frame-0 head pose (radians)
    src_trans: Optional[torch.Tensor] = None  # [1, 3] frame-0 BFM translation
    bg: Optional[torch.Tensor] = None  # [1, 3, S, S] background plate in [-1, 1]
    torso_ref: Optional[torch.Tensor] = None  # [1, 3, S, S] inpainted torso of frame 0 in [-1, 1]
    segmap: Optional[torch.Tensor] = None  # [1, 6, S, S] one-hot segmentation of frame 0
    video_id: str = ""

    @property
    def gt_img(self) -> Optional[torch.Tensor]:
        """Upstream's name of ``src_frame``."""
        return self.src_frame

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f) for f in PERSON_FIELDS if getattr(self, f) is not None}


@dataclass
class PersonalisedRenderer:
    """A renderer personalised to one person, the one type inference takes for it: an adapter
    applied to a base renderer (:func:`mimictalk_lib.adapt.adapter.personalise`), or an official
    personalised checkpoint (:attr:`LoadedRenderer.personalised`)."""

    model: Renderer  # the renderer (LoRA merged, or applied on the fly); eval mode
    cano_planes: torch.Tensor  # learned tri-grid [1, 3, C·D, P, P] fp32, on the model's device
    identity: Optional[PersonData]  # the person's data (None: a checkpoint without person_ds)
    spec: Any = None  # the adapter's LoraSpec (None for an official checkpoint)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedRenderer:
    """Result of :func:`load_renderer`."""

    model: Renderer  # eval mode, on the requested device and dtype
    config: RendererConfig
    layout: str  # 'mimictalk', 'real3d' or 'personalised'
    personalised: Optional[PersonalisedRenderer] = None  # an official personalised checkpoint's tri-grid + person
    lora_args: Optional[dict] = None  # upstream {'lora_mode': ..., 'lora_r': ...}
    lora: Any = None  # the split-off official LoRA (mimictalk_lib.renderer.official_lora.OfficialLora) when merged

    @property
    def cano_planes(self) -> Optional[torch.Tensor]:
        """The personalised tri-grid [1, 3, C·D, P, P] (fp32), or None for a base renderer."""
        return self.personalised.cano_planes if self.personalised is not None else None

    @property
    def person(self) -> Optional[PersonData]:
        """The checkpoint's person data (``person_ds``), or None."""
        return self.personalised.identity if self.personalised is not None else None


def load_renderer(
    source: Source,
    *,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    merge_lora: bool = True,
    head_threshold: Optional[float] = None,
    base_config: Optional[RendererConfig] = None,
) -> LoadedRenderer:
    """Build the renderer for ``source`` and load its weights strictly.

    ``head_threshold`` overrides ``htbsr_head_threshold`` (default: 1.0 for MimicTalk layouts as
    MimicTalk forces it, 0.9 for Real3D-Portrait; or the value in our ``config.json``).
    ``base_config`` supplies what the weights cannot tell (see :func:`infer_renderer_config`;
    ``RendererConfig.tiny()`` for test checkpoints). bf16 / fp16 are for GPUs, except bf16 on a
    CPU with native bf16 (an opt-in fast mode, not exact: docs/benchmarks.md). Raises
    CheckpointError naming offending keys on a mismatch.
    """
    check_device_dtype(device, dtype, cpu_bf16=True)
    parts = _read_source(source)
    sd = parts["model"]
    threshold = head_threshold if head_threshold is not None else parts.get("head_threshold")
    cfg = infer_renderer_config(sd, head_threshold=threshold, base=base_config or parts.get("base_config"))
    if "yaml" in parts:  # the checkpoint folder's config.yaml: what leaves no trace in the weights
        from .config import apply_yaml

        cfg = apply_yaml(cfg, parts["yaml"][0], parts["yaml"][1], head_threshold=head_threshold)
    layout = "personalised" if cfg.lora_rank else ("mimictalk" if cfg.plane2grid is not None else "real3d")
    lora_args = parts.get("lora_args")
    if lora_args is not None and cfg.lora_rank and int(lora_args.get("lora_r", cfg.lora_rank)) != cfg.lora_rank:
        raise CheckpointError(f"lora_args says lora_r={lora_args.get('lora_r')} but the LoRA matrices have rank {cfg.lora_rank}")

    lora = None
    if cfg.lora_rank and merge_lora:
        sd, lora = merge_official_lora(sd, cfg.lora_rank)
        cfg = cfg.with_lora(0)
    with torch.device("meta"):  # no random init: every tensor comes from the state dict
        model = Renderer(cfg)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:  # key sets were verified by infer_renderer_config; shapes/dtypes may not be
        raise CheckpointError(f"renderer weights do not fit the {layout} layout ({cfg.describe()}): {e}") from e
    model.to(device=device, dtype=dtype).eval()

    planes = parts.get(LEARNABLE_TRIPLANE)
    if planes is not None:
        want = (1, 3, cfg.plane_channels, cfg.plane_resolution, cfg.plane_resolution)
        if tuple(planes.shape) != want:
            raise CheckpointError(f"{LEARNABLE_TRIPLANE} has shape {list(planes.shape)}, expected {list(want)} for this renderer")
        planes = planes.detach().to(device=device, dtype=torch.float32)
    person = _person_data(parts.get("person_ds"))
    personalised = None
    if planes is not None:
        personalised = PersonalisedRenderer(model, planes, person, metadata={"source": "official checkpoint"})
    logger.info("loaded %s renderer (%s) on %s as %s", layout, cfg.describe(), device, dtype)
    return LoadedRenderer(model=model, config=cfg, layout=layout, personalised=personalised,
                          lora_args=dict(lora_args) if lora_args else None, lora=lora)


# --- reading the different sources ------------------------------------------------------------


def _read_source(source: Source) -> dict[str, Any]:
    """-> {'model': renderer state dict, optional 'learnable_triplane', 'lora_args', 'person_ds',
    'head_threshold'}."""
    if isinstance(source, Mapping):
        return _split_dict(source, "state dict")
    from ..checkpoint import resolve_model_file

    path = resolve_model_file(source)
    if not path.is_file():
        raise CheckpointError(f"renderer weights not found: {path}")
    if path.suffix == ".safetensors":
        from ..checkpoint import load_safetensors

        tensors, metadata = load_safetensors(path)
        parts = _split_dict(tensors, str(path))
        parts.update(_our_config(path, metadata))
        return parts
    from ..checkpoint import load_legacy_checkpoint

    parts = _split_dict(load_legacy_checkpoint(path), str(path))
    yaml_path = path.with_name("config.yaml")
    if yaml_path.is_file():
        from .config import read_config_yaml

        parts["yaml"] = (read_config_yaml(yaml_path), str(yaml_path))
    return parts


def _split_dict(d: Mapping[str, Any], name: str) -> dict[str, Any]:
    if "state_dict" in d:  # a full upstream checkpoint dict
        from ..checkpoint import model_state_dict

        parts = {"model": model_state_dict(d, "model", source=name)}
        inner = d["state_dict"]
        if LEARNABLE_TRIPLANE in inner:
            parts[LEARNABLE_TRIPLANE] = inner[LEARNABLE_TRIPLANE]
        for key in ("lora_args", "person_ds"):
            if d.get(key) is not None:
                parts[key] = d[key]
        return parts
    model = {k: v for k, v in d.items() if k != LEARNABLE_TRIPLANE}
    if model and all(isinstance(k, str) and k.startswith("model.") for k in model):
        model = {k[len("model."):]: v for k, v in model.items()}  # flat 'model.*' keys (upstream load_ckpt)
    bad = [k for k, v in model.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{name}: entries that are not tensors: {bad[:5]}; pass a renderer state dict "
                              f"({NUM_KEYS['mimictalk']}/{NUM_KEYS['real3d']}/{NUM_KEYS['personalised']} keys) or a checkpoint")
    parts: dict[str, Any] = {"model": model}
    if LEARNABLE_TRIPLANE in d:
        parts[LEARNABLE_TRIPLANE] = d[LEARNABLE_TRIPLANE]
    return parts


def _our_config(path: Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Values that leave no trace in the weights, from our metadata or the config.json beside it."""
    cfg: dict[str, Any] = dict(metadata.get("config", {})) if isinstance(metadata.get("config"), Mapping) else {}
    side = path.with_name("config.json")
    if side.is_file():
        try:
            cfg.update(json.loads(side.read_text()))
        except ValueError as e:
            raise CheckpointError(f"{side} is not valid JSON ({e})") from e
    out: dict[str, Any] = {}
    for key in ("head_threshold", "htbsr_head_threshold"):
        if key in cfg:
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise CheckpointError(f"{side}: {key} is {value!r}, expected a number in [0, 1]")
            out["head_threshold"] = float(value)
    if isinstance(cfg.get("lora_args"), Mapping):
        out["lora_args"] = dict(cfg["lora_args"])
    person = _converted_person(path, cfg)
    if person is not None:
        out["person_ds"] = person
    if isinstance(cfg.get("config"), Mapping) and str(cfg.get("config_class", "")).endswith(".RendererConfig"):
        out["base_config"] = _dataclass_from_json(RendererConfig, cfg["config"], str(path))
    return out


PERSON_FILE = "personalization.safetensors"
"""Where ``python -m mimictalk_lib.convert`` puts a personalised checkpoint's ``person_ds`` tensors."""


def _converted_person(path: Path, cfg: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """``person_ds`` of a converted personalised checkpoint: the tensors of
    ``personalization.safetensors`` beside ``path`` plus the plain values (``video_id``) of its config."""
    name = cfg.get("person_ds_file")
    if name is None:
        return None
    if name != PERSON_FILE:
        raise CheckpointError(f"{path}: person_ds_file is {name!r}; a converted checkpoint names {PERSON_FILE!r}")
    side = path.with_name(PERSON_FILE)
    if not side.is_file():
        raise CheckpointError(f"{path} belongs to a personalised checkpoint but {side} is missing; copy the whole "
                              "converted folder, or convert the upstream checkpoint again")
    from ..checkpoint import load_safetensors

    tensors, _ = load_safetensors(side)
    plain = cfg.get("person_ds") if isinstance(cfg.get("person_ds"), Mapping) else {}
    return {**{k: v for k, v in plain.items() if isinstance(v, str)}, **tensors}


MAX_JSON_INT = 4096
"""Largest integer a recorded renderer configuration may hold (official sizes are at most 1024);
:class:`RendererConfig` bounds the sizes that matter more tightly."""


def _dataclass_from_json(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Rebuild a (nested) config dataclass from the JSON our converter writes (``config`` in
    config.json): the settings that leave no trace in the weights (attention heads, samples per
    ray, plane resolution, ...) for :func:`infer_renderer_config`'s ``base``."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        sub = [t for t in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(t)]
        if sub and isinstance(value, Mapping):
            value = _dataclass_from_json(sub[0], value, where)
        elif isinstance(value, list):
            value = tuple(value)
        if hint in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CheckpointError(f"{where}: the recorded renderer configuration has {f.name} = {value!r}, expected "
                                  "a number; the config.json is damaged: convert the checkpoint again")
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, (Mapping, list, tuple)) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        and not -MAX_JSON_INT <= v <= MAX_JSON_INT):
                raise CheckpointError(f"{where}: the recorded renderer configuration has {f.name} = {value!r}, "
                                      "which no renderer uses; the config.json is damaged: convert the checkpoint again")
        values[f.name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the recorded renderer configuration is not usable ({e})") from e


def _person_data(ds: Optional[Mapping[str, Any]]) -> Optional[PersonData]:
    if ds is None:
        return None
    return PersonData(src_frame=ds.get("gt_img"), id=ds.get("id"), src_kp=ds.get("src_kp"),
                      video_id=ds.get("video_id") if isinstance(ds.get("video_id"), str) else "")
