"""Offloading one render or one dub from this process (a ComfyUI node, a script) to a Ray cluster:
the renderer and face model this process has in memory are sent once to the workers (one per GPU,
else per CPU), the frame ranges are rendered there and come back in order. The frames equal a
render here (deterministic mode); see :mod:`.cluster` for the scheduling and fault handling."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch

from ..pipeline import FrameChunk, TalkingHead
from ..utils import ProgressFn
from .cluster import RayRenderer, import_ray
from .ranges import check_range
from .worker import RenderJob

RANGE_FRAMES = 100
"""Frames per work item (4 s at 25 fps; rounded to the chunk grid)."""


def render_on_ray(
    renderer: Any,
    face_model: Any,
    identity: Any,
    motion: torch.Tensor,
    *,
    address: Optional[str] = None,
    start: int = 0,
    count: Optional[int] = None,
    chunk_size: int = 4,
    range_frames: Optional[int] = None,
    workers: Optional[int] = None,
    deterministic: bool = True,
    seed: int = 0,
    pose: str = "static",
    map_to_init_pose: bool = True,
    blink: str = "period",
    background: Any = None,
    on_step: Optional[ProgressFn] = None,
    who: str = "render_on_ray",
    off: str = "",
) -> TalkingHead:
    """:func:`~.ranges.render_frame_range` (frames ``[start, start + count)``, float32 images and
    masks on the CPU) rendered on a Ray cluster (``address``: see :func:`.cluster.connect`). With
    ``deterministic`` on the frames equal a render in this process; off, each range draws its own
    seeded jitter. ``on_step(done, total)`` may raise to cancel: nothing more is submitted and the
    workers are stopped. ``who`` / ``off`` name the caller in the message when ray is missing."""
    import_ray(who, off)
    motion = motion.detach().float().cpu()
    motion = motion[0] if motion.dim() == 3 and motion.shape[0] == 1 else motion
    start, stop = check_range(int(motion.shape[0]), start, count, f"{who}: frame range")
    job = RenderJob(name="render", audio="", out="", motion=motion, seed=int(seed), pose=pose, blink=blink,
                    options={"map_to_init_pose": bool(map_to_init_pose)}, start=start, count=stop - start,
                    output="float32", deterministic=bool(deterministic))
    extra = {"identity": identity, "options": {} if background is None else {"background": background}}
    pool = RayRenderer(loaded={"renderer": renderer, "face_model": face_model}, address=address, workers=workers)
    try:
        images = masks = None
        for part in pool.frames(job, extra=extra, range_frames=range_frames or RANGE_FRAMES, chunk_size=chunk_size,
                                on_step=on_step):
            got, got_masks = part.frames
            if images is None:  # allocated once: the range
                images = got.new_empty((stop - start,) + tuple(got.shape[1:]))
                masks = got_masks.new_empty((stop - start,) + tuple(got_masks.shape[1:]))
            at = slice(part.start - start, part.stop - start)
            images[at], masks[at] = got, got_masks
        return TalkingHead(images=images, masks=masks)
    finally:
        pool.shutdown()


class RayChunks:
    """The renderer and face model on a Ray cluster, for :func:`mimictalk_lib.dub.dub_video`'s
    ``render_chunks``: ``pool(identity, motion, session_options, chunk_size)`` yields the session's
    :class:`~mimictalk_lib.pipeline.FrameChunk` s (float32 images and masks) in order, the same
    chunks a render in this process makes; ranges of ``range_frames`` run on the workers. Use as a
    context manager (the workers stop at the end). ``check()``, called about every second while
    waiting for the workers, may raise to cancel."""

    def __init__(self, renderer: Any, face_model: Any, *, address: Optional[str] = None, workers: Optional[int] = None,
                 range_frames: Optional[int] = None, who: str = "dub on Ray", off: str = "",
                 check: Optional[Callable[[], None]] = None):
        import_ray(who, off)
        self.range_frames, self.check = range_frames or RANGE_FRAMES, check
        self.pool = RayRenderer(loaded={"renderer": renderer, "face_model": face_model}, address=address, workers=workers)
        self.runs = 0

    def __enter__(self) -> "RayChunks":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()

    def __call__(self, identity: Any, motion: torch.Tensor, session_options: dict, chunk_size: int, start: int = 0,
                 stop: Optional[int] = None) -> Iterator[FrameChunk]:
        """The session's frames ``[start, stop)`` as the chunks :func:`~.ranges.iter_frame_range` yields."""
        self.runs += 1
        stop = int(motion.shape[0]) if stop is None else stop
        job = RenderJob(name=f"dub{self.runs}", audio="", out="", motion=motion.detach().float().cpu(), output="float32",
                        start=start, count=stop - start)
        extra = {"identity": identity, "options": dict(session_options)}
        check = self.check
        on_step = (lambda *_, **__: check()) if check is not None else None
        for part in self.pool.frames(job, extra=extra, range_frames=self.range_frames, chunk_size=chunk_size,
                                     on_step=on_step):
            images, masks = part.frames
            cuts = [part.start, *range((part.start // chunk_size + 1) * chunk_size, part.stop, chunk_size), part.stop]
            for a, b in zip(cuts[:-1], cuts[1:]):  # on the chunk grid, as a render here
                yield FrameChunk(a, images[a - part.start: b - part.start], masks[a - part.start: b - part.start])

