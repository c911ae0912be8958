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
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from ..errors import DependencyMissingError, InputError, MimicTalkError
from ..utils import ProgressFn, logger, report
from .ranges import check_range, frame_ranges
from .worker import ModelFiles, RenderJob, RenderWorker

FPS = 25


def import_ray(who: str = "", off: str = ""):
    """``ray``, or a DependencyMissingError saying how to install it (``who``: the node / widget or
    function asking; ``off``: how to do without Ray there)."""
    try:
        import ray
    except ImportError as e:
        raise DependencyMissingError(
            f'{who + ": " if who else ""}rendering on a Ray cluster needs the optional ray package: pip install '
            f'"mimictalk[ray]" (or pip install "ray>=2.9") on every machine of the cluster{off}') from e
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
class RangeDone:
    """Frames ``[start, stop)`` of job ``index``, delivered in the job's frame order (``last``: its final range)."""

    index: int
    start: int
    stop: int
    frames: Any  # uint8 [n, R, R, 3], or (images, masks) for RenderJob.output 'float32'
    last: bool
    tries: int


@dataclass
class JobFailed:
    """Job ``index`` failed (``max_attempts`` tries of one of its parts); nothing more comes for it."""

    index: int
    error: str


@dataclass
class _Job:
    index: int
    job: RenderJob
    wire: dict
    extra: Any = None  # ObjectRef of the packed in-memory inputs, or None
    motion: Any = None  # ObjectRef of the motion tensor
    stop: int = 0
    ranges: dict = field(default_factory=dict)  # start -> stop
    done: dict = field(default_factory=dict)  # start -> frames, waiting for their turn
    next_start: int = 0
    failed: bool = False


def connect(address: Optional[str] = None, init_options: Optional[dict] = None):
    """``ray``, connected: a connection this process already has is used as it is (its workers
    must be able to import ``mimictalk_lib``: installed, or on their PYTHONPATH); otherwise
    ``ray.init(address)`` (None: RAY_ADDRESS or a new local cluster; 'auto', 'local',
    'ray://host:10001') with this copy of the library shipped to the workers (``py_modules``)."""
    from .remote import runtime_env

    ray = import_ray()
    if not ray.is_initialized():
        options = dict(init_options or {})
        env = dict(options.pop("runtime_env", None) or {})
        env["py_modules"] = list(env.get("py_modules") or []) + runtime_env()["py_modules"]  # this library, for the workers
        env.setdefault("excludes", runtime_env()["excludes"])
        ray.init(address=address or None, runtime_env=env, **options)
    return ray


def _length(frames: Any) -> int:
    return int((frames[0] if isinstance(frames, tuple) else frames).shape[0])


class RayRenderer:
    """A pool of render workers on a Ray cluster (``address``: see :func:`connect`). ``models``:
    files every worker loads (paths valid on every machine), or ``loaded``: the renderer and face
    model in memory here (``{"renderer": ..., "face_model": ...}``, as the nodes have them), sent
    once through Ray's object store. ``workers`` default: one per GPU, else one per CPU."""

    def __init__(self, models: Optional[ModelFiles] = None, *, loaded: Optional[dict] = None,
                 address: Optional[str] = None, workers: Optional[int] = None, init_options: Optional[dict] = None):
        from . import remote

        if (models is None) == (loaded is None):
            raise InputError("RayRenderer: give either models (files to load) or loaded (renderer and face model in memory)")
        ray = self.ray = connect(address, init_options)
        remote.register_by_value()
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        n = workers or gpus or max(1, cpus)
        opts = dict(num_gpus=1) if gpus else dict(num_cpus=1)
        actor = ray.remote(**opts, max_restarts=-1, max_task_retries=0)(remote.LibraryActor)
        # the in-memory models stay referenced while the pool lives: a restarted worker reads them again
        self._loaded = None if loaded is None else ray.put(remote.pack({"device": "auto", **loaded}))
        args = (asdict(models), None) if models is not None else (None, self._loaded)
        self.actors = [actor.remote(remote.target(RenderWorker), *args) for _ in range(n)]
        logger.info("Ray: %d render workers (%s each)", n, "1 GPU" if gpus else "1 CPU")

    def shutdown(self) -> None:
        """Stop the workers (and whatever they are still rendering)."""
        for a in self.actors:
            self.ray.kill(a)
        self.actors, self._loaded = [], None

    def stream(self, jobs: Sequence[RenderJob], *, extras: Optional[Sequence[Any]] = None, range_frames: int = 100,
               chunk_size: int = 4, max_attempts: int = 3, on_step: Optional[ProgressFn] = None,
               dropped: Optional[set] = None) -> Iterator[Union[RangeDone, JobFailed]]:
        """Render ``jobs`` and yield each job's ranges in its frame order (:class:`RangeDone`; jobs
        interleave) or its failure (:class:`JobFailed`). ``extras``: per job, in-memory inputs for
        the workers (``{"identity": ..., "options": {...build_session options}}``) or None. A job
        whose motion is a tensor skips the motion step. Add a job's index to ``dropped`` to stop it.
        ``on_step(frames_delivered, frames_total)`` about every second too, so it may raise to cancel."""
        from .remote import pack

        ray = self.ray
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise InputError("every job needs its own name (the workers keep one session per name)")
        dropped = dropped if dropped is not None else set()
        extras = list(extras) if extras is not None else [None] * len(jobs)
        state = [_Job(i, j, j.wire(), ray.put(pack(e)) if e is not None else None) for i, j, e in zip(range(len(jobs)), jobs, extras)]
        queue: list = []  # (job, start, kind): job order, motion first
        idle, running = list(range(len(self.actors))), {}  # ObjectRef -> (actor, job index, start, stop)
        tries: dict = {}
        sick: dict = {}  # actor that failed -> when to ask whether it is back (it gets no work until then)
        last_error = "worker died"
        count = {"done": 0, "total": 0}
        ahead = 2 * len(self.actors) * range_frames  # frames a job may render past its next unwritten one

        def fail(js: _Job, error: str) -> JobFailed:
            js.failed = True
            js.done.clear()
            count["total"] -= js.stop - js.next_start
            logger.error("job %s failed: %s", js.job.name, error)
            return JobFailed(js.index, error)

        def plan(js: _Job, motion) -> None:
            start, stop = check_range(int(motion.shape[0]), js.job.start, js.job.count, f"job {js.job.name}")
            js.motion, js.next_start, js.stop = ray.put(motion), start, stop
            js.ranges = dict(frame_ranges(int(motion.shape[0]), range_frames, chunk_size=chunk_size, start=start, stop=stop))
            for s in js.ranges:
                heapq.heappush(queue, (js.index, s, "range"))
            count["total"] += stop - start

        for js in state:
            if isinstance(js.job.motion, torch.Tensor):
                try:
                    plan(js, js.job.motion)
                except InputError as e:
                    yield fail(js, str(e))
            else:
                heapq.heappush(queue, (js.index, -1, "motion"))
        report(on_step, 0, count["total"])
        while queue or running:
            held = []  # ranges too far ahead of their job's next frame to write: they wait
            for a, when in list(sick.items()):  # a worker that failed gets work again once it answers
                if when <= time.monotonic():
                    del sick[a]
                    running[self.actors[a].call.remote("info")] = (a, -1, 0, 0)
            while idle and queue:
                i, start, kind = heapq.heappop(queue)
                js = state[i]
                if js.failed or i in dropped:
                    continue
                if kind == "range" and start >= js.next_start + ahead:
                    held.append((i, start, kind))
                    continue
                a = idle.pop(0)
                if kind == "motion":
                    running[self.actors[a].call.remote("motion", js.wire)] = (a, i, -1, -1)
                else:
                    stop = js.ranges[start]
                    ref = self.actors[a].call.remote("render_range", js.wire, js.motion, start, stop, chunk_size, js.extra)
                    running[ref] = (a, i, start, stop)
            for item in held:
                heapq.heappush(queue, item)
            if not running:
                if queue and sick:  # the only workers left are restarting: wait for them
                    time.sleep(0.2)
                    continue
                if queue and not idle:  # every worker is gone for good
                    for js in state:
                        if not js.failed and js.index not in dropped and (js.next_start < js.stop or js.motion is None):
                            yield fail(js, f"no Ray workers left ({last_error})")
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            if not ready:  # nothing new: let on_step see the clock (a Cancel raises there)
                report(on_step, count["done"], count["total"])
                continue
            ref = ready[0]
            a, i, start, stop = running.pop(ref)
            if i < 0:  # the answer of a worker that failed: back to work, later again, or gone
                try:
                    ray.get(ref)
                    idle.append(a)
                except ray.exceptions.ActorUnavailableError:
                    sick[a] = time.monotonic() + 0.5
                except ray.exceptions.RayError as e:
                    logger.warning("Ray worker %d is gone: %s", a, str(e).strip().splitlines()[0] if str(e).strip() else e)
                continue
            js = state[i]
            key = (i, start)
            tries[key] = tries.get(key, 0) + 1
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as e:  # a dead / restarting worker, or the error a range raised
                died = not isinstance(e, ray.exceptions.RayTaskError)
                if died:  # no more work for it until it answers (Ray restarts it)
                    sick[a] = time.monotonic()
                else:
                    idle.append(a)
                cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None else e
                what = "motion" if start < 0 else f"frames {start}-{stop - 1}"
                why = "worker died" if died else (str(cause) if type(cause) is RuntimeError else f"{type(cause).__name__}: {cause}")
                if died and getattr(e, "actor_init_failed", False):  # its constructor raised: say what
                    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                    why = f"worker failed to start: {lines[-1] if lines else e}"
                last_error = why
                logger.warning("job %s, %s: %s (try %d of %d)", js.job.name, what, why, tries[key], max_attempts)
                if js.failed or i in dropped:
                    continue
                if tries[key] >= max_attempts:
                    yield fail(js, f"{what}: {why} ({tries[key]} {'try' if tries[key] == 1 else 'tries'})")
                    report(on_step, count["done"], count["total"])
                else:
                    heapq.heappush(queue, (i, start, "motion" if start < 0 else "range"))
                continue
            idle.append(a)
            if js.failed or i in dropped:
                continue
            if start < 0:  # the motion: share it, split the job
                try:
                    plan(js, value)
                except InputError as e:
                    yield fail(js, str(e))
                report(on_step, count["done"], count["total"])
                continue
            js.done[start] = (value, tries[key])
            while js.next_start in js.done and not js.failed and i not in dropped:  # deliver in frame order
                s = js.next_start
                frames, n_tries = js.done.pop(s)
                js.next_start = s + _length(frames)
                count["done"] += js.next_start - s
                yield RangeDone(i, s, js.next_start, frames, js.next_start == js.stop, n_tries)
                report(on_step, count["done"], count["total"], job=js.job.name, start=s, worker=a)
            if i in dropped and not js.failed:
                fail(js, "stopped by the caller")

    def run(self, jobs: Sequence[RenderJob], *, range_frames: int = 100, chunk_size: int = 4, max_attempts: int = 3,
            on_step: Optional[ProgressFn] = None, **video_options) -> list[JobResult]:
        """Render ``jobs`` into their mp4 files (written progressively, in frame order, with their
        audio); returns one :class:`JobResult` per job (in order). A failing job's partial file is
        removed and the batch goes on."""
        from ..video import VideoWriter

        results = [JobResult(j.name, j.out) for j in jobs]
        writers: dict = {}
        dropped: set = set()
        try:
            for event in self.stream(jobs, range_frames=range_frames, chunk_size=chunk_size, max_attempts=max_attempts,
                                     on_step=on_step, dropped=dropped):
                job, result = jobs[event.index], results[event.index]
                if isinstance(event, JobFailed):
                    result.error = event.error
                    if event.index in writers:
                        writers.pop(event.index).abort()
                    continue
                result.attempts[event.start] = event.tries
                try:
                    if event.index not in writers:
                        writers[event.index] = VideoWriter(job.out, FPS, audio=job.audio, **video_options)
                    writers[event.index].write(event.frames)
                    result.frames = event.stop
                    if event.last:
                        writers.pop(event.index).close()
                        result.ok = True
                        logger.info("job %s: %d frames -> %s", job.name, event.stop, job.out)
                except Exception as e:  # noqa: BLE001 - a bad output path / audio fails this job, not the batch
                    dropped.add(event.index)
                    result.error = f"writing {job.out}: {type(e).__name__}: {e}"
                    logger.error("job %s failed: %s", job.name, result.error)
                    if event.index in writers:
                        writers.pop(event.index).abort()
        finally:
            for w in writers.values():
                w.abort()
        return results

    def frames(self, job: RenderJob, *, extra: Any = None, **options) -> Iterator[RangeDone]:
        """One job's ranges in frame order (``options`` as :meth:`stream`); its failure raises
        :class:`~mimictalk_lib.errors.MimicTalkError` with the worker's error."""
        for event in self.stream([job], extras=[extra], **options):
            if isinstance(event, JobFailed):
                raise MimicTalkError(f"rendering on Ray failed: {event.error}")
            yield event


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
            motion = job.motion if isinstance(job.motion, torch.Tensor) else worker.motion(job)
            first, last = check_range(int(motion.shape[0]), job.start, job.count, f"job {job.name}")
            total += last - first
            with VideoWriter(job.out, FPS, audio=job.audio, **video_options) as writer:
                for start, stop in frame_ranges(int(motion.shape[0]), range_frames, chunk_size=chunk_size, start=first,
                                                stop=last):
                    writer.write(worker.render_range(job, motion, start, stop, chunk_size))
                    result.attempts[start], result.frames = 1, stop
                    done += stop - start
                    report(on_step, done, total)
            result.ok = True
        except Exception as e:  # noqa: BLE001 - reported per job; the batch goes on
            result.error = f"{type(e).__name__}: {e}"
            logger.error("job %s failed: %s", job.name, result.error)
    return results


__all__ = ["JobFailed", "JobResult", "RangeDone", "RayRenderer", "connect", "import_ray", "render_jobs", "render_local"]
