"""Where each output frame of a dub comes from: which source frame (loop / ping-pong / trim to
the audio's length), which head pose (the identity's fit of that source frame), whether that frame
has a face at all, and the 25 fps motion resampled to the source frame rate.

All of it is small per-frame numbers (indices, six pose values, a flag): a 5-minute 60 fps dub is
18,000 rows, so it is planned whole, while the frames themselves stream (``dub.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError

LENGTH_MODES = ("pingpong", "loop", "trim")
"""How the source follows a longer audio: 'pingpong' plays it forwards then backwards (no jump at
the turn), 'loop' starts again from the first frame, 'trim' stops at the source's end (the audio
is cut). A source at least as long as the audio is simply cut to the audio in every mode."""
MOTION_FPS = 25.0


def source_indices(num_out: int, num_src: int, mode: str = "pingpong") -> np.ndarray:
    """Source frame for each of ``num_out`` output frames (``trim`` gives at most ``num_src``)."""
    if mode not in LENGTH_MODES:
        raise InputError(f"length mode must be one of {LENGTH_MODES}, got {mode!r}")
    if num_src < 1:
        raise InputError("the source has no usable frames")
    if mode == "trim":
        num_out = min(num_out, num_src)
    k = np.arange(max(0, num_out))
    if mode == "loop" or num_src == 1:
        return k % num_src
    if mode == "trim":
        return k
    period = 2 * num_src - 2
    m = k % period
    return np.where(m < num_src, m, period - m)


def output_frames(audio_seconds: float, fps: float) -> int:
    """Frames of a video at ``fps`` as long as the audio (at least one)."""
    if not math.isfinite(audio_seconds) or audio_seconds <= 0:
        raise InputError(f"the audio is empty ({audio_seconds:.3f} s); give speech of at least one frame")
    return max(1, int(round(audio_seconds * fps)))


def resample_motion(motion: torch.Tensor, num_out: int, fps: float, motion_fps: float = MOTION_FPS) -> torch.Tensor:
    """``[T, C]`` motion at ``motion_fps`` -> ``[num_out, C]`` at ``fps``: linear interpolation
    at the output frame times ``k / fps`` (held at the ends)."""
    if motion.dim() != 2 or motion.shape[0] < 1:
        raise InputError(f"motion must be [T, C] with T >= 1, got {list(motion.shape)}")
    pos = torch.arange(num_out, dtype=torch.float64) * (motion_fps / fps)
    pos = pos.clamp(0, motion.shape[0] - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=motion.shape[0] - 1)
    w = (pos - lo.double()).to(motion.dtype)[:, None]
    return motion[lo] * (1 - w) + motion[hi] * w


@dataclass
class SourceTrack:
    """Per source frame (``N`` frames of the source the identity covers): head pose from the
    identity's fit, and whether the frame has a usable face."""

    euler: torch.Tensor  # [N, 3]
    trans: torch.Tensor  # [N, 3]
    has_face: torch.Tensor  # bool [N]
    identity_frame: torch.Tensor  # long [N]: nearest identity frame (segmentation, crop box)

    @property
    def num_frames(self) -> int:
        return int(self.has_face.shape[0])


def track_from_identity(identity, fps: float, num_source_frames: int | None = None) -> SourceTrack:
    """Map an identity prepared from the source video back onto the source's frames.

    The identity holds one fitted pose per kept 25 fps frame and, in ``meta``, which source frame
    each shows (``source_frames``) and which 25 fps positions were dropped or interpolated for
    lack of a face. A source frame takes the pose interpolated between the identity frames
    around it and has a face unless its 25 fps position was dropped or interpolated. ``fps``:
    the source's frame rate; ``num_source_frames``: frames to cover (default: up to the last
    source frame the identity shows)."""
    meta = identity.meta
    src = meta.get("source_frames")
    pos = meta.get("frame_positions")
    if src is None or pos is None or len(src) != identity.num_frames:
        raise InputError(
            "this identity does not record which source frames it was prepared from (meta 'source_frames'); "
            "prepare it again from the video to dub."
        )
    src = np.asarray(src, dtype=np.float64)
    n = int(num_source_frames) if num_source_frames else int(src.max()) + 1
    if n < 1:
        raise InputError("the source has no frames")
    s = np.arange(n, dtype=np.float64)
    # pose: interpolate (by source index) between the identity frames that show source frames
    order = np.argsort(src, kind="stable")
    xs, first = np.unique(src[order], return_index=True)
    rows = order[first]  # one identity frame per distinct source frame
    euler = identity.euler[torch.from_numpy(rows)].double().numpy()
    trans = identity.trans[torch.from_numpy(rows)].double().numpy()
    e = np.stack([np.interp(s, xs, euler[:, c]) for c in range(3)], 1)
    t = np.stack([np.interp(s, xs, trans[:, c]) for c in range(3)], 1)
    nearest = rows[np.clip(np.searchsorted(xs, s, side="left"), 0, len(xs) - 1)]
    left = rows[np.clip(np.searchsorted(xs, s, side="left") - 1, 0, len(xs) - 1)]
    pick_left = np.abs(src[left] - s) < np.abs(src[nearest] - s)
    nearest = np.where(pick_left, left, nearest)
    # faces: a source frame's 25 fps position (its time * 25) must not be dropped / interpolated
    bad_pos = set(int(p) for p in meta.get("dropped_frames", []))
    positions = np.asarray(pos)
    bad_pos.update(int(positions[i]) for i in meta.get("interpolated_frames", []) if i < len(positions))
    pos_of_src = np.floor(s * MOTION_FPS / float(fps) + 0.5).astype(int)
    has_face = np.array([p not in bad_pos for p in pos_of_src], dtype=bool)
    has_face &= s <= src.max() + max(1.0, float(fps) / MOTION_FPS)  # beyond the identity's end: unknown
    return SourceTrack(
        torch.from_numpy(e).float(), torch.from_numpy(t).float(), torch.from_numpy(has_face),
        torch.from_numpy(nearest).long(),
    )
