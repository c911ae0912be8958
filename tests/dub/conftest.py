"""Fixtures for the dub tests: a small source video (frames with a drawn "face" region), the
identity prepared from it (known crop, poses, segmentation; built directly, no MediaPipe), the
tiny renderer and the synthetic face model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from mimictalk_lib.identity.frames import CropBox, crop_frames, resample_indices
from tests.pipeline.conftest import face_model, make_identity, motion, renderer  # noqa: F401  (fixtures and helpers shared)

SOURCE_HW = (96, 160)  # a landscape "video", the face box off-centre
BOX = CropBox(70, 8, 72)  # 72 px box -> 64 px renders (the tiny renderer's side)
RENDER = 64


def source_frames(n: int, hw=SOURCE_HW, seed: int = 0) -> torch.Tensor:
    """uint8 [n, H, W, 3]: a smooth background that drifts by one pixel per frame, so every frame
    differs (catches a wrong source index)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w + n, dtype=torch.float32), indexing="ij")
    base = torch.stack([torch.sin(xx * f + p) for f, p in (torch.rand(3, 2, generator=g) * torch.tensor([0.2, 6.0])).tolist()], -1)
    base = ((base + 1) * 127.5).round().to(torch.uint8)
    return torch.stack([base[:, i: i + w] for i in range(n)])


def identity_for(face_model, frames: torch.Tensor, fps: float, *, dropped=(), seed: int = 0):
    """The identity prepared from ``frames`` at ``fps``: 25 fps positions, crop BOX, known poses."""
    idx = resample_indices(np.arange(frames.shape[0]) / fps)
    keep = np.array([p not in set(dropped) for p in range(len(idx))])
    ident = make_identity(face_model, frames=int(keep.sum()), size=RENDER, seed=seed)
    crops = crop_frames(frames[torch.from_numpy(idx[keep])], BOX, RENDER)
    meta = {
        "kind": "clip", "source": "synthetic", "source_size": list(frames.shape[1:3]), "crop": [BOX.x0, BOX.y0, BOX.side],
        "fps": 25.0, "variable_frame_rate": False, "frame_positions": np.nonzero(keep)[0].tolist(),
        "source_frames": idx[keep].tolist(), "dropped_frames": [int(p) for p in dropped], "interpolated_frames": [],
    }
    return replace(ident, frames=crops, meta=meta)
