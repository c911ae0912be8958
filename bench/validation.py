"""Held-out validation curves of adaptation on a real clip, at reduced size (CPU).

    python -m bench.validation --clip ../shared/data/German_20s.mp4 --seconds 20,4 --steps 300

What runs: the clip's frames (first ``--seconds`` of it, each length a separate run) resized to
64² drive the *tiny random* MimicTalk renderer (``tests/fixtures/tiny_renderer.py``: same code
paths, small widths; no official weights exist on this machine), adapted with the pack's trainer
and held-out validation (last 10%, at least 1 s). Per frame, the driving signal is the mouth
opening and sideways face shift measured with MediaPipe landmarks on the 512² frames (needs the
optional ``mediapipe`` package and ``face_landmarker.task``; ``--landmarker``), rendered by the
procedural SECC of ``tests/adapt/synthetic.py`` instead of the BFM (not available here); the head
segmentation is the fixed synthetic one; plate and torso reference are frame 0. No LPIPS (its
weights are not available): validation is PSNR / SSIM, the monitored score 1 - SSIM.

Every ``--validate-every`` steps it measures the held-out frames and as many training frames
(the generalisation gap), prints a markdown table per run and writes ``--json`` (all numbers)
and ``--plot`` (the training report of the longest run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench import _common as common

SIDE = 64  # the tiny renderer's output
VAL_FRAMES = 4
TINY_LR = dict(lr=2e-2, lr_triplane=2e-2)  # the test suite's learning rates for the tiny renderer
UPPER_LIP, LOWER_LIP = 13, 14  # MediaPipe mesh: inner lip centre points
FOREHEAD, CHIN = 10, 152


def driving_signal(frames: torch.Tensor, landmarker_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mouth opening / face height, face-centre x / face height), standardised, per frame, and
    the detected mask."""
    from mimictalk_lib.identity.landmarks import MediaPipeLandmarker

    found = MediaPipeLandmarker(landmarker_path).detect(frames, video=False)
    pts = found.points
    height = (pts[:, CHIN, 1] - pts[:, FOREHEAD, 1]).clamp(min=1.0)
    mouth = (pts[:, LOWER_LIP, 1] - pts[:, UPPER_LIP, 1]) / height
    shift = (pts[:, :468, 0].mean(1) - frames.shape[2] / 2) / height
    sig = torch.stack([mouth, shift], 1)
    ok = found.detected
    sig[~ok] = sig[ok].mean(0)
    return (sig - sig.mean(0)) / sig.std(0).clamp(min=1e-6), ok


def make_clip(path: str, seconds: float, landmarker: str):
    from mimictalk_lib.adapt.data import AdaptationData
    from mimictalk_lib.identity.frames import resize_uint8
    from mimictalk_lib.video import iter_frames
    from tests.adapt.synthetic import SyntheticSecc, synthetic_identity

    n = int(round(seconds * 25))
    chunks, total = [], 0
    for chunk, _ in iter_frames(path, 25):
        chunks.append(chunk)
        total += chunk.shape[0]
        if total >= n:
            break
    full = torch.cat(chunks)[:n]
    sig, ok = driving_signal(full, landmarker)
    small = resize_uint8(full, SIDE)
    ident = synthetic_identity(SIDE, frames=n, seed=0)
    ident.frames = small
    ident.plate = small[0].clone()
    ident.torso_ref = small[0].clone()
    ident.exp = torch.zeros(n, 64)
    ident.exp[:, :2] = 1.5 * sig  # exp[0]: mouth opening, exp[1]: sideways shift (SyntheticSecc)
    ident.meta = dict(ident.meta, source=Path(path).name)
    return AdaptationData(ident, SyntheticSecc(SIDE)), int(ok.sum())


def run(data, steps: int, every: int, seed: int, on_row=None) -> dict:
    from mimictalk_lib.adapt.train import AdaptConfig, Trainer
    from mimictalk_lib.adapt.validation import spread
    from tests.fixtures.tiny_renderer import random_renderer

    base = random_renderer("mimictalk", seed=0)
    cfg = AdaptConfig(steps=steps, validate_every=every, validation_frames=VAL_FRAMES, preview_every=0, seed=seed,
                      **TINY_LR)
    trainer = Trainer(base, data, None, cfg)
    held = trainer.val_idx
    train_probe = spread(trainer.split[0], VAL_FRAMES)
    losses, rows, t0 = [], [], time.time()

    def measure() -> dict:
        val = trainer.run_validation(None)
        trainer.val_idx = train_probe
        seen = trainer.validate()
        trainer.val_idx = held
        recent = [v for s, v in losses[-every:]]
        return dict(val, train_psnr=seen["psnr"], train_ssim=seen["ssim"],
                    loss=sum(recent) / len(recent) if recent else None, seconds=round(time.time() - t0, 1))

    rows.append(dict(measure(), step=0))
    while trainer.step < steps:
        losses.append((trainer.step + 1, trainer.train_step()["total_loss"]))
        if trainer.step % every == 0:
            rows.append(measure())
            r = rows[-1]
            print(f"  step {r['step']}: loss {r['loss']:.4f}  val PSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f}  "
                  f"train PSNR {r['train_psnr']:.2f}  ({r['seconds']} s)", flush=True)
            if on_row is not None:
                on_row(rows)
    return {"frames": data.num_frames, "held_out": [trainer.split[1].start, trainer.split[1].stop],
            "train_frames": trainer.train_frames, "rows": rows, "losses": losses,
            "best_step": trainer.early.best_step, "strip": trainer.val_strip}


def table(result: dict) -> str:
    lines = ["| step | train loss | val PSNR dB | val SSIM | val head PSNR | val head SSIM | train-frame PSNR | train-frame SSIM |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        f = (lambda v, d=2: "—" if v is None else f"{v:.{d}f}")
        lines.append(f"| {r['step']} | {f(r['loss'], 4)} | {f(r['psnr'])} | {f(r['ssim'], 3)} | {f(r['head_psnr'])} | "
                     f"{f(r['head_ssim'], 3)} | {f(r['train_psnr'])} | {f(r['train_ssim'], 3)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default="../shared/data/German_20s.mp4")
    p.add_argument("--landmarker", default="../shared/data/face_landmarker.task")
    p.add_argument("--seconds", default="20,4", help="clip lengths to adapt on, comma separated")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--validate-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every number here")
    p.add_argument("--plot", help="write the training report (PNG) of the first run here")
    args = p.parse_args()
    print(common.machine("cpu"))
    out = {"clip": Path(args.clip).name, "side": SIDE, "steps": args.steps, "validate_every": args.validate_every,
           "renderer": "tiny random (tests/fixtures/tiny_renderer.py)", "runs": {}}
    first = None
    for seconds in (float(s) for s in args.seconds.split(",")):
        data, detected = make_clip(args.clip, seconds, args.landmarker)
        print(f"\n### {seconds:g} s of {out['clip']}: {data.num_frames} frames (face found in {detected}), {SIDE}²", flush=True)
        key = f"{seconds:g}s"

        def partial(rows, key=key, n=data.num_frames):
            out["runs"][key] = {"frames": n, "rows": rows, "partial": True}
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")

        result = run(data, args.steps, args.validate_every, args.seed, on_row=partial)
        print(f"held out frames {result['held_out'][0]}..{result['held_out'][1] - 1}; "
              f"best (1 - SSIM) at step {result['best_step']}\n\n{table(result)}", flush=True)
        first = first or result
        out["runs"][key] = {k: v for k, v in result.items() if k != "strip"}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    if args.plot and first is not None:
        from PIL import Image

        from mimictalk_lib.adapt.report import training_report_image

        img = training_report_image(first["losses"], [dict(r) for r in first["rows"]], first["strip"])
        Image.fromarray((img[0] * 255).round().to(torch.uint8).numpy()).save(args.plot)


if __name__ == "__main__":
    main()
