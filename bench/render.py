"""Renderer throughput and peak memory at the full configuration, per chunk size.

    python bench/render.py                      # CPU (and CUDA fp32 + bf16 when available), 8 frames
    python bench/render.py --device cpu --frames 8 --chunks 1,4,8
    python bench/render.py --device cuda --dtypes fp32,bf16 --frames 64

Random weights (speed does not depend on the values; spectral norms are set to their converged
state so activations stay finite, as with trained weights), deterministic sampling, the MimicTalk
layout by default. Each (device, dtype, chunk size) runs in a fresh subprocess so its peak memory
is its own: CUDA = torch.cuda.max_memory_allocated, CPU = the process's peak resident set (model
weights included). One warm-up chunk is rendered first and not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from mimictalk_lib.renderer import Renderer, RendererConfig
    from mimictalk_lib.renderer.volume import CAMERA_DIM

    device, dtype = torch.device(args.device), getattr(torch, DTYPES[args.dtype])
    torch.manual_seed(0)
    cfg = RendererConfig.full(args.layout)
    model = Renderer(cfg).eval()
    with torch.no_grad():  # converged spectral norms (see module doc)
        for m in model.modules():
            if hasattr(m, "weight_orig") and hasattr(m, "weight_u"):
                u, _, vh = torch.linalg.svd(m.weight_orig.reshape(m.weight_orig.shape[0], -1), full_matrices=False)
                m.weight_u.copy_(u[:, 0])
                m.weight_v.copy_(vh[0])
    model.to(device=device, dtype=dtype)

    t, side, p = args.frames, cfg.secc_resolution, cfg.plane_resolution
    g = torch.Generator().manual_seed(0)

    def img(n: int, c: int = 3) -> torch.Tensor:
        return torch.rand(n, c, side, side, generator=g) * 2 - 1

    cam = torch.tensor([1, 0, 0, 0, 0, -1, 0, 0.006, 0, 0, -1, 2.861, 0, 0, 0, 1,
                        4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0])
    assert cam.numel() == CAMERA_DIM
    inputs = dict(
        cano_planes=torch.randn(1, 3, cfg.plane_channels, p, p, generator=g) * 0.5,
        cano_secc=img(1), src_secc=img(1), drv_secc=img(t), camera=cam.repeat(t, 1),
        ref_torso=img(1), bg=img(1), segmap=torch.rand(1, 6, side, side, generator=g).round(),
        kp_s=torch.rand(1, 68, 3, generator=g) * 2 - 1, kp_d=torch.rand(t, 68, 3, generator=g) * 2 - 1,
    )
    inputs = {k: v.to(device) for k, v in inputs.items()}
    warm = {k: (v[: args.chunk] if k in ("drv_secc", "camera", "kp_d") else v) for k, v in inputs.items()}
    model.render_frames(**warm, chunk_size=args.chunk, output_device="cpu")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    model.render_frames(**inputs, chunk_size=args.chunk, output_device="cpu")
    sync()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_gib": peak, "threads": torch.get_num_threads()}))


def _machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, plus cuda when available)")
    ap.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16 (default: fp32 on cpu, fp32,bf16 on cuda)")
    ap.add_argument("--frames", type=int, default=8, help="frames rendered per measurement")
    ap.add_argument("--chunks", default="1,4,8", help="comma list of chunk sizes")
    ap.add_argument("--layout", default="mimictalk", choices=["mimictalk", "real3d"])
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        _worker(args)
        return

    import torch

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        dtypes = args.dtypes.split(",") if args.dtypes else (["fp32"] if device == "cpu" else ["fp32", "bf16"])
        print(f"# {device}: {_machine(device)}", flush=True)
        for dtype in dtypes:
            if device == "cpu" and dtype != "fp32":
                print(f"# skipping {dtype} on cpu (half precision is GPU-only)")
                continue
            for chunk in (int(c) for c in args.chunks.split(",")):
                cmd = [sys.executable, __file__, "--_worker", "--device", device, "--dtype", dtype, "--chunk", str(chunk),
                       "--frames", str(args.frames), "--layout", args.layout]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(f"# {device} {dtype} chunk {chunk} failed:\n{done.stderr[-2000:]}", flush=True)
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append((device, dtype, chunk, args.frames, r["seconds"] / args.frames, args.frames / r["seconds"],
                             r.get("cpu_seconds", float("nan")) / args.frames, r["peak_gib"]))
                print(f"# done {device} {dtype} chunk {chunk}: {rows[-1][4]:.2f} s/frame", flush=True)
    # "CPU s/frame" is the process CPU time (all threads): robust on a shared machine, and on a
    # GPU it shows the host-side cost.
    print("\n| device | dtype | chunk | frames | s/frame (wall) | frames/s | CPU s/frame | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for device, dtype, chunk, frames, spf, fps, cpu, peak in rows:
        print(f"| {device} | {dtype} | {chunk} | {frames} | {spf:.3f} | {fps:.2f} | {cpu:.2f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
