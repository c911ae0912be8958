"""Project-wide pytest settings. Tests never touch the network: the Hugging Face client is
forced offline for the whole session, and every model is a tiny random one built by fixtures."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The stand-in landmarkers (BlobLandmarker, the fake mediapipe) lay their points out at random, not as
# projections of the synthetic face model, and pipeline tests fit with 2-20 iterations: their 3DMM fits
# are meaningless by construction, so the fit-quality refusal is lifted for them. The fit-quality tests
# (tests/identity/test_fit_quality.py) remove this and check the default limit.
os.environ.setdefault("MIMICTALK_MAX_FIT_ERROR", "1000")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Real media for realistic checks; tests using it skip when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real media folder {SHARED_DATA} is absent (only on developer machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real ComfyUI server with the pack and tiny weights (tests/e2e/comfy_server.py), shared by
    the end-to-end and browser tests; skips without ``COMFYUI_DIR`` (fails in CI)."""
    from tests.e2e.comfy_server import serve

    yield from serve(tmp_path_factory)


# --- threads -------------------------------------------------------------------------------------

# Test folders whose tests run many small tensor ops (tiny a2m transformers, landmark fits on a few
# dozen frames, 512² masks). There torch's intra-op threading costs more than it gives: on the
# shared 2-core test machine the identity tests took 66 s with one thread and 266 s with two, the
# a2m sampler tests ~10x longer. Results do not depend on the thread count.
ONE_THREAD_FOLDERS = {"a2m", "identity"}


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread_for_small_ops(request):
    path = pathlib.Path(str(request.path))
    if path.parent.name not in ONE_THREAD_FOLDERS:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- order independence --------------------------------------------------------------------------

# The suite runs in random order (pytest-randomly, which reseeds `random` and numpy for each test).
# torch's global generator is reseeded here the same way, before each test's fixtures and again
# before its body, so what a test draws without a generator of its own never depends on which
# tests ran before it.
TORCH_TEST_SEED = 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    import torch

    torch.manual_seed(TORCH_TEST_SEED)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    import torch

    torch.manual_seed(TORCH_TEST_SEED)
