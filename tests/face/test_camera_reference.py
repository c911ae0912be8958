"""EG3D cameras, smoothing and driving poses against float64 references written here from
upstream's definitions (``convert_to_eg3d_convention.py``, ``smooth_camera_sequence`` with
scipy's chordal rotation mean, ``mirror_index``), plus the input checks' messages. Written to
kill the mutants that survived the first mutation run (docs/mutation.md).

Tolerances: float64 inputs are computed in float64 (eg3d_camera's contract), so agreement is to
~1e-15 relative; the 1e-12 bound fails on any constant or intermediate rounded to float32
(~1e-8 relative)."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mimictalk_lib.errors import InputError
from mimictalk_lib.face.coeffs import HeadPose
from mimictalk_lib.face.camera import (
    camera_sequence,
    driving_pose,
    eg3d_camera,
    mirror_indices,
    smooth_camera,
)

D = torch.float64


def ref_camera(euler: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """R = (Rz Ry Rx)^T; c = -R (t - (0, 0, 10)) * 0.27 + (0, 0.006, 0.161); c2w = [[R diag(1, -1, -1), c],
    [0, 0, 0, 1]]; K = [[2985.29 / 700, 0, 0.5], [0, 2985.29 / 700, 0.5], [0, 0, 1]]."""
    out = []
    for (x, y, z), t in zip(euler.astype(np.float64), trans.astype(np.float64)):
        rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
        ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
        rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
        r = (rz @ ry @ rx).T
        c = -r @ (t - np.array([0.0, 0.0, 10.0])) * 0.27 + np.array([0.0, 0.006, 0.161])
        c2w = np.eye(4)
        c2w[:3, :3] = r @ np.diag([1.0, -1.0, -1.0])
        c2w[:3, 3] = c
        f = 2985.29 / 700
        k = np.array([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]])
        out.append(np.concatenate([c2w.ravel(), k.ravel()]))
    return np.stack(out)


def _poses(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=D) - 0.5) * 0.8, (torch.rand(n, 3, generator=g, dtype=D) - 0.5) * 0.4


def test_eg3d_camera_matches_the_float64_reference():
    euler, trans = _poses(5, 1)
    got = eg3d_camera(HeadPose(euler, trans))
    assert got.dtype == D and got.shape == (5, 25)
    assert np.abs(got.numpy() - ref_camera(euler.numpy(), trans.numpy())).max() < 1e-12


def test_float32_translation_with_float64_angles_is_computed_in_float64():
    """The dtype follows the angles (at least float32); a float32 translation is promoted before
    any maths, so the result equals the float64 reference of its (exactly representable) values."""
    euler, trans = _poses(4, 2)
    got = eg3d_camera(HeadPose(euler, trans.float()))
    assert got.dtype == D
    assert np.abs(got.numpy() - ref_camera(euler.numpy(), trans.float().double().numpy())).max() < 1e-12


def ref_smooth(cams: np.ndarray, k: int) -> np.ndarray:
    """Window [i - k//2, i + k//2] clipped to the sequence: mean translation, scipy's rotation mean."""
    out = cams.copy()
    n, half = len(cams), k // 2
    for i in range(n):
        w = cams[max(0, i - half) : min(n, i + half + 1), :16].reshape(-1, 4, 4)
        pose = out[i, :16].reshape(4, 4)
        pose[:3, 3] = w[:, :3, 3].mean(0)
        pose[:3, :3] = Rotation.from_matrix(w[:, :3, :3]).mean().as_matrix()
        out[i, :16] = pose.ravel()
    return out


@pytest.mark.parametrize("kernel", [3, 7])
def test_smoothing_matches_scipy_rotation_means(kernel):
    euler, trans = _poses(9, 3)
    cams = eg3d_camera(HeadPose(euler, trans))
    want = ref_smooth(cams.numpy(), kernel)
    assert np.abs(smooth_camera(cams, kernel).numpy() - want).max() < 1e-10
    assert np.abs(camera_sequence(HeadPose(euler, trans), kernel).numpy() - want).max() < 1e-10
    c2w_only = smooth_camera(cams[:, :16], kernel)  # [T, 16] cameras are accepted too
    assert c2w_only.shape == (9, 16) and np.abs(c2w_only.numpy() - want[:, :16]).max() < 1e-10


def test_one_pose_is_a_valid_sequence_for_mirroring():
    assert mirror_indices(4, 1).tolist() == [0, 0, 0, 0]
    assert [mirror_indices(11, 4).tolist()] == [[0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2]]
    with pytest.raises(InputError, match=r"^mirror_indices: the pose sequence is empty \(n_poses=0\)$"):
        mirror_indices(3, 0)


def test_driving_pose_of_a_five_frame_sequence():
    euler, trans = _poses(5, 4)
    src_e, src_t = torch.tensor([0.1, -0.2, 0.05], dtype=D), torch.tensor([0.01, 0.02, 0.3], dtype=D)
    drive = driving_pose(HeadPose(euler, trans), 12, source=HeadPose(src_e, src_t))
    e, t = drive.euler.numpy(), drive.trans.numpy()
    idx = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 1]
    want_e = euler.numpy()[idx] + (src_e.numpy() - euler.numpy()[0])
    want_t = trans.numpy()[idx].copy()
    want_t[:, 2] = trans.numpy()[0, 2]
    want_t += src_t.numpy() - want_t[0]
    assert np.abs(e - want_e).max() < 1e-15 and np.abs(t - want_t).max() < 1e-15


def test_pose_and_camera_input_messages():
    euler, trans = _poses(3, 5)
    with pytest.raises(InputError, match=r"^eg3d_camera: expected euler and trans of shape \[T, 3\], got \[3, 3\] and \[3, 2\]$"):
        eg3d_camera(HeadPose(euler, trans[:, :2]))
    with pytest.raises(InputError, match=r"^driving_pose: expected euler and trans of shape \[T, 3\]"):
        driving_pose(HeadPose(euler[:, :2], trans), 4, map_to_init_pose=False)
    with pytest.raises(InputError, match=r"^driving_pose: map_to_init_pose needs the source pose$"):
        driving_pose(HeadPose(euler, trans), 4)
    with pytest.raises(InputError, match=r"^smooth_camera: expected cameras \[T, 25\] or \[T, 16\], got \[3, 10\]$"):
        smooth_camera(torch.zeros(3, 10, dtype=D))
    with pytest.raises(InputError, match=r"^smooth_camera: expected cameras"):
        smooth_camera(torch.zeros(25, dtype=D))
