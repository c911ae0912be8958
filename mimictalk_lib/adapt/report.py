"""Training report images: the loss curve Train Adapter shows next to the adapter."""

from __future__ import annotations

import math
from typing import Sequence

import torch

CURVE_HEIGHT, CURVE_WIDTH = 256, 512  # IMAGE size of the curve
CURVE_MARGIN = 16  # pixels between the plot area and the image border (the axes sit in it)
LINE_COLOUR = (0.1, 0.2, 0.6)  # dark blue on white
AXIS_GREY = 0.5
SEGMENT_SAMPLES = 64  # points drawn along each segment between two steps


def loss_curve_image(values: Sequence[float], height: int = CURVE_HEIGHT, width: int = CURVE_WIDTH) -> torch.Tensor:
    """IMAGE [1, H, W, 3] (float 0..1, CPU): the loss per step as a dark two-pixel line on white,
    log10 scale, min..max filling the plot area (one flat line for a single value; only the axes
    for none). Values that are not positive and finite are left out."""
    img = torch.ones(height, width, 3)
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if finite:
        y = torch.log10(torch.tensor(finite))
        lo, hi = float(y.min()), float(y.max())
        y = (y - lo) / (hi - lo) if hi > lo else torch.full_like(y, 0.5)
        x = torch.linspace(0, 1, len(finite)) if len(finite) > 1 else torch.full((1,), 0.5)
        if len(finite) > 1:  # densely sampled segments between the points: [n-1, k] -> [(n-1)·k]
            t = torch.linspace(0, 1, SEGMENT_SAMPLES)[None]
            x = (x[:-1, None] + (x[1:] - x[:-1])[:, None] * t).flatten()
            y = (y[:-1, None] + (y[1:] - y[:-1])[:, None] * t).flatten()
        cols = (CURVE_MARGIN + x * (width - 1 - 2 * CURVE_MARGIN)).round().long()
        rows = (height - 1 - CURVE_MARGIN - y * (height - 1 - 2 * CURVE_MARGIN)).round().long()
        for dr in (0, 1):  # a two-pixel line
            img[(rows + dr).clamp(0, height - 1), cols] = torch.tensor(LINE_COLOUR)
    img[height - 1 - CURVE_MARGIN + 2, CURVE_MARGIN:width - CURVE_MARGIN] = AXIS_GREY  # x axis
    img[CURVE_MARGIN:height - CURVE_MARGIN + 2, CURVE_MARGIN - 2] = AXIS_GREY  # y axis
    return img[None]
