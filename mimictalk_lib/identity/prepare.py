"""Identity preparation end to end: ``prepare_identity`` (a talking clip, for SD-Hybrid
adaptation) and ``prepare_photo_identity`` (one portrait, for the one-shot path).

Upstream runs these steps as separate scripts over files (architecture reference §5;
``inference/train_mimictalk_on_a_video.py`` and ``mimictalk_infer.py``): resample + resize,
segmentation and derived images, MediaPipe landmarks, 3DMM fit, then cameras (window-7 smoothed),
torso keypoints and lip rectangles in the trainer. Here they run in memory and produce an
``Identity``; nothing is written unless ``output`` is given, and then only the finished identity
(atomically), so a failed preparation never leaves a partial file.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..face import FaceModel, load_face_model
from ..face.camera import camera_sequence, eg3d_camera
from ..face.keypoints import landmarks_2d, torso_keypoints
from ..utils import ProgressFn, cpu_threads, logger, report
from ..video import iter_video
from .background import background_plate
from .clip import Clip, find_crop, load_clip, track
from .fit3dmm import FitResult, FitSchedule, check_fit_quality, fit_clip, fit_images, fit_quality
from .frames import FRAME_SIZE, crop_frames, to_uint8_frames, whole_frame_crop
from .identity import Identity
from .landmarks import Landmarker, MediaPipeLandmarker, warn_multiple_faces
from .segmentation import NUM_CLASSES, MediaPipeSegmenter, Segmenter
from .torso import inpaint_torso

LIP_SCALE = 1.2  # half-size of the lip crop = 1.2 x the lips' half-extent (binarizer_nerf.get_lip_rect)

# share of the progress bar per stage (they are reported as one 0..1000 bar)
_STAGES = {"frames": 5, "landmarks": 40, "segmentation": 15, "fit": 30, "plate": 10}


class _Progress:
    """Maps each stage's own (done, total) onto one bar of ``1000`` units."""

    TOTAL = 1000

    def __init__(self, on_step: Optional[ProgressFn], stages: dict[str, int]):
        self.on_step = on_step
        scale = self.TOTAL / sum(stages.values())
        self.start, acc = {}, 0.0
        for name, weight in stages.items():
            self.start[name] = (acc, weight * scale)
            acc += weight * scale

    def stage(self, name: str) -> ProgressFn:
        offset, width = self.start[name]

        def cb(done, total, **info):
            info["stage"] = name  # the stage name of the whole preparation, not the backend's
            report(self.on_step, int(offset + width * done / max(total, 1)), self.TOTAL, **info)

        return cb

    def done(self, name: str) -> None:
        self.stage(name)(1, 1)


def as_landmarker(landmarker) -> Landmarker:
    """A ``Landmarker`` object, or the path of ``face_landmarker.task``."""
    return MediaPipeLandmarker(landmarker) if isinstance(landmarker, (str, os.PathLike)) else landmarker


def as_segmenter(segmenter) -> Segmenter:
    """A ``Segmenter`` object, or the path of ``selfie_multiclass_256x256.tflite``."""
    return MediaPipeSegmenter(segmenter) if isinstance(segmenter, (str, os.PathLike)) else segmenter


def as_face_model(face_model, device) -> FaceModel:
    """A loaded ``FaceModel`` or the BFM folder (the face helper's checker names missing files),
    on ``device`` in fp32. A given model is never moved in place: a copy is made when needed."""
    if isinstance(face_model, (str, os.PathLike)):
        face_model = load_face_model(face_model, need_mp468=True)
    device = torch.device(device)
    ref = face_model.mean_shape
    if ref.dtype == torch.float32 and ref.device.type == device.type and (
        device.index is None or ref.device.index == device.index
    ):
        return face_model
    return copy.deepcopy(face_model).to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class PrepareBackends:
    """The models a preparation runs, each an object or the path of its file / folder:
    ``landmarker`` (``Landmarker`` or ``face_landmarker.task``), ``segmenter`` (``Segmenter`` or
    ``selfie_multiclass_256x256.tflite``), ``face_model`` (``FaceModel`` or the BFM folder)."""

    landmarker: Any
    segmenter: Any
    face_model: Any

    def load(self, device) -> tuple[Landmarker, Segmenter, FaceModel]:
        """The three backends as objects; the face model is loaded first thing so a missing one
        fails before any decoding."""
        face_model = as_face_model(self.face_model, device)
        return as_landmarker(self.landmarker), as_segmenter(self.segmenter), face_model


@dataclass(frozen=True)
class PrepareOptions:
    """How a clip or photo is prepared.

    ``crop``: ``"auto"`` (find the face, cut one portrait crop for the clip) or ``"none"`` (frames
    are already square portraits). ``pad``: ``"edge"`` / ``"black"`` where the crop leaves the
    frame. ``missing`` (clips): ``"drop"`` or ``"interpolate"`` frames without a usable face (at
    most 25 %). ``schedule``: the 3DMM fit's steps. ``device``: where the fit and the plate run.
    ``size``: side of the prepared frames, the output size of the renderer the identity is for (512
    for the official models). ``threads``: CPU intra-op threads of the small-tensor stages (landmark
    post-processing, fit, keypoints): None = ``MIMICTALK_SMALL_TENSOR_THREADS`` or 1, 0 = torch's
    own setting (see :func:`~mimictalk_lib.utils.cpu_threads`)."""

    crop: str = "auto"
    pad: str = "edge"
    missing: str = "drop"
    schedule: FitSchedule = FitSchedule()
    device: torch.device | str = "cpu"
    size: int = FRAME_SIZE
    threads: Optional[int] = None


def _settings(backends: Optional[PrepareBackends], options: Optional[PrepareOptions], keywords: dict,
              what: str) -> tuple[PrepareBackends, PrepareOptions]:
    """Backends and options from the dataclasses plus keyword arguments naming their fields (the
    keyword form ``prepare_identity(src, landmarker=..., segmenter=..., face_model=..., crop=...)``)."""
    names = {f.name for f in fields(PrepareBackends)}
    unknown = sorted(set(keywords) - names - {f.name for f in fields(PrepareOptions)})
    if unknown:
        raise TypeError(f"{what}() got unexpected keyword arguments {unknown}")
    given = {k: v for k, v in keywords.items() if k in names}
    if backends is None:
        missing = sorted(names - set(given))
        if missing:
            raise TypeError(f"{what}() needs backends=PrepareBackends(...) or the keyword arguments {missing}")
        backends = PrepareBackends(**given)
    elif given:
        backends = replace(backends, **given)
    options = replace(options or PrepareOptions(), **{k: v for k, v in keywords.items() if k not in names})
    return backends, options


def lip_rects(lm68_px: torch.Tensor, size: int = FRAME_SIZE) -> torch.Tensor:
    """Square lip crops (xmin, xmax, ymin, ymax) from 68-point pixels ``[T, 68, 2]``: centred on
    the outer lip (points 48-59), half-size 1.2 x the larger half-extent, shifted inside the frame
    (upstream ``get_lip_rect``, integer truncation included)."""
    lips = lm68_px[:, 48:60].double()
    lo, hi = lips.amin(1), lips.amax(1)  # [T, 2]
    c = ((lo + hi) / 2).trunc()
    half = ((hi - c) * LIP_SCALE).trunc().amax(1)  # [T]
    x0 = (c[:, 0] - half).clamp(min=0)
    y0 = (c[:, 1] - half).clamp(min=0)
    x0 = torch.where(x0 + 2 * half > size, size - 2 * half, x0)
    y0 = torch.where(y0 + 2 * half > size, size - 2 * half, y0)
    return torch.stack([x0, x0 + 2 * half, y0, y0 + 2 * half], 1).long()


def _segment(segmenter: Segmenter, frames: torch.Tensor, landmarks: torch.Tensor, on_step) -> torch.Tensor:
    seg = segmenter.segment(frames, landmarks=landmarks, on_step=on_step)
    t, s = frames.shape[0], frames.shape[1]
    if tuple(seg.shape) != (t, s, s) or int(seg.max()) >= NUM_CLASSES:
        raise InputError(
            f"segmenter returned shape {list(seg.shape)} with max class {int(seg.max())}; expected "
            f"[{t}, {s}, {s}] class ids 0..{NUM_CLASSES - 1}"
        )
    return seg.to(torch.uint8).cpu()


def _assemble(clip: Clip, segmaps: torch.Tensor, fit: FitResult, face_model: FaceModel, kind: str,
              options: PrepareOptions, progress: _Progress) -> Identity:
    """Cameras, keypoints, lip crops, plate and torso reference around a fit."""
    size = clip.frames.shape[1]
    c = replace(fit.coeffs, id=fit.coeffs.id[:1])  # a photo's one identity, a clip's shared one
    with torch.no_grad(), cpu_threads(options.device, options.threads):
        kps = torso_keypoints(face_model, c.per_frame(), clamp=False)  # training keypoints
        lm68 = landmarks_2d(face_model, c.per_frame()) * size
        cameras = camera_sequence(c.pose) if kind == "clip" else eg3d_camera(c.pose)
    plate, sure = background_plate(clip.frames, segmaps, device=options.device)
    torso, torso_mask = inpaint_torso(clip.frames[:1], segmaps[:1])
    progress.done("plate")
    meta = clip.meta()
    meta.update(
        kind=kind,
        landmark_error_px=float(fit.landmark_error.mean()),
        plate_sure_fraction=float(sure.float().mean()),
        fit_schedule=asdict(options.schedule),
    )
    cpu = lambda x: x.detach().float().cpu().contiguous()  # noqa: E731
    c = c.map(cpu)
    return Identity(
        frames=clip.frames, segmaps=segmaps, landmarks=cpu(clip.landmarks),
        id=c.id, exp=c.exp, euler=c.euler, trans=c.trans, cameras=cpu(cameras), keypoints=cpu(kps),
        lip_rects=lip_rects(lm68.cpu(), size),
        plate=plate, torso_ref=torso[0], torso_ref_mask=torso_mask[0], meta=meta,
    )


def _finish(clip: Clip, segmenter: Segmenter, face_model: FaceModel, kind: str, options: PrepareOptions,
            output, progress: _Progress) -> Identity:
    """Segmentation, 3DMM fit (clip or single-image variant), assembly, and the atomic save."""
    segmaps = _segment(segmenter, clip.frames, clip.landmarks, progress.stage("segmentation"))
    fitter = fit_clip if kind == "clip" else fit_images
    landmarks, size = clip.landmarks.to(options.device), clip.frames.shape[1]
    fit = fitter(face_model, landmarks, size, schedule=options.schedule, on_step=progress.stage("fit"),
                 threads=options.threads)
    quality = fit_quality(face_model, fit, landmarks, size)
    check_fit_quality(quality, "identity clip" if kind == "clip" else "photo")  # before the plate and torso work
    identity = _assemble(clip, segmaps, fit, face_model, kind, options, progress)
    identity.meta["fit_quality"] = quality.as_meta()
    logger.info("prepared %r (landmark fit error %.2f px)", identity, identity.meta["landmark_error_px"])
    if output is not None:
        identity.save(output)
    return identity


def prepare_identity(
    source,
    backends: Optional[PrepareBackends] = None,
    options: Optional[PrepareOptions] = None,
    *,
    fps: Optional[float] = None,
    timestamps: Optional[Sequence[float]] = None,
    output: Optional[str | os.PathLike] = None,
    on_step: Optional[ProgressFn] = None,
    **keywords: Any,
) -> Identity:
    """Prepare an identity from a talking-head clip.

    ``source``: video file path, or frames (ComfyUI IMAGE ``[B, H, W, C]`` float 0..1 or uint8,
    grayscale/RGBA accepted) with ``fps`` or per-frame ``timestamps``. ``backends`` /
    ``options``: :class:`PrepareBackends` and :class:`PrepareOptions`; their fields may also be
    given as keyword arguments (``landmarker=``, ``segmenter=``, ``face_model=``, ``crop=``,
    ``device=``, ...), which override the dataclasses. ``output``: save the identity there
    (atomic). ``on_step(done, 1000, stage=...)`` may raise to cancel.
    """
    backends, options = _settings(backends, options, keywords, "prepare_identity")
    progress = _Progress(on_step, _STAGES)
    landmarker, segmenter, face_model = backends.load(options.device)
    clip = load_clip(source, landmarker=landmarker, fps=fps, timestamps=timestamps, crop=options.crop, pad=options.pad,
                     size=options.size)
    progress.done("frames")
    with cpu_threads("cpu", options.threads):  # MediaPipe, then per-frame landmark bookkeeping
        clip = track(clip, landmarker, missing=options.missing, on_step=progress.stage("landmarks"))
    return _finish(clip, segmenter, face_model, "clip", options, output, progress)


def load_photo(image) -> torch.Tensor:
    """One photo as uint8 ``[1, H, W, 3]`` from a path (any format PyAV/FFmpeg reads: PNG, JPEG,
    WebP, ...) or an image tensor (``[H, W, C]`` or a batch of one)."""
    if isinstance(image, (str, os.PathLike)):
        first = next(iter_video(image), None)
        if first is None:
            raise InputError(f"{os.fspath(image)}: no image could be decoded")
        return torch.from_numpy(first[0])[None]
    frames = to_uint8_frames(image, "photo")
    if frames.shape[0] != 1:
        raise InputError(
            f"photo identity: expected one image, got a batch of {frames.shape[0]}. Pass a single "
            "image, or use prepare_identity for a clip."
        )
    return frames


def prepare_photo_identity(
    image,
    backends: Optional[PrepareBackends] = None,
    options: Optional[PrepareOptions] = None,
    *,
    output: Optional[str | os.PathLike] = None,
    on_step: Optional[ProgressFn] = None,
    **keywords: Any,
) -> Identity:
    """One-frame identity from a portrait photo (single-image 3DMM fit, plate from the photo,
    unsmoothed camera). Arguments as :func:`prepare_identity` (``options.missing`` is unused)."""
    backends, options = _settings(backends, options, keywords, "prepare_photo_identity")
    progress = _Progress(on_step, _STAGES)
    landmarker, segmenter, face_model = backends.load(options.device)
    src = load_photo(image)
    _, h, w, _ = src.shape
    several = False
    if options.crop == "auto":
        box, several = find_crop(src, landmarker, "photo")
    elif options.crop == "none":
        box = whole_frame_crop(h, w, "photo")
    else:
        raise InputError(f"crop must be 'auto' or 'none', got {options.crop!r}")
    frames = crop_frames(src, box, options.size, options.pad)
    clip = Clip(frames, np.zeros(1, dtype=int), np.zeros(1, dtype=int), box, (h, w),
                os.path.basename(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else "image")
    progress.done("frames")
    res = landmarker.detect(frames, video=False, on_step=progress.stage("landmarks"))
    warn_multiple_faces(res.num_faces, "photo", already=several)
    if not bool(res.detected[0]):
        raise InputError("photo: no face found in the portrait crop. Use a photo with one clear, roughly frontal face.")
    clip.landmarks, clip.bad = res.points.float(), torch.zeros(1, dtype=torch.bool)
    return _finish(clip, segmenter, face_model, "photo", options, output, progress)
