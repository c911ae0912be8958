"""SD-Hybrid adaptation speed and peak memory at the full configuration.

    python -m bench.adapt                              # CPU (2 steps) + CUDA fp32/bf16 when available
    python -m bench.adapt --device cpu --batches 1 --steps 2
    python -m bench.adapt --device cuda --dtypes fp32,bf16 --batches 1,2 --steps 20
    python -m bench.adapt --tiny --device cpu          # smoke test: tiny renderer, batch 1, 1 step

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
import time

import torch

from bench import _common as common

FULL_BATCHES, TINY_BATCHES = "1,2", "1"
CPU_STEPS, CUDA_STEPS, TINY_STEPS = 2, 20, 1  # timed steps per run
IDENTITY_FRAMES = 8
PROJECTED_STEPS = (1000, 2000)  # upstream README: 2000 steps for a video


def _worker(args: argparse.Namespace) -> None:
    from mimictalk_lib.adapt.lpips import LPIPS
    from mimictalk_lib.adapt.train import AdaptConfig, Trainer
    from tests.adapt.synthetic import make_data
    from tests.fixtures.tiny_renderer import random_renderer

    device, dtype = torch.device(args.device), common.DTYPES[args.dtypes]
    base = random_renderer("mimictalk", seed=0, tiny=args.tiny).to(device=device, dtype=dtype)
    data = make_data(base, frames=IDENTITY_FRAMES)
    lpips = LPIPS().to(device)
    config = AdaptConfig(steps=args.steps + 1, batch_size=int(args.batches), preview_every=0)
    trainer = Trainer(base, data, lpips, config, device=device)

    trainer.train_step()  # warm-up (allocator, kernels)
    common.sync(device)
    common.reset_peak(device)
    times, cpu_times = [], []
    for _ in range(args.steps):
        c0 = time.process_time()
        _, seconds = common.timed(trainer.train_step, device)
        times.append(seconds)
        cpu_times.append(time.process_time() - c0)  # all threads: robust to a loaded machine
    common.emit({"sec_per_step": sum(times) / len(times), "cpu_sec_per_step": sum(cpu_times) / len(cpu_times),
                 "peak_bytes": common.peak_bytes(device)})


def _hms(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def main() -> None:
    ap = common.parser(__doc__)
    common.add_common_args(ap)
    ap.add_argument("--batches", default=None,
                    help=f"comma list of batch sizes (default {FULL_BATCHES}; --tiny: {TINY_BATCHES})")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"timed steps per run (default {CPU_STEPS} on cpu, {CUDA_STEPS} on cuda; "
                    f"--tiny: {TINY_STEPS})")
    args = ap.parse_args()
    args.batches = common.tiny_default(args.batches, FULL_BATCHES, TINY_BATCHES, args.tiny)
    if args.worker:
        return _worker(args)

    rows, failed = [], []
    for device, dtypes in common.plan(ap, args):
        steps = common.tiny_default(args.steps, CPU_STEPS if device == "cpu" else CUDA_STEPS, TINY_STEPS, args.tiny)
        done, bad = common.sweep("adapt", args, [(device, dtypes)], "--batches", common.comma_list(args.batches, int),
                                 extra=["--steps", str(steps)])
        rows, failed = rows + done, failed + bad
    common.print_table(
        ["device", "dtype", "batch", "s/step (wall)", "CPU s/step", "peak memory"]
        + [f"{n} steps" for n in PROJECTED_STEPS],
        [[r["device"], r["dtype"], r["value"], f"{r['sec_per_step']:.2f}", f"{r['cpu_sec_per_step']:.2f}",
          f"{r['peak_bytes'] / 2**30:.2f} GiB"] + [_hms(n * r["sec_per_step"]) for n in PROJECTED_STEPS]
         for r in rows])
    common.finish(failed)


if __name__ == "__main__":
    main()
