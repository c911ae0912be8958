"""Render long motions and batches of jobs across a Ray cluster (issue 17).

One :class:`~.worker.RenderWorker` actor per GPU (one per CPU slot when the cluster has no GPU)
loads the models once. Each job's motion is made once (on a worker) and shared through Ray's
object store; the job is split into frame ranges on the render's chunk grid
(:func:`~.ranges.frame_ranges`), which idle workers pull in order. Finished ranges come back to
the driver, which writes each job's mp4 progressively, in frame order, with its audio
(:class:`~mimictalk_lib.video.VideoWriter`). A range more than ``2 x workers x range_frames``
frames past its job's next unwritten frame waits, so the driver holds a bounded number of
out-of-order ranges.

Faults: actors are started with ``max_restarts=-1`` (Ray restarts a dead worker process, which
loads the models again); a range whose worker died, or that raised, is queued again, up to
``max_attempts`` tries. Finished ranges are never re-rendered. A job whose range (or motion)
fails ``max_attempts`` times is reported with its error, its partial file removed, and the rest
of the batch goes on. ``on_step(frames_done, frames_total)``: one count across the whole batch.

``ray`` is optional: ``pip install "mimictalk[ray]"``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..errors import InputError
from ..utils import ProgressFn, logger, report
from .ranges import frame_ranges
from .worker import ModelFiles, RenderJob, RenderWorker

FPS = 25


def import_ray():
    """``ray``, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise InputError('rendering on a Ray cluster needs the optional ray package: pip install "mimictalk[ray]" '
                         '(or pip install "ray>=2.9") on every machine of the cluster') from e
    return ray


@dataclass
class JobResult:
    name: str
    out: str
    frames: int = 0
    ok: bool = False
    error: Optional[str] = None
    attempts: dict = field(default_factory=dict)  # range start -> tries (1 = never re-run)


@dataclass
class _Job:
    index: int
    job: RenderJob
    result: JobResult
    motion: Any = None  # ObjectRef of the motion tensor
    total: int = 0
    ranges: list = field(default_factory=list)
    done: dict = field(default_factory=dict)  # start -> uint8 frames, waiting for their turn
    next_start: int = 0
    writer: Any = None
    failed: bool = False


class RayRenderer:
    """A pool of render workers on a Ray cluster (``address`` None: the running / a local one;
    'auto' or 'ray://host:10001': an existing cluster). ``workers`` default: one per GPU, else
    one per CPU."""

    def __init__(self, models: ModelFiles, *, address: Optional[str] = None, workers: Optional[int] = None,
                 init_options: Optional[dict] = None):
        ray = self.ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=address, **(init_options or {}))
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        n = workers or gpus or max(1, cpus)
        opts = dict(num_gpus=1) if gpus else dict(num_cpus=1)
        actor = ray.remote(**opts, max_restarts=-1, max_task_retries=0)(RenderWorker)
        self.actors = [actor.remote(models) for _ in range(n)]
        logger.info("Ray: %d render workers (%s each)", n, "1 GPU" if gpus else "1 CPU")

    def shutdown(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []

    def run(self, jobs: Sequence[RenderJob], *, range_frames: int = 100, chunk_size: int = 4, max_attempts: int = 3,
            on_step: Optional[ProgressFn] = None, **video_options) -> list[JobResult]:
        """Render ``jobs``; returns one :class:`JobResult` per job (in order)."""
        from ..video import VideoWriter

        ray = self.ray
        state = [_Job(i, j, JobResult(j.name, j.out)) for i, j in enumerate(jobs)]
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise InputError("every job needs its own name (the workers keep one session per name)")
        queue: list = [(i, -1, "motion") for i in range(len(state))]  # (job, start, kind): job order, motion first
        heapq.heapify(queue)
        idle, running = list(range(len(self.actors))), {}  # ObjectRef -> (actor, job index, start, stop)
        tries: dict = {}
        done_frames = total_frames = 0
        ahead = 2 * len(self.actors) * range_frames  # frames a job may render past its next unwritten one

        def fail(js: _Job, error: str) -> None:
            js.failed, js.result.error = True, error
            if js.writer is not None:
                js.writer.abort()
            js.done.clear()
            logger.error("job %s failed: %s", js.job.name, error)

        while queue or running:
            held = []  # ranges too far ahead of their job's next frame to write: they wait
            while idle and queue:
                i, start, kind = heapq.heappop(queue)
                js = state[i]
                if js.failed:
                    continue
                if kind == "range" and start >= js.next_start + ahead:
                    held.append((i, start, kind))
                    continue
                a = idle.pop(0)
                if kind == "motion":
                    ref = self.actors[a].motion.remote(js.job)
                    running[ref] = (a, i, -1, -1)
                else:
                    stop = dict(js.ranges)[start]
                    ref = self.actors[a].render_range.remote(js.job, js.motion, start, stop, chunk_size)
                    running[ref] = (a, i, start, stop)
            for item in held:
                heapq.heappush(queue, item)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            a, i, start, stop = running.pop(ref)
            idle.append(a)
            js = state[i]
            key = (i, start)
            tries[key] = tries.get(key, 0) + 1
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as e:  # a dead / restarting worker, or the error a range raised
                died = not isinstance(e, ray.exceptions.RayTaskError)
                what = "motion" if start < 0 else f"frames {start}-{stop - 1}"
                cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None else e
                logger.warning("job %s, %s: %s (try %d of %d)", js.job.name, what,
                               "worker died" if died else f"{type(cause).__name__}: {cause}", tries[key], max_attempts)
                if js.failed:
                    continue
                if tries[key] >= max_attempts:
                    fail(js, f"{what}: {'worker died' if died else f'{type(cause).__name__}: {cause}'} ({tries[key]} tries)")
                    total_frames -= js.total - js.next_start
                    report(on_step, done_frames, total_frames)
                else:
                    heapq.heappush(queue, (i, start, "motion" if start < 0 else "range"))
                continue
            if js.failed:
                continue
            if start < 0:  # the motion: share it, split the job
                js.total = int(value.shape[0])
                js.motion = ray.put(value)
                js.ranges = frame_ranges(js.total, range_frames, chunk_size=chunk_size)
                for s, _ in js.ranges:
                    heapq.heappush(queue, (i, s, "range"))
                total_frames += js.total
                report(on_step, done_frames, total_frames)
                continue
            js.result.attempts[start] = tries[key]
            js.done[start] = value
            try:
                while js.next_start in js.done:  # write what is next in frame order
                    frames = js.done.pop(js.next_start)
                    if js.writer is None:
                        js.writer = VideoWriter(js.job.out, FPS, audio=js.job.audio, **video_options)
                    js.writer.write(frames)
                    js.next_start += int(frames.shape[0])
                    js.result.frames = js.next_start
                    done_frames += int(frames.shape[0])
                if js.next_start == js.total:
                    js.writer.close()
                    js.writer, js.result.ok = None, True
                    logger.info("job %s: %d frames -> %s", js.job.name, js.total, js.job.out)
            except Exception as e:  # noqa: BLE001 - a bad output path / audio fails this job, not the batch
                total_frames -= js.total - js.next_start
                fail(js, f"writing {js.job.out}: {type(e).__name__}: {e}")
            report(on_step, done_frames, total_frames, job=js.job.name, start=start, worker=a)
        return [js.result for js in state]


def render_jobs(jobs: Sequence[RenderJob], models: ModelFiles, *, address: Optional[str] = None,
                workers: Optional[int] = None, **options) -> list[JobResult]:
    """Render ``jobs`` on a Ray cluster with a fresh :class:`RayRenderer` (its workers are
    stopped afterwards); ``options`` go to :meth:`RayRenderer.run`."""
    pool = RayRenderer(models, address=address, workers=workers)
    try:
        return pool.run(jobs, **options)
    finally:
        pool.shutdown()


def render_local(jobs: Sequence[RenderJob], models: ModelFiles, *, range_frames: int = 100, chunk_size: int = 4,
                 on_step: Optional[ProgressFn] = None, **video_options) -> list[JobResult]:
    """The same jobs in this process, one :class:`~.worker.RenderWorker`, range after range (the
    frames equal a Ray run's). A failing job is reported and the next one runs."""
    from ..video import VideoWriter

    worker, results, done, total = RenderWorker(models), [], 0, 0
    for job in jobs:
        result = JobResult(job.name, job.out)
        results.append(result)
        try:
            motion = worker.motion(job)
            total += int(motion.shape[0])
            with VideoWriter(job.out, FPS, audio=job.audio, **video_options) as writer:
                for start, stop in frame_ranges(int(motion.shape[0]), range_frames, chunk_size=chunk_size):
                    writer.write(worker.render_range(job, motion, start, stop, chunk_size))
                    result.attempts[start], result.frames = 1, stop
                    done += stop - start
                    report(on_step, done, total)
            result.ok = True
        except Exception as e:  # noqa: BLE001 - reported per job; the batch goes on
            result.error = f"{type(e).__name__}: {e}"
            logger.error("job %s failed: %s", job.name, result.error)
    return results


__all__ = ["JobResult", "RayRenderer", "import_ray", "render_jobs", "render_local"]
