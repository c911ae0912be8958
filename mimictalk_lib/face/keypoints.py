"""Torso keypoints: projected 68-point BFM landmarks for the face-vid2vid torso warp (§1.5).

Upstream ``Face3DHelper.reconstruct_lm2d`` (68-point mode) poses the 68 landmarks, projects them
with focal 1015 / centre 112 / camera distance 10, flips v (224 - v), divides by 224 and maps to
[-1, 1]; the renderer's torso model appends a zero z column and keeps the 4 points [0, 8, 16, 27]
(``torso_kp_num: 4``; 9 points for ``torso_kp_num: 9``). The driving keypoints are smoothed over
time with a width-7 box filter (``smooth_features_xd``) whose padding mirrors the sequence
including its end frames ([x2, x1, x0, x0, x1, ...], numpy's "symmetric" mode).

The landmark index set is ``FaceModel.lm68_upstream`` (the 1-based ``keypoints`` read as
0-based, as Face3DHelper does), because the torso model and the personalised ``src_kp`` were made
with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from .camera import SMOOTH_WINDOW
from .coeffs import Coefficients
from .model import IMAGE_SIZE, FaceModel

TORSO_KP_INDEX = {4: (0, 8, 16, 27), 9: (0, 3, 6, 8, 10, 13, 16, 27, 33)}  # facev2v_warp/model.py


def landmarks_2d(face_model: FaceModel, coeffs: Coefficients, which: str = "lm68_upstream") -> torch.Tensor:
    """Posed landmarks of ``coeffs`` (identity per frame) in normalised image coordinates: x right,
    y down, [0, 1] over the frame (``reconstruct_lm2d``): [..., K, 2]. Multiply by the frame size for
    pixels (lip crops)."""
    uv = face_model.project_landmarks(coeffs, which)
    return torch.stack([uv[..., 0], IMAGE_SIZE - uv[..., 1]], dim=-1) / IMAGE_SIZE


def torso_keypoints(face_model: FaceModel, coeffs: Coefficients, *, clamp: bool = True) -> torch.Tensor:
    """68 keypoints [..., 68, 3] in [-1, 1] with a zero z column. Upstream clamps the driving
    keypoints at inference (``clamp=True``) but not those stored as ``person_ds['src_kp']``."""
    kp = landmarks_2d(face_model, coeffs) * 2 - 1  # (x - 0.5) / 0.5
    if clamp:
        kp = kp.clamp(-1, 1)
    return torch.cat([kp, torch.zeros_like(kp[..., :1])], dim=-1)


def select_torso_keypoints(kp: torch.Tensor, num: int = 4) -> torch.Tensor:
    """The subset the torso model uses: [..., 68, C] -> [..., num, C] (num = 4 or 9)."""
    if num not in TORSO_KP_INDEX:
        raise InputError(f"torso_kp_num: expected 4 or 9, got {num}")
    return kp[..., list(TORSO_KP_INDEX[num]), :]


def smooth_keypoints(kp: torch.Tensor, kernel_size: int = SMOOTH_WINDOW) -> torch.Tensor:
    """Box-filter keypoints [T, ...] over time (width ``kernel_size``, symmetric padding)."""
    t = kp.shape[0]
    pad = (kernel_size - 1) // 2
    if t == 0 or pad == 0:
        return kp
    # symmetric mirror of the time index: -1 -> 0, -2 -> 1, ..., T -> T-1, T+1 -> T-2
    i = torch.arange(-pad, t + pad, device=kp.device)
    i = i % (2 * t)
    i = torch.where(i >= t, 2 * t - 1 - i, i)
    x = kp[i].reshape(t + 2 * pad, -1).T.unsqueeze(1)  # [C, 1, T + 2 pad]
    w = torch.full((1, 1, kernel_size), 1.0 / kernel_size, dtype=kp.dtype, device=kp.device)
    return F.conv1d(x, w).squeeze(1).T.reshape(kp.shape)
