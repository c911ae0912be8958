"""Fixtures for the scale-out tests: the pipeline's tiny renderer, synthetic face model and helpers,
and one local Ray cluster on the CPU (2 CPUs) for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline.conftest import face_model, make_identity, motion, renderer  # noqa: F401  (fixtures and helpers shared)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crash_marker(tmp_path_factory) -> Path:
    """The file whose absence makes one worker die mid-range once (tests/distributed/_faults.py)."""
    return tmp_path_factory.mktemp("fault") / "crashed"


@pytest.fixture(scope="session")
def cluster(crash_marker):
    """``ray``, initialised: 2 CPUs, one thread per worker, the fault hook installed in every worker."""
    ray = pytest.importorskip("ray")
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MIMICTALK_TEST_CRASH_MARKER": str(crash_marker)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "tests.distributed._faults.install"})
    yield ray
    ray.shutdown()
