"""Safe weight files: safetensors (with JSON metadata) for everything we write, and a guarded
loader for the upstream legacy torch pickles.

Upstream MimicTalk / Real3D-Portrait checkpoints (``model_ckpt_steps_<N>.ckpt``) are written with
``torch.save(..., _use_new_zipfile_serialization=False)``: a top-level dict with ``epoch``,
``global_step``, ``checkpoint_callback_best``, ``optimizer_states`` and ``state_dict`` = {task
child name -> that child's state dict}; the loaders read ``state_dict['model']``
(mimictalk_architecture.md §6). We only ever read them with ``torch.load(weights_only=True)``,
whose restricted unpickler builds tensors, containers and plain scalars and refuses anything else;
a full unpickle (arbitrary code execution) never happens.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from .errors import CheckpointError

PathLike = Union[str, os.PathLike]

CKPT_PATTERN = re.compile(r"model_ckpt_steps_(\d+)\.ckpt")
"""Upstream checkpoint file names; the trainer keeps the highest step count as the latest."""

METADATA_KEY = "mimictalk"
"""safetensors metadata key holding our JSON-encoded metadata dict."""


# ---------------------------------------------------------------- safetensors


def save_safetensors(path: PathLike, tensors: Mapping[str, torch.Tensor],
                     metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``tensors`` to ``path`` atomically (temp file, then rename).

    ``metadata`` is any JSON-serialisable dict, stored under one safetensors metadata key.
    Tensors sharing storage (e.g. upstream's aliased LoRA ``.weight`` / ``.conv.weight`` keys)
    are written as separate copies so every key survives; non-contiguous ones are compacted.
    """
    from safetensors.torch import save_file

    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"cannot save '{name}' to safetensors: it is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen or not t.is_contiguous():
            t = t.contiguous().clone()
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[name] = t
    meta = {METADATA_KEY: json.dumps(dict(metadata or {}), sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(out, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_safetensors_metadata(path: PathLike) -> dict:
    """Our metadata dict from a safetensors header (cheap: no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    if METADATA_KEY not in raw:
        return dict(raw)  # a file written by another tool: its plain string metadata
    try:
        return json.loads(raw[METADATA_KEY])
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt MimicTalk metadata ({e})") from e


def load_safetensors(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    metadata = read_safetensors_metadata(path)
    return load_file(str(path), device=str(device)), metadata


# ---------------------------------------------------------------- legacy upstream pickles


def _numpy_data_globals() -> list:
    """numpy globals that only rebuild plain numbers/arrays (no code): allowed inside upstream
    pickles, e.g. a numpy float in ``checkpoint_callback_best``. Old pickles name them under
    ``numpy.core``, numpy 2 under ``numpy._core``, so both spellings are registered."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list = [np.ndarray, np.dtype]
    for name in ("scalar", "_reconstruct"):
        fn = getattr(multiarray, name)
        allowed += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    allowed += [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]  # numpy 2 dtype classes
    return allowed


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL (\S+)")


def load_legacy_checkpoint(path: PathLike) -> dict:
    """Load an upstream ``.ckpt`` with ``torch.load(weights_only=True, map_location="cpu")``.

    Raises ``CheckpointError`` when the restricted unpickler refuses the file (it holds a class
    other than tensors, containers, plain scalars and numpy numbers: not an upstream checkpoint,
    or a tampered one), when it is truncated/corrupt, or when it is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSUPPORTED.search(str(e))
        raise CheckpointError(
            f"{path} was refused by the safe loader (torch.load weights_only=True): "
            + (f"it contains `{found.group(1)}`" if found else str(e).splitlines()[0])
            + ". Upstream MimicTalk/Real3D-Portrait "
            "checkpoints contain only tensors, dicts, lists, strings and numbers, so this file is of "
            "another kind or has been modified. MimicTalk never unpickles arbitrary objects; use the "
            "official checkpoint files."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} could not be read as a torch checkpoint ({type(e).__name__}: {e}); the file is "
            "probably truncated or corrupt: download it again."
        ) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, expected a checkpoint dict")
    return ckpt


def model_state_dict(ckpt: Mapping[str, Any], child: str = "model", *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict of one task child (``'model'``) from an upstream checkpoint dict.

    Handles both upstream layouts: nested ``state_dict[child]`` and flat ``state_dict['child.key']``
    (whose prefix is stripped, as upstream ``load_ckpt`` does).
    """
    sd = ckpt.get("state_dict")
    if not isinstance(sd, Mapping):
        raise CheckpointError(
            f"{source} has no 'state_dict' (top-level keys: {sorted(map(str, ckpt))[:10]}); it is not an "
            "upstream MimicTalk/Real3D-Portrait model checkpoint (an optimizer-only or foreign file?)"
        )
    if isinstance(sd.get(child), Mapping):
        out = dict(sd[child])
    else:
        prefix = child + "."
        out = {k[len(prefix):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(prefix)}
    if not out:
        raise CheckpointError(
            f"{source} has no '{child}' weights; its state_dict holds: {sorted(map(str, sd))[:10]}"
        )
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: '{child}' entries that are not tensors: {bad[:5]}")
    return out


def checkpoint_steps(path: PathLike) -> int:
    """Training step count from an upstream file name ``model_ckpt_steps_<N>.ckpt``."""
    m = CKPT_PATTERN.fullmatch(Path(path).name)
    if m is None:
        raise CheckpointError(f"{path} is not named model_ckpt_steps_<N>.ckpt")
    return int(m.group(1))


def find_latest_checkpoint(folder: PathLike) -> Path:
    """The ``model_ckpt_steps_<N>.ckpt`` with the highest N in ``folder`` (upstream rule)."""
    folder = Path(folder)
    found = [p for p in folder.glob("model_ckpt_steps_*.ckpt") if CKPT_PATTERN.fullmatch(p.name) and p.is_file()]
    if not found:
        raise CheckpointError(f"no model_ckpt_steps_<N>.ckpt in {folder}")
    return max(found, key=checkpoint_steps)


def resolve_model_file(path: PathLike) -> Path:
    """The weights file a model path names: a file as it is; for a folder, its converted
    ``model.safetensors`` when present, else its latest ``model_ckpt_steps_<N>.ckpt``."""
    path = Path(path)
    if path.is_dir():
        converted = path / "model.safetensors"
        return converted if converted.is_file() else find_latest_checkpoint(path)
    return path


def load_model_state_dict(path: PathLike, child: str = "model") -> dict[str, torch.Tensor]:
    """The ``child`` weights of a model path (:func:`resolve_model_file`): all tensors of a
    converted ``model.safetensors``, or ``state_dict[child]`` of an upstream ``.ckpt``."""
    path = resolve_model_file(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)[0]
    return model_state_dict(load_legacy_checkpoint(path), child, source=str(path))
