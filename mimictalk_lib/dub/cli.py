"""``python -m mimictalk_lib dub``: dub a video from the command line, calling the library directly.

Example::

    python -m mimictalk_lib dub --video me.mp4 --identity me.identity.safetensors \\
        --adapter me.adapter.safetensors --audio speech.wav --out me_dubbed.mp4
    python -m mimictalk_lib dub --video long.mp4 --audio speech.wav --out long_dubbed.mp4
    python -m mimictalk_lib dub ... --ray ray://head:10001   # face frames rendered on a Ray cluster

Without ``--identity`` the light identity of ``dub.identity`` is prepared from the video while it
streams (memory flat in the video's length), with the MediaPipe model files of the models folder
(or ``--landmarker`` / ``--segmenter``).

Models are files or folders given as paths, or manifest ids / names inside the models folder
(``--models-dir``, default ``$MIMICTALK_MODELS_DIR`` or ``./models/mimictalk``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import MimicTalkError

DEFAULTS = {"renderer": "mimictalk_base_renderer", "a2m": "ics_a2m", "hubert": "hubert_large", "face_model": "bfm2009"}


def _parser() -> argparse.ArgumentParser:
    from .dub import POSE_MODES
    from .pasteback import COLOUR_MODES
    from .timeline import LENGTH_MODES

    p = argparse.ArgumentParser(
        prog="python -m mimictalk_lib dub",
        description="Dub a video: the same video (size, frame rate, background, body) with the face saying new "
                    "speech. The identity must be prepared from that video (Prepare Identity node or "
                    "mimictalk_lib.identity.prepare_identity); a photo identity with --video PHOTO makes the photo talk.")
    p.add_argument("--video", required=True, help="the source video (or a photo)")
    p.add_argument("--audio", required=True, help="the new speech: an audio or video file")
    p.add_argument("--identity", help="identity prepared from --video (.safetensors); without it a light identity is "
                                      "prepared from the video while it streams (long videos)")
    p.add_argument("--landmarker", help="MediaPipe face_landmarker.task (without --identity; default: the models folder's)")
    p.add_argument("--segmenter", help="MediaPipe selfie_multiclass_256x256.tflite (without --identity; default: the "
                                       "models folder's)")
    p.add_argument("--out", required=True, help="the mp4 to write (never the source)")
    p.add_argument("--adapter", help="personalised adapter (.safetensors); without it the renderer runs one-shot")
    p.add_argument("--renderer", help=f"renderer weights (default {DEFAULTS['renderer']})")
    p.add_argument("--a2m", help=f"audio-to-motion weights (default {DEFAULTS['a2m']})")
    p.add_argument("--hubert", help=f"HuBERT folder (default {DEFAULTS['hubert']})")
    p.add_argument("--face-model", help=f"BFM folder (default {DEFAULTS['face_model']})")
    p.add_argument("--models-dir", help="the mimictalk model folder (default $MIMICTALK_MODELS_DIR or ./models/mimictalk)")
    p.add_argument("--length", choices=LENGTH_MODES, default="pingpong", help="when the audio outlasts the video")
    p.add_argument("--pose", choices=POSE_MODES, default="source", help="head pose of the rendered face")
    p.add_argument("--colour", choices=COLOUR_MODES, default="mean_std", help="match the render's colours to the source")
    p.add_argument("--chunk-size", type=int, default=4, help="frames rendered at once")
    p.add_argument("--steps", type=int, help="ODE steps of the motion sampler (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--report", help="also write the dub report as JSON here")
    p.add_argument("--start-frame", type=int, default=0, help="first output frame to write (a part of the dub)")
    p.add_argument("--frame-count", type=int, default=0, help="output frames to write from --start-frame (0 = to the end)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="render the face frames on Ray (the running cluster, RAY_ADDRESS or a new local one, or "
                        "ADDRESS: 'auto', 'ray://host:10001'); pasted back and written here. Needs pip install \"mimictalk[ray]\"")
    p.add_argument("--workers", type=int, help="Ray workers (default one per GPU, else one per CPU)")
    p.add_argument("--range-frames", type=int, help="frames per Ray work item (default 100)")
    return p


def resolve(name: Optional[str], key: str, models_dir: Path) -> Path:
    """A path as given, a manifest id (its folder in the models dir) or a name in the models dir."""
    from ..manifest import load_manifest

    name = name or DEFAULTS[key]
    if Path(name).exists():
        return Path(name)
    manifest = load_manifest()
    if name in manifest.ids:
        return models_dir / manifest.get(name).target_dir
    return models_dir / name


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from .. import __main__ as entry

    entry.logging_to_stderr()
    models = Path(args.models_dir or os.environ.get("MIMICTALK_MODELS_DIR") or "models/mimictalk")
    try:
        report = run(args, models)
    except MimicTalkError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
    print(report.path)
    return 0


def run(args: argparse.Namespace, models: Path):
    import contextlib

    import torch

    from ..a2m import load_a2m, load_hubert
    from ..face import load_face_model
    from ..identity import Identity
    from ..renderer import load_renderer
    from .dub import dub_video

    device = torch.device(args.device)
    tools: dict = {}
    if args.identity:
        identity = Identity.load(args.identity)
    else:  # the light identity, prepared inside dub_video
        from ..models import mediapipe_files

        identity = None
        tools = {k: getattr(args, k) for k in ("landmarker", "segmenter") if getattr(args, k)}
        if len(tools) < 2:
            tools = {**mediapipe_files([models], allow_download=False), **tools}
        tools["prepare_options"] = {"device": device}
    face_model = load_face_model(resolve(args.face_model, "face_model", models), need_mp468=identity is None)
    renderer = load_renderer(resolve(args.renderer, "renderer", models), device=device)
    if args.adapter:
        from ..adapt.adapter import load_adapter, personalise

        renderer = personalise(renderer.model, load_adapter(args.adapter))
    a2m = load_a2m(resolve(args.a2m, "a2m", models), device=device)
    hubert = load_hubert(resolve(args.hubert, "hubert", models), device=device)
    options = {"steps": args.steps} if args.steps else {}
    offload = contextlib.nullcontext()
    if args.ray is not None:
        from ..distributed.offload import RayChunks

        offload = RayChunks(renderer, face_model, address=args.ray or None, workers=args.workers,
                            range_frames=args.range_frames, who="dub --ray")
    with offload as render_chunks:
        result = dub_video(
            args.video, args.audio, renderer=renderer, face_model=face_model, identity=identity, a2m=a2m, hubert=hubert,
            output=args.out, length=args.length, pose=args.pose, colour=args.colour, chunk_size=args.chunk_size,
            seed=args.seed, motion_options=options, render_chunks=render_chunks, start_frame=args.start_frame,
            frame_count=args.frame_count, **tools,
        )
    return result.report
