"""Input checks of identity preparation: face size, frames without a usable face, clip length.

Policy for frames where no face was found or the face is cut off by the frame edge:

* more than ``MAX_BAD_FRACTION`` (25 %) of the frames -> ``InputError`` naming them;
* otherwise they are dropped (identity clips: the training target of such a frame would be
  wrong) or their landmarks are interpolated from the neighbouring good frames (style clips,
  whose expression sequence must stay aligned with the audio), with a warning naming them.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import InputError
from ..utils import count, logger
from .frames import FACE_HEIGHT_FRACTION, FRAME_SIZE, TARGET_FPS, CropBox, clip_too_long, face_boxes, max_clip_seconds

MAX_BAD_FRACTION = 0.25
"""Largest share of frames without a usable face that is repaired instead of refused."""
MIN_FACE_PX = 40
"""A face box shorter than this (source pixels) is refused: landmarks and texture are unusable."""
SMALL_FACE_PX = 160
"""Below this the 512² crop is upscaled more than ~1.7x; a warning says to expect blur."""
CUT_OFF_TOLERANCE = 0.05
"""A face box may leave the source frame by this share of its height before it counts as cut off."""
MIN_SECONDS = 1.0


def _list(idx: list[int], limit: int = 20) -> str:
    head = ", ".join(str(i) for i in idx[:limit])
    return head + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")


def check_face_size(box_heights: torch.Tensor, what: str) -> None:
    """Refuse tiny faces, warn about small ones (heights in source pixels)."""
    h = float(box_heights.median())
    if h < MIN_FACE_PX:
        raise InputError(
            f"{what}: the face is only {h:.0f} px tall (need at least {MIN_FACE_PX}, ideally "
            f"{SMALL_FACE_PX}+). Use a closer or higher-resolution shot of the face."
        )
    if h < SMALL_FACE_PX:
        logger.warning(
            "%s: the face is %.0f px tall; the %dx%d portrait is upscaled %.1fx, expect a blurry identity",
            what, h, FRAME_SIZE, FRAME_SIZE, FRAME_SIZE * FACE_HEIGHT_FRACTION / h,
        )


def cut_off_frames(points: torch.Tensor, detected: torch.Tensor, crop: CropBox, source_hw: tuple[int, int],
                   size: int) -> torch.Tensor:
    """bool [T]: frames whose landmark box leaves the *source* frame (the crop may pad beyond it)
    by more than ``CUT_OFF_TOLERANCE`` of the box height. ``points`` are pixels of the crop."""
    boxes = face_boxes(crop.to_source(points[..., :2], size))  # [T, 4] source pixels
    tol = CUT_OFF_TOLERANCE * (boxes[:, 3] - boxes[:, 1])
    h, w = source_hw
    out = (boxes[:, 0] < -tol) | (boxes[:, 1] < -tol) | (boxes[:, 2] > w + tol) | (boxes[:, 3] > h + tol)
    return out & detected


def check_max_length(num_frames: int, what: str, max_seconds: Optional[float] = None) -> None:
    """Refuse ``num_frames`` at 25 fps beyond the clip limit (``frames.max_clip_seconds``); load_clip
    calls it before allocating the frame buffer."""
    limit = max_clip_seconds(max_seconds)
    if num_frames > limit * TARGET_FPS + 1:
        raise clip_too_long(what, num_frames / TARGET_FPS, limit, "")


def check_length(num_frames: int, what: str, note: str = "") -> None:
    if num_frames < MIN_SECONDS * TARGET_FPS:
        problem = (f"{what}: the clip is {num_frames / TARGET_FPS:.2f} s ({count(num_frames, 'frame')} at 25 fps){note}; "
                   f"at least {MIN_SECONDS:.0f} s is needed (a few seconds to a minute works best). For a single image ")
        raise InputError(problem + "use the photo identity (prepare_photo_identity).",
                         in_node=problem + "connect just that image to Prepare Identity's images input (a batch of "
                                           "one makes a photo identity).")


def bad_frame_policy(bad: torch.Tensor, what: str, reasons: dict[str, torch.Tensor]) -> list[int]:
    """Raise when too many frames are bad; otherwise warn and return their indices."""
    idx = torch.nonzero(bad).flatten().tolist()
    if not idx:
        return idx
    n = bad.numel()
    detail = "; ".join(f"{name}: frames {_list(torch.nonzero(m).flatten().tolist())}" for name, m in reasons.items() if m.any())
    if len(idx) > MAX_BAD_FRACTION * n:
        raise InputError(
            f"{what}: {len(idx)} of {count(n, 'frame')} ({100 * len(idx) / n:.0f} %) have no usable face "
            f"({detail}); at most {MAX_BAD_FRACTION:.0%} can be repaired. Use a clip where one face "
            "is visible and fully inside the frame throughout, or trim it."
        )
    logger.warning("%s: %d of %d frames have no usable face (%s)", what, len(idx), n, detail)
    return idx


def interpolate_missing(points: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Fill the landmarks of ``bad`` frames ``[T, P, C]`` linearly from the nearest good frames
    (held constant before the first and after the last good frame)."""
    good = torch.nonzero(~bad).flatten()
    if good.numel() == 0:
        raise InputError("no frame with a usable face to interpolate from")
    t = torch.arange(points.shape[0])
    pos = torch.searchsorted(good, t)  # first good index >= t (len(good) past the last)
    gr = good[pos.clamp(max=good.numel() - 1)]  # next good frame (or the last one)
    gl = good[(pos - 1).clamp(min=0)]  # previous good frame (or the first one)
    gr = torch.where(gr < t, gl.new_tensor(int(good[-1])), gr)  # after the last good frame: hold it
    gl = torch.where(gl > t, gr, gl)  # before the first good frame: hold the first one
    span = (gr - gl).clamp(min=1).to(points.dtype)
    a = ((t - gl).to(points.dtype) / span).clamp(0, 1)[:, None, None]
    filled = points[gl] * (1 - a) + points[gr] * a
    return torch.where(bad[:, None, None], filled, points)
