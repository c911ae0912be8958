"""EG3D camera from BFM pose, camera smoothing and driving-pose sequences (architecture §1.5).

Mirrors upstream ``data_gen/eg3d/convert_to_eg3d_convention.py``
(``get_eg3d_convention_camera_pose_intrinsic``) and ``inference/infer_utils.py``
(``smooth_camera_sequence``, ``mirror_index``) plus the pose handling of
``inference/real3d_infer.py`` / ``mimictalk_infer.py``:

* R = (Rz Ry Rx)^T from the BFM euler angles; t_z -= 10; camera centre c = -R t; c *= 0.27;
  c += (0, 0.006, 0.161); c2w = [[R diag(1, -1, -1), c], [0, 0, 0, 1]]. The renderer gets this
  ``c2w`` (not the radius-2.7 ``convention_c2w`` the same upstream function also returns).
* intrinsics normalised by the image size: fx = fy = 2985.29 / 700, cx = cy = 0.5.
* the 25-d camera = c2w (16, row-major) followed by K (9, row-major).
* smoothing over a window of 7 frames clipped at the sequence ends: translation = window mean,
  rotation = chordal L2 mean (what ``scipy.spatial.transform.Rotation.mean`` computes: the rotation
  closest in Frobenius norm to the mean matrix, i.e. the SVD projection of the mean onto SO(3)).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import InputError
from .coeffs import HeadPose
from .model import CAMERA_DISTANCE, euler_to_rotation

CAMERA_SCALE = 0.27  # "normalize camera radius"
CAMERA_OFFSET = (0.0, 0.006, 0.161)  # "additional offset used in submission"
EG3D_FOCAL = 2985.29 / 700  # = 1015 * 1024 / 224 * (300 / 466.285) / 700, normalised
EG3D_CENTER = 0.5
AXIS_FLIP = (1.0, -1.0, -1.0)  # c2w rotation = R @ diag(1, -1, -1)
SMOOTH_WINDOW = 7  # camera_smo_ksize / torso_smo_ksize


def _check_pose(pose: HeadPose, name: str) -> None:
    euler, trans = pose.euler, pose.trans
    if euler.dim() != 2 or euler.shape[-1] != 3 or trans.shape != euler.shape:
        raise InputError(
            f"{name}: expected euler and trans of shape [T, 3], got {list(euler.shape)} and {list(trans.shape)}"
        )


def eg3d_camera(pose: HeadPose) -> torch.Tensor:
    """BFM pose (euler [T, 3] radians, trans [T, 3]) -> EG3D camera [T, 25] (c2w 16 + K 9).

    Computed in the inputs' floating dtype (at least float32)."""
    _check_pose(pose, "eg3d_camera")
    dtype = torch.promote_types(pose.euler.dtype, torch.float32)
    euler, trans = pose.euler.to(dtype), pose.trans.to(dtype)
    rot = euler_to_rotation(euler)  # [T, 3, 3]
    t = trans - torch.tensor([0.0, 0.0, CAMERA_DISTANCE], dtype=dtype, device=trans.device)
    centre = -(rot @ t.unsqueeze(-1)).squeeze(-1)  # camera centre c = -R t
    centre = centre * CAMERA_SCALE + torch.tensor(CAMERA_OFFSET, dtype=dtype, device=trans.device)
    c2w = torch.zeros(euler.shape[0], 4, 4, dtype=dtype, device=euler.device)
    c2w[:, :3, :3] = rot * torch.tensor(AXIS_FLIP, dtype=dtype, device=euler.device)  # R @ diag(flip)
    c2w[:, :3, 3] = centre
    c2w[:, 3, 3] = 1
    k = torch.tensor(
        [[EG3D_FOCAL, 0, EG3D_CENTER], [0, EG3D_FOCAL, EG3D_CENTER], [0, 0, 1]], dtype=dtype, device=euler.device
    )
    return torch.cat([c2w.reshape(-1, 16), k.reshape(1, 9).expand(euler.shape[0], 9)], dim=1)


def _window_sums(x: torch.Tensor, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of x [T, ...] over the windows [max(0, i-half), min(T, i+half+1)) and their sizes."""
    n = x.shape[0]
    csum = torch.cat([torch.zeros_like(x[:1]), x.cumsum(0)])
    i = torch.arange(n, device=x.device)
    lo, hi = (i - half).clamp(min=0), (i + half + 1).clamp(max=n)
    return csum[hi] - csum[lo], (hi - lo).to(x.dtype)


def project_to_rotation(m: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (Frobenius norm) to each matrix m [..., 3, 3]: U diag(1, 1, det(U V^T)) V^T."""
    u, _, vh = torch.linalg.svd(m)
    d = torch.linalg.det(u @ vh)
    fix = torch.ones_like(u[..., 0, :])
    fix[..., 2] = d
    return (u * fix.unsqueeze(-2)) @ vh


def smooth_camera(camera: torch.Tensor, kernel_size: int = SMOOTH_WINDOW) -> torch.Tensor:
    """Smooth the c2w part of cameras [T, 25] (or [T, 16]) over ``kernel_size`` frames (clipped at
    the ends): window-mean translation and chordal-mean rotation; intrinsics untouched."""
    if camera.dim() != 2 or camera.shape[1] not in (16, 25):
        raise InputError(f"smooth_camera: expected cameras [T, 25] or [T, 16], got {list(camera.shape)}")
    half = kernel_size // 2
    pose = camera[:, :16].reshape(-1, 4, 4)
    trans_sum, count = _window_sums(pose[:, :3, 3], half)
    rot_sum, _ = _window_sums(pose[:, :3, :3], half)
    out = camera.clone()
    smoothed = pose.clone()
    smoothed[:, :3, 3] = trans_sum / count.unsqueeze(-1)
    smoothed[:, :3, :3] = project_to_rotation(rot_sum)  # the scale of the sum does not change it
    out[:, :16] = smoothed.reshape(-1, 16)
    return out


def mirror_indices(n_frames: int, n_poses: int, device=None) -> torch.Tensor:
    """Ping-pong indexing of a pose sequence of ``n_poses`` for ``n_frames`` frames:
    0..L-1, L-1..0, 0..L-1, ... (each end repeated, as upstream ``mirror_index``)."""
    if n_poses < 1:
        raise InputError(f"mirror_indices: the pose sequence is empty (n_poses={n_poses})")
    i = torch.arange(n_frames, device=device)
    turn, res = i // n_poses, i % n_poses
    return torch.where(turn % 2 == 0, res, n_poses - 1 - res)


def driving_pose(
    pose: HeadPose,
    n_frames: int,
    *,
    source: Optional[HeadPose] = None,
    map_to_init_pose: bool = True,
    freeze_z: bool = True,
) -> HeadPose:
    """Upstream's driving-pose preparation (mimictalk_infer.py ``prepare_batch_from_inp``):
    ping-pong the pose sequence to ``n_frames``, freeze z-translation to frame 0, and with
    ``map_to_init_pose`` add the constant offset that moves frame 0 onto the ``source`` pose
    (one frame: euler, trans [1, 3] or [3])."""
    _check_pose(pose, "driving_pose")
    idx = mirror_indices(n_frames, len(pose), device=pose.euler.device)
    euler, trans = pose.euler[idx], pose.trans[idx].clone()
    if freeze_z:
        trans[:, 2] = trans[0, 2]
    if map_to_init_pose:
        if source is None:
            raise InputError("driving_pose: map_to_init_pose needs the source pose")
        euler = euler + (source.euler.reshape(1, 3).to(euler) - euler[:1])
        trans = trans + (source.trans.reshape(1, 3).to(trans) - trans[:1])
    return HeadPose(euler, trans)


def camera_sequence(pose: HeadPose, kernel_size: int = SMOOTH_WINDOW) -> torch.Tensor:
    """Smoothed 25-d cameras for a pose sequence (euler, trans [T, 3]) -> [T, 25] (float32 maths
    promoted to the input dtype)."""
    return smooth_camera(eg3d_camera(pose), kernel_size)
