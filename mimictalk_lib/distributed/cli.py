"""``python -m mimictalk_lib render``: speech -> talking-head mp4(s), in this process or across a
Ray cluster (``--ray [ADDRESS]``), one job or a jobs file (:mod:`.jobs`).

Examples::

    python -m mimictalk_lib render --adapter anna.safetensors --audio lecture.wav --out lecture.mp4 --ray
    python -m mimictalk_lib render --jobs batch.json --ray ray://head:10001
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import MimicTalkError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mimictalk_lib render",
        description="Render talking-head videos from speech, in this process or on a Ray cluster (--ray). The frames "
                    "equal a single-process render whatever the split.")
    p.add_argument("--jobs", help="a jobs file (JSON: who x audio and/or a list of jobs); replaces the single-job options")
    p.add_argument("--audio", help="speech: an audio or video file (also the soundtrack)")
    p.add_argument("--adapter", help="personalised adapter (.safetensors)")
    p.add_argument("--identity", help="prepared identity (.safetensors): one-shot, or the adapter's fallback data")
    p.add_argument("--motion", help="a precomputed motion (.pt tensor [T, 64]) instead of ICS-A2M on the audio")
    p.add_argument("--out", help="the mp4 to write")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="render on Ray: the running cluster (RAY_ADDRESS) or a new local one, or ADDRESS "
                        "('auto', 'ray://host:10001'); needs pip install \"mimictalk[ray]\"")
    p.add_argument("--workers", type=int, help="Ray workers (default one per GPU, else one per CPU)")
    p.add_argument("--range-frames", type=int, default=100, help="frames per work item (default 100 = 4 s)")
    p.add_argument("--chunk-size", type=int, default=4, help="frames rendered at once on a worker")
    p.add_argument("--renderer", help="renderer weights (default mimictalk_base_renderer)")
    p.add_argument("--a2m", help="audio-to-motion weights (default ics_a2m)")
    p.add_argument("--hubert", help="HuBERT folder (default hubert_large)")
    p.add_argument("--face-model", help="BFM folder (default bfm2009)")
    p.add_argument("--models-dir", help="the mimictalk model folder (default $MIMICTALK_MODELS_DIR or ./models/mimictalk); "
                                        "the same path must exist on every Ray machine")
    p.add_argument("--device", default="auto", help="auto (the worker's GPU, else CPU), cpu, cuda ...")
    p.add_argument("--steps", type=int, help="ODE steps of the motion sampler (default 20)")
    p.add_argument("--seed", type=int, default=0, help="motion and blink seed")
    p.add_argument("--pose", choices=("static", "identity"), default="static")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .. import __main__ as entry
    from ..dub.cli import resolve
    from .cluster import render_jobs, render_local
    from .jobs import load_jobs
    from .worker import ModelFiles, RenderJob

    args = _parser().parse_args(argv)
    entry.logging_to_stderr()
    models_dir = Path(args.models_dir or os.environ.get("MIMICTALK_MODELS_DIR") or "models/mimictalk")
    try:
        if args.jobs:
            jobs = load_jobs(args.jobs)
        else:
            if not (args.audio and args.out and (args.adapter or args.identity)):
                print("render: give --jobs FILE, or --audio, --out and --adapter and/or --identity", file=sys.stderr)
                return 2
            jobs = [RenderJob(name=Path(args.out).stem, audio=args.audio, out=args.out, adapter=args.adapter,
                              identity=args.identity, motion=args.motion, seed=args.seed, steps=args.steps, pose=args.pose)]
        models = ModelFiles(
            renderer=str(resolve(args.renderer, "renderer", models_dir).resolve()),
            face_model=str(resolve(args.face_model, "face_model", models_dir).resolve()),
            a2m=str(resolve(args.a2m, "a2m", models_dir).resolve()), hubert=str(resolve(args.hubert, "hubert", models_dir).resolve()),
            device=args.device,
        )
        from tqdm import tqdm

        with tqdm(total=0, unit="frame", desc="rendering", file=sys.stderr) as bar:
            def step(done, total, **_):
                bar.total, bar.n = total, done
                bar.refresh()

            options = dict(range_frames=args.range_frames, chunk_size=args.chunk_size, on_step=step)
            if args.ray is None:
                results = render_local(jobs, models, **options)
            else:
                results = render_jobs(jobs, models, address=args.ray or None, workers=args.workers, **options)
    except MimicTalkError as e:
        print(str(e), file=sys.stderr)
        return 1
    for r in results:
        print(r.out if r.ok else f"FAILED {r.name}: {r.error}", file=sys.stdout if r.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else 1
