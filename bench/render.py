"""Renderer throughput and peak memory at the full configuration, per chunk size.

    python -m bench.render                      # CPU (and CUDA fp32 + bf16 when available), 8 frames
    python -m bench.render --device cpu --frames 8 --chunks 1,4,8
    python -m bench.render --device cuda --dtypes fp32,bf16,fp16 --frames 64
    python -m bench.render --tiny --device cpu  # smoke test: tiny renderer, 2 frames, chunks 1,2

Random weights (speed does not depend on the values; spectral norms are set to their converged
state so activations stay finite, as with trained weights), deterministic sampling, the MimicTalk
layout by default. Each (device, dtype, chunk size) runs in a fresh subprocess so its peak memory
is its own: CUDA = torch.cuda.max_memory_allocated, CPU = the process's peak resident set (model
weights included). One warm-up chunk is rendered first and not timed. "CPU s/frame" is the
process CPU time (all threads): robust on a shared machine, and on a GPU the host-side cost.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import _common as common

FULL_FRAMES, FULL_CHUNKS = 8, "1,4,8"
TINY_FRAMES, TINY_CHUNKS = 2, "1,2"
# A frontal camera of the official convention: c2w (4x4, row-major) then normalised intrinsics.
CAMERA = (1, 0, 0, 0, 0, -1, 0, 0.006, 0, 0, -1, 2.861, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0)


def _worker(args: argparse.Namespace) -> None:
    from mimictalk_lib.renderer import Renderer, RendererConfig, RenderSource
    from mimictalk_lib.renderer.volume import CAMERA_DIM
    from tests.fixtures.tiny_renderer import converge_spectral_norms_

    device, dtype, chunk = torch.device(args.device), common.DTYPES[args.dtypes], int(args.chunks)
    torch.manual_seed(0)
    cfg = RendererConfig.tiny(args.layout) if args.tiny else RendererConfig.full(args.layout)
    model = converge_spectral_norms_(Renderer(cfg).eval()).to(device=device, dtype=dtype)

    t, side, p = args.frames, cfg.secc_resolution, cfg.plane_resolution
    g = torch.Generator().manual_seed(0)

    def img(n: int, c: int = 3) -> torch.Tensor:
        return torch.rand(n, c, side, side, generator=g) * 2 - 1

    cam = torch.tensor(CAMERA)
    assert cam.numel() == CAMERA_DIM
    source = RenderSource(
        cano_planes=torch.randn(1, 3, cfg.plane_channels, p, p, generator=g) * 0.5,
        cano_secc=img(1), src_secc=img(1), kp_s=torch.rand(1, 68, 3, generator=g) * 2 - 1,
        ref_torso=img(1), bg=img(1), segmap=torch.rand(1, 6, side, side, generator=g).round(),
    )
    frames = dict(drv_secc=img(t), camera=cam.repeat(t, 1), kp_d=torch.rand(t, 68, 3, generator=g) * 2 - 1)
    source = RenderSource(*(v.to(device) for v in vars(source).values()))
    frames = {k: v.to(device) for k, v in frames.items()}
    with torch.inference_mode():
        prepared = model.prepare_source(source)  # per identity, once (not timed)
    model.render_frames(prepared, **{k: v[:chunk] for k, v in frames.items()}, chunk_size=chunk, output_device="cpu")

    common.reset_peak(device)
    cpu_start = time.process_time()
    _, seconds = common.timed(lambda: model.render_frames(prepared, **frames, chunk_size=chunk, output_device="cpu"), device)
    common.emit({"seconds": seconds, "cpu_seconds": time.process_time() - cpu_start,
                 "peak_bytes": common.peak_bytes(device)})


def main() -> None:
    ap = common.parser(__doc__)
    common.add_common_args(ap, dtypes=("fp32", "bf16", "fp16"))
    ap.add_argument("--frames", type=int, default=None,
                    help=f"frames rendered per measurement (default {FULL_FRAMES}; --tiny: {TINY_FRAMES})")
    ap.add_argument("--chunks", default=None,
                    help=f"comma list of chunk sizes (default {FULL_CHUNKS}; --tiny: {TINY_CHUNKS})")
    ap.add_argument("--layout", default="mimictalk", choices=["mimictalk", "real3d"])
    args = ap.parse_args()
    args.frames = common.tiny_default(args.frames, FULL_FRAMES, TINY_FRAMES, args.tiny)
    args.chunks = common.tiny_default(args.chunks, FULL_CHUNKS, TINY_CHUNKS, args.tiny)
    if args.worker:
        return _worker(args)

    configs = common.plan(ap, args, allowed=("fp32", "bf16", "fp16"))
    rows, failed = common.sweep("render", args, configs, "--chunks", common.comma_list(args.chunks, int),
                                extra=["--frames", str(args.frames), "--layout", args.layout])
    n = args.frames
    common.print_table(
        ["device", "dtype", "chunk", "frames", "s/frame (wall)", "frames/s", "CPU s/frame", "peak memory (GiB)"],
        [[r["device"], r["dtype"], r["value"], n, f"{r['seconds'] / n:.3f}", f"{n / r['seconds']:.2f}",
          f"{r['cpu_seconds'] / n:.2f}", f"{r['peak_bytes'] / 2**30:.2f}"] for r in rows])
    common.finish(failed)


if __name__ == "__main__":
    main()
