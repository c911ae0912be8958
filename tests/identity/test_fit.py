"""3DMM landmark fitting recovers known coefficients (clip and single image), and the batched
stages equal independent problems."""

import pytest
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.face import Coefficients
from mimictalk_lib.identity.fit3dmm import (
    FitSchedule,
    _batch_starts,
    fit_clip,
    fit_images,
    landmark_weights,
    laplacian_loss,
    VIDEO_WEIGHTS,
)
from mimictalk_lib.identity.landmarks import UNMATCHED_INDICES, UPPER_EYELID_INDICES
from tests.fixtures.synthetic_identity import observable_face_model, project_to_pixels, synthetic_clip_landmarks

# Short schedules keep the tests fast; upstream's is FitSchedule() = 200/200/50 steps.
CLIP_SCHEDULE = FitSchedule(pose_iters=60, joint_iters=120, fine_iters=20)
IMAGE_SCHEDULE = FitSchedule(pose_iters=60, joint_iters=120, fine_iters=20)
NOISE_PX = 0.5


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    return observable_face_model(tmp_path_factory.mktemp("bfm"))


def test_clip_fit_recovers_coefficients(face_model):
    """30 frames, landmarks + 0.5 px noise. Tolerances (coefficient scale ~0.5, angles ~0.1 rad):
    pose |d euler| < 0.01 rad, |d trans| < 0.02; identity |d| < 0.03; expression relative error
    < 6 %; mean landmark error < 1 px (the noise alone gives ~0.63 px)."""
    c = synthetic_clip_landmarks(face_model, 30, noise_px=NOISE_PX)
    steps = []
    fit = fit_clip(face_model, c["landmarks"], 512, schedule=CLIP_SCHEDULE, on_step=lambda d, t, **k: steps.append(d))
    assert steps == list(range(1, CLIP_SCHEDULE.total + 1))
    r = fit.coeffs
    assert r.id.shape == (1, 80) and r.exp.shape == (30, 64)
    assert (r.euler - c["euler"]).abs().max() < 0.01
    assert (r.trans - c["trans"]).abs().max() < 0.02
    assert (r.id - c["id"]).abs().max() < 0.03
    assert (r.exp - c["exp"]).norm() / c["exp"].norm() < 0.06
    assert fit.landmark_error.mean() < 1.0


def test_image_fit_recovers_coefficients(face_model):
    """Three independent images: |d id|, |d exp| < 0.06, |d euler| < 0.005 rad, |d trans| < 0.01."""
    g = torch.Generator().manual_seed(3)
    n = 3
    truth = [torch.randn(n, 80, generator=g) * 0.5, torch.randn(n, 64, generator=g) * 0.5,
             torch.randn(n, 3, generator=g) * 0.1, torch.randn(n, 3, generator=g) * 0.1]
    px = project_to_pixels(face_model, *truth, 512, NOISE_PX, g)
    r = fit_images(face_model, px, 512, schedule=IMAGE_SCHEDULE)
    for got, want, tol in zip(r.coeffs.tensors(), truth, (0.06, 0.06, 0.005, 0.01)):
        assert got.shape == want.shape and (got - want).abs().max() < tol
    assert (r.landmark_error < 1.0).all()


def test_image_batch_equals_separate_fits(face_model):
    g = torch.Generator().manual_seed(4)
    truth = [torch.randn(2, 80, generator=g) * 0.5, torch.randn(2, 64, generator=g) * 0.5,
             torch.randn(2, 3, generator=g) * 0.1, torch.randn(2, 3, generator=g) * 0.1]
    px = project_to_pixels(face_model, *truth, 512, NOISE_PX, g)
    sched = FitSchedule(pose_iters=10, joint_iters=10, fine_iters=5)
    both = fit_images(face_model, px, 512, schedule=sched)
    for i in range(2):
        one = fit_images(face_model, px[i : i + 1], 512, schedule=sched)
        for a, b in zip(both.coeffs[i].tensors(), one.coeffs.tensors()):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fine_stage_batches_are_independent(face_model):
    """Stage 3 solves all 50-frame batches at once; each must equal fitting its frames alone."""
    c = synthetic_clip_landmarks(face_model, 20, noise_px=NOISE_PX, seed=5)
    sched = FitSchedule(pose_iters=0, joint_iters=0, fine_iters=15, fine_batch=10)
    both = fit_clip(face_model, c["landmarks"], 512, schedule=sched)
    for s in (0, 10):
        one = fit_clip(face_model, c["landmarks"][s : s + 10], 512, schedule=sched)
        torch.testing.assert_close(both.coeffs.exp[s : s + 10], one.coeffs.exp, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(both.coeffs.euler[s : s + 10], one.coeffs.euler, atol=1e-5, rtol=1e-4)


def test_batch_starts_follow_upstream():
    assert _batch_starts(30, 50) == [0]
    assert _batch_starts(100, 50) == [0, 50]
    assert _batch_starts(120, 50) == [0, 50, 70]  # the last batch is the final 50 frames


def test_laplacian_matches_conv1d():
    x = torch.randn(7, 5)
    padded = torch.cat([x[:1], x, x[-1:]]).T[:, None]  # [C, 1, T + 2]
    ref = torch.nn.functional.conv1d(padded, torch.tensor([[[-0.5, 1.0, -0.5]]])).square().mean()
    torch.testing.assert_close(laplacian_loss(x), ref)


def test_landmark_weights():
    w = landmark_weights(VIDEO_WEIGHTS)
    assert w[list(UNMATCHED_INDICES)].eq(0).all() and w[list(UPPER_EYELID_INDICES)].eq(20).all()
    assert w[33] == 3 and w[61] == 5 and w[1] == 1


def test_fit_is_interruptible_and_checks_input(face_model):
    c = synthetic_clip_landmarks(face_model, 5)

    def stop(done, total, **info):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_clip(face_model, c["landmarks"], 512, schedule=CLIP_SCHEDULE, on_step=stop)
    bad = c["landmarks"].clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fit_clip(face_model, bad, 512, schedule=CLIP_SCHEDULE)
    with pytest.raises(InputError, match="468"):
        fit_images(face_model, torch.zeros(1, 68, 2), 512)


def test_fit_projection_equals_face_model(face_model):
    """The fit's own key-point projection equals FaceModel.project_landmarks(..., "mp468")."""
    from mimictalk_lib.identity.fit3dmm import VIDEO_WEIGHTS, _Problem

    g = torch.Generator().manual_seed(7)
    t = 6
    id_, exp = torch.randn(1, 80, generator=g), torch.randn(t, 64, generator=g)
    euler, trans = torch.randn(t, 3, generator=g) * 0.3, torch.randn(t, 3, generator=g) * 0.3
    prob = _Problem(face_model, torch.zeros(t, 468, 2), VIDEO_WEIGHTS)
    c = Coefficients(id_, exp, euler, trans)
    ref = face_model.project_landmarks(c.per_frame(), which="mp468")
    torch.testing.assert_close(prob.project(c), ref, atol=1e-3, rtol=1e-5)


def test_schedule_with_iterations_keeps_upstreams_ratio():
    assert FitSchedule.with_iterations(200) == FitSchedule()  # upstream 200 / 200 / 50
    assert FitSchedule.with_iterations(2).fine_iters == 1 and FitSchedule.with_iterations(2).total == 5
    with pytest.raises(InputError, match="positive integer"):
        FitSchedule.with_iterations(0)


def test_fits_run_under_inference_mode(tmp_path):
    """ComfyUI runs nodes under torch.inference_mode and loads models there: the fits leave it
    themselves (they optimise with autograd) and give the same result as outside it."""
    sched = FitSchedule(pose_iters=3, joint_iters=3, fine_iters=2, fine_batch=4)
    with torch.inference_mode():
        face = observable_face_model(tmp_path)  # buffers are inference tensors
        c = synthetic_clip_landmarks(face, 6, noise_px=NOISE_PX, seed=7)
        assert face.mean_shape.is_inference() and c["landmarks"].is_inference()
        clip = fit_clip(face, c["landmarks"], 512, schedule=sched)
        image = fit_images(face, c["landmarks"][:2], 512, schedule=sched)
        assert torch.is_inference_mode_enabled()  # the caller's mode is restored
    want_clip = fit_clip(face, c["landmarks"].clone(), 512, schedule=sched)
    want_image = fit_images(face, c["landmarks"][:2].clone(), 512, schedule=sched)
    for got, want in ((clip, want_clip), (image, want_image)):
        for a, b in zip((*got.coeffs.tensors(), got.landmark_error), (*want.coeffs.tensors(), want.landmark_error)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
