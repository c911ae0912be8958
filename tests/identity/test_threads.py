"""Thread counts of the small-tensor loops (issue 16): the 3DMM fit and the landmark stage run with
one CPU intra-op thread by default (``MIMICTALK_SMALL_TENSOR_THREADS`` / ``threads=`` choose
another), the process's setting comes back afterwards, also on error, and the fit's result does
not depend on the count."""

import pytest
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.identity import FitSchedule, PrepareBackends, PrepareOptions, fit_clip, prepare_identity
from mimictalk_lib.utils import SMALL_TENSOR_THREADS_ENV, cpu_threads, small_tensor_threads
from tests.fixtures.synthetic_identity import (BlobLandmarker, LandmarkSegmenter, draw_clip, observable_face_model,
                                               synthetic_clip_landmarks)

SCHEDULE = FitSchedule(pose_iters=4, joint_iters=4, fine_iters=2, fine_batch=4)


@pytest.fixture(autouse=True)
def three_threads(monkeypatch):
    """A process setting that differs from every count the tests ask for, restored afterwards."""
    monkeypatch.delenv(SMALL_TENSOR_THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    return observable_face_model(tmp_path_factory.mktemp("bfm"))


def test_thread_count_choice(monkeypatch):
    assert small_tensor_threads() == 1 and small_tensor_threads(4) == 4 and small_tensor_threads(0) == 0
    monkeypatch.setenv(SMALL_TENSOR_THREADS_ENV, "2")
    assert small_tensor_threads() == 2 and small_tensor_threads(1) == 1  # an argument wins
    for bad in ("two", "-1", "1.5"):
        monkeypatch.setenv(SMALL_TENSOR_THREADS_ENV, bad)
        with pytest.raises(InputError, match=rf"^environment variable {SMALL_TENSOR_THREADS_ENV} must be a whole "
                                             rf"number of CPU threads \(0 = torch's own setting\), got '{bad}'$"):
            small_tensor_threads()
    with pytest.raises(InputError, match=r"^threads must be a whole number .*got -2$"):
        small_tensor_threads(-2)


def test_cpu_threads_sets_and_restores_also_on_error():
    with cpu_threads("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with pytest.raises(KeyboardInterrupt):  # ComfyUI's Cancel, or any error inside the block
        with cpu_threads("cpu", 2):
            assert torch.get_num_threads() == 2
            raise KeyboardInterrupt
    assert torch.get_num_threads() == 3
    for device, threads in (("cuda", 1), ("cpu", 0)):  # another device, or 0: the setting is left alone
        with cpu_threads(device, threads):
            assert torch.get_num_threads() == 3


def test_fit_runs_single_threaded_and_restores(face_model):
    c = synthetic_clip_landmarks(face_model, 8, seed=2)
    seen = []

    def record(*args, **info):
        seen.append(torch.get_num_threads())

    fit_clip(face_model, c["landmarks"], 512, schedule=SCHEDULE, on_step=record)
    assert set(seen) == {1} and len(seen) == SCHEDULE.total and torch.get_num_threads() == 3
    seen.clear()
    fit_clip(face_model, c["landmarks"], 512, schedule=SCHEDULE, threads=2, on_step=record)
    assert set(seen) == {2} and torch.get_num_threads() == 3

    def cancel(done, total, **info):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_clip(face_model, c["landmarks"], 512, schedule=SCHEDULE, on_step=cancel)
    assert torch.get_num_threads() == 3


def test_fit_result_does_not_depend_on_the_thread_count(face_model):
    """Same fit with 1 and 3 threads. Not bit-equal by construction (a parallel reduction may sum in
    another order), so the tolerance is the fp32 noise floor grown over 10 Adam steps: 1e-5 relative."""
    c = synthetic_clip_landmarks(face_model, 12, seed=3)
    one = fit_clip(face_model, c["landmarks"], 512, schedule=SCHEDULE, threads=1)
    three = fit_clip(face_model, c["landmarks"], 512, schedule=SCHEDULE, threads=3)
    for a, b in zip((*one.coeffs.tensors(), one.landmark_error), (*three.coeffs.tensors(), three.landmark_error)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_prepare_uses_the_option_and_restores_on_a_refused_fit(face_model, monkeypatch):
    frames = draw_clip(26)
    backends = PrepareBackends(landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(), face_model=face_model)
    seen = []

    def record(done, total, stage, **info):
        if stage in ("landmarks", "fit"):
            seen.append((stage, torch.get_num_threads()))

    prepare_identity(frames, backends, PrepareOptions(schedule=SCHEDULE, threads=2), fps=25, on_step=record)
    assert {s for s, _ in seen} == {"landmarks", "fit"} and {n for _, n in seen} == {2}
    assert torch.get_num_threads() == 3
    monkeypatch.setenv("MIMICTALK_MAX_FIT_ERROR", "0.0001")  # the blob landmarks never fit this well
    with pytest.raises(InputError, match="3DMM fit does not match"):
        prepare_identity(frames, backends, PrepareOptions(schedule=SCHEDULE), fps=25)
    assert torch.get_num_threads() == 3
