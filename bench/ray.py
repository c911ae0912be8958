"""Ray scale-out: throughput against the number of render workers (issue 17).

A local Ray cluster (``ray.init(num_cpus=max workers)``), one job of ``--frames`` frames split in
ranges of ``--range-frames``, rendered by 1, 2, ... CPU workers (the tiny renderer with --tiny,
else the tests' tiny renderer too: the full one takes ~17 s/frame on a 2-core CPU). Columns:
how the workers get the models (``files``: each loads them from disk, as the CLI; ``memory``: the
driver's loaded renderer and face model go through Ray's object store, as the Render / Dub nodes'
ray_address offload), worker start-up until every worker has its models, render wall time,
frames/s, speed-up over one worker (same models column), and the size of a 512² uint8 frame moved
back to the driver.

    python -m bench.ray                     # workers 1,2; 24 frames; models from files
    python -m bench.ray --workers 1,2,4 --frames 48 --models files,memory
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench import _common as common

HEADER = ("workers", "models", "frames", "start-up s", "render s", "frames/s", "speed-up")


def _assets(root: Path, frames: int):
    from mimictalk_lib.distributed.worker import ModelFiles, RenderJob
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model
    from tests.fixtures.tiny_a2m import speech_like
    from tests.fixtures.tiny_renderer import random_renderer
    from tests.nodes.tiny_assets import _save_converted, write_wav
    from tests.pipeline.conftest import make_identity, motion
    from mimictalk_lib.face import load_face_model

    _save_converted(root / "renderer", random_renderer("mimictalk", seed=0), "renderer")
    bfm = write_synthetic_face_model(root / "bfm", derived=False)
    make_identity(load_face_model(bfm), frames=4).save(root / "who.identity.safetensors")
    torch.save(motion(frames), root / "motion.pt")
    write_wav(root / "speech.wav", speech_like(frames / 25, 16000), 16000)
    models = ModelFiles(renderer=str(root / "renderer"), face_model=str(bfm), device="cpu")

    def job(name: str) -> RenderJob:
        return RenderJob(name=name, audio=str(root / "speech.wav"), out=str(root / f"{name}.mp4"),
                         identity=str(root / "who.identity.safetensors"), motion=str(root / "motion.pt"), pose="identity")

    return models, job


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--workers", default="1,2", help="comma list of worker counts (default 1,2)")
    ap.add_argument("--frames", type=int, default=None, help="frames of the job (default 24; --tiny: 4)")
    ap.add_argument("--range-frames", type=int, default=4, help="frames per work item (default 4)")
    ap.add_argument("--chunk-size", type=int, default=2, help="frames per renderer call (default 2)")
    ap.add_argument("--models", default="files", help="comma list of files / memory (default files)")
    ap.add_argument("--device", choices=("cpu",), default="cpu", help="cpu (Ray CPU workers; on GPUs see docs/scale.md)")
    ap.add_argument("--tiny", action="store_true", help="a smoke test: 4 frames")
    args = ap.parse_args()
    frames = common.tiny_default(args.frames, 24, 4, args.tiny)
    counts = common.comma_list(args.workers, int)
    modes = common.comma_list(args.models, str)
    if set(modes) - {"files", "memory"}:
        raise SystemExit(f"--models: files and/or memory, got {args.models}")
    ray = __import__("mimictalk_lib.distributed.cluster", fromlist=["import_ray"]).import_ray()
    from mimictalk_lib.distributed.cluster import RayRenderer
    from mimictalk_lib.face import load_face_model
    from mimictalk_lib.renderer import load_renderer

    common.print_machines(["cpu"])
    rows, base = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        models, job = _assets(Path(tmp), frames)
        ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(common.ROOT), "OMP_NUM_THREADS": "1"}})
        try:
            for mode in modes:
                for n in counts:
                    t0 = time.perf_counter()
                    if mode == "files":
                        pool = RayRenderer(models, workers=n)
                    else:  # loaded here, sent through the object store (what the nodes do)
                        loaded = {"renderer": load_renderer(models.renderer), "face_model": load_face_model(models.face_model)}
                        pool = RayRenderer(loaded=loaded, workers=n)
                    ray.get([a.call.remote("info") for a in pool.actors])  # every worker has its models
                    load = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    (result,) = pool.run([job(f"{mode}{n}")], range_frames=args.range_frames, chunk_size=args.chunk_size)
                    wall = time.perf_counter() - t0
                    pool.shutdown()
                    if not result.ok:
                        raise SystemExit(f"{n} workers ({mode}): {result.error}")
                    fps = frames / wall
                    base.setdefault(mode, fps)
                    rows.append((n, mode, frames, f"{load:.1f}", f"{wall:.1f}", f"{fps:.3f}", f"{fps / base[mode]:.2f}"))
        finally:
            ray.shutdown()
    payload = torch.zeros(512, 512, 3, dtype=torch.uint8)
    common.print_table(HEADER, rows)
    print(f"\n512² uint8 frame back to the driver: {payload.numel() / 2**20:.2f} MiB "
          f"(at 57.6 frames/s per H100, bf16 chunk 8: {57.6 * payload.numel() / 2**20:.0f} MiB/s per GPU)")


if __name__ == "__main__":
    main()
