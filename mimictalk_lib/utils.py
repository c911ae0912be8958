"""Small helpers shared by every part of the library: logging, shape checks, dtype policy,
progress callbacks."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

import torch

from .errors import InputError

logger = logging.getLogger("MimicTalk")


def count(n: int, noun: str) -> str:
    """``n`` with ``noun`` in the singular or plural: "1 frame", "3 frames" (nouns with a plain -s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
"""The library's one logger. No handlers are attached here: the host (ComfyUI or a script)
configures logging."""

ProgressFn = Callable[..., None]
"""``on_step(done, total, **info)``: called after each unit of a long loop (training step,
ODE step, render chunk). It may raise to interrupt the loop (ComfyUI's Cancel does this);
the library lets that exception propagate after leaving a consistent state behind."""


def report(on_step: Optional[ProgressFn], done: int, total: int, **info) -> None:
    """Call ``on_step`` if one was given."""
    if on_step is not None:
        on_step(done, total, **info)


def check_shape(t: torch.Tensor, shape: Sequence[Optional[int]], name: str) -> None:
    """Raise an InputError unless ``t`` has ``len(shape)`` dims and matches every non-None size.

    >>> check_shape(torch.zeros(1, 9, 1024), (None, None, 1024), "hubert")
    """
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise InputError(f"{name}: expected shape {want}, got {list(t.shape)}")


_HALF = (torch.float16, torch.bfloat16)


def cpu_bf16_native() -> bool:
    """True when this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX tiles, e.g. Intel
    Sapphire Rapids or AMD Zen 4 and later). Without it oneDNN emulates bf16, slower than fp32.
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is True on any AVX-512 CPU, so it is not
    the test.)"""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def check_device_dtype(device: torch.device | str, dtype: torch.dtype, cpu_bf16: bool = False) -> None:
    """Refuse half precision on the CPU: fp16 kernels are missing or slow there and bf16
    changes the numerics. Callers pass the host's device and dtype.

    ``cpu_bf16=True`` (call sites whose bf16 loss on the CPU is measured and documented, an
    opt-in that is never the default) lets bf16 through on a CPU with native bf16
    (:func:`cpu_bf16_native`); fp16 on the CPU is refused always."""
    device = torch.device(device)
    if device.type != "cpu" or dtype not in _HALF:
        return
    if cpu_bf16 and dtype == torch.bfloat16:
        if cpu_bf16_native():
            return
        raise InputError(
            "precision torch.bfloat16 was requested on the CPU, but this CPU has no native bf16 "
            "arithmetic (AVX512-BF16 or AMX), where it would be slower than fp32. Use fp32 on this CPU."
        )
    raise InputError(
        f"precision {dtype} was requested on the CPU; half precision is only supported on a "
        "GPU. Use fp32 (or 'auto') when running on the CPU."
    )


SMALL_TENSOR_THREADS_ENV = "MIMICTALK_SMALL_TENSOR_THREADS"
DEFAULT_SMALL_TENSOR_THREADS = 1
"""Intra-op threads for loops of many small CPU ops (the 3DMM fit, landmark post-processing):
each op is microseconds of work, so waking a second thread costs more than it saves, and on a
CPU shared with other work a stalled thread holds every op up (docs/benchmarks.md, identity
preparation: 1 thread was 8x faster than 2 on the 2-core development machine under load)."""


def small_tensor_threads(threads: Optional[int] = None) -> int:
    """The thread count for small-tensor loops: ``threads`` if given, else the environment
    variable ``MIMICTALK_SMALL_TENSOR_THREADS``, else 1. 0 means "leave torch's setting"."""
    text = None
    if threads is None:
        text = os.environ.get(SMALL_TENSOR_THREADS_ENV, "").strip()
        threads = DEFAULT_SMALL_TENSOR_THREADS if not text else (int(text) if text.isdigit() else -1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        where = f"environment variable {SMALL_TENSOR_THREADS_ENV}" if text else "threads"
        raise InputError(f"{where} must be a whole number of CPU threads (0 = torch's own setting), "
                         f"got {text if text else threads!r}")
    return threads


@contextmanager
def cpu_threads(device: torch.device | str, threads: Optional[int] = None) -> Iterator[None]:
    """Run the block with :func:`small_tensor_threads` intra-op threads when ``device`` is the CPU,
    restoring the process's setting afterwards (also on error or Cancel). ``torch.set_num_threads``
    is process-wide, so other work the process runs meanwhile shares the setting; on a GPU nothing
    changes."""
    n = small_tensor_threads(threads)
    before = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n in (0, before):
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
