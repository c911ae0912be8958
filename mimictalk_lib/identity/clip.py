"""From a user's clip (file or decoded frames) to 25 fps 512² portrait frames with landmarks.

Steps: decode (PyAV, two passes over a file so only the cropped frames are kept), resample to
25 fps by timestamps, find the face on up to 24 sampled frames (IMAGE-mode landmarks) and choose
one crop (``frames.choose_crop``), cut and resize every frame, then track the landmarks over the
cropped clip (``Landmarker.detect(video=True)``) and apply the bad-frame policy (``checks``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..utils import ProgressFn, count, logger
from ..video import iter_video
from .checks import bad_frame_policy, check_face_size, check_length, check_max_length, cut_off_frames, interpolate_missing
from .frames import (
    FRAME_SIZE,
    CropBox,
    choose_crop,
    crop_frames,
    check_timeline,
    face_boxes,
    is_variable_rate,
    probe_video,
    resample_indices,
    shrink_to,
    timestamps_from,
    to_uint8_frames,
    whole_frame_crop,
)
from .landmarks import Landmarker, warn_multiple_faces

CROP_SAMPLES = 24
"""Frames on which the face is searched to choose the crop."""
SAMPLE_SIDE = 960
"""Long side (px) the search frames are reduced to (MediaPipe detects at 128-256 px anyway)."""
CROP_CHUNK = 16


@dataclass
class Clip:
    """Cropped 25 fps frames of a clip and where they came from."""

    frames: torch.Tensor  # uint8 [T, S, S, 3] CPU
    positions: np.ndarray  # [T] index of each frame on the 25 fps timeline
    source_frames: np.ndarray  # [T] index of the source frame shown
    crop: CropBox
    source_hw: tuple[int, int]
    source: str
    variable_rate: bool = False
    several_faces: bool = False  # already warned about several faces
    landmarks: Optional[torch.Tensor] = None  # float [T, 478, 3] after ``track``
    bad: Optional[torch.Tensor] = None  # bool [T]: no usable face (interpolated landmarks)
    dropped: list = field(default_factory=list)  # timeline positions removed

    def meta(self) -> dict:
        return {
            "source": self.source,
            "source_size": list(self.source_hw),
            "crop": [self.crop.x0, self.crop.y0, self.crop.side],
            "fps": 25.0,
            "variable_frame_rate": self.variable_rate,
            "several_faces": self.several_faces,
            "frame_positions": self.positions.tolist(),
            "source_frames": self.source_frames.tolist(),
            "dropped_frames": list(self.dropped),
            "interpolated_frames": [] if self.bad is None else torch.nonzero(self.bad).flatten().tolist(),
        }


def find_crop(
    samples: torch.Tensor, landmarker: Landmarker, what: str, source_scale: float = 1.0
) -> tuple[CropBox, bool]:
    """Crop (source pixels) from the faces found on ``samples`` (uint8 [K, H, W, 3]) that are
    ``source_scale`` times smaller than the source frames; also whether several faces were seen."""
    search, scale = shrink_to(samples, SAMPLE_SIDE)
    scale *= source_scale
    res = landmarker.detect(search, video=False)
    several = warn_multiple_faces(res.num_faces, f"{what}: sampled frames")
    if not bool(res.detected.any()):
        n = samples.shape[0]
        where = "no face found" if n == 1 else f"no face found in any of the {count(n, 'frame')} checked"
        kind = "The image" if n == 1 else "The clip"
        raise InputError(f"{what}: {where}. {kind} needs one clearly visible, roughly frontal face.")
    boxes = face_boxes(res.points[res.detected, :468]) * scale
    check_face_size(boxes[:, 3] - boxes[:, 1], what)
    return choose_crop(boxes), several


def load_clip(
    source,
    *,
    landmarker: Landmarker,
    fps: Optional[float] = None,
    timestamps: Optional[Sequence[float]] = None,
    crop: str = "auto",
    pad: str = "edge",
    size: int = FRAME_SIZE,
    what: str = "identity clip",
    max_seconds: Optional[float] = None,
) -> Clip:
    """25 fps ``size``² frames of ``source``: a video file path, or frames (ComfyUI IMAGE batch
    ``[B, H, W, C]`` float 0..1 or uint8) with ``fps`` or per-frame ``timestamps`` (seconds).

    Clips longer than ``max_seconds`` (default: ``frames.max_clip_seconds()``, 10 min unless the
    environment variable ``MIMICTALK_MAX_CLIP_SECONDS`` says otherwise) and clips with a gap of more
    than ``MAX_FRAME_GAP_SECONDS`` between two frames are refused before any frame buffer is
    allocated."""
    if crop not in ("auto", "none"):
        raise InputError(f"crop must be 'auto' or 'none', got {crop!r}")
    is_file = isinstance(source, (str, os.PathLike))
    if is_file:
        info = probe_video(source, max_seconds=max_seconds, what=what)
        ts, (h, w) = info.timestamps, (info.height, info.width)
        name = os.path.basename(os.fspath(source))
        frames_src = None
    else:
        frames_src = to_uint8_frames(source, what)
        _, h, w, _ = frames_src.shape
        ts = timestamps_from(frames_src.shape[0], fps, timestamps)
        name = "frames"
    check_timeline(ts, what, max_seconds)
    vfr = is_variable_rate(ts)
    if vfr:
        logger.info("%s: variable frame rate detected; resampling to 25 fps by timestamps", what)
    idx = resample_indices(ts)
    check_max_length(len(idx), what, max_seconds)  # before the frame buffer below
    check_length(len(idx), what)

    several = False
    if crop == "none":
        box = whole_frame_crop(h, w, what)
    elif is_file:
        keys = sorted(info.samples)
        samples = torch.from_numpy(np.stack([info.samples[k] for k in keys]))
        box, several = find_crop(samples, landmarker, what, source_scale=w / samples.shape[2])
    else:
        pick = np.unique(idx[np.linspace(0, len(idx) - 1, min(CROP_SAMPLES, len(idx))).round().astype(int)])
        box, several = find_crop(frames_src[torch.from_numpy(pick)], landmarker, what)

    out = torch.empty(len(idx), size, size, 3, dtype=torch.uint8)
    if frames_src is not None:
        for s in range(0, len(idx), CROP_CHUNK):
            sel = torch.from_numpy(idx[s : s + CROP_CHUNK])
            out[s : s + CROP_CHUNK] = crop_frames(frames_src[sel], box, size, pad)
    else:
        _crop_stream(source, idx, box, size, pad, out)
    return Clip(out, np.arange(len(idx)), idx, box, (h, w), name, vfr, several)


def _crop_stream(path, idx: np.ndarray, box: CropBox, size: int, pad: str, out: torch.Tensor) -> None:
    """Second decoding pass: crop the selected source frames into ``out`` (``idx`` sorted)."""
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (frame, output positions)

    def flush():
        if pending:
            cropped = crop_frames(torch.from_numpy(np.stack([f for f, _ in pending])), box, size, pad)
            for k, (_, pos) in enumerate(pending):
                out[torch.from_numpy(pos)] = cropped[k]
            pending.clear()

    start = np.searchsorted(idx, np.arange(idx.max() + 2), side="left")
    for i, (img, _) in enumerate(iter_video(path)):
        if i > idx[-1]:
            break
        pos = np.arange(start[i], start[i + 1])
        if pos.size:
            pending.append((img, pos))
        if len(pending) >= CROP_CHUNK:
            flush()
    flush()


def track(
    clip: Clip,
    landmarker: Landmarker,
    *,
    missing: str = "drop",
    what: str = "identity clip",
    on_step: Optional[ProgressFn] = None,
) -> Clip:
    """Landmarks of every frame (VIDEO+IMAGE mode) and the bad-frame policy. ``missing``:
    ``"drop"`` removes frames without a usable face, ``"interpolate"`` keeps them with landmarks
    interpolated from their neighbours (``clip.bad`` marks them)."""
    if missing not in ("drop", "interpolate"):
        raise InputError(f"missing must be 'drop' or 'interpolate', got {missing!r}")
    res = landmarker.detect(clip.frames, video=True, on_step=on_step)
    clip.several_faces = warn_multiple_faces(res.num_faces, f"{what}: frames", already=clip.several_faces)
    size = clip.frames.shape[1]
    cut = cut_off_frames(res.points, res.detected, clip.crop, clip.source_hw, size)
    bad = ~res.detected | cut
    bad_frame_policy(bad, what, {"no face found": ~res.detected, "face cut off by the frame edge": cut})
    points = res.points.float()
    if missing == "interpolate":
        clip.landmarks, clip.bad = interpolate_missing(points, bad), bad
        return clip
    keep = ~bad
    clip.dropped = clip.positions[bad.numpy()].tolist()
    clip.frames = clip.frames[keep]
    clip.positions, clip.source_frames = clip.positions[keep.numpy()], clip.source_frames[keep.numpy()]
    clip.landmarks, clip.bad = points[keep], torch.zeros(int(keep.sum()), dtype=torch.bool)
    if clip.dropped:
        check_length(clip.frames.shape[0], what, f" after dropping {count(len(clip.dropped), 'frame')} without a usable face")
    return clip
