"""SD-Hybrid adaptation speed and peak memory at the full configuration.

    python bench/adapt.py                              # CPU (2 steps) + CUDA fp32/bf16 when available
    python bench/adapt.py --device cpu --batches 1 --steps 2
    python bench/adapt.py --device cuda --dtypes fp32,bf16 --batches 1,2 --steps 20

Random weights (speed does not depend on the values), the MimicTalk layout, LoRA r=2 on
``secc2plane_sr``, a synthetic 512² identity of 8 frames with procedural SECC maps (the BFM SECC
rasteriser is not included: see bench/secc.py for its per-frame cost; adaptation renders one
driving map per sample per step, plus a blink edit every 4 steps), LPIPS with random AlexNet
weights (same compute as the real ones), upstream settings otherwise (train mode, stochastic ray
sampling, all losses). Each (device, dtype, batch) runs in a fresh subprocess so its peak memory
is its own: CUDA = torch.cuda.max_memory_allocated, CPU = the process's peak resident set (model
weights included). One warm-up step is not timed. The projection multiplies the mean step time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import resource

    import torch

    from mimictalk_lib.adapt.lpips import LPIPS
    from mimictalk_lib.adapt.train import AdaptConfig, Trainer
    from tests.adapt.synthetic import make_data
    from tests.fixtures.tiny_renderer import random_renderer

    device, dtype = torch.device(args.device), getattr(torch, DTYPES[args.dtype])
    base = random_renderer("mimictalk", seed=0, tiny=args.tiny).to(device=device, dtype=dtype)
    data = make_data(base, frames=8)
    lpips = LPIPS().to(device)
    trainer = Trainer(base, data, lpips, AdaptConfig(steps=args.steps + 1, batch_size=args.batch, preview_every=0), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    trainer.train_step()  # warm-up (allocator, kernels)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)  # all threads: robust to a loaded machine
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"sec_per_step": sum(times) / len(times), "cpu_sec_per_step": sum(cpu_times) / len(cpu_times),
                      "peak_bytes": peak}))


def _run(device: str, dtype: str, batch: int, steps: int, tiny: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--device", device, "--dtypes", dtype,
           "--batches", str(batch), "--steps", str(steps)] + (["--tiny"] if tiny else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--dtypes", default=None, help="comma list of fp32,bf16 (bf16 on CUDA only); default fp32 on CPU, fp32,bf16 on CUDA")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default: 2 on CPU, 20 on CUDA)")
    ap.add_argument("--tiny", action="store_true", help="tiny configuration (smoke test of the script)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.dtype, args.batch = args.dtypes, int(args.batches)
        return _worker(args)

    import torch

    sys.path.insert(0, str(ROOT))
    from bench.render import _machine as machine  # one machine description for every bench table

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        dtypes = (args.dtypes or ("fp32" if device == "cpu" else "fp32,bf16")).split(",")
        steps = args.steps or (2 if device == "cpu" else 20)
        print(f"# {device}: {machine(device)}", flush=True)
        for dtype in dtypes:
            if device == "cpu" and dtype != "fp32":
                continue  # half precision is GPU-only in this pack
            for batch in (int(b) for b in args.batches.split(",")):
                r = _run(device, dtype, batch, steps, args.tiny)
                rows.append((device, dtype, batch, r))
                print(f"  done {device} {dtype} batch {batch}: {r}", flush=True)

    print()
    print("| device | dtype | batch | s/step (wall) | CPU s/step | peak memory | 1000 steps | 2000 steps |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for device, dtype, batch, r in rows:
        if "error" in r:
            print(f"| {device} | {dtype} | {batch} | failed: {r['error']} | | | | |")
            continue
        s = r["sec_per_step"]
        print(f"| {device} | {dtype} | {batch} | {s:.2f} | {r['cpu_sec_per_step']:.2f} | "
              f"{r['peak_bytes'] / 2**30:.2f} GiB | {_hms(1000 * s)} | {_hms(2000 * s)} |")


def _hms(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


if __name__ == "__main__":
    main()
