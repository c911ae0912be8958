"""Inpainted torso reference: the frame with the head removed and the neck/shoulder line extended
upward, used as the torso-warp source (always frame 0 in training and inference).

Upstream (MimicTalk ``data_gen/utils/process_video/extract_segment_imgs.py``,
``inpaint_torso_job``), per image column:

1. Head pixels (classes 1, 3, 5) are cleared to black.
2. Clothes (class 4): where the topmost clothes pixel has head directly above it, its colour is
   copied upward over 9 rows (itself included), the n-th row darkened by 0.98^n.
3. Neck (class 2, first dilated by 3 px up and down): where the topmost pixel has head directly
   above it, the source pixel is pushed down by min(count - 1, 4) rows (count = neck pixels in the
   column), and its colour copied upward over 53 rows with the same darkening; these neck rows
   are then replaced by a 5x5 Gaussian blur of the image (to hide vertical streaks).
4. Everything outside neck | clothes | painted rows is black.

Two upstream details kept on purpose: darkened colours are truncated to integers (numpy's
float -> uint8 cast), and the blur is ``cv2.GaussianBlur(img, (5, 5), cv2.BORDER_DEFAULT)``,
which passes BORDER_DEFAULT (= 4) as *sigma*: a 5x5 kernel with sigma 4, reflect-101 border.
Two upstream accidents are not kept: rows above the image top wrap around to the bottom in
numpy, and a column whose topmost pixel is in row 0 looks at the last row for "head above";
here such rows/columns are simply skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .segmentation import BODY_SKIN, CLOTHES, HEAD_CLASSES, class_mask

TORSO_EXTEND_ROWS = 8 + 1
NECK_PUSH_DOWN = 4
NECK_EXTEND_ROWS = 48 + NECK_PUSH_DOWN + 1
NECK_DILATION = 3
"""Vertical dilation (px each way) of the neck mask: scipy binary_dilation, 3x1 structure, 3 iterations."""
DARKEN = 0.98
BLUR_KSIZE = 5
BLUR_SIGMA = 4.0  # cv2.BORDER_DEFAULT passed as sigmaX upstream


def _top_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column of ``[N, H, W]`` bool: (topmost True row, any True, count of True)."""
    count = mask.sum(1)  # [N, W]
    top = mask.to(torch.uint8).argmax(1)  # first maximum = topmost True row
    return top, count > 0, count


def _paint_up(
    img: torch.Tensor, src: torch.Tensor, start: torch.Tensor, valid: torch.Tensor, rows: int
) -> torch.Tensor:
    """Copy ``src[start, col]`` upward over ``rows`` rows with 0.98^n darkening, in place on
    ``img`` ``[N, H, W, 3]`` (uint8); returns the bool mask of painted pixels ``[N, H, W]``."""
    n_img, h, w, _ = img.shape
    n_idx, col = torch.nonzero(valid, as_tuple=True)  # painted columns
    r0 = start[n_idx, col]
    colour = src[n_idx, r0, col].double()  # [M, 3]
    offs = torch.arange(rows, device=img.device)
    r = r0[None] - offs[:, None]  # [rows, M]
    shade = colour[None] * (DARKEN ** offs.double())[:, None, None]  # [rows, M, 3]
    keep = r >= 0
    nn_, cc, rr = n_idx[None].expand_as(r)[keep], col[None].expand_as(r)[keep], r[keep]
    img[nn_, rr, cc] = shade[keep].floor().to(img.dtype)
    painted = torch.zeros(n_img, h, w, dtype=torch.bool, device=img.device)
    painted[nn_, rr, cc] = True
    return painted


def _gaussian_blur(img: torch.Tensor) -> torch.Tensor:
    """5x5, sigma 4, reflect-101 border, float result. ``[N, H, W, 3]`` -> same shape."""
    x = torch.arange(BLUR_KSIZE, device=img.device, dtype=torch.float64) - BLUR_KSIZE // 2
    k1 = torch.exp(-(x**2) / (2 * BLUR_SIGMA**2))
    k1 = (k1 / k1.sum()).float()
    k2 = (k1[:, None] * k1[None, :])[None, None].repeat(3, 1, 1, 1)  # [3, 1, 5, 5] depthwise
    t = img.permute(0, 3, 1, 2).float()
    p = BLUR_KSIZE // 2
    t = F.pad(t, (p, p, p, p), mode="reflect")  # torch "reflect" == OpenCV BORDER_REFLECT_101
    return F.conv2d(t, k2, groups=3).permute(0, 2, 3, 1)


def inpaint_torso(frames: torch.Tensor, segmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torso reference images. ``frames`` uint8 ``[N, H, W, 3]``, ``segmaps`` uint8 ``[N, H, W]``.

    Returns ``(torso uint8 [N, H, W, 3], mask bool [N, H, W])``; pixels outside ``mask`` are 0.
    """
    head = class_mask(segmaps, HEAD_CLASSES)
    neck = segmaps == BODY_SKIN
    torso = segmaps == CLOTHES
    img = frames * (~head)[..., None].to(frames.dtype)

    def head_above(top: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        above = torch.gather(head, 1, (top - 1).clamp(min=0)[:, None]).squeeze(1)  # [N, W]
        return has & (top >= 1) & above

    # clothes: topmost pixel of each column extended upward
    top, has, _ = _top_rows(torso)
    torso_painted = _paint_up(img, frames, top, head_above(top, has), TORSO_EXTEND_ROWS)

    # neck: dilate vertically, push the source pixel down, extend upward, then blur
    k = 2 * NECK_DILATION + 1
    neck_d = F.max_pool2d(neck[:, None].float(), (k, 1), stride=1, padding=(NECK_DILATION, 0))[:, 0] > 0
    top, has, count = _top_rows(neck_d)
    valid = head_above(top, has)
    start = top + (count - 1).clamp(max=NECK_PUSH_DOWN)
    neck_painted = _paint_up(img, frames, start, valid, NECK_EXTEND_ROWS)
    blurred = _gaussian_blur(img).round().clamp(0, 255).to(img.dtype)
    img = torch.where(neck_painted[..., None], blurred, img)

    mask = neck_d | torso | neck_painted | torso_painted
    return img * mask[..., None].to(img.dtype), mask
