"""SECC map rendering speed: maps per second at 512² with a real-size face model.

    python -m bench.secc [--bfm BFM/] [--batches 1 8 32] [--devices cpu cuda] [--repeats 3]

Renders ``render_secc`` (zero-pose NCC-coloured BFM front mesh through the pure-PyTorch
rasteriser) for batches of random expressions and prints maps/s per device, dtype and batch size,
plus the blink edit (``apply_blink``) in frames/s. Without ``--bfm`` the synthetic face model of the
tests is used at the real model's size (35 709 vertices, ~70k triangles), which has the same cost
as the real one up to how many pixels each triangle covers. CUDA rows (fp32 and bf16 output; the
rasteriser itself always runs in fp32) appear when a GPU is present.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    from mimictalk_lib.face import apply_blink, load_face_model, render_secc

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bfm", default="", help="BFM folder (synthetic real-size face model if absent)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.bfm:
            face_model, note = load_face_model(args.bfm), args.bfm
        else:
            from tests.fixtures.synthetic_bfm import write_synthetic_face_model

            folder = write_synthetic_face_model(Path(tmp) / "bfm", grid=189, n_vertices=35709)
            face_model, note = load_face_model(folder), "synthetic"
    print(
        f"SECC maps at {args.size}², face model {note}: {face_model.n_vertices} vertices, "
        f"{face_model.secc_tri.shape[0]} triangles drawn; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
    )
    rows = []
    g = torch.Generator().manual_seed(0)
    for dev_name in args.devices:
        if dev_name == "cuda" and not torch.cuda.is_available():
            continue
        device = torch.device(dev_name)
        fm = face_model.to(device)
        dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
        for dtype in dtypes:
            for b in args.batches:
                id_ = torch.randn(80, generator=g).to(device)
                exp = (torch.randn(b, 64, generator=g) * 0.7).to(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                dt = _timed(lambda: render_secc(fm, id_, exp, dtype=dtype, size=args.size), device, args.repeats)
                peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
                rows.append((dev_name, str(dtype).replace("torch.", ""), f"render b={b}", b / dt, 1000 * dt / b, peak))
        secc = render_secc(fm, torch.zeros(80, device=device), torch.randn(8, 64, generator=g).to(device), size=args.size)
        closure = torch.linspace(0.2, 1.0, 8, dtype=torch.float64)
        dt = _timed(lambda: apply_blink(secc, closure), device, args.repeats)
        rows.append((dev_name, "float32", "blink 8 frames", 8 / dt, 1000 * dt / 8, "-"))

    print(f"\n| device | dtype | work | maps/s | ms/map | CUDA peak MiB |\n|---|---|---|---|---|---|")
    for dev, dt, work, rate, ms, peak in rows:
        print(f"| {dev} | {dt} | {work} | {rate:.1f} | {ms:.1f} | {peak} |")


if __name__ == "__main__":
    main()
