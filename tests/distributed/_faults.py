"""A fault the Ray test injects into its workers: ``install`` runs in every Ray worker process
at start (``worker_process_setup_hook``). When ``MIMICTALK_TEST_CRASH_MARKER`` names a file that
does not exist yet, the first worker asked for frames 2-3 of job "anna" creates the file and
exits at once, mid-range, like a process killed by the OOM killer; the restarted worker (and
every later one) finds the file and renders normally. Deterministic, unlike killing from the
driver, which may land after the range has already finished."""

from __future__ import annotations

import os

CRASH_JOB, CRASH_START = "anna", 2


def install() -> None:
    marker = os.environ.get("MIMICTALK_TEST_CRASH_MARKER")
    if not marker:
        return
    from mimictalk_lib.distributed import worker

    render_range = worker.RenderWorker.render_range

    def crashing_once(self, job, motion, start, stop, chunk_size=4, extra=None):
        name = job["name"] if isinstance(job, dict) else job.name
        if name == CRASH_JOB and start == CRASH_START:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return render_range(self, job, motion, start, stop, chunk_size, extra)

    worker.RenderWorker.render_range = crashing_once
