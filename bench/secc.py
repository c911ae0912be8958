"""SECC map rendering speed: maps per second at 512² with a real-size face model.

    python -m bench.secc                                 # CPU fp32 + CUDA fp32/bf16 when available
    python -m bench.secc --device cpu --batches 1,8,32 --repeats 3 [--bfm BFM/]
    python -m bench.secc --device cuda --dtypes fp32,bf16 --size 512
    python -m bench.secc --tiny --device cpu             # smoke test: small face model, 64², 1 repeat

Renders ``render_secc`` (zero-pose NCC-coloured BFM front mesh through the pure-PyTorch
rasteriser) for batches of random expressions and prints maps/s per device, dtype and batch size,
plus the blink edit (``apply_blink``) in frames/s. Without ``--bfm`` the synthetic face model of the
tests is used at the real model's size (35 709 vertices, ~70k triangles), which has the same cost
as the real one up to how many pixels each triangle covers. The dtype is that of the output maps
(the rasteriser itself always runs in fp32); each timing is the best of ``--repeats`` runs after
one warm-up run. CUDA rows add the peak memory (``max_memory_allocated``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench import _common as common

REAL_GRID, REAL_VERTICES = 189, 35709  # synthetic mesh at the BFM front model's size
FULL = {"batches": "1,8,32", "repeats": 3, "size": 512}
TINY = {"batches": "1,2", "repeats": 1, "size": 64}  # with the tests' default synthetic model
BLINK_FRAMES = 8


def _best_time(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up run."""
    fn()
    return min(common.timed(fn, device)[1] for _ in range(repeats))


def _face_model(bfm: str, tiny: bool):
    from mimictalk_lib.face import load_face_model

    if bfm:
        return load_face_model(bfm), bfm
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model

    with tempfile.TemporaryDirectory() as tmp:
        size = {} if tiny else {"grid": REAL_GRID, "n_vertices": REAL_VERTICES}
        return load_face_model(write_synthetic_face_model(Path(tmp) / "bfm", **size)), "synthetic"


def main() -> None:
    from mimictalk_lib.face import apply_blink, render_secc

    ap = common.parser(__doc__)
    common.add_common_args(ap, workers=False)
    ap.add_argument("--bfm", default="", help="BFM folder (synthetic real-size face model if absent)")
    ap.add_argument("--batches", default=None,
                    help=f"comma list of batch sizes (default {FULL['batches']}; --tiny: {TINY['batches']})")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"timed runs, best kept (default {FULL['repeats']}; --tiny: {TINY['repeats']})")
    ap.add_argument("--size", type=int, default=None, help=f"map side (default {FULL['size']}; --tiny: {TINY['size']})")
    args = ap.parse_args()
    for name in FULL:
        setattr(args, name, common.tiny_default(getattr(args, name), FULL[name], TINY[name], args.tiny))
    configs = common.plan(ap, args)

    face_model, note = _face_model(args.bfm, args.tiny)
    print(f"# SECC maps at {args.size}², face model {note}: {face_model.n_vertices} vertices, "
          f"{face_model.secc_tri.shape[0]} triangles drawn")
    common.print_machines(device for device, _ in configs)
    rows = []
    g = torch.Generator().manual_seed(0)
    for dev_name, dtypes in configs:
        device = torch.device(dev_name)
        fm = face_model.to(device)
        for dtype_name in dtypes:
            dtype = common.DTYPES[dtype_name]
            for b in common.comma_list(args.batches, int):
                id_ = torch.randn(80, generator=g).to(device)
                exp = (torch.randn(b, 64, generator=g) * 0.7).to(device)
                common.reset_peak(device)
                dt = _best_time(lambda: render_secc(fm, id_, exp, dtype=dtype, size=args.size), device, args.repeats)
                peak = f"{common.peak_bytes(device) / 2**20:.0f}" if device.type == "cuda" else "-"
                rows.append((dev_name, dtype_name, f"render b={b}", f"{b / dt:.1f}", f"{1000 * dt / b:.1f}", peak))
        exp = torch.randn(BLINK_FRAMES, 64, generator=g).to(device)
        secc = render_secc(fm, torch.zeros(80, device=device), exp, size=args.size)
        closure = torch.linspace(0.2, 1.0, BLINK_FRAMES, dtype=torch.float64)
        dt = _best_time(lambda: apply_blink(secc, closure), device, args.repeats)
        rows.append((dev_name, "fp32", f"blink {BLINK_FRAMES} frames", f"{BLINK_FRAMES / dt:.1f}",
                     f"{1000 * dt / BLINK_FRAMES:.1f}", "-"))
    common.print_table(["device", "dtype", "work", "maps/s", "ms/map", "CUDA peak MiB"], rows)


if __name__ == "__main__":
    main()
