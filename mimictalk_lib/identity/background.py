"""Background plate of a clip ("knn" method), vectorised in torch.

Upstream (MimicTalk ``data_gen/utils/process_video/extract_segment_imgs.py``,
``extract_background(method='knn')``) samples every 5th frame (< 100 frames), every 20th
(< 10 000) or every ``T // 500``-th; for each sample it measures every pixel's distance to the
nearest non-background pixel (sklearn KD-tree); a pixel is "surely background" when that distance
exceeds 10 px in some sample, and takes its colour from the sample where the distance is largest.
The remaining pixels copy the nearest surely-background pixel (KD-tree again).

Both nearest-neighbour searches are done here with the jump flooding algorithm (Rong & Tan 2006)
on whole batches of masks: log2(side) passes of 3x3 offset comparisons, plus two refinement passes
at offsets 2 and 1, which makes the result exact on all but a handful of pixels (tested against
``scipy.ndimage.distance_transform_edt``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..utils import logger
from .segmentation import BACKGROUND

SURE_BACKGROUND_DISTANCE = 10.0
"""Pixels farther than this (px) from any person pixel in some sample are surely background."""

_FAR = 1.0e6  # coordinate of "no seed yet"; its squared distance dwarfs any image


def sample_stride(num_frames: int) -> int:
    """Upstream frame-selection interval for the plate."""
    if num_frames < 100:
        return 5
    if num_frames < 10000:
        return 20
    return num_frames // 500


def _jfa_steps(h: int, w: int) -> list[int]:
    k = 2 ** max(0, math.ceil(math.log2(max(h, w))) - 1)
    steps = []
    while k >= 1:
        steps.append(k)
        k //= 2
    return steps + [2, 1]  # two refinement passes


def nearest_seed(seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest seed pixel of every pixel by jump flooding.

    ``seeds``: bool ``[N, H, W]``. Returns ``(coords, dist)``: long ``[N, 2, H, W]`` (y, x) of the
    nearest seed (-1 where a mask has no seed) and float ``[N, H, W]`` Euclidean distance
    (``inf`` without seeds). The flood is done in place (a pass already sees the improvements of
    its earlier offsets), which only propagates seeds faster than the textbook two-buffer form.
    """
    n, h, w = seeds.shape
    dev = seeds.device
    yy = torch.arange(h, device=dev, dtype=torch.float32)[:, None].expand(h, w)
    xx = torch.arange(w, device=dev, dtype=torch.float32)[None, :].expand(h, w)
    far = torch.full((), _FAR, device=dev)
    by = torch.where(seeds, yy, far)  # [N, H, W] y of the best seed so far
    bx = torch.where(seeds, xx, far)
    bd = torch.where(seeds, torch.zeros((), device=dev), torch.full((), math.inf, device=dev))  # squared distance
    for s in _jfa_steps(h, w):
        for dy in (-s, 0, s):
            for dx in (-s, 0, s):
                if (dy == 0 and dx == 0) or abs(dy) >= h or abs(dx) >= w:
                    continue
                # pixel p looks at the seed stored at p + (dy, dx)
                dst = (slice(None), slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
                src = (slice(None), slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
                cy, cx = by[src], bx[src]
                ex = cx - xx[dst[1:]]
                d = torch.sub(cy, yy[dst[1:]]).square_().addcmul_(ex, ex)  # squared distance to the candidate
                better = d < bd[dst]
                bd[dst] = torch.minimum(d, bd[dst])
                by[dst] = torch.where(better, cy, by[dst])
                bx[dst] = torch.where(better, cx, bx[dst])
    has_seed = seeds.flatten(1).any(1)[:, None, None]
    dist = torch.where(has_seed, bd.sqrt(), torch.full((), math.inf, device=dev))
    coords = torch.stack([by, bx], dim=1)  # [N, 2, H, W]
    coords = torch.where(has_seed[:, None], coords, torch.full((), -1.0, device=dev)).long()
    return coords, dist


def distance_to_person(segmaps: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Distance (px) of every pixel to the nearest non-background pixel. ``[N, H, W]`` float."""
    out = [nearest_seed(segmaps[i : i + chunk] != BACKGROUND)[1] for i in range(0, segmaps.shape[0], chunk)]
    return torch.cat(out)


def background_plate(
    frames: torch.Tensor,
    segmaps: torch.Tensor,
    *,
    device: Optional[torch.device | str] = None,
    threshold: float = SURE_BACKGROUND_DISTANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip's background plate by the upstream "knn" rule.

    ``frames``: uint8 ``[T, H, W, 3]``, ``segmaps``: uint8 ``[T, H, W]``. Returns
    ``(plate uint8 [H, W, 3], sure bool [H, W])`` on the CPU, ``sure`` marking pixels seen as
    background rather than filled from a neighbour.
    """
    t, h, w, _ = frames.shape
    device = torch.device(device) if device is not None else frames.device
    stride = sample_stride(t)
    idx = torch.arange(0, t, stride) if t > stride else torch.tensor([0])
    seg = segmaps[idx].to(device)
    dist = distance_to_person(seg)  # [K, H, W]
    max_dist, best_frame = dist.max(0)  # first maximum, like numpy argmax
    sure = max_dist > threshold
    imgs = frames[idx].to(device)  # [K, H, W, 3]
    plate = torch.gather(imgs, 0, best_frame[None, :, :, None].expand(1, h, w, 3))[0]
    if not bool(sure.any()):
        bg = seg == BACKGROUND
        logger.warning(
            "background plate: the person fills the frame (no pixel is more than %.0f px from them); "
            "using the mean background colour", threshold,
        )
        colour = imgs[bg].float().mean(0) if bool(bg.any()) else torch.zeros(3, device=device)
        plate = colour.round().to(torch.uint8).expand(h, w, 3).clone()
        return plate.cpu(), sure.cpu()
    coords, _ = nearest_seed(sure[None])  # [1, 2, H, W]
    fill = plate[coords[0, 0], coords[0, 1]]  # [H, W, 3]
    plate = torch.where(sure[..., None], plate, fill)
    return plate.cpu(), sure.cpu()
