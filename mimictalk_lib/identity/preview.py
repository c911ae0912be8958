"""A compact contact sheet of a prepared identity, for the node's preview.

Top row: up to four frames spread over the clip with the head mask tinted green, the MediaPipe
landmarks as red dots and the lip crop as a yellow box. Bottom row: the background plate, the
inpainted torso reference, the head image and the "com" image (background replaced) of frame 0.
Under them, for identities that recorded it, the 3DMM fit quality: a band green / amber / red for a
good / poor / refused fit (``fit3dmm.WARN_FIT_ERROR`` / ``MAX_FIT_ERROR``) whose bar is the mean
landmark error as a share of the refusal limit, with the numbers written on it (Pillow, which
ComfyUI ships; without it the band and bar alone).
"""

from __future__ import annotations

import numpy as np
import torch

from .fit3dmm import MAX_FIT_ERROR, WARN_FIT_ERROR
from .frames import resize_uint8
from .identity import Identity

TILE = 256
HEAD_TINT = torch.tensor([0.0, 255.0, 0.0])
TINT_ALPHA = 0.3
DOT = torch.tensor([255, 40, 40], dtype=torch.uint8)
BOX = torch.tensor([255, 220, 0], dtype=torch.uint8)
BAND_COLOURS = {"good": (200, 235, 200), "poor": (250, 220, 150), "bad": (245, 170, 170)}
BAR = torch.tensor([60, 60, 60], dtype=torch.uint8)


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] (antialiased)."""
    return resize_uint8(img[None], size)[0]


def _annotated(identity: Identity, i: int, size: int) -> torch.Tensor:
    frame = identity.frames[i].float()
    head = identity.head_masks([i])[0, ..., None]
    frame = torch.where(head, frame * (1 - TINT_ALPHA) + HEAD_TINT * TINT_ALPHA, frame)
    tile = _resize(frame.round().to(torch.uint8), size)
    s = size / identity.size
    pts = (identity.landmarks[i, :468, :2] * s).round().long()
    for dy in (0, 1):  # 2x2 dots
        for dx in (0, 1):
            y, x = (pts[:, 1] + dy).clamp(0, size - 1), (pts[:, 0] + dx).clamp(0, size - 1)
            tile[y, x] = DOT
    x0, x1, y0, y1 = (identity.lip_rects[i].float() * s).round().long().clamp(0, size - 1).tolist()
    tile[y0, x0 : x1 + 1] = BOX
    tile[y1, x0 : x1 + 1] = BOX
    tile[y0 : y1 + 1, x0] = BOX
    tile[y0 : y1 + 1, x1] = BOX
    return tile


def contact_sheet(identity: Identity, tile: int = TILE, columns: int = 4) -> torch.Tensor:
    """float ``[1, 2 * tile, columns * tile, 3]`` in 0..1 (a ComfyUI IMAGE)."""
    t = identity.num_frames
    picks = torch.linspace(0, t - 1, min(columns, t)).round().long().unique().tolist()
    top = [_annotated(identity, i, tile) for i in picks]
    bottom = [
        _resize(identity.plate, tile),
        _resize(identity.torso_ref, tile),
        _resize(identity.head_images([0])[0], tile),
        _resize(identity.com_images([0])[0], tile),
    ][:columns]
    blank = torch.zeros(tile, tile, 3, dtype=torch.uint8)
    rows = [torch.cat(r + [blank] * (columns - len(r)), dim=1) for r in (top, bottom)]
    quality = identity.meta.get("fit_quality")
    if isinstance(quality, dict):
        rows.append(fit_band(quality, columns * tile, max(16, tile // 10)))
    return (torch.cat(rows, dim=0).float() / 255.0)[None]


def fit_band(quality: dict, width: int, height: int) -> torch.Tensor:
    """uint8 ``[height, width, 3]``: the fit-quality band of the contact sheet (see the module doc)."""
    mean = float(quality.get("mean_fraction", 0.0))
    status = "good" if mean <= WARN_FIT_ERROR else "poor" if mean <= MAX_FIT_ERROR else "bad"
    band = torch.tensor(BAND_COLOURS[status], dtype=torch.uint8).expand(height, width, 3).clone()
    bar = int(round(min(1.0, mean / MAX_FIT_ERROR) * width))
    band[-3:, :bar] = BAR
    text = (f"3DMM fit: {status}  mean {quality.get('mean_px', 0.0):.1f} px ({mean:.1%} of face)  worst "
            f"{quality.get('worst_px', 0.0):.1f} px ({float(quality.get('worst_fraction', 0.0)):.1%}, frame "
            f"{quality.get('worst_frame', 0)})")
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover - ComfyUI ships Pillow
        return band
    img = Image.fromarray(band.numpy())
    ImageDraw.Draw(img).text((4, max(0, (height - 14) // 2)), text, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(img).copy())
