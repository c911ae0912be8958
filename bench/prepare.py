"""Identity preparation speed: seconds of preparation per second of video, per stage.

    python -m bench.prepare                              # German_20s.mp4, CPU (+ CUDA fit/plate rows)
    python -m bench.prepare --device cpu --video clip.mp4 --seconds 20 [--bfm BFM/]
                            [--landmarker face_landmarker.task] [--segmenter selfie_multiclass_256x256.tflite]
    python -m bench.prepare --tiny --device cpu          # smoke test: 1.2 s of video, 8 + 8 + 2 fit steps
    python -m bench.prepare --threads 1,2 [--frames 125] [--repeats 3]   # small-tensor stages per thread count

Needs the real media (by default /work/shared/data: German_20s.mp4 and face_landmarker.task) and
MediaPipe; without them it prints a skip message. Stages (the steps of ``prepare_identity``):

* frames: decode, 25 fps resampling, face search on 24 sampled frames, crop + resize to 512²;
* landmarks: MediaPipe FaceLandmarker, IMAGE + VIDEO mode over every frame (CPU only);
* segmentation: MediaPipe selfie-multiclass, or - when its model file is absent - the synthetic
  landmark-driven segmenter of the tests (then the row says "synthetic": not a real cost);
* fit: staged 3DMM landmark fit with the upstream schedule (200 + 200 + 50 steps);
* plate: background plate, torso inpainting, cameras, keypoints, lip crops.

Landmarks, segmentation and frames run on the CPU whatever the device (MediaPipe and PyAV);
the fit and the plate run on each requested device, in fp32 (the landmark fit and the camera
maths stay fp32, so ``--dtypes`` accepts fp32 only). Without ``--bfm`` the synthetic face model
of the tests is used: the fit only touches the 468 landmark vertices, so its cost is the same.

``--threads N,M,...`` measures instead the CPU stages that run many small-tensor ops (the 3DMM fit
with the upstream schedule, the keypoints / cameras / lip crops of the plate stage) at each intra-op
thread count, the counts alternated within one process (``--repeats`` rounds) so that the machine's
load hits each alike; no media or MediaPipe needed (synthetic face model and landmarks of
``--frames`` frames). The library runs these stages with ``MIMICTALK_SMALL_TENSOR_THREADS`` (1 by
default); the table is how that default was chosen (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
from pathlib import Path

import torch

from bench import _common as common

DATA = common.ROOT.parent / "shared" / "data"  # the project's real media (not in the repository)
FPS = 25.0  # prepare_identity resamples to 25 fps
FRAME_SIZE = 512
TINY_SECONDS = 1.2  # 29 frames: clips shorter than 1 s are refused
TINY_FIT_ITERATIONS = 8  # FitSchedule.with_iterations: 8 + 8 + 2 steps


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


def _missing(args) -> str:
    """Why the benchmark cannot run here ('' when it can)."""
    for what, path in (("video", args.video), ("landmarker", args.landmarker)):
        if not os.path.isfile(path):
            return f"--{what} {path} not found (real media; default folder {DATA})"
    if importlib.util.find_spec("mediapipe") is None:
        return "mediapipe is not installed"
    return ""


def _stages(args, configs, tmp: str):
    """Time every stage; returns (video name, frame count, rows of (stage, device, seconds))."""
    from mimictalk_lib.face import load_face_model
    from mimictalk_lib.face.camera import camera_sequence
    from mimictalk_lib.face.keypoints import landmarks_2d, torso_keypoints
    from mimictalk_lib.identity import MediaPipeLandmarker, MediaPipeSegmenter, background_plate, inpaint_torso
    from mimictalk_lib.identity.clip import load_clip, track
    from mimictalk_lib.identity.fit3dmm import FitSchedule, fit_clip
    from mimictalk_lib.identity.prepare import lip_rects

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

        folder, bfm_note = write_synthetic_face_model(Path(tmp) / "bfm"), "synthetic"
        face_model = load_face_model(folder, need_mp468=True)
    schedule = FitSchedule.with_iterations(TINY_FIT_ITERATIONS) if args.tiny else FitSchedule()

    cpu = torch.device("cpu")
    clip, t_frames = common.timed(lambda: load_clip(video, landmarker=landmarker), cpu)
    clip, t_lm = common.timed(lambda: track(clip, landmarker), cpu)
    seg, t_seg = common.timed(lambda: segmenter.segment(clip.frames, landmarks=clip.landmarks), cpu)
    rows = [("frames (decode, resample, crop)", "cpu", t_frames), ("landmarks (MediaPipe)", "cpu", t_lm),
            (f"segmentation ({seg_note})", "cpu", t_seg)]
    for name, _ in configs:
        dev = torch.device(name)
        fm = face_model.to(dev)
        fit, t_fit = common.timed(lambda: fit_clip(fm, clip.landmarks.to(dev), FRAME_SIZE, schedule=schedule), dev)

        def plate():
            coeffs = fit.coeffs.per_frame()
            camera_sequence(coeffs.pose)
            torso_keypoints(fm, coeffs, clamp=False)
            lip_rects(landmarks_2d(fm, coeffs).cpu() * FRAME_SIZE)
            inpaint_torso(clip.frames[:1], seg[:1])
            return background_plate(clip.frames, seg, device=dev)

        _, t_plate = common.timed(plate, dev)
        rows += [(f"fit (3DMM, {bfm_note} face model, {schedule.total} steps)", name, t_fit),
                 ("plate + torso + cameras", name, t_plate)]
    return video.name, clip.frames.shape[0], rows


def _thread_rows(args) -> list[tuple]:
    """Fit and keypoint stages at each thread count, alternated; rows (stage, threads, best, median)."""
    from mimictalk_lib.face.camera import camera_sequence
    from mimictalk_lib.face.keypoints import landmarks_2d, torso_keypoints
    from mimictalk_lib.identity.fit3dmm import FitSchedule, fit_clip
    from mimictalk_lib.identity.prepare import lip_rects
    from mimictalk_lib.utils import cpu_threads
    from tests.fixtures.synthetic_identity import observable_face_model, synthetic_clip_landmarks

    schedule = FitSchedule.with_iterations(TINY_FIT_ITERATIONS) if args.tiny else FitSchedule()
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        fm = observable_face_model(Path(tmp) / "bfm")
    landmarks = synthetic_clip_landmarks(fm, args.frames)["landmarks"]

    def plate_maths(coeffs):
        camera_sequence(coeffs.pose)
        torso_keypoints(fm, coeffs, clamp=False)
        return lip_rects(landmarks_2d(fm, coeffs) * FRAME_SIZE)

    coeffs = fit_clip(fm, landmarks, FRAME_SIZE, schedule=schedule).coeffs.per_frame()  # also a warm-up
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for n in args.threads:
            _, t_fit = common.timed(lambda: fit_clip(fm, landmarks, FRAME_SIZE, schedule=schedule, threads=n), cpu)
            with cpu_threads(cpu, n), torch.no_grad():
                _, t_kp = common.timed(lambda: plate_maths(coeffs), cpu)
            times.setdefault((f"fit (3DMM, {schedule.total} steps)", n), []).append(t_fit)
            times.setdefault(("keypoints + cameras + lip crops", n), []).append(t_kp)
    return [(stage, n, min(v), statistics.median(v)) for (stage, n), v in times.items()]


def _threads_main(args) -> None:
    load = os.getloadavg()
    rows = _thread_rows(args)
    print(f"# small-tensor stages of identity preparation: {args.frames} frames, synthetic landmarks, "
          f"{args.repeats} alternated round(s); load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    common.print_machines(["cpu"])
    base = {stage: median for stage, n, _, median in rows if n == args.threads[0]}
    table = [(stage, n, f"{best:.3f}", f"{median:.3f}", f"{median / base[stage]:.2f}")
             for stage, n, best, median in sorted(rows, key=lambda r: (r[0], r[1]))]
    common.print_table(["stage", "threads", "best s", "median s", "median / first count's"], table)


def main() -> None:
    ap = common.parser(__doc__)
    common.add_common_args(ap, dtypes=("fp32",), workers=False)
    ap.add_argument("--video", default=str(DATA / "German_20s.mp4"), help="talking-head video (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=None,
                    help=f"use only the first N seconds (default 0 = all; --tiny: {TINY_SECONDS})")
    ap.add_argument("--landmarker", default=str(DATA / "face_landmarker.task"),
                    help="MediaPipe face_landmarker.task (default: %(default)s)")
    ap.add_argument("--segmenter", default="", help="selfie_multiclass_256x256.tflite (synthetic if absent)")
    ap.add_argument("--bfm", default="", help="BFM folder (synthetic face model if absent)")
    ap.add_argument("--threads", type=lambda s: common.comma_list(s, int), default=None,
                    help="measure the small-tensor stages at these CPU thread counts instead (e.g. 1,2)")
    ap.add_argument("--frames", type=int, default=None, help="--threads: frames of synthetic landmarks (default 125)")
    ap.add_argument("--repeats", type=int, default=None, help="--threads: alternated rounds (default 3)")
    args = ap.parse_args()
    if args.threads:
        args.frames = common.tiny_default(args.frames, 125, 8, args.tiny)
        args.repeats = common.tiny_default(args.repeats, 3, 1, args.tiny)
        _threads_main(args)
        return
    args.seconds = common.tiny_default(args.seconds, 0.0, TINY_SECONDS, args.tiny)
    configs = common.plan(ap, args, allowed=("fp32",))
    why = _missing(args)
    if why:
        print(f"# bench.prepare skipped: {why}")
        return

    with tempfile.TemporaryDirectory() as tmp:
        name, frames, rows = _stages(args, configs, tmp)
    seconds = frames / FPS
    print(f"# identity preparation: {name}, {frames} frames = {seconds:.1f} s of video at {FPS:g} fps")
    common.print_machines(device for device, _ in configs)
    table = [(stage, dev, f"{t:.2f}", f"{t / seconds:.3f}") for stage, dev, t in rows]
    for device, _ in configs:
        total = sum(t for *_, t in rows[:3]) + sum(t for _, d, t in rows[3:] if d == device)
        table.append((f"total ({device})", device, f"{total:.2f}", f"{total / seconds:.3f}"))
    common.print_table(["stage", "device", "seconds", "s per s of video"], table)


if __name__ == "__main__":
    main()
