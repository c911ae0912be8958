"""Frames of an identity clip: decoding, 25 fps resampling, colour normalisation and the one
stable portrait crop used for the whole clip.

Upstream (MimicTalk ``inference/train_mimictalk_on_a_video.py`` and
``data_gen/utils/process_video/resample_video_to_25fps_resize_to_512.py``) runs
``ffmpeg -vf fps=25,scale=w=512:h=512`` and leaves framing to the user: the clip must already be a
square head-and-shoulders video. Here the face is located from landmarks and one square crop
with the framing of the upstream examples is cut from every frame, so any clip works.

Frames are held as uint8 ``[T, H, W, 3]`` on the CPU (a 60 s clip at 512² is 1.2 GB).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..utils import count, logger
from ..video import iter_video, length_limit, probe, to_uint8_array

TARGET_FPS = 25.0
"""Frame rate of every identity clip (upstream ``ffmpeg -vf fps=25``; MimicTalk issue #22)."""

FRAME_SIZE = 512
"""Side of the square frames the renderer is trained on (upstream ``scale=w=512:h=512``)."""

# Portrait framing measured on the upstream examples with the MediaPipe 468-point landmark box:
#   German_20s.mp4: box height 0.49 of the frame, centre (0.52, 0.55)
#   Real3D-Portrait Macron.png: 0.52, centre (0.50, 0.53); May_5s.mp4: 0.54, centre (0.46, 0.54).
# astronaut.png (a full-body photo, not portrait framed) has 0.21 at (0.44, 0.24) and is cropped.
FACE_HEIGHT_FRACTION = 0.52
"""Landmark-box height / crop side."""
FACE_CENTRE_Y_FRACTION = 0.54
"""Vertical position of the landmark-box centre in the crop (0 = top); horizontally centred."""

CROP_MARGIN = 1.05
"""The crop is widened until every sampled face box fits with this margin (moving heads)."""

VFR_TOLERANCE = 0.1
"""Frame intervals deviating from the median by more than this fraction mark a variable rate."""

DEFAULT_MAX_CLIP_SECONDS = 600.0
"""Longest clip prepared by default (10 min: 15000 frames, 11.8 GB of 512² uint8 frames in memory);
raise it with the environment variable ``MIMICTALK_MAX_CLIP_SECONDS`` or ``max_seconds=``."""
MAX_CLIP_SECONDS_ENV = "MIMICTALK_MAX_CLIP_SECONDS"
MAX_FRAME_GAP_SECONDS = 10.0
"""Two consecutive frames further apart than this mean broken timestamps (a stalled or spliced
recording is not filled with minutes of repeated frames)."""
MAX_SOURCE_FPS = 240.0
"""Frames per second of clip decoded at most in pass one (bounds the decoding work of a file that
packs millions of frames into the allowed duration)."""


def max_clip_seconds(max_seconds: Optional[float] = None) -> float:
    """The clip length limit in seconds: ``max_seconds`` if given, else the environment variable
    ``MIMICTALK_MAX_CLIP_SECONDS``, else ``DEFAULT_MAX_CLIP_SECONDS``."""
    return length_limit(max_seconds, MAX_CLIP_SECONDS_ENV, DEFAULT_MAX_CLIP_SECONDS)


def clip_too_long(what: str, seconds: float, limit: float, how: str) -> InputError:
    return InputError(
        f"{what}: the clip is {how + ' ' if how else ''}{seconds:.0f} s long; identity and style clips are limited to "
        f"{limit:g} s ({limit / 60:.1f} min) so that their frames fit in memory. Trim the clip, or raise the "
        f"limit with the environment variable {MAX_CLIP_SECONDS_ENV}=<seconds> (from Python: max_seconds=...)."
    )


def check_timeline(timestamps: Sequence[float] | np.ndarray, what: str, max_seconds: Optional[float] = None,
                   start: int = 0) -> None:
    """Refuse timestamps spanning more than the clip limit or with a gap over
    ``MAX_FRAME_GAP_SECONDS`` between two frames (broken file). ``start``: index of ``timestamps[0]``
    in the clip (for the message)."""
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.size < 2 or not np.all(np.isfinite(ts)):
        return  # resample_indices names non-finite timestamps
    limit = max_clip_seconds(max_seconds)
    gaps = np.diff(ts)
    k = int(np.argmax(gaps))
    if gaps[k] > MAX_FRAME_GAP_SECONDS:
        raise InputError(
            f"{what}: frames {start + k} and {start + k + 1} are {gaps[k]:.0f} s apart (at {ts[k]:.2f} s and "
            f"{ts[k + 1]:.2f} s); a gap of more than {MAX_FRAME_GAP_SECONDS:.0f} s between two frames means the "
            "file's timestamps are broken. Re-encode the clip at a constant frame rate (e.g. ffmpeg -i in.mp4 "
            "-vf fps=25 out.mp4) or use another recording."
        )
    if ts[-1] - ts[0] > limit:
        raise clip_too_long(what, float(ts[-1] - ts[0]), limit, "at least")


@dataclass(frozen=True)
class CropBox:
    """A square crop in source-pixel coordinates; it may extend beyond the source frame, in which
    case the outside is padded (see ``crop_frames``)."""

    x0: int
    y0: int
    side: int

    def to_source(self, points: torch.Tensor, size: int = FRAME_SIZE) -> torch.Tensor:
        """Map ``[..., 2]`` pixel coordinates of the ``size``² crop back to the source frame."""
        scale = self.side / size
        offset = points.new_tensor([self.x0, self.y0])
        return points[..., :2] * scale + offset


def to_uint8_frames(frames: torch.Tensor | np.ndarray, name: str = "frames") -> torch.Tensor:
    """Bring an image batch to uint8 RGB ``[B, H, W, 3]`` on the CPU.

    Accepts ComfyUI IMAGE batches (float ``[B, H, W, C]`` in 0..1), uint8 batches, a single
    ``[H, W, C]`` image, and grayscale (``C == 1`` or ``[B, H, W]``) or RGBA (``C == 4``) input:
    grayscale is replicated to RGB and alpha is dropped (both are logged). Unlike the video
    writer's ``video.to_uint8_array`` (which it uses for the conversion) it checks its input:
    float pixels outside 0..1 and images under 16 px are refused.
    """
    t = torch.as_tensor(frames).detach().cpu()
    if t.dim() == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] > 4:
        t = t.unsqueeze(0)  # one [H, W, C] image
    if t.dim() == 3:
        t = t.unsqueeze(-1)  # [B, H, W] grayscale
    if t.dim() != 4 or t.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"{name}: expected an image batch [B, H, W, C] with C in 1/3/4 (ComfyUI IMAGE), got shape "
            f"{list(t.shape)}. Pass frames as IMAGE or a decoded video."
        )
    if t.shape[0] == 0 or t.shape[1] < 16 or t.shape[2] < 16:
        raise InputError(f"{name}: empty or tiny image batch {list(t.shape)}")
    if t.shape[-1] == 1:
        logger.info("%s: grayscale input, replicating to RGB", name)
        t = t.expand(-1, -1, -1, 3)
    elif t.shape[-1] == 4:
        logger.info("%s: RGBA input, dropping the alpha channel", name)
        t = t[..., :3]
    if not (t.dtype == torch.uint8 or t.is_floating_point()):
        raise InputError(f"{name}: expected uint8 or float pixels, got {t.dtype}")
    if t.is_floating_point() and (float(t.min()) < -1e-3 or float(t.max()) > 1.0 + 1e-3):
        raise InputError(
            f"{name}: float pixels must be in 0..1 (ComfyUI IMAGE), got range "
            f"[{float(t.min()):.3f}, {float(t.max()):.3f}]"
        )
    return torch.from_numpy(np.ascontiguousarray(to_uint8_array(t)))


# --------------------------------------------------------------------------- resampling


def resample_indices(timestamps: Sequence[float] | np.ndarray, target_fps: float = TARGET_FPS) -> np.ndarray:
    """Indices of the source frames shown at ``k / target_fps`` (nearest timestamp).

    The clip spans ``[t_0, t_last + dt)`` with ``dt`` the median frame interval, so N frames at
    a constant rate r give ``round(N * target_fps / r)`` frames. Works for variable frame rates:
    only the timestamps matter. Ties pick the earlier frame.
    """
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.size == 0:
        raise InputError("resampling: the clip has no frames")
    if not np.all(np.isfinite(ts)):
        raise InputError("resampling: frame timestamps contain NaN or infinity")
    order_ok = np.all(np.diff(ts) > 0)
    if not order_ok:
        raise InputError(
            "resampling: frame timestamps must be strictly increasing; got "
            f"{ts[:8].round(4).tolist()}..."
        )
    ts = ts - ts[0]
    dt = float(np.median(np.diff(ts))) if ts.size > 1 else 1.0 / target_fps
    duration = ts[-1] + dt
    n_out = max(1, int(round(duration * target_fps)))
    t_out = np.arange(n_out) / target_fps
    right = np.clip(np.searchsorted(ts, t_out, side="left"), 0, ts.size - 1)
    left = np.clip(right - 1, 0, ts.size - 1)
    pick_left = np.abs(t_out - ts[left]) <= np.abs(ts[right] - t_out)
    return np.where(pick_left, left, right)


def is_variable_rate(timestamps: Sequence[float] | np.ndarray) -> bool:
    """True when frame intervals deviate from their median by more than ``VFR_TOLERANCE``."""
    d = np.diff(np.asarray(timestamps, dtype=np.float64))
    if d.size < 2:
        return False
    med = float(np.median(d))
    return bool(np.any(np.abs(d - med) > VFR_TOLERANCE * med))


def timestamps_from(n: int, fps: Optional[float], timestamps: Optional[Sequence[float]]) -> np.ndarray:
    """Timestamps of ``n`` frames from either a frame rate or explicit timestamps."""
    if timestamps is not None:
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if ts.size != n:
            raise InputError(f"got {count(n, 'frame')} but {count(ts.size, 'timestamp')}; pass one timestamp per frame")
        return ts
    if fps is None:
        raise InputError("frames need a frame rate (fps) or per-frame timestamps to be resampled to 25 fps")
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(f"frame rate must be a positive number, got {fps}")
    return np.arange(n) / fps


# --------------------------------------------------------------------------- decoding


@dataclass
class VideoInfo:
    """What pass one over a file learns: per-frame timestamps, size, and sampled frames."""

    timestamps: np.ndarray  # [N] seconds
    height: int
    width: int
    samples: dict  # decoded index -> uint8 [h, w, 3] (downscaled) frame for face search


def probe_video(path: str | os.PathLike, max_samples: int = 24, sample_side: int = 960, *,
                max_seconds: Optional[float] = None, what: str = "identity clip") -> VideoInfo:
    """Pass one: timestamps of every frame plus up to ``max_samples`` evenly spaced frames,
    downscaled so the long side is at most ``sample_side``, for the face search. Decoding (and
    the InputError for a missing or unreadable file) is ``video.iter_video``'s.

    The clip limit (``max_clip_seconds(max_seconds)``) is checked against the length the file
    states before decoding, and against the frames' timestamps (span, gaps between frames, count)
    while decoding, so a file that lies stops at the first frame past the limit."""
    limit = max_clip_seconds(max_seconds)
    stated = probe(path)
    if stated.duration > limit + 1.0:  # a second of slack for containers that round up
        raise clip_too_long(what, stated.duration, limit, "stated to be")
    n_est = stated.num_frames if 0 < stated.num_frames <= limit * MAX_SOURCE_FPS else 0
    stride = max(1, n_est // max_samples) if n_est else 1
    max_count = int(limit * MAX_SOURCE_FPS) + 1
    raw_ts: list[float] = []
    samples: dict = {}
    h = w = 0
    for i, (img, t) in enumerate(iter_video(path)):
        if raw_ts:  # the whole-clip check on the last two frames and the span so far (O(1) per frame)
            check_timeline([raw_ts[-1], t], what, limit, start=i - 1)
            if t - raw_ts[0] > limit:
                raise clip_too_long(what, t - raw_ts[0], limit, "at least")
        if i >= max_count:
            raise InputError(
                f"{what}: more than {max_count} frames within {limit:.0f} s (over {MAX_SOURCE_FPS:.0f} frames per "
                "second); the file's timestamps are broken. Re-encode it at a constant frame rate."
            )
        raw_ts.append(t)
        h, w = img.shape[:2]
        if i % stride == 0:
            samples[i] = shrink_to(torch.from_numpy(img)[None], sample_side)[0][0].numpy()
    if not raw_ts:
        raise InputError(f"{os.fspath(path)}: no decodable video frames")
    if len(samples) > max_samples:  # the stream did not report its length: thin evenly
        keep = np.linspace(0, len(samples) - 1, max_samples).round().astype(int)
        keys = sorted(samples)
        samples = {keys[k]: samples[keys[k]] for k in keep}
    return VideoInfo(np.asarray(raw_ts, dtype=np.float64), h, w, samples)


def shrink_to(frames: torch.Tensor, max_side: int) -> tuple[torch.Tensor, float]:
    """uint8 ``[B, H, W, 3]`` reduced so the long side is at most ``max_side`` (antialiased);
    returns ``(frames, source pixels per returned pixel)``."""
    _, h, w, _ = frames.shape
    s = max(h, w)
    if s <= max_side:
        return frames, 1.0
    size = (max(1, round(h * max_side / s)), max(1, round(w * max_side / s)))
    return resize_uint8(frames, size), w / size[1]


# --------------------------------------------------------------------------- crop


def face_boxes(points: torch.Tensor) -> torch.Tensor:
    """``[N, P, 2+]`` landmark pixels -> ``[N, 4]`` boxes ``(x0, y0, x1, y1)``."""
    xy = points[..., :2]
    return torch.cat([xy.amin(dim=-2), xy.amax(dim=-2)], dim=-1)


def choose_crop(
    boxes: torch.Tensor | np.ndarray,
    *,
    face_height_fraction: float = FACE_HEIGHT_FRACTION,
    centre_y_fraction: float = FACE_CENTRE_Y_FRACTION,
    margin: float = CROP_MARGIN,
) -> CropBox:
    """One square crop for a whole clip from its face boxes ``[K, 4]`` (source pixels).

    The median box sets the framing: box height = ``face_height_fraction`` of the side, box
    centre horizontally centred and at ``centre_y_fraction`` from the top. If a head moves so
    that some box would leave that crop, the side grows (same centre) until all fit with
    ``margin``, so one crop serves every frame.
    """
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    if b.shape[0] == 0:
        raise InputError("no face boxes to choose a crop from")
    cx = float(((b[:, 0] + b[:, 2]) / 2).median())
    cy = float(((b[:, 1] + b[:, 3]) / 2).median())
    side = float((b[:, 3] - b[:, 1]).median()) / face_height_fraction
    # side needed so every box fits around (cx, cy): left/right half-width, top, bottom
    need = max(
        float(2 * (cx - b[:, 0]).max()),
        float(2 * (b[:, 2] - cx).max()),
        float((cy - b[:, 1]).max()) / centre_y_fraction,
        float((b[:, 3] - cy).max()) / (1.0 - centre_y_fraction),
    ) * margin
    if need > side:
        logger.info("crop widened from %.0f to %.0f px so the moving head stays in frame", side, need)
        side = need
    side_i = max(16, int(round(side)))
    return CropBox(int(round(cx - side_i / 2)), int(round(cy - centre_y_fraction * side_i)), side_i)


def crop_frames(
    frames: torch.Tensor, crop: CropBox, size: int = FRAME_SIZE, pad: str = "edge"
) -> torch.Tensor:
    """Cut ``crop`` from uint8 ``[B, H, W, 3]`` frames and resize to ``size``² (uint8).

    Outside the source frame the crop is padded: ``"edge"`` repeats the border pixels (keeps a
    plausible background and torso), ``"black"`` fills zeros. Resizing is bilinear, antialiased
    when shrinking, done on uint8 channels-last images (torch's fast path; within one grey level
    of the float computation).
    """
    if pad not in ("edge", "black"):
        raise InputError(f"pad must be 'edge' or 'black', got {pad!r}")
    _, h, w, _ = frames.shape
    x0, y0, side = crop.x0, crop.y0, crop.side
    if x0 >= 0 and y0 >= 0 and x0 + side <= w and y0 + side <= h:
        out = frames[:, y0 : y0 + side, x0 : x0 + side]  # inside the frame: a view
    else:
        ys = torch.arange(y0, y0 + side)
        xs = torch.arange(x0, x0 + side)
        out = frames[:, ys.clamp(0, h - 1)][:, :, xs.clamp(0, w - 1)]  # [B, side, side, 3], edge padding
        if pad == "black":
            inside = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
            out = out * inside[None, :, :, None].to(out.dtype)
    return out.contiguous() if side == size else resize_uint8(out, size)


def resize_uint8(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> uint8 ``[B, h, w, 3]`` (``size`` = side or (h, w)), bilinear,
    antialiased when shrinking; torch's uint8 channels-last path (within one grey level of float)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = images.contiguous().permute(0, 3, 1, 2)  # [B, 3, H, W] viewed channels-last
    shrink = images.shape[1] > hw[0] or images.shape[2] > hw[1]
    x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
    return x.permute(0, 2, 3, 1).contiguous()


def whole_frame_crop(h: int, w: int, name: str = "frames") -> CropBox:
    """The crop of ``crop='none'``: the whole frame, which must already be a square portrait."""
    if h != w:
        raise InputError(
            f"{name}: crop='none' keeps frames as given, but they are {w}x{h}, not square. Use "
            "crop='auto' (finds the face and cuts a square portrait) or crop the input to a square first."
        )
    return CropBox(0, 0, h)


def resize_square(frames: torch.Tensor, size: int = FRAME_SIZE, name: str = "frames") -> torch.Tensor:
    """Frames that are already portrait crops: check they are square, resize to ``size``²."""
    _, h, w, _ = frames.shape
    return crop_frames(frames, whole_frame_crop(h, w, name), size=size)
