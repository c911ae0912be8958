"""SD-Hybrid adaptation losses and their weights (MimicTalk ``train_mimictalk_on_a_video.py``,
architecture reference §3.4).

Upstream's "mse" losses are L1 means. LPIPS is AlexNet v0.1 on images in [-1, 1]. Losses without
a gradient path in the adaptation setting are not computed: ``secc_reg_loss`` (it compares two
SECC renderings, no network involved) and the torso model's occlusion regularisers (the torso
model is frozen); upstream lists them but drops them from the total for that reason. The blink
regulariser only has a gradient through the motion adapter's LoRA (``secc2plane``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .lpips import LPIPS, MIN_SIZE

LOSS_WEIGHTS = {
    "mse_loss": 1.0,  # L1, 512² output vs target
    "head_mse_loss": 0.2,  # L1, raw 128² head render vs head image resized to 128²
    "lpips_loss": 0.5,
    "head_lpips_loss": 0.1,
    "lip_mse_loss": 1.0,  # L1 on the lip crop (summed over the batch, as upstream)
    "lip_lpips_loss": 1.0,
    "density_weight_l2_loss": 0.01,  # alpha -> 0 off the head, -> 1 on it
    "density_weight_entropy_loss": 0.001,  # binary entropy of alpha
    "blink_reg_loss": 0.003,  # half-blink planes = mean of the two neighbouring blinks
}
"""Upstream loss weights; ``triplane_reg_loss`` depends on the clip length (see below)."""

ALPHA_CLAMP = 1e-5


def triplane_reg_weight(num_frames: int) -> float:
    """Weight of the tri-grid L1 regulariser: 1.0 for <= 5 frames, 0.1 for <= 250, else 0."""
    if num_frames <= 5:
        return 1.0
    if num_frames <= 250:
        return 0.1
    return 0.0


def resize_antialias(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased, align_corners=False (upstream's head-image resize to 128²)."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def density_losses(alpha: torch.Tensor, head: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """alpha [B, 1, r, r] (accumulated opacity), head bool [B, 1, r, r] -> (L2, entropy).

    L2 = mean(alpha² off the head) + mean((alpha - 1)² on the head), a term skipped when its
    region is empty (upstream would produce NaN); entropy = mean binary entropy (bits).
    """
    a = alpha.float().clamp(ALPHA_CLAMP, 1 - ALPHA_CLAMP)
    entropy = (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a)).mean()
    terms = [(a[~head] - 0).square().mean() if (~head).any() else None, (a[head] - 1).square().mean() if head.any() else None]
    terms = [t for t in terms if t is not None]
    return (sum(terms) if terms else None), entropy


def lip_losses(
    pred: torch.Tensor, target: torch.Tensor, rects: torch.Tensor, lpips: Optional[LPIPS]
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """L1 and LPIPS on each sample's lip crop, summed over the batch (upstream).

    pred, target [B, 3, S, S]; rects [B, 4] = (xmin, xmax, ymin, ymax) in pixels of the S² frame
    (the identity's ``lip_rects``, upstream ``get_lip_rect``). A crop smaller than LPIPS' minimum
    input gets only the L1 term, as upstream's failing LPIPS call is skipped.
    """
    l1 = lp = None
    for i in range(pred.shape[0]):
        x0, x1, y0, y1 = (int(v) for v in rects[i])
        if x1 <= x0 or y1 <= y0:
            continue
        p, t = pred[i : i + 1, :, y0:y1, x0:x1], target[i : i + 1, :, y0:y1, x0:x1]
        term = (p - t).abs().mean()
        l1 = term if l1 is None else l1 + term
        if lpips is not None and min(p.shape[-2:]) >= MIN_SIZE:
            term = lpips(p, t).mean()
            lp = term if lp is None else lp + term
    return l1, lp


def blink_amounts(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample p1 ~ U[0, 0.5], p3 ~ U[0.5, 1], p2 = (p1 + p3) / 2 (upstream blink regulariser)."""
    p1 = torch.rand(batch, generator=generator) * 0.5
    p3 = 0.5 + torch.rand(batch, generator=generator) * 0.5
    return p1, (p1 + p3) / 2, p3


def total_loss(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum over the losses that carry a gradient (upstream's rule)."""
    terms = [weights[k] * v for k, v in losses.items() if v.requires_grad and weights.get(k, 0.0) != 0.0]
    if not terms:
        raise RuntimeError("no loss term has a gradient: nothing is trainable")
    return sum(terms)
