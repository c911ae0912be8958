"""``python -m mimictalk_lib.convert SRC DST``: upstream checkpoint -> ``model.safetensors`` + ``config.json``.

SRC is an upstream ``model_ckpt_steps_<N>.ckpt`` or the folder holding it (the highest N is
taken, as upstream does) with its ``config.yaml``. The file is read with the safe loader only
(``checkpoint.load_legacy_checkpoint``), the kind is detected from the key prefixes of
``state_dict['model']`` (renderer: ``cano_img2plane_backbone`` / ``superresolution`` ...; ICS-A2M:
``backbone`` / ``hubert_encoder``), the configuration is inferred from tensor shapes by the model
package of that kind and cross-checked against the yaml when present. Anything else (an
optimizer-only file, the Real3D-Portrait VAE audio-to-motion model, a foreign network) is refused
with a message saying what was found.

DST receives ``model.safetensors`` (the ``'model'`` tensors under their upstream names, so a
strict ``load_state_dict`` works, plus ``learnable_triplane`` for a personalised renderer; the
config JSON in its metadata) and ``config.json`` (kind, inferred configuration, source, yaml
check, and what leaves no trace in the weights: ``head_threshold``, ``lora_args``, the yaml's sample
counts). A personalised checkpoint's ``person_ds`` tensors go to ``personalization.safetensors``.
The renderer loader (``mimictalk_lib.renderer.loading.load_renderer``) reads this layout: the
converted folder loads to the same renderer, tri-grid and person data as the original.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from .checkpoint import find_latest_checkpoint, load_legacy_checkpoint, model_state_dict, save_safetensors
from .errors import CheckpointError
from .utils import logger

PathLike = Union[str, os.PathLike]

FORMAT = "mimictalk-converted"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointKind:
    """One convertible model family: how to recognise it and where its config inference lives."""

    name: str  # "renderer" | "ics_a2m"
    title: str
    markers: tuple[str, ...]  # top-level key prefixes that must all be present
    infer: Union[str, Callable[[Mapping[str, torch.Tensor]], Any]]  # state dict -> frozen config
    # dataclass; a "module:function" string is imported lazily (the model packages are heavy)
    task_hint: str  # substring of the yaml's task_cls for this kind
    yaml_facts: Callable[[Any], dict[str, Any]]  # yaml key -> value implied by the inferred config
    apply_yaml: Optional[Callable[[Any, Mapping[str, Any], str], Any]] = None  # config + yaml settings
    # that leave no trace in the weights -> the config to record
    def infer_config(self, state_dict: Mapping[str, torch.Tensor], base: Any = None) -> Any:
        """The configuration from shapes; ``base`` supplies what shapes cannot tell (tiny test models)."""
        fn = self.infer
        if isinstance(fn, str):
            module, name = fn.split(":")
            fn = getattr(importlib.import_module(module, __package__), name)
        return fn(state_dict) if base is None else fn(state_dict, base=base)


def _renderer_facts(cfg: Any) -> dict[str, Any]:
    from .renderer.config import yaml_facts

    return yaml_facts(cfg)


def _renderer_yaml(cfg: Any, hparams: Mapping[str, Any], source: str) -> Any:
    from .renderer.config import apply_yaml

    return apply_yaml(cfg, hparams, source)


def _a2m_facts(cfg: Any) -> dict[str, Any]:
    return {"use_aux_features": cfg.use_aux_features}


KINDS: tuple[CheckpointKind, ...] = (
    CheckpointKind("renderer", "Real3D-Portrait / MimicTalk renderer (secc2plane + torso)",
                   ("cano_img2plane_backbone", "secc_img2plane_backbone", "decoder", "superresolution"),
                   ".renderer.config:infer_renderer_config", "secc_img2plane_torso", _renderer_facts,
                   _renderer_yaml),
    CheckpointKind("ics_a2m", "ICS-A2M in-context audio-to-motion model",
                   ("backbone", "hubert_encoder"),
                   ".a2m.config:infer_a2m_config", "icl", _a2m_facts),
)


def detect_kind(state_dict: Mapping[str, torch.Tensor], kinds: Sequence[CheckpointKind] = KINDS,
                source: str = "checkpoint") -> CheckpointKind:
    """The kind whose marker prefixes all occur in ``state_dict``; CheckpointError otherwise."""
    prefixes = {k.split(".")[0] for k in state_dict}
    for kind in kinds:
        if set(kind.markers) <= prefixes:
            return kind
    raise CheckpointError(
        f"{source} is not a checkpoint this converter knows: its model weights have the top-level "
        f"prefixes {sorted(prefixes)[:12]}. Supported: "
        + "; ".join(f"{k.title} ({', '.join(k.markers)})" for k in kinds)
        + ". (The Real3D-Portrait VAE audio-to-motion model is not used by MimicTalk.)"
    )


def read_yaml(path: Path) -> dict:
    """An upstream config.yaml (written with yaml.safe_dump), read with yaml.safe_load."""
    from .renderer.config import read_config_yaml

    return read_config_yaml(path)


def cross_check_yaml(kind: CheckpointKind, config: Any, hparams: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Compare the yaml with the configuration inferred from shapes; return the facts checked.

    Raises CheckpointError on a yaml of another kind (task_cls) or on any disagreement."""
    task = str(hparams.get("task_cls", ""))
    if task and kind.task_hint not in task:
        raise CheckpointError(f"{source}: the yaml's task_cls is {task!r}, which is not a {kind.title}; "
                              "the config.yaml does not belong to this checkpoint")
    checked: dict[str, Any] = {}
    wrong = []
    from .renderer.config import YAML_DEFAULTS

    for key, value in kind.yaml_facts(config).items():
        declared = hparams.get(key, YAML_DEFAULTS.get(key))
        if declared is None:
            continue
        checked[key] = value
        if declared != value:
            wrong.append(f"{key}: yaml says {declared!r}, the weights say {value!r}")
    if wrong:
        raise CheckpointError(f"{source}: config.yaml disagrees with the tensor shapes ({'; '.join(wrong)}). "
                              "Use the yaml shipped with this checkpoint, or pass --no-yaml-check to trust the weights.")
    return checked


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def _resolve_src(src: Path) -> tuple[Path, Optional[Path]]:
    if src.is_dir():
        ckpt = find_latest_checkpoint(src)
    elif src.is_file():
        ckpt = src
    else:
        raise CheckpointError(f"source not found: {src}")
    yaml_path = ckpt.parent / "config.yaml"
    return ckpt, yaml_path if yaml_path.is_file() else None


PERSONAL_TRIPLANE = "learnable_triplane"
"""Personalised tri-grid; written at the top level of model.safetensors, where the renderer loader
(``mimictalk_lib.renderer.loading``) looks for it."""


def _personalization(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(extra tensors for model.safetensors, person_ds tensors, plain facts for config.json) of a
    personalised (SD-Hybrid adapted) renderer checkpoint; all empty for a base renderer."""
    sd = ckpt.get("state_dict", {})
    model_extra: dict[str, torch.Tensor] = {}
    if isinstance(sd.get(PERSONAL_TRIPLANE), torch.Tensor):
        model_extra[PERSONAL_TRIPLANE] = sd[PERSONAL_TRIPLANE]
    person: dict[str, torch.Tensor] = {}
    facts: dict[str, Any] = {}
    if isinstance(ckpt.get("person_ds"), Mapping):
        for k, v in ckpt["person_ds"].items():
            if isinstance(v, torch.Tensor):
                person[k] = v
            else:
                facts.setdefault("person_ds", {})[k] = _jsonable(v)
    if isinstance(ckpt.get("lora_args"), Mapping):
        facts["lora_args"] = _jsonable(ckpt["lora_args"])
    if (facts or person) and not model_extra:
        raise CheckpointError(f"{source}: personalised checkpoint (lora_args / person_ds) without {PERSONAL_TRIPLANE}")
    return model_extra, person, facts


def convert_checkpoint(src: PathLike, dst: PathLike, *, check_yaml: bool = True,
                       kinds: Sequence[CheckpointKind] = KINDS, base_config: Any = None) -> Path:
    """Convert one upstream checkpoint (file, or folder with config.yaml) into folder ``dst``.

    The yaml's settings that leave no trace in the weights (head threshold, samples per ray, ...)
    go into the recorded configuration, so the converted folder loads like the original one.
    ``base_config`` supplies what neither tells (``RendererConfig.tiny()`` for tiny test models)."""
    ckpt_path, yaml_path = _resolve_src(Path(src))
    source = str(ckpt_path)
    ckpt = load_legacy_checkpoint(ckpt_path)
    tensors = model_state_dict(ckpt, "model", source=source)
    kind = detect_kind(tensors, kinds, source)
    config = kind.infer_config(tensors, base_config)
    yaml_info: dict[str, Any] = {"file": None}
    if yaml_path is not None:
        yaml_info = {"file": yaml_path.name, "checked": {}, "ignored": not check_yaml}
        if check_yaml:
            hparams = read_yaml(yaml_path)
            yaml_info["checked"] = cross_check_yaml(kind, config, hparams, str(yaml_path))
            if kind.apply_yaml is not None:  # settings with no trace in the weights: carried into config.json
                config = kind.apply_yaml(config, hparams, str(yaml_path))
    model_extra, person, facts = _personalization(ckpt, source) if kind.name == "renderer" else ({}, {}, {})
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind.name, "title": kind.title,
        "config_class": f"{type(config).__module__}.{type(config).__qualname__}",
        "config": _jsonable(config),
        "summary": config.describe() if hasattr(config, "describe") else repr(config),
        "num_tensors": len(tensors), "num_parameters": int(sum(t.numel() for t in tensors.values())),
        "source": {"file": ckpt_path.name, "global_step": _jsonable(ckpt.get("global_step")),
                   "epoch": _jsonable(ckpt.get("epoch"))},
        "yaml": yaml_info,
    }
    if hasattr(config, "head_threshold"):  # leaves no trace in the weights; the loader reads it here
        meta["head_threshold"] = config.head_threshold
    meta.update(facts)  # lora_args, person_ds (plain values): top level, where the loader reads them
    if person:
        meta["person_ds_file"] = "personalization.safetensors"
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_safetensors(dst / "model.safetensors", {**tensors, **model_extra}, meta)
    if person:
        save_safetensors(dst / "personalization.safetensors", person, meta)
    tmp = dst / ".config.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, dst / "config.json")
    logger.info("MimicTalk: converted %s (%s, %s) into %s", ckpt_path, kind.name, meta["summary"], dst)
    return dst


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mimictalk_lib.convert", description=(
        "Convert an upstream MimicTalk / Real3D-Portrait checkpoint (model_ckpt_steps_<N>.ckpt, or its "
        "folder with config.yaml) into model.safetensors + config.json. The checkpoint is read with "
        "torch.load(weights_only=True) only."))
    p.add_argument("src", type=Path, help="upstream .ckpt file or the folder holding it")
    p.add_argument("dst", type=Path, help="output folder")
    p.add_argument("--no-yaml-check", action="store_true", help="do not cross-check config.yaml")
    args = p.parse_args(argv)
    try:
        out = convert_checkpoint(args.src, args.dst, check_yaml=not args.no_yaml_check, kinds=KINDS)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    print(f"{meta['kind']}: {meta['summary']}\n{meta['num_tensors']} tensors, "
          f"{meta['num_parameters']:,} parameters -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
