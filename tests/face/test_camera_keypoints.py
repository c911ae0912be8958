"""EG3D camera, smoothing, pose sequences and torso keypoints against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mimictalk_lib.errors import InputError
from mimictalk_lib.face.coeffs import Coefficients, HeadPose
from mimictalk_lib.face.camera import (
    EG3D_FOCAL,
    camera_sequence,
    driving_pose,
    eg3d_camera,
    mirror_indices,
    project_to_rotation,
    smooth_camera,
)
from mimictalk_lib.face.keypoints import (
    TORSO_KP_INDEX,
    landmarks_2d,
    select_torso_keypoints,
    smooth_keypoints,
    torso_keypoints,
)
from mimictalk_lib.face.model import FaceModel

D = torch.float64
OFFSET = torch.tensor([0.0, 0.006, 0.161], dtype=D)


def split(cam):
    return cam[:, :16].view(-1, 4, 4), cam[:, 16:].view(-1, 3, 3)


def test_identity_pose_camera():
    c2w, k = split(eg3d_camera(HeadPose(torch.zeros(1, 3, dtype=D), torch.zeros(1, 3, dtype=D))))
    torch.testing.assert_close(c2w[0, :3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=D)))
    # c = -R (t - (0, 0, 10)) = (0, 0, 10); * 0.27 + offset
    torch.testing.assert_close(c2w[0, :3, 3], torch.tensor([0.0, 0.006, 2.7 + 0.161], dtype=D))
    torch.testing.assert_close(c2w[0, 3], torch.tensor([0.0, 0, 0, 1], dtype=D))
    f = 2985.29 / 700
    torch.testing.assert_close(k[0], torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]], dtype=D))
    assert abs(EG3D_FOCAL - 4.26470) < 1e-5


def test_pure_yaw_and_pure_translation_cameras():
    a = 0.4
    c2w, _ = split(eg3d_camera(HeadPose(torch.tensor([[0.0, a, 0.0]], dtype=D), torch.zeros(1, 3, dtype=D))))
    ca, sa = math.cos(a), math.sin(a)
    # R = Ry^T = [[c, 0, -s], [0, 1, 0], [s, 0, c]]; c2w rotation = R diag(1, -1, -1)
    want_rot = torch.tensor([[ca, 0, sa], [0, -1, 0], [sa, 0, -ca]], dtype=D)
    torch.testing.assert_close(c2w[0, :3, :3], want_rot)
    # centre = -R (0, 0, -10) = 10 * R[:, 2] = (-10 s, 0, 10 c)
    torch.testing.assert_close(c2w[0, :3, 3], torch.tensor([-10 * sa, 0, 10 * ca], dtype=D) * 0.27 + OFFSET)

    t = torch.tensor([[0.2, -0.1, 0.5]], dtype=D)
    c2w, _ = split(eg3d_camera(HeadPose(torch.zeros(1, 3, dtype=D), t)))
    torch.testing.assert_close(c2w[0, :3, 3], -torch.tensor([0.2, -0.1, 0.5 - 10], dtype=D) * 0.27 + OFFSET)


def test_camera_shape_error():
    with pytest.raises(InputError, match=r"\[T, 3\]"):
        eg3d_camera(HeadPose(torch.zeros(3), torch.zeros(3)))


def test_smoothing_translation_window_and_yaw_mean():
    n = 10
    yaw = torch.linspace(-0.3, 0.5, n, dtype=D) ** 2  # non-linear so the window mean matters
    euler = torch.stack([torch.zeros(n, dtype=D), yaw, torch.zeros(n, dtype=D)], 1)
    cam = eg3d_camera(HeadPose(euler, torch.zeros(n, 3, dtype=D)))
    sm = smooth_camera(cam, 7)
    c2w, sc2w = split(cam)[0], split(sm)[0]
    for i in (0, 5, 9):
        lo, hi = max(0, i - 3), min(n, i + 4)  # window clipped at the ends
        torch.testing.assert_close(sc2w[i, :3, 3], c2w[lo:hi, :3, 3].mean(0))
        # rotations about one axis: the chordal mean angle is atan2(sum sin, sum cos)
        m = torch.atan2(yaw[lo:hi].sin().sum(), yaw[lo:hi].cos().sum())
        want = eg3d_camera(HeadPose(torch.tensor([[0.0, float(m), 0.0]], dtype=D), torch.zeros(1, 3, dtype=D)))
        torch.testing.assert_close(sc2w[i, :3, :3], split(want)[0][0, :3, :3])
    torch.testing.assert_close(sm[:, 16:], cam[:, 16:])  # intrinsics untouched
    const = eg3d_camera(HeadPose(euler[:1].repeat(5, 1), torch.zeros(5, 3, dtype=D)))
    torch.testing.assert_close(smooth_camera(const), const)


def test_rotation_mean_equals_scipy():
    rots = Rotation.random(7, random_state=3)
    sums = torch.from_numpy(rots.as_matrix()).sum(0)
    torch.testing.assert_close(project_to_rotation(sums), torch.from_numpy(rots.mean().as_matrix()), atol=1e-10, rtol=0)


def test_mirror_indices_and_driving_pose():
    assert mirror_indices(8, 3).tolist() == [0, 1, 2, 2, 1, 0, 0, 1]
    assert mirror_indices(3, 5).tolist() == [0, 1, 2]
    euler = torch.tensor([[0.1, 0.2, 0.3], [0.2, 0.1, 0.0], [0.0, 0.0, 0.1]], dtype=D)
    trans = torch.tensor([[0.1, 0.0, 0.5], [0.2, 0.1, 0.7], [0.3, 0.2, 0.9]], dtype=D)
    src_e, src_t = torch.tensor([0.05, -0.05, 0.0], dtype=D), torch.tensor([0.0, 0.1, 0.2], dtype=D)
    drive = driving_pose(HeadPose(euler, trans), 5, source=HeadPose(src_e, src_t))
    e, t = drive.euler, drive.trans
    torch.testing.assert_close(e[0], src_e)
    torch.testing.assert_close(t[0], src_t)
    torch.testing.assert_close(t[:, 2], torch.full((5,), 0.2, dtype=D))  # z frozen, then mapped
    torch.testing.assert_close(e[3] - e[0], euler[2] - euler[0])  # ping-pong: frame 3 = pose 2
    torch.testing.assert_close(t[4, :2] - t[0, :2], trans[1, :2] - trans[0, :2])
    still = driving_pose(HeadPose(euler, trans), 4, map_to_init_pose=False)
    e2, t2 = still.euler, still.trans
    torch.testing.assert_close(e2, euler[[0, 1, 2, 2]])
    torch.testing.assert_close(t2[:, 2], torch.full((4,), 0.5, dtype=D))
    with pytest.raises(InputError, match="source"):
        driving_pose(HeadPose(euler, trans), 4)
    torch.testing.assert_close(camera_sequence(HeadPose(e, t)), smooth_camera(eg3d_camera(HeadPose(e, t))))


def tiny_face_model(points: torch.Tensor) -> FaceModel:
    """A model whose 68 torso landmarks (lm68_upstream = vertices 1..68) are ``points`` [68, 3].
    Vertex 0 and 69 balance the mean so the re-centring leaves ``points`` in place."""
    extra = -points.sum(0, keepdim=True) / 2
    mean = torch.cat([extra, points, extra]).to(torch.float64)
    n = mean.shape[0]
    return FaceModel(
        mean_shape=mean,
        id_base=torch.zeros(3 * n, 80, dtype=D),
        exp_base=torch.zeros(3 * n, 64, dtype=D),
        tri=torch.tensor([[0, 1, 2]]),
        lm68=torch.arange(68),  # lm68_upstream = lm68 + 1 = vertices 1..68
        ncc=torch.zeros(n, 3, dtype=D),
        eye_faces=torch.zeros(0, dtype=torch.long),
    )


def test_torso_keypoints_hand_values():
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(68, 3, generator=g, dtype=D) - 0.5) * torch.tensor([1.0, 1.0, 0.4], dtype=D)
    fm = tiny_face_model(pts)
    zero = torch.zeros(1, 3, dtype=D)
    id, exp = torch.zeros(1, 80, dtype=D), torch.zeros(1, 64, dtype=D)
    kp = torso_keypoints(fm, Coefficients(id, exp, zero, zero))[0]
    # identity pose: camera z = 10 - z; u = 1015 x / z' + 112; kp_x = (u / 224) * 2 - 1
    zc = 10 - pts[:, 2]
    torch.testing.assert_close(kp[:, 0], 1015 * pts[:, 0] / (112 * zc))
    torch.testing.assert_close(kp[:, 1], -1015 * pts[:, 1] / (112 * zc))  # image y points down
    assert (kp[:, 2] == 0).all()
    # pure translation in x shifts every keypoint by 1015 tx / (112 z')
    t = torch.tensor([[0.05, 0.0, 0.0]], dtype=D)
    moved = torso_keypoints(fm, Coefficients(id, exp, zero, t))[0]
    torch.testing.assert_close(moved[:, 0] - kp[:, 0], 1015 * 0.05 / (112 * zc))
    # pure yaw: x' = x cos a + z sin a (row-vector points @ R with R = Ry^T), z' = -x sin a + z cos a
    a = 0.3
    yaw = torso_keypoints(fm, Coefficients(id, exp, torch.tensor([[0.0, a, 0.0]], dtype=D), zero))[0]
    x2 = pts[:, 0] * math.cos(a) + pts[:, 2] * math.sin(a)
    z2 = -pts[:, 0] * math.sin(a) + pts[:, 2] * math.cos(a)
    torch.testing.assert_close(yaw[:, 0], 1015 * x2 / (112 * (10 - z2)))
    lm = landmarks_2d(fm, Coefficients(id, exp, zero, zero))[0]
    torch.testing.assert_close(lm, (kp[:, :2] + 1) / 2)


def test_keypoint_clamp_and_subsets():
    pts = torch.zeros(68, 3, dtype=D)
    pts[5, 0] = 3.0  # far outside the frame
    fm = tiny_face_model(pts)
    args = (torch.zeros(80, dtype=D), torch.zeros(64, dtype=D), torch.zeros(3, dtype=D), torch.zeros(3, dtype=D))
    assert torso_keypoints(fm, Coefficients(*args))[5, 0] == 1.0
    assert torso_keypoints(fm, Coefficients(*args), clamp=False)[5, 0] > 1.0
    kp = torch.arange(68 * 3.0).view(1, 68, 3)
    assert select_torso_keypoints(kp)[0, :, 0].tolist() == [3.0 * i for i in (0, 8, 16, 27)]
    assert select_torso_keypoints(kp, 9).shape == (1, 9, 3) and TORSO_KP_INDEX[9][-1] == 33
    with pytest.raises(InputError):
        select_torso_keypoints(kp, 5)


def test_keypoint_smoothing_symmetric_padding():
    x = torch.arange(10, dtype=D).view(10, 1, 1).expand(10, 68, 2).contiguous()
    sm = smooth_keypoints(x)
    # padded start [2, 1, 0 | 0, 1, 2, ...]: out[0] = (2 + 1 + 0 + 0 + 1 + 2 + 3) / 7
    assert math.isclose(float(sm[0, 0, 0]), 9 / 7)
    assert math.isclose(float(sm[9, 0, 0]), (6 + 7 + 8 + 9 + 9 + 8 + 7) / 7)
    torch.testing.assert_close(sm[3:7], x[3:7])  # a box filter keeps a linear ramp inside
    # literally upstream's construction: flip-pad then conv1d with 1/7 weights
    y = torch.randn(12, 136, dtype=D)
    padded = torch.cat([y[:3].flip(0), y, y[-3:].flip(0)])
    want = torch.nn.functional.conv1d(padded.T.unsqueeze(1), torch.full((1, 1, 7), 1 / 7, dtype=D)).squeeze(1).T
    torch.testing.assert_close(smooth_keypoints(y.view(12, 68, 2)).view(12, 136), want)
    assert smooth_keypoints(torch.ones(2, 68, 2)).shape == (2, 68, 2)  # shorter than the window
    np.testing.assert_allclose(smooth_keypoints(torch.ones(2, 68, 2)).numpy(), 1.0)
