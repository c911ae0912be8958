"""Dubbing: quality of the pasted-back video at full source resolution, speed, and peak memory
against the source's length.

    python -m bench.dub                           # 1080p @ 30 fps quality (6 s, last 2 s held out) + memory 1 / 5 min
    python -m bench.dub --skip-memory --seconds 10 --holdout 3
    python -m bench.dub --memory-seconds 60,300 --memory-fps 2 --skip-quality
    python -m bench.dub --tiny --device cpu       # smoke test: 640x360, 1.2 s, memory 2 s / 4 s
    python -m bench.dub --tiny --skip-quality --memory-seconds 1     # the smoke test of tests/foundation

Source: ``../shared/data/German_20s.mp4`` (512², 25 fps) scaled into a 1920x1080 frame over
``bg.png`` at an off-centre box, resampled to 30 fps (a drawn stand-in when the file is absent).
The last ``--holdout`` seconds are cut out as their own clip with their own soundtrack and dubbed
from that soundtrack; the output is compared with the real held-out frames at full resolution:
PSNR / SSIM over the whole frame and inside the face box, LPIPS when the ``lpips_alex``
weights are in the models folder, else n/a (``mimictalk_lib.evaluate``'s metrics), and a seam score: mean gradient
magnitude (Sobel) on the border band of the region the dub changed, divided by the mean inside
the rest of the face box; the same ratio of the real frame on the same band is printed beside it
(equal = no added edge). Rows:

* ``paste-back only``: the source crop at 512² pasted back unchanged (feathered head mask,
  colour match): the ceiling paste-back itself allows at the official render size;
* ``own audio`` / ``own fitted motion``: the whole dub (``dub_video``) with the renderer given.

There are no real weights on this machine: the renderer, ICS-A2M and HuBERT are the tests' tiny
random models, the identity is synthetic (known crop, zero pose and expression: no MediaPipe fit
here, so "fitted motion" is the zero expression), so only the paste-back row and the speed /
memory columns mean anything; the figures are labelled so. Each dub runs in a fresh worker process
(its own peak resident set; CUDA: max_memory_allocated).

Memory: sources of each ``--memory-seconds`` length (1080p, ``--memory-fps``) dubbed from speech
as long as themselves, written progressively, the identity prepared in the same worker: the light
identity of ``mimictalk_lib.dub.identity`` (``dub_video(identity=None, ...)``: the source streamed
in chunks, 512² crops, pixels kept for 16 frames). So the face is found without MediaPipe, the
memory sources show a drawn face (a flat disk that the tests' ``BlobLandmarker`` /
``LandmarkSegmenter`` stand-ins find) scaled into the same off-centre box; the 3DMM fit runs a
short schedule (20/20/5 iterations) on the synthetic face model, with the fit-error refusal lifted
(stand-in landmarks are not a face). The table gives the worker's peak RSS (models, preparation
and dub together), the identity's held bytes and how many frames it holds with pixels.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import _common as common

SHARED = common.ROOT.parent / "shared" / "data"
GERMAN, BACKGROUND = SHARED / "German_20s.mp4", SHARED / "bg.png"
FULL = dict(hw=(1080, 1920), box=(1180, 190, 600), fps=30.0, seconds=6.0, holdout=2.0, mem="60,300", mem_fps=2.0)
TINY = dict(hw=(360, 640), box=(380, 60, 200), fps=30.0, seconds=1.2, holdout=0.4, mem="2,4", mem_fps=5.0)
PASTE_SIZE = 512  # the official render side, for the paste-back-only row
MEMORY_HEADER = ["seconds", "source", "frames", "identity frames (25 fps)", "wall s (prepare + dub)", "frames/s",
                 "peak RSS MiB", "identity held MiB", "frames held"]


# --- source ---------------------------------------------------------------------------------------


def _portraits(n25: int, drawn: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """German_20s frames (uint8 [N, 512, 512, 3]), the ping-pong index of each of ``n25`` 25 fps frames,
    its soundtrack [1, S] and rate; ``drawn``: the drawn stand-in face (found without MediaPipe)."""
    from mimictalk_lib.video import read_video

    if GERMAN.is_file() and not drawn:
        clip = read_video(GERMAN)
        frames, audio = clip.frames, clip.audio
        wave, rate = audio.waveform[:1], audio.sample_rate
    else:  # a drawn stand-in (tests machines without the shared media)
        from tests.fixtures.synthetic_identity import draw_clip
        from tests.fixtures.tiny_a2m import speech_like

        frames = draw_clip(50, 256, 256, centre=(128.0, 120.0), radius=70)
        rate = 16000
        wave = speech_like(2.0, rate)[None]
    from mimictalk_lib.dub.timeline import source_indices

    idx = torch.from_numpy(source_indices(n25, frames.shape[0], "pingpong"))
    return frames, idx, wave, rate


def _background(hw, plain: bool = False) -> torch.Tensor:
    """bg.png scaled to ``hw`` (``plain``, or without the file: flat grey; the drawn face's
    stand-in landmarker would take bg.png's sky for a second, larger face)."""
    from mimictalk_lib.identity.frames import resize_uint8
    from mimictalk_lib.video import iter_video

    if BACKGROUND.is_file() and not plain:
        img = torch.from_numpy(next(iter_video(BACKGROUND))[0])[None]
    else:
        img = torch.full((1, 64, 64, 3), 90, dtype=torch.uint8)
    return resize_uint8(img, hw)[0]


def build_source(path: Path, seconds: float, fps: float, hw, box, start: float = 0.0, drawn: bool = False):
    """Write the realistic source: the portrait clip (``drawn``: the drawn stand-in) scaled to
    ``box`` = (x0, y0, side) in an ``hw`` frame over the background, at ``fps``, from ``start`` s for
    ``seconds`` s, with its soundtrack."""
    from mimictalk_lib.identity.frames import resize_uint8
    from mimictalk_lib.video import VideoWriter

    n = max(1, round(seconds * fps))
    first = round(start * fps)
    n25 = math.ceil((first + n) / fps * 25) + 2
    portraits, idx25, wave, rate = _portraits(n25, drawn)
    x0, y0, side = box
    bg = _background(hw, plain=drawn)
    need = round(rate * (start + seconds))
    reps = math.ceil(need / wave.shape[1])
    sound = wave.repeat(1, reps)[:, round(rate * start): need]
    with VideoWriter(path, fps, audio={"waveform": sound[None], "sample_rate": rate}, preset="ultrafast", crf=12) as w:
        for k0 in range(first, first + n, 16):
            ks = range(k0, min(k0 + 16, first + n))
            pick = idx25[[min(round(k / fps * 25), n25 - 1) for k in ks]]
            faces = resize_uint8(portraits[pick], side)
            frames = bg.expand(len(ks), -1, -1, -1).clone()
            frames[:, y0: y0 + side, x0: x0 + side] = faces
            w.write(frames)
    return path


def synthetic_identity(face_model, path: Path, n_source: int, fps: float, hw, box, size: int):
    """An identity of the source without MediaPipe: the known crop, zero pose / expression, an
    elliptic head segmentation, frame 0's crop as frames / plate / torso."""
    from mimictalk_lib.face.camera import camera_sequence
    from mimictalk_lib.face.coeffs import Coefficients, HeadPose
    from mimictalk_lib.face.keypoints import torso_keypoints
    from mimictalk_lib.identity import Identity
    from mimictalk_lib.identity.frames import CropBox, crop_frames, resample_indices
    from mimictalk_lib.video import iter_video
    from tests.fixtures.synthetic_identity import person_segmap

    idx = resample_indices(np.arange(n_source) / fps)
    t = len(idx)
    first = torch.from_numpy(next(iter_video(path))[0])[None]
    crop = crop_frames(first, CropBox(*box), size)[0]
    seg = person_segmap(size, size, head_centre=(size * 0.52, size * 0.5), head_axes=(size * 0.2, size * 0.27),
                        neck_width=size * 0.18, shoulder_y=size * 0.85)
    zeros = torch.zeros(t, 3)
    exp = torch.zeros(t, 64)
    with torch.no_grad():
        kps = torso_keypoints(face_model, Coefficients(torch.zeros(t, 80), exp, zeros, zeros), clamp=False)
    meta = {"kind": "clip", "source": path.name, "source_size": list(hw), "crop": list(box), "fps": 25.0,
            "variable_frame_rate": False, "frame_positions": list(range(t)), "source_frames": idx.tolist(),
            "dropped_frames": [], "interpolated_frames": []}
    return Identity(
        frames=crop.expand(t, -1, -1, -1).contiguous(), segmaps=seg.expand(t, -1, -1).contiguous(),
        landmarks=torch.zeros(t, 478, 3), id=torch.zeros(1, 80), exp=exp, euler=zeros, trans=zeros.clone(),
        cameras=camera_sequence(HeadPose(zeros, zeros)).float(), keypoints=kps,
        lip_rects=torch.zeros(t, 4, dtype=torch.long),
        plate=crop.clone(), torso_ref=crop.clone(), torso_ref_mask=seg != 0, meta=meta,
    )


# --- worker: one dub ------------------------------------------------------------------------------


def _models(device: torch.device, bfm: str):
    import dataclasses

    from mimictalk_lib.a2m import A2MConfig, InContextAudio2MotionModel
    from mimictalk_lib.face import load_face_model
    from tests.fixtures.tiny_a2m import randomize_, tiny_hubert
    from tests.fixtures.tiny_renderer import random_renderer

    torch.manual_seed(0)
    a2m = randomize_(InContextAudio2MotionModel(dataclasses.replace(A2MConfig.tiny(True), motion_dim=64)), seed=0)
    return (random_renderer("mimictalk", seed=0).to(device), load_face_model(bfm, need_mp468=True), a2m.eval().to(device),
            tiny_hubert().to(device))


PREPARE_SCHEDULE = dict(pose_iters=20, joint_iters=20, fine_iters=5)
"""The memory runs' short 3DMM fit (stand-in landmarks: the fit's quality means nothing here)."""


def _worker(args: argparse.Namespace) -> None:
    from mimictalk_lib.dub import dub_video
    from mimictalk_lib.identity import FitSchedule, Identity

    device = torch.device(args.device)
    renderer, face_model, a2m, hubert = _models(device, args.bfm)
    common.reset_peak(device)
    start = time.perf_counter()
    if args.identity == "prepare":  # the light identity, streamed from the source in this process
        import os

        from mimictalk_lib.dub.identity import prepare_dub_identity
        from tests.fixtures.synthetic_identity import BlobLandmarker, LandmarkSegmenter

        os.environ.setdefault("MIMICTALK_MAX_FIT_ERROR", "1000")  # stand-in landmarks are no face to fit
        identity = prepare_dub_identity(args.source, landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(),
                                        face_model=face_model, schedule=FitSchedule(**PREPARE_SCHEDULE), device=device)
    else:
        identity = Identity.load(args.identity)
    prepared = time.perf_counter()
    motion = identity.exp if args.motion == "fitted" else None
    res = dub_video(args.source, args.source, renderer=renderer, face_model=face_model, identity=identity,
                    motion=motion, a2m=a2m, hubert=hubert, output=args.out, chunk_size=8, motion_options={"steps": 4})
    seconds = time.perf_counter() - start
    held = getattr(identity, "nbytes", None) or sum(t.numel() * t.element_size() for t in vars(identity).values()
                                                    if torch.is_tensor(t))
    common.emit({"seconds": seconds, "prepare_seconds": prepared - start, "frames": res.report.frames,
                 "peak_bytes": common.peak_bytes(device), "identity_bytes": held,
                 "frames_held": getattr(identity, "frames_held", identity.num_frames),
                 "identity_frames": identity.num_frames, "report": res.report.summary()})


def _run(args, source: Path, identity: Path, out: Path, motion: str, bfm: Path) -> dict | None:
    return common.run_worker("dub", ["--device", args.device or "cpu", "--source", str(source), "--identity", str(identity),
                                     "--out", str(out), "--motion", motion, "--bfm", str(bfm)])


# --- metrics --------------------------------------------------------------------------------------


def metrics(out: torch.Tensor, real: torch.Tensor, box, lpips=None) -> dict:
    """Full-frame and face-box PSNR / SSIM / LPIPS (``evaluate.metrics.image_metrics``) and the seam
    score, averaged over uint8 [n, H, W, 3] pairs."""
    import kornia

    from mimictalk_lib.evaluate.metrics import image_metrics

    x0, y0, side = box
    h, w = real.shape[1:3]
    sl = (slice(max(0, y0), min(h, y0 + side)), slice(max(0, x0), min(w, x0 + side)))
    boxes = torch.tensor([[sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]])
    acc: dict[str, list] = {"seam": [], "seam_real": []}
    for s in range(0, out.shape[0], 4):
        a = out[s: s + 4].permute(0, 3, 1, 2).float() / 255
        b = real[s: s + 4].permute(0, 3, 1, 2).float() / 255
        for k, v in image_metrics(a, b, boxes=boxes.expand(a.shape[0], 4), lpips=lpips).items():
            acc.setdefault(k, []).extend(v.tolist())
        ab, bb = a[:, :, sl[0], sl[1]], b[:, :, sl[0], sl[1]]
        changed = ((ab - bb).abs().amax(1, keepdim=True) > 4 / 255).float()  # where the dub changed the frame
        band = kornia.morphology.gradient(changed, torch.ones(5, 5)) > 0  # its border
        if int(band.sum()) > 0:
            for key, img in (("seam", ab), ("seam_real", bb)):
                g = kornia.filters.sobel(img.mean(1, keepdim=True))
                acc[key].append(float(g[band].mean() / g[~band].mean().clamp(min=1e-6)))
    mean = {k: [x for x in v if math.isfinite(x)] for k, v in acc.items()}
    return {k: (sum(v) / len(v) if v else None) for k, v in mean.items()}


def paste_back_only(source: Path, box, hw) -> dict:
    """The held-out frames cut at 512² and pasted back unchanged (the paste-back ceiling)."""
    from mimictalk_lib.dub.pasteback import CropTransform, blend_mask, paste_back
    from mimictalk_lib.identity.frames import CropBox, crop_frames
    from mimictalk_lib.video import read_video
    from tests.fixtures.synthetic_identity import person_segmap

    real = read_video(source, with_audio=False).frames
    s = PASTE_SIZE
    seg = person_segmap(s, s, head_centre=(s * 0.52, s * 0.5), head_axes=(s * 0.2, s * 0.27), neck_width=s * 0.18,
                        shoulder_y=s * 0.85)
    alpha = (seg != 0).float()[None]
    tf = CropTransform(*box, s, tuple(hw))
    out = []
    start = time.perf_counter()
    for k in range(0, real.shape[0], 8):
        part = real[k: k + 8]
        crop = crop_frames(part, CropBox(*box), s)
        out.append(paste_back(part, crop, blend_mask(alpha.expand(part.shape[0], -1, -1)), tf, colour="mean_std"))
    seconds = time.perf_counter() - start
    return {"out": torch.cat(out), "real": real, "seconds": seconds}


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    ap = common.parser(__doc__)
    common.add_common_args(ap, dtypes=("fp32",))
    ap.add_argument("--seconds", type=float, default=None, help="length of the quality source (default 6; --tiny 1.2)")
    ap.add_argument("--holdout", type=float, default=None, help="seconds held out at the end (default 2; --tiny 0.4)")
    ap.add_argument("--memory-seconds", default=None, help="comma list of memory-run lengths (default 60,300; --tiny 2,4)")
    ap.add_argument("--memory-fps", type=float, default=None, help="frame rate of the memory sources (default 2; --tiny 5)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--identity", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--motion", default="audio", help=argparse.SUPPRESS)
    ap.add_argument("--bfm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)
    cfg = TINY if args.tiny else FULL
    configs = common.plan(ap, args, allowed=("fp32",))
    device = configs[0][0]
    args.device = device
    common.print_machines([device])
    print(f"# weights: tiny random renderer / ICS-A2M / HuBERT (tests' fixtures); quality: synthetic identity, source "
          f"{'German_20s.mp4' if GERMAN.is_file() else 'drawn stand-in'} in {cfg['hw'][1]}x{cfg['hw'][0]}; memory: "
          "drawn face, light identity prepared with the stand-in landmarker / segmenter", flush=True)
    from mimictalk_lib.face import load_face_model
    from mimictalk_lib.video import read_video
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model

    failed = []
    with tempfile.TemporaryDirectory(prefix="bench-dub-") as tmp:
        tmp = Path(tmp)
        bfm = write_synthetic_face_model(tmp / "bfm")
        face_model = load_face_model(bfm)
        size = 64  # the tiny renderer's side
        if not args.skip_quality:
            seconds = common.tiny_default(args.seconds, FULL["seconds"], TINY["seconds"], args.tiny)
            hold = common.tiny_default(args.holdout, FULL["holdout"], TINY["holdout"], args.tiny)
            fps, hw, box = cfg["fps"], cfg["hw"], cfg["box"]
            held = build_source(tmp / "held_out.mp4", hold, fps, hw, box, start=seconds - hold)
            n = round(hold * fps)
            synthetic_identity(face_model, held, n, fps, hw, box, size).save(tmp / "held.identity.safetensors")
            from mimictalk_lib.evaluate.evaluate import load_optional_models

            lp, _, notes = load_optional_models(landmarks=False, device=device)
            for note in notes:
                print(f"# {note}", flush=True)
            rows = []
            pb = paste_back_only(held, box, hw)
            m = metrics(pb["out"], pb["real"], box, lp)
            rows.append(("paste-back only (512² crop, unchanged)", m, n / pb["seconds"], None))
            real = pb["real"]
            for motion in ("audio", "fitted"):
                out = tmp / f"dub_{motion}.mp4"
                r = _run(args, held, tmp / "held.identity.safetensors", out, motion, bfm)
                if r is None:
                    failed.append(f"quality {motion}")
                    continue
                got = read_video(out, with_audio=False).frames
                m = metrics(got[: real.shape[0]], real[: got.shape[0]], box, lp)
                label = "dub, own audio (tiny random weights)" if motion == "audio" else \
                    "dub, own fitted motion (zero exp: no fit here; tiny random weights)"
                rows.append((label, m, r["frames"] / r["seconds"], r["peak_bytes"]))

            def f(v, fmt="{:.2f}"):
                return "n/a" if v is None else fmt.format(v)

            print(f"\nquality: last {hold:g} s of a {seconds:g} s source ({n} frames, {hw[1]}x{hw[0]} @ {fps:g} fps, "
                  f"face box {box[2]} px at ({box[0]}, {box[1]}))")
            common.print_table(
                ["run", "PSNR dB", "SSIM", "PSNR box dB", "SSIM box", "LPIPS box", "seam (real)", "frames/s",
                 "peak MiB"],
                [[label, f(m["psnr"]), f(m["ssim"], "{:.4f}"), f(m["head_psnr"]), f(m["head_ssim"], "{:.4f}"),
                  f(m["head_lpips"], "{:.4f}"), f"{f(m['seam'])} ({f(m['seam_real'])})", f"{fr:.2f}",
                  f(peak / 2**20 if peak else None, "{:.0f}")] for label, m, fr, peak in rows])
        if not args.skip_memory:
            lengths = common.comma_list(common.tiny_default(args.memory_seconds, FULL["mem"], TINY["mem"], args.tiny), float)
            mfps = common.tiny_default(args.memory_fps, FULL["mem_fps"], TINY["mem_fps"], args.tiny)
            hw, box = cfg["hw"], cfg["box"]
            rows = []
            for secs in lengths:
                src = build_source(tmp / f"mem_{secs:g}.mp4", secs, mfps, hw, box, drawn=True)
                r = _run(args, src, "prepare", tmp / f"mem_{secs:g}_dub.mp4", "audio", bfm)
                src.unlink()
                if r is None:
                    failed.append(f"memory {secs:g} s")
                    continue
                rows.append([f"{secs:g}", f"{hw[1]}x{hw[0]} @ {mfps:g}", r["frames"], r["identity_frames"],
                             f"{r['prepare_seconds']:.1f} + {r['seconds'] - r['prepare_seconds']:.1f}",
                             f"{r['frames'] / r['seconds']:.2f}", f"{r['peak_bytes'] / 2**20:.0f}",
                             f"{r['identity_bytes'] / 2**20:.1f}", r["frames_held"]])
                print(f"# {secs:g} s: {r['report']}", file=__import__('sys').stderr, flush=True)
            print("\nmemory: source and speech of the same length, the light identity prepared from the source and the "
                  "dub written progressively, in one worker process")
            common.print_table(MEMORY_HEADER, rows)
    common.finish(failed)


if __name__ == "__main__":
    main()
