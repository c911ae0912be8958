"""Safe weight files: safetensors (with JSON metadata) for everything we write, and a guarded
loader for the upstream legacy torch pickles.

Upstream MimicTalk / Real3D-Portrait checkpoints (``model_ckpt_steps_<N>.ckpt``) are written with
``torch.save(..., _use_new_zipfile_serialization=False)``: a top-level dict with ``epoch``,
``global_step``, ``checkpoint_callback_best``, ``optimizer_states`` and ``state_dict`` = {task
child name -> that child's state dict}; the loaders read ``state_dict['model']``
(mimictalk_architecture.md §6). We only ever read them with ``torch.load(weights_only=True)``,
whose restricted unpickler builds tensors, containers and plain scalars and refuses anything else;
a full unpickle (arbitrary code execution) never happens. numpy is never handed the file's data:
the only numpy objects upstream files hold are plain scalars (the float in
``checkpoint_callback_best``), and our own stand-ins registered under numpy's global names rebuild
them as Python numbers from a standard numeric dtype code and the scalar's bytes, refusing
anything else. Every failure is a CheckpointError saying the file is not an upstream checkpoint or
is damaged.
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


def read_safetensors_shapes(path: PathLike) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a safetensors header, without reading any tensor data: what a
    loader checks against the claims of the file's metadata before it allocates anything."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(int(n) for n in f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e


LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
"""First bytes of a legacy torch pickle (protocol 2, then torch's magic number): upstream .ckpt files."""


def looks_like_torch_checkpoint(path: PathLike) -> bool:
    """True when ``path`` starts like a torch checkpoint (legacy pickle, or torch's zip format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_TORCH_MAGIC))
    except OSError:
        return False
    return head == LEGACY_TORCH_MAGIC or head.startswith(b"PK\x03\x04")


def load_safetensors(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    metadata = read_safetensors_metadata(path)
    return load_file(str(path), device=str(device)), metadata


# ---------------------------------------------------------------- legacy upstream pickles


class _RefusedPickle(CheckpointError):
    """Raised from inside the restricted unpickler by our numpy stand-ins (carries the reason)."""


_NUMPY_CODES = {"b1": "?", "i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I",
                "i8": "q", "u8": "Q", "f2": "e", "f4": "f", "f8": "d", "c8": "F", "c16": "D"}
"""Standard numeric numpy dtype codes (as numpy pickles them) -> struct-style type characters.
Nothing else (object, void/structured, string, datetime, platform long double) is accepted."""


class _NumpyScalarType:
    """Stand-in registered under numpy's global name ``numpy.dtype`` for the restricted unpickler.

    A pickled numpy scalar is ``scalar(dtype(code, False, True) + BUILD state, data bytes)``. This
    class takes the place of ``numpy.dtype``: it accepts only a standard numeric code and the plain
    state numpy writes for such a dtype (version 3, a byte order, no sub-array / names / fields,
    no flags) and keeps them as plain values; no numpy object is built from the file's data, so a
    crafted dtype state (object flags, odd sizes) never reaches numpy."""

    __slots__ = ("code", "order", "built")

    def __new__(cls, code: Any = None, align: Any = False, copy: Any = True):
        if not isinstance(code, str) or code not in _NUMPY_CODES or align not in (False, 0) or copy not in (True, 1):
            raise _RefusedPickle(f"it builds a numpy dtype {code!r} (only plain numeric numbers are expected)")
        inst = super().__new__(cls)
        inst.code, inst.order, inst.built = code, "=", False
        return inst

    def __setstate__(self, state: Any) -> None:
        if getattr(self, "built", True) or not isinstance(state, tuple) or len(state) != 8:
            raise _RefusedPickle("it holds a malformed numpy dtype state")
        version, order, subarray, names, fields, elsize, alignment, flags = state
        if (type(version) is not int or version != 3 or order not in ("<", ">", "|", "=")
                or (subarray, names, fields) != (None, None, None)
                or any(type(v) is not int for v in (elsize, alignment, flags))
                or (elsize, alignment, flags) != (-1, -1, 0)):
            raise _RefusedPickle(f"it holds a numpy dtype state numpy never writes for a number ({state!r:.80})")
        self.order, self.built = order, True


def _numpy_scalar(dtype: Any, data: Any = None) -> Union[bool, int, float, complex]:
    """Stand-in registered under ``numpy[._]core.multiarray.scalar``: a plain Python number from a
    numeric code and exactly that many bytes; anything else is refused."""
    import struct

    if type(dtype) is not _NumpyScalarType or type(data) is not bytes:
        raise _RefusedPickle(f"it rebuilds a numpy scalar from a {type(dtype).__name__} and a {type(data).__name__}")
    char = _NUMPY_CODES[dtype.code]
    fmt = (">" if dtype.order == ">" else "<") + char
    if struct.calcsize(fmt) != len(data):
        raise _RefusedPickle(f"a numpy {dtype.code} scalar has {len(data)} bytes instead of {struct.calcsize(fmt)}")
    if char in "FD":  # complex: two floats
        real, imag = struct.unpack(fmt[0] + ("ff" if char == "F" else "dd"), data)
        return complex(real, imag)
    value = struct.unpack(fmt, data)[0]
    return bool(value) if char == "?" else value


def _numpy_stand_ins() -> list:
    """What the restricted unpickler may meet of numpy in an upstream checkpoint: plain scalars
    (a numpy float in ``checkpoint_callback_best``), rebuilt by our own stand-ins as Python numbers.
    numpy's own ``ndarray``, ``_reconstruct`` and ``dtype.__setstate__`` never see the file's data.
    Old pickles name ``numpy.core``, numpy 2 ``numpy._core``: both spellings are registered."""
    return [(_NumpyScalarType, "numpy.dtype"),
            (_numpy_scalar, "numpy.core.multiarray.scalar"), (_numpy_scalar, "numpy._core.multiarray.scalar")]


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL (\S+)")


def not_a_checkpoint(path: PathLike, detail: str) -> CheckpointError:
    """The refusal for a file that is not an upstream checkpoint (or is damaged)."""
    return CheckpointError(
        f"{path} is not an upstream MimicTalk/Real3D-Portrait checkpoint, or it is damaged ({detail}). "
        "Upstream checkpoints hold only tensors, dicts, lists, strings and numbers, and MimicTalk never "
        "unpickles anything else: download the official file again, or check that you picked the right file."
    )


def load_legacy_checkpoint(path: PathLike) -> dict:
    """Load an upstream ``.ckpt`` with ``torch.load(weights_only=True, map_location="cpu")``.

    Raises ``CheckpointError`` (the file is not an upstream checkpoint, or it is damaged) when the
    restricted unpickler refuses the file (it holds a class other than tensors, containers, plain
    scalars and numpy numbers), when it is truncated/corrupt, or when it is not a dict. Every
    failure inside the unpickler ends here: a hostile file cannot leave a half-built numpy object
    or a raw Python error behind.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_stand_ins()):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except _RefusedPickle as e:
        raise not_a_checkpoint(path, str(e)) from None
    except pickle.UnpicklingError as e:
        found = _UNSUPPORTED.search(str(e))
        detail = (f"it contains `{found.group(1)}`" if found else "its contents are not a valid checkpoint pickle")
        raise not_a_checkpoint(path, detail) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise not_a_checkpoint(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'unreadable'}; "
                               "it is probably truncated or corrupt") from None
    except Exception as e:  # noqa: BLE001 - anything else a crafted pickle provokes is a bad file too
        raise not_a_checkpoint(path, f"{type(e).__name__} while reading it") from None
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
