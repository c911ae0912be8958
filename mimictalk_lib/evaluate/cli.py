"""``python -m mimictalk_lib evaluate``: rendered video vs reference video (or a prepared identity
re-rendered by a renderer) -> metrics table on stdout, JSON and plot files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from ..errors import MimicTalkError
from .evaluate import CHUNK, Chunk, _run, as_float_images, audio_16k, load_metric_models, load_optional_models


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mimictalk_lib evaluate",
        description="Measure a rendered talking-head video against a reference video of the same person and motion: "
                    "PSNR, SSIM, LPIPS (full frame), landmark distance (mouth, face), blink rate and head-pose jitter "
                    "(with mediapipe), lip sync LSE-D / LSE-C (SyncNet, on the rendered video's own audio) and identity "
                    "similarity CSIM (face embedding) when their weights are present. Prints a markdown table; --json / --plot write the full results. Head-region "
                    "metrics need head masks: use the Evaluate node or mimictalk_lib.evaluate.evaluate_identity.")
    p.add_argument("--rendered", required=True, help="the rendered video (e.g. from the talk workflow)")
    p.add_argument("--reference", required=True, help="the reference video, frame-aligned with the rendered one")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--plot", help="write the plot (per-frame curves, sample frames) as a PNG to this file")
    p.add_argument("--models-dir", help="the mimictalk model folder (default $MIMICTALK_MODELS_DIR or ./models/mimictalk)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--no-landmarks", action="store_true", help="skip the landmark metrics (they need mediapipe)")
    p.add_argument("--audio", help="the speech for LSE-D / LSE-C (default: the rendered video's own audio track)")
    p.add_argument("--no-sync", action="store_true", help="skip LSE-D / LSE-C")
    p.add_argument("--no-csim", action="store_true", help="skip CSIM")
    p.add_argument("--download", action="store_true",
                   help="download missing LPIPS, landmarker, SyncNet and face-embedding weights")
    return p


def _pairs(rendered: str, reference: str) -> Iterator[Chunk]:
    from ..video import iter_frames

    for (a, _), (b, _) in zip(iter_frames(rendered, CHUNK), iter_frames(reference, CHUNK)):
        n = min(a.shape[0], b.shape[0])
        yield Chunk(as_float_images(a[:n], "rendered"), as_float_images(b[:n], "reference"))


def _count(path: str) -> int:
    from ..video import iter_frames, probe

    n = probe(path).num_frames
    return n if n > 0 else sum(c.shape[0] for c, _ in iter_frames(path, CHUNK))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from ..video import probe

    try:
        dirs = [Path(args.models_dir)] if args.models_dir else None
        lpips, landmarker, notes = load_optional_models(dirs, perceptual=not args.no_lpips,
                                                        landmarks=not args.no_landmarks, allow_download=args.download)
        if args.no_landmarks:
            notes.append("landmark metrics: skipped (--no-landmarks).")
        syncnet, embedder, more = load_metric_models(dirs, sync=not args.no_sync, identity=not args.no_csim,
                                                     allow_download=args.download)
        notes += more
        audio, blocked = None, None
        if syncnet is not None:
            from ..video import open_audio

            source = args.audio or args.rendered
            audio, blocked = audio_16k(source) if args.audio or open_audio(source) is not None else (None, None)
        total = min(_count(args.rendered), _count(args.reference))
        result = _run(_pairs(args.rendered, args.reference), total, fps=probe(args.rendered).fps, lpips=lpips,
                      landmarker=landmarker, landmark_note="" if landmarker is None else None, manifest=None, info={},
                      on_step=None, syncnet=syncnet, embedder=embedder, audio=audio, model_notes=False,
                      sync_blocked=blocked)
        result.notes[:0] = notes
    except MimicTalkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.table())
    if args.json:
        Path(args.json).write_text(result.to_json(), encoding="utf-8")
    if args.plot:
        try:
            from PIL import Image
        except ImportError:
            print("error: --plot needs Pillow (pip install pillow); the JSON and the table were written", file=sys.stderr)
            return 1
        img = (result.plot()[0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(img).save(args.plot)
    return 0
