"""Crossing into Ray worker processes under the library's own name.

Inside ComfyUI this library is not the top-level package ``mimictalk_lib``: ComfyUI imports the
pack folder under a name of its own (``custom_nodes/comfyui-mimictalk`` ...), so classes are
``<pack>.mimictalk_lib.…``, a name a Ray worker cannot import. Three things make the same code
work from ComfyUI, a script and the CLI:

- :func:`runtime_env` ships this copy of the library to the workers (Ray ``py_modules``, given to
  ``ray.init`` when the library connects), where it is the top-level ``mimictalk_lib``;
- :class:`LibraryActor`, the one class Ray sees, is pickled by value (it names no pack module) and
  builds the real worker on the worker by its top-level import path;
- :func:`pack` pickles in-memory objects (a loaded renderer, a prepared identity ...) with every
  class of this library renamed to the top-level name, for :func:`unpack` on the worker.

Errors raised on a worker come back as ``RuntimeError("<ErrorType>: <message>")`` (a builtin type
every side can unpickle).
"""

from __future__ import annotations

import importlib
import io
import operator
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import torch

LIB = "mimictalk_lib"
_HERE = __name__.rsplit(".distributed.remote", 1)[0]  # this copy's name: 'mimictalk_lib' or '<pack>.mimictalk_lib'


def portable_name(module: str) -> str:
    """``module`` with this copy's package name replaced by the top-level ``mimictalk_lib``."""
    if module == _HERE or module.startswith(_HERE + "."):
        return LIB + module[len(_HERE):]
    return module


def target(obj: Any) -> str:
    """The top-level import path of a class or function of this library (for :class:`LibraryActor`)."""
    return f"{portable_name(obj.__module__)}.{obj.__qualname__}"


class _Import:
    """Pickles as ``importlib.import_module(name)``."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return importlib.import_module, (self.name,)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, (type, types.FunctionType)):
            module = getattr(obj, "__module__", None) or ""
            name = portable_name(module)
            if name != module:
                return operator.attrgetter(obj.__qualname__), (_Import(name),)
        elif isinstance(obj, torch.Tensor) and type(obj) is torch.Tensor and obj.device.type != "cpu":
            return obj.cpu().__reduce_ex__(pickle.HIGHEST_PROTOCOL)  # workers move it to their own device
        return NotImplemented


def pack(obj: Any) -> bytes:
    """``obj`` pickled so that a Ray worker with the top-level library unpickles it (tensors on the CPU)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def unpack(data: bytes) -> Any:
    """The object :func:`pack` made (only ever data this library's own driver packed)."""
    return pickle.loads(data)


def runtime_env() -> dict:
    """Ray ``runtime_env`` that ships this copy of the library to the workers as ``mimictalk_lib``."""
    return {"py_modules": [str(Path(__file__).resolve().parents[1])], "excludes": ["__pycache__", "*.pyc"]}


class LibraryActor:
    """The Ray actor class: ``LibraryActor(target, *args)`` builds ``target`` (a top-level import
    path, :func:`target`) on the worker; ``call(method, *args)`` runs one of its methods. Arguments
    and results are plain (str, int, dict, tensors, :func:`pack` ed bytes)."""

    def __init__(self, path: str, *args):
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as e:
            raise RuntimeError(f"this Ray worker cannot import {module} ({e}): install the pack's library on every "
                               "machine of the cluster or put it on the workers' PYTHONPATH (a Ray connection made by "
                               "mimictalk_lib itself ships it)") from None
        self._obj = _call(cls, *args)

    def call(self, method: str, *args):
        return _call(getattr(self._obj, method), *args)


def _call(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - re-raised as a builtin type the driver can always unpickle
        raise RuntimeError(f"{type(e).__name__}: {e}") from None


def register_by_value() -> None:
    """Ray pickles :class:`LibraryActor` with its code (cloudpickle by value): it needs no import of
    this module, whose name differs between the driver (maybe ``<pack>.mimictalk_lib``) and workers."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
