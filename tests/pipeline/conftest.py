"""Fixtures for the pipeline tests: the synthetic face model, a tiny renderer and a small prepared
identity built directly from known coefficients (no MediaPipe, no fitting)."""

from __future__ import annotations

import math

import pytest
import torch

from mimictalk_lib.face import Coefficients, load_face_model
from mimictalk_lib.face.camera import camera_sequence
from mimictalk_lib.face.keypoints import landmarks_2d, torso_keypoints
from mimictalk_lib.identity import Identity
from tests.fixtures.synthetic_bfm import write_synthetic_face_model
from tests.fixtures.synthetic_identity import person_segmap
from tests.fixtures.tiny_renderer import random_renderer, smooth_image

IDENTITY_SIZE = 64  # = the tiny renderer's SECC / image side


@pytest.fixture(scope="session")
def face_model(tmp_path_factory):
    return load_face_model(write_synthetic_face_model(tmp_path_factory.mktemp("bfm")))


@pytest.fixture(scope="session")
def renderer():
    return random_renderer("mimictalk", seed=0)


def make_identity(face_model, frames: int = 6, *, size: int = IDENTITY_SIZE, seed: int = 0, kind: str = "clip") -> Identity:
    """A prepared identity with known coefficients: smooth head motion, a head/neck/clothes
    segmentation, random smooth frames, plate and torso reference."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float32)[:, None] / 25
    id_ = torch.randn(1, 80, generator=g) * 0.3
    exp = 0.3 * torch.sin(t * 7 + torch.rand(1, 64, generator=g) * 6)
    euler = torch.cat([0.1 * torch.sin(3 * t), 0.15 * torch.sin(2 * t + 1), 0.03 * torch.cos(t)], 1)
    trans = torch.cat([0.1 * torch.sin(t), -0.05 + 0.05 * torch.cos(t), 0.2 + 0.1 * torch.sin(t)], 1)
    with torch.no_grad():
        coeffs = Coefficients(id_, exp, euler, trans).per_frame()
        kps = torso_keypoints(face_model, coeffs, clamp=False)
        lm = landmarks_2d(face_model, coeffs, which="mp468") * size
    seg = person_segmap(size, size, head_centre=(size / 2, size * 0.4), head_axes=(size * 0.22, size * 0.28),
                        neck_width=size * 0.2, shoulder_y=size * 0.8)
    imgs = ((smooth_image(size, 3, g) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0)
    frames_u8 = torch.stack([imgs.roll(i, dims=1) for i in range(frames)])
    plate = ((smooth_image(size, 3, g) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0)
    landmarks = torch.zeros(frames, 478, 3)
    landmarks[:, :468, :2] = lm
    return Identity(
        frames=frames_u8, segmaps=seg.expand(frames, -1, -1).clone(), landmarks=landmarks, id=id_, exp=exp,
        euler=euler, trans=trans, cameras=camera_sequence(coeffs.pose).float(), keypoints=kps,
        lip_rects=torch.zeros(frames, 4, dtype=torch.long), plate=plate, torso_ref=frames_u8[0].clone(),
        torso_ref_mask=seg != 0, meta={"kind": kind, "source": "synthetic"},
    )


@pytest.fixture(scope="session")
def identity(face_model):
    return make_identity(face_model)


def motion(frames: int, seed: int = 1, scale: float = 0.5) -> torch.Tensor:
    """Smooth expression motion [frames, 64] with a visibly moving mouth."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    return scale * torch.sin(t * 0.7 + torch.rand(1, 64, generator=g) * 2 * math.pi)
