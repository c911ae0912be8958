"""Identity preparation speed: seconds of preparation per second of video, per stage.

    python -m bench.prepare [--video German_20s.mp4] [--seconds 20] [--landmarker face_landmarker.task]
                            [--segmenter selfie_multiclass_256x256.tflite] [--bfm BFM/] [--devices cpu cuda]

Stages (the steps of ``prepare_identity``):

* frames: decode, 25 fps resampling, face search on 24 sampled frames, crop + resize to 512²;
* landmarks: MediaPipe FaceLandmarker, IMAGE + VIDEO mode over every frame (CPU only);
* segmentation: MediaPipe selfie-multiclass, or - when its model file is absent - the synthetic
  landmark-driven segmenter of the tests (then the row says "synthetic": not a real cost);
* fit: staged 3DMM landmark fit with the upstream schedule (200 + 200 + 50 steps);
* plate: background plate, torso inpainting, cameras, keypoints, lip crops.

Landmarks, segmentation and frames run on the CPU whatever the device (MediaPipe and PyAV);
the fit and the plate run on each requested device. Without ``--bfm`` the synthetic face model
of the tests is used: the fit only touches the 468 landmark vertices, so its cost is the same.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def _trim(video: Path, seconds: float, folder: str) -> Path:
    """Re-mux the first ``seconds`` of ``video`` (no re-encode) to keep runs short."""
    import av

    out_path = Path(folder) / f"clip_{seconds:g}s{video.suffix}"
    with av.open(str(video)) as src, av.open(str(out_path), "w") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        for packet in src.demux(s_in):
            if packet.dts is None:
                continue
            if packet.pts is not None and float(packet.pts * s_in.time_base) >= seconds:
                break
            packet.stream = s_out
            dst.mux(packet)
    return out_path


def run(args) -> None:
    from mimictalk_lib.face import load_face_model
    from mimictalk_lib.face.camera import camera_sequence
    from mimictalk_lib.face.keypoints import landmarks_2d, torso_keypoints
    from mimictalk_lib.identity import MediaPipeLandmarker, MediaPipeSegmenter, background_plate, inpaint_torso
    from mimictalk_lib.identity.clip import load_clip, track
    from mimictalk_lib.identity.fit3dmm import FitSchedule, fit_clip
    from mimictalk_lib.identity.prepare import lip_rects

    tmp = tempfile.mkdtemp()
    video = Path(args.video)
    if args.seconds:
        video = _trim(video, args.seconds, tmp)
    landmarker = MediaPipeLandmarker(args.landmarker)
    if args.segmenter and os.path.isfile(args.segmenter):
        segmenter, seg_note = MediaPipeSegmenter(args.segmenter), "MediaPipe"
    else:
        from tests.fixtures.synthetic_identity import LandmarkSegmenter

        segmenter, seg_note = LandmarkSegmenter(), "synthetic (model absent)"
    if args.bfm:
        face_model, bfm_note = load_face_model(args.bfm, need_mp468=True), "BFM"
    else:
        from tests.fixtures.synthetic_bfm import write_synthetic_face_model

        face_model, bfm_note = load_face_model(write_synthetic_face_model(Path(tmp) / "bfm"), need_mp468=True), "synthetic"

    cpu = torch.device("cpu")
    clip, t_frames = _timed(lambda: load_clip(video, landmarker=landmarker), cpu)
    seconds = clip.frames.shape[0] / 25.0
    clip, t_lm = _timed(lambda: track(clip, landmarker), cpu)
    seg, t_seg = _timed(lambda: segmenter.segment(clip.frames, landmarks=clip.landmarks), cpu)
    rows = [("frames (decode, resample, crop)", "cpu", t_frames), ("landmarks (MediaPipe)", "cpu", t_lm),
            (f"segmentation ({seg_note})", "cpu", t_seg)]
    devices = [d for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    for name in devices:
        dev = torch.device(name)
        fm = face_model.to(dev)
        fit, t_fit = _timed(lambda: fit_clip(fm, clip.landmarks.to(dev), 512, schedule=FitSchedule()), dev)

        def plate():
            t = fit.exp.shape[0]
            id_t = fit.id.expand(t, -1)
            camera_sequence(fit.euler, fit.trans)
            torso_keypoints(fm, id_t, fit.exp, fit.euler, fit.trans, clamp=False)
            lip_rects(landmarks_2d(fm, id_t, fit.exp, fit.euler, fit.trans).cpu() * 512)
            inpaint_torso(clip.frames[:1], seg[:1])
            return background_plate(clip.frames, seg, device=dev)

        _, t_plate = _timed(plate, dev)
        rows += [(f"fit (3DMM, {bfm_note} face model)", name, t_fit), ("plate + torso + cameras", name, t_plate)]

    print(f"\nIdentity preparation: {video.name}, {clip.frames.shape[0]} frames = {seconds:.1f} s of video at 25 fps")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"\n| {'stage':<42} | {'device':<6} | {'seconds':>8} | {'s per s of video':>16} |")
    print(f"|{'-' * 44}|{'-' * 8}|{'-' * 10}|{'-' * 18}|")
    for stage, dev, t in rows:
        print(f"| {stage:<42} | {dev:<6} | {t:8.2f} | {t / seconds:16.3f} |")
    for name in devices:
        total = sum(t for *_, t in rows[:3]) + sum(t for s, d, t in rows[3:] if d == name)
        print(f"| {'total (' + name + ')':<42} | {name:<6} | {total:8.2f} | {total / seconds:16.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", default=str(DATA / "German_20s.mp4"))
    p.add_argument("--seconds", type=float, default=0.0, help="use only the first N seconds (0 = all)")
    p.add_argument("--landmarker", default=str(DATA / "face_landmarker.task"))
    p.add_argument("--segmenter", default="", help="selfie_multiclass_256x256.tflite (synthetic if absent)")
    p.add_argument("--bfm", default="", help="BFM folder (synthetic face model if absent)")
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    run(p.parse_args())


if __name__ == "__main__":
    main()
