"""Deterministic frame sub-ranges of a render (issue 17).

Everything that spans frames (blink schedule, pose ping-pong, z freeze, map_to_init_pose, camera
and torso-keypoint smoothing) is computed once for the whole motion by
:func:`~mimictalk_lib.pipeline.build_session`; a sub-range only slices the session's per-frame
rows. A sub-range renders the full render's chunks that hold it (multiples of ``chunk_size``
counted from frame 0; at most ``chunk_size - 1`` extra frames at each end, dropped), so every
frame goes through the renderer in exactly the batch a full render uses: in deterministic mode a
sub-range equals the same frames of a full render bit for bit on the same machine and thread
count (another thread count or device may reorder fp32 sums: differences near 1e-6). No Ray here; :mod:`.cluster` builds on it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import torch

from ..errors import InputError
from ..pipeline import FrameChunk, TalkingHead, TalkingSession, build_session, iter_talking_head
from ..utils import ProgressFn, report
from ..utils import count as count_of

RENDER_OPTIONS = ("deterministic", "generator", "output_dtype")  # iter_talking_head's, the rest are build_session's
PER_FRAME = ("motion", "camera", "kp_d", "euler", "trans", "blink")  # TalkingSession rows, one per frame


def check_range(total: int, start: int, count: Optional[int], what: str = "frame range") -> tuple[int, int]:
    """``(start, stop)`` of frames ``[start, start + count)`` of a ``total``-frame clip;
    ``count`` None or 0 = to the end. Refuses ranges outside the clip."""
    for name, value in (("start", start), ("count", count)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InputError(f"{what}: {name} must be a non-negative integer, got {value!r}")
    if start >= total:
        raise InputError(f"{what}: start frame {start} is past the end of the motion ({count_of(total, 'frame')}, 0..{total - 1}); "
                         "lower the start frame")
    stop = total if not count else min(total, start + count)
    return start, stop


def session_frames(session: TalkingSession, start: int, stop: int) -> TalkingSession:
    """The session restricted to frames ``[start, stop)``: the per-frame rows sliced, everything
    shared (source, canonical/source SECC, models) as is. Nothing is recomputed."""
    part = slice(start, stop)
    return dataclasses.replace(session, **{name: getattr(session, name)[part] for name in PER_FRAME})


def iter_frame_range(
    session: TalkingSession,
    start: int = 0,
    count: Optional[int] = None,
    *,
    chunk_size: int = 4,
    on_step: Optional[ProgressFn] = None,
    **render_options,
) -> Iterator[FrameChunk]:
    """Render frames ``[start, start + count)`` of ``session`` (``count`` None / 0: to the end) as
    :class:`~mimictalk_lib.pipeline.FrameChunk` s whose ``start`` is the frame's index in the full
    clip. The full render's chunks are rendered whole (see the module note). ``render_options`` go to
    :func:`~mimictalk_lib.pipeline.iter_talking_head` (``deterministic``, ``output_dtype``; a
    stochastic render depends on where its generator stream starts, so only deterministic
    sub-ranges equal a full render). ``on_step(done, count)``."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    start, stop = check_range(session.num_frames, start, count)
    lo = start // chunk_size * chunk_size  # the full render's chunks that hold the range, rendered whole
    hi = min(session.num_frames, -(-stop // chunk_size) * chunk_size)
    done, total = 0, stop - start
    for chunk in iter_talking_head(session_frames(session, lo, hi), chunk_size=chunk_size, **render_options):
        first, n = lo + chunk.start, chunk.images.shape[0]
        a, b = max(first, start), min(first + n, stop)  # the part of this chunk inside the range
        if a >= b:
            continue
        keep = slice(a - first, b - first)
        done += b - a
        yield FrameChunk(a, chunk.images[keep], chunk.masks[keep])
        report(on_step, done, total)


def frame_ranges(total: int, range_frames: int, *, chunk_size: int = 1, start: int = 0,
                 stop: Optional[int] = None) -> list[tuple[int, int]]:
    """Split frames ``[start, stop)`` of a ``total``-frame clip (default: all of it) into
    ``(start, stop)`` ranges of about ``range_frames`` frames, every inner boundary a multiple of
    ``chunk_size`` counted from frame 0 (so every range renders in the full render's batches)."""
    if total < 1:
        raise InputError(f"nothing to split: {count_of(total, 'frame')}")
    if isinstance(range_frames, bool) or not isinstance(range_frames, int) or range_frames < 1:
        raise InputError(f"range_frames must be a positive integer, got {range_frames!r}")
    stop = total if stop is None else stop
    if not 0 <= start < stop <= total:
        raise InputError(f"frames {start}..{stop} are not a part of a {total}-frame clip")
    step = max(chunk_size, (range_frames // chunk_size) * chunk_size)
    cuts = [start, *range((start // step + 1) * step, stop, step), stop]
    return list(zip(cuts[:-1], cuts[1:]))


def render_frame_range(renderer, face_model, source, motion: torch.Tensor, start: int = 0, count: Optional[int] = None, *,
                       chunk_size: int = 4, on_step: Optional[ProgressFn] = None, **options) -> TalkingHead:
    """:func:`~mimictalk_lib.pipeline.render_talking_head` (same ``options``: ``deterministic``,
    ``generator``, ``output_dtype`` for the renderer, the rest for ``build_session``) for frames
    ``[start, start + count)`` only (``count`` None / 0: to the end). The session is built for the
    whole ``motion`` and the range rendered with :func:`iter_frame_range`, so in deterministic mode
    the frames equal the same frames of a full render. Render time and memory follow the range."""
    render = {k: options.pop(k) for k in RENDER_OPTIONS if k in options}
    session = build_session(renderer, face_model, source, motion, **options)
    start, stop = check_range(session.num_frames, start, count)
    images = masks = None
    for chunk in iter_frame_range(session, start, stop - start, chunk_size=chunk_size, on_step=on_step, **render):
        if images is None:  # allocated once: the range plus one chunk at the peak
            images = chunk.images.new_empty((stop - start,) + tuple(chunk.images.shape[1:]))
            masks = chunk.masks.new_empty((stop - start,) + tuple(chunk.masks.shape[1:]))
        at = slice(chunk.start - start, chunk.start - start + chunk.images.shape[0])
        images[at], masks[at] = chunk.images, chunk.masks
    return TalkingHead(images=images, masks=masks)
