"""Import an upstream personalised MimicTalk checkpoint into the adapter format.

An upstream ``checkpoints_mimictalk/<id>/model_ckpt_steps_N.ckpt`` (architecture reference §3.6)
is a legacy torch pickle holding ``state_dict.model`` (the full renderer, 1085 keys for
``secc2plane_sr`` r=2), ``state_dict.learnable_triplane`` ``[1, 3, 96, 256, 256]``,
``optimizer_states``, ``lora_args`` and ``person_ds`` (``gt_img``, ``id``, ``src_kp``,
``video_id``). The import keeps the LoRA matrices exactly (official naming), the tri-grid,
``person_ds``, and the BatchNorm / spectral-norm buffers (upstream trains in train mode, so they
differ from the base model's), and drops the ~0.7 GB of base weights and Adam moments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..checkpoint import find_latest_checkpoint, load_legacy_checkpoint, model_state_dict
from ..errors import CheckpointError
from ..lora.inject import LoraSpec
from ..renderer.official_lora import official_lora_keys, split_official_lora
from ..renderer.lora_targets import LORA_MODES, parse_lora_mode
from .adapter import (
    NORM_SUFFIXES,
    Adapter,
    AdapterIdentity,
    base_fingerprint,
    base_parameters,
    check_base,
)

LEARNABLE_TRIPLANE = "learnable_triplane"


def _read(source: Union[str, os.PathLike, Mapping[str, Any]]) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return dict(source), "checkpoint dict"
    path = Path(source)
    if path.is_dir():
        path = find_latest_checkpoint(path)
    return load_legacy_checkpoint(path), str(path)


def _base_parameter_names(base_sd: Mapping[str, torch.Tensor], base_renderer: Optional[nn.Module], base_config) -> set[str]:
    if base_renderer is not None:
        return set(base_parameters(base_renderer))
    from ..renderer.config import infer_renderer_config
    from ..renderer.model import Renderer

    cfg = infer_renderer_config(base_sd, base=base_config)
    with torch.device("meta"):
        return {name for name, _ in Renderer(cfg).named_parameters()}


def import_official_checkpoint(
    source: Union[str, os.PathLike, Mapping[str, Any]],
    base_renderer: Optional[nn.Module] = None,
    *,
    base_config=None,
) -> Adapter:
    """An :class:`Adapter` from an upstream personalised checkpoint (file, folder or dict).

    With ``base_renderer`` the checkpoint's base weights are checked against it (a checkpoint
    trained on another base raises CheckpointError). Without it the parameter names come from
    the configuration inferred from the checkpoint (``base_config`` as for
    :func:`~mimictalk_lib.renderer.config.infer_renderer_config`, e.g. for tiny test models).
    """
    ckpt, where = _read(source)
    sd = model_state_dict(ckpt, source=where)
    if not official_lora_keys(sd):
        raise CheckpointError(f"{where} has no LoRA keys: it is a base renderer, not a personalised MimicTalk checkpoint")
    lora_args = ckpt.get("lora_args") or {}
    base_sd, lora = split_official_lora(sd, r=int(lora_args["lora_r"]) if "lora_r" in lora_args else None)
    declared = lora_args.get("lora_mode")
    if declared in LORA_MODES and parse_lora_mode(declared) != parse_lora_mode(lora.lora_mode):
        raise CheckpointError(f"{where}: lora_args says lora_mode={declared!r} but the LoRA keys are those of {lora.lora_mode!r}")

    state = ckpt.get("state_dict", {})
    triplane = state.get(LEARNABLE_TRIPLANE) if isinstance(state, Mapping) else None
    if not isinstance(triplane, torch.Tensor) or triplane.dim() != 5:
        raise CheckpointError(f"{where} has no state_dict.{LEARNABLE_TRIPLANE} [1, 3, C·D, P, P] tensor")

    person = ckpt.get("person_ds") or {}
    identity = AdapterIdentity(
        src_frame=_tensor(person, "gt_img", where),
        id=_tensor(person, "id", where),
        src_kp=_tensor(person, "src_kp", where),
        video_id=str(person.get("video_id", "")),
    )
    names = _base_parameter_names(base_sd, base_renderer, base_config)
    missing = sorted(names - set(base_sd))
    if missing:
        raise CheckpointError(f"{where}: base weights missing from the checkpoint: {missing[:5]}")
    structure, probe = base_fingerprint({k: base_sd[k] for k in names})
    adapter = Adapter(
        lora={f"{p}.lora_{ab}": t.detach().float().clone() for p, pair in lora.pairs.items() for ab, t in zip("AB", pair)},
        spec=LoraSpec(lora.lora_mode, lora.r, "upstream"),
        triplane=triplane.detach().float().clone(),
        identity=identity,
        norm_state={k: v.detach().clone() for k, v in base_sd.items() if k.endswith(NORM_SUFFIXES)},
        base_probe=probe,
        metadata={
            "source": "official_import",
            "imported_from": os.path.basename(where),
            "base": {"structure_sha256": structure},
            "training": {"steps": ckpt.get("global_step")},
            "lora_args": {k: lora_args[k] for k in ("lora_mode", "lora_r") if k in lora_args},
        },
    )
    if base_renderer is not None:
        check_base(adapter, base_renderer)
    return adapter


def _tensor(person: Mapping[str, Any], key: str, where: str) -> Optional[torch.Tensor]:
    value = person.get(key)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{where}: person_ds.{key} is a {type(value).__name__}, expected a tensor")
    return value.detach().float().clone()
