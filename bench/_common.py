"""What the bench scripts share: the common flags (``--device``, ``--dtypes``, ``--tiny``), the
(device, dtype) plan, the machine line, timing and peak memory, worker subprocesses, the table.

Every script runs from the repository root as a module (``python -m bench.<name>``). Scripts that
report a process's peak memory measure each configuration in a fresh worker process
(``python -m bench.<name> --worker ...``) that prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.utils import check_device_dtype

ROOT = Path(__file__).resolve().parents[1]  # the repository root: workers run from here
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULT = "RESULT "  # prefix of a worker's result line on its stdout
T = TypeVar("T")


# --- flags and plan ---------------------------------------------------------------------------


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring."""
    return argparse.ArgumentParser(prog=f"python -m {_caller_module()}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _caller_module() -> str:
    spec = sys.modules["__main__"].__spec__  # set by ``python -m bench.<name>``
    return spec.name if spec is not None else "bench"


def add_common_args(ap: argparse.ArgumentParser, dtypes: Sequence[str] = ("fp32", "bf16"),
                    workers: bool = True) -> None:
    """``--device``, ``--dtypes`` (from ``dtypes``), ``--tiny``, and for scripts that measure in
    worker processes the hidden ``--worker``."""
    half = [d for d in dtypes if d != "fp32"]
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="cpu or cuda (default: cpu, plus cuda when available)")
    ap.add_argument("--dtypes", default=None,
                    help=f"comma list of {','.join(dtypes)} ({'/'.join(half)} on cuda only; default: fp32 on cpu, "
                    "fp32,bf16 on cuda)" if half else "fp32 (the only precision this script measures)")
    ap.add_argument("--tiny", action="store_true",
                    help="the tests' tiny configuration: a smoke test of the script in seconds")
    if workers:
        ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def plan(ap: argparse.ArgumentParser, args: argparse.Namespace,
         allowed: Sequence[str] = ("fp32", "bf16"), cpu_bf16: bool = False) -> list[tuple[str, list[str]]]:
    """The (device, dtype names) to measure. Without ``--device``: cpu, plus cuda when available.
    Half precision asked for on an explicit ``--device cpu`` is an error (bf16 is allowed there
    with ``cpu_bf16`` on a CPU with native bf16, see check_device_dtype); with the default device
    list the cpu runs only the fp32 of ``--dtypes`` and says what it skipped."""
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        ap.error("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False); "
                 "use --device cpu")
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if cuda else [])
    asked = args.dtypes.split(",") if args.dtypes else None
    for name in asked or ():
        if name not in allowed:
            ap.error(f"--dtypes: unknown or unsupported dtype {name!r}; choose from {','.join(allowed)}")
    out = []
    for device in devices:
        names = asked or (["fp32"] if device == "cpu" else [d for d in ("fp32", "bf16") if d in allowed])
        usable = []
        for name in names:
            try:
                check_device_dtype(device, DTYPES[name], cpu_bf16=cpu_bf16)
            except InputError as exc:
                if args.device:
                    ap.error(f"--dtypes {name} with --device {device}: {exc}")
                print(f"# {device}: {name} skipped (half precision runs on a GPU only)", file=sys.stderr)
                continue
            usable.append(name)
        if usable:
            out.append((device, usable))
    return out


def tiny_default(value: T | None, full: T, tiny: T, is_tiny: bool) -> T:
    """``value`` when the user gave it, else the full or the tiny default."""
    if value is not None:
        return value
    return tiny if is_tiny else full


def comma_list(text: str, kind: Callable[[str], T] = str) -> list[T]:
    return [kind(v) for v in text.split(",") if v.strip()]


# --- machine, timing, memory ------------------------------------------------------------------


def machine(device: str) -> str:
    """One line naming the hardware and software a table was measured on."""
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), driver {_nvidia_driver()}, "
                f"CUDA {torch.version.cuda}, torch {torch.__version__}")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _nvidia_driver() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown"
    done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def print_machines(devices: Iterable[str]) -> None:
    for device in devices:
        print(f"# {device}: {machine(device)}", flush=True)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds, device work included."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak-memory window (the CPU peak is the worker's whole life)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """CUDA: ``max_memory_allocated`` since :func:`reset_peak`; CPU: this process's peak resident
    set (weights included; ``ru_maxrss`` is in KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- worker processes -------------------------------------------------------------------------


def emit(result: dict) -> None:
    """A worker's answer to its parent: one ``RESULT {json}`` line on stdout."""
    print(RESULT + json.dumps(result), flush=True)


def run_worker(script: str, options: Sequence[str]) -> dict | None:
    """Run ``python -m bench.<script> --worker <options>`` from the repository root in a fresh
    process (its own peak memory); its result dict, or None (with its stderr shown) on failure."""
    cmd = [sys.executable, "-m", f"bench.{script}", "--worker", *options]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    print(f"# worker failed (exit {done.returncode}): {' '.join(cmd[1:])}\n{done.stderr[-3000:]}",
          file=sys.stderr, flush=True)
    return None


def sweep(script: str, args: argparse.Namespace, configs: list[tuple[str, list[str]]],
          option: str, values: Sequence[object], extra: Sequence[str] = ()) -> tuple[list[dict], list[str]]:
    """One worker per (device, dtype, value of ``option``), in the order of ``configs``; every
    worker also gets ``extra``, and ``--tiny`` when it was given. Returns the result dicts (each
    with ``device``, ``dtype`` and ``value`` added) and the labels of the runs that failed."""
    print_machines(device for device, _ in configs)
    rows, failed = [], []
    for device, dtypes in configs:
        for dtype in dtypes:
            for value in values:
                label = f"{device} {dtype} {option} {value}"
                options = ["--device", device, "--dtypes", dtype, option, str(value), *extra]
                result = run_worker(script, options + (["--tiny"] if args.tiny else []))
                if result is None:
                    failed.append(label)
                    continue
                rows.append({"device": device, "dtype": dtype, "value": value, **result})
                print(f"# done {label}", file=sys.stderr, flush=True)
    return rows, failed


# --- output -----------------------------------------------------------------------------------


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A markdown table (cells already formatted), after a blank line."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def finish(failed: Sequence[str]) -> None:
    """Exit non-zero, naming them, when some configurations failed (after the table)."""
    if failed:
        raise SystemExit(f"{len(failed)} configuration(s) failed: {'; '.join(failed)} (see the log above)")
