"""Quality metrics of rendered talking-head frames against reference frames.

Image metrics (per frame, images float ``[N, 3, H, W]`` in [0, 1]):

* PSNR and SSIM from ``torchmetrics`` (data range 1; SSIM with its default 11-pixel Gaussian
  window), LPIPS v0.1 AlexNet from the pack's own :mod:`..adapt.lpips` (the network adaptation
  trains with; weights from the manifest's ``lpips_alex``);
* over the full frame and inside the head region: the bounding box of the reference frame's head
  mask, cropped identically from both images (a box, so the library metrics apply unchanged; a box
  smaller than a metric's window gives no value for that frame).

Landmark metrics (MediaPipe topology, ``[N, 478, 3]`` points in pixels, see
:mod:`..identity.landmarks`): landmark distance (mean Euclidean distance of corresponding points,
whole face = the 468 mesh points, mouth = the lip and mouth points), blink rate (blinks per minute
from the eye aspect ratio) and head-pose jitter (frame-to-frame acceleration of the face's position,
size and roll). These have no maintained library implementation, so they are computed here.

``torchmetrics`` is imported lazily, by its functional submodules only.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..adapt.lpips import LPIPS
from ..adapt.lpips import MIN_SIZE as LPIPS_MIN_SIZE
from ..errors import DependencyMissingError, InputError
from ..identity.landmarks import INNER_LIP_INDICES, NUM_MESH_LANDMARKS, OUTER_LIP_INDICES, WITHIN_MOUTH_INDICES

SSIM_MIN_SIZE = 11
"""Smallest side SSIM's 11-pixel Gaussian window fits in."""
IMAGE_METRICS = ("psnr", "ssim", "lpips")
HEAD_PREFIX = "head_"
MOUTH_POINTS = tuple(sorted(set(INNER_LIP_INDICES + OUTER_LIP_INDICES + WITHIN_MOUTH_INDICES)))
# eye aspect ratio points per eye (MediaPipe mesh): corner, upper lid x2, corner, lower lid x2
RIGHT_EYE_EAR = (33, 160, 158, 133, 153, 144)
LEFT_EYE_EAR = (362, 385, 387, 263, 373, 380)
EYE_CORNERS = (33, 263)  # outer corners: the roll of the line between them
BLINK_CLOSED_RATIO = 0.6
"""An eye counts as closed when its aspect ratio is below this share of the clip's median."""


def _functional():
    try:
        from torchmetrics.functional.image.psnr import peak_signal_noise_ratio
        from torchmetrics.functional.image.ssim import structural_similarity_index_measure
    except ImportError as e:
        raise DependencyMissingError(
            "torchmetrics is needed for PSNR/SSIM but is not installed: pip install \"torchmetrics>=1.4\""
        ) from e
    return peak_signal_noise_ratio, structural_similarity_index_measure


def head_boxes(masks: torch.Tensor) -> torch.Tensor:
    """bool/float masks ``[N, H, W]`` -> int64 ``[N, 4]`` boxes (x0, y0, x1, y1), end exclusive;
    an empty mask gives an empty box (0, 0, 0, 0)."""
    m = masks.bool()
    rows, cols = m.any(2), m.any(1)  # [N, H], [N, W]
    boxes = torch.zeros(m.shape[0], 4, dtype=torch.long)
    for i in range(m.shape[0]):
        r, c = torch.nonzero(rows[i]).flatten(), torch.nonzero(cols[i]).flatten()
        if r.numel() and c.numel():
            boxes[i] = torch.stack([c[0], r[0], c[-1] + 1, r[-1] + 1])
    return boxes


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 4 or pred.shape[1] != 3 or pred.shape != target.shape:
        raise InputError(f"image metrics: expected two [N, 3, H, W] batches of the same shape, got "
                         f"{list(pred.shape)} and {list(target.shape)}")


def image_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    boxes: Optional[torch.Tensor] = None,
    lpips: Optional[LPIPS] = None,
) -> dict[str, torch.Tensor]:
    """Per-frame PSNR (dB), SSIM and LPIPS of ``pred`` against ``target`` (float ``[N, 3, H, W]``
    in [0, 1]): ``{"psnr": [N], "ssim": [N], "lpips": [N]}`` plus ``head_psnr`` etc. when
    ``boxes`` (``[N, 4]``, :func:`head_boxes`) are given. Frames where a metric cannot be computed
    (LPIPS without a network or on an image under 31 px, a head box under the SSIM window) hold
    NaN. Identical frames give PSNR inf, SSIM 1 and LPIPS 0."""
    _check_pair(pred, target)
    psnr, ssim = _functional()
    pred, target = pred.float(), target.float()
    n = pred.shape[0]
    out = {
        "psnr": psnr(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": ssim(pred, target, data_range=1.0, reduction="none") if min(pred.shape[-2:]) >= SSIM_MIN_SIZE
        else torch.full((n,), math.nan),
        "lpips": _lpips(lpips, pred, target),
    }
    if boxes is not None:
        if boxes.shape != (n, 4):
            raise InputError(f"image metrics: expected boxes [N={n}, 4], got {list(boxes.shape)}")
        head = {k: torch.full((n,), math.nan) for k in IMAGE_METRICS}
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            p, t = pred[i:i + 1, :, y0:y1, x0:x1], target[i:i + 1, :, y0:y1, x0:x1]
            head["psnr"][i] = psnr(p, t, data_range=1.0)
            if min(p.shape[-2:]) >= SSIM_MIN_SIZE:
                head["ssim"][i] = ssim(p, t, data_range=1.0)
            head["lpips"][i] = _lpips(lpips, p, t)[0]
        out.update({HEAD_PREFIX + k: v for k, v in head.items()})
    return {k: v.float().cpu() for k, v in out.items()}


def _lpips(lpips: Optional[LPIPS], pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if lpips is None or min(pred.shape[-2:]) < LPIPS_MIN_SIZE:
        return torch.full((pred.shape[0],), math.nan)
    dev = lpips.shift.device
    with torch.no_grad():
        return lpips(pred.to(dev) * 2 - 1, target.to(dev) * 2 - 1).float().cpu()


# --- landmark metrics ---------------------------------------------------------------------------------


def landmark_distance(pred: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean Euclidean distance (pixels, x and y) of corresponding points per frame:
    ``{"lmd_face": [N], "lmd_mouth": [N]}``; NaN where ``valid`` (bool [N], both detected) is False."""
    d = (pred[..., :2].float() - ref[..., :2].float()).norm(dim=-1)  # [N, 478]
    face, mouth = d[:, :NUM_MESH_LANDMARKS].mean(1), d[:, list(MOUTH_POINTS)].mean(1)
    nan = torch.tensor(math.nan)
    return {"lmd_face": torch.where(valid, face, nan), "lmd_mouth": torch.where(valid, mouth, nan)}


def eye_aspect_ratio(points: torch.Tensor) -> torch.Tensor:
    """[N, 478, >=2] -> [N]: mean over both eyes of (two lid distances) / (2 x corner distance)."""
    ears = []
    for p1, p2, p3, p4, p5, p6 in (RIGHT_EYE_EAR, LEFT_EYE_EAR):
        xy = points[..., :2].float()
        vertical = (xy[:, p2] - xy[:, p6]).norm(dim=-1) + (xy[:, p3] - xy[:, p5]).norm(dim=-1)
        ears.append(vertical / (2 * (xy[:, p1] - xy[:, p4]).norm(dim=-1)).clamp(min=1e-6))
    return (ears[0] + ears[1]) / 2


def blink_rate(points: torch.Tensor, detected: torch.Tensor, fps: float) -> float:
    """Blinks per minute: closures (eye aspect ratio dropping below ``BLINK_CLOSED_RATIO`` x the
    median of the detected frames) over the clip's duration; NaN without detected frames."""
    if not bool(detected.any()):
        return math.nan
    ear = eye_aspect_ratio(points[detected])
    closed = ear < BLINK_CLOSED_RATIO * ear.median()
    onsets = int((closed[1:] & ~closed[:-1]).sum()) + int(closed[0])
    return onsets / (points.shape[0] / fps / 60.0)


def pose_jitter(points: torch.Tensor, detected: torch.Tensor) -> dict[str, float]:
    """Head-pose jitter: the RMS second difference between consecutive detected frames of the face's
    position (``jitter_position``, % of the face size), size (``jitter_scale``, %) and roll
    (``jitter_roll``, degrees). A steady or smoothly moving head scores near 0; NaN under 3 frames."""
    if int(detected.sum()) < 3:
        return {"jitter_position": math.nan, "jitter_scale": math.nan, "jitter_roll": math.nan}
    xy = points[detected][:, :NUM_MESH_LANDMARKS, :2].double()
    centre = xy.mean(1)  # [n, 2]
    size = (xy - centre[:, None]).norm(dim=-1).pow(2).mean(1).sqrt()  # RMS radius [n]
    a, b = points[detected][:, EYE_CORNERS[0], :2].double(), points[detected][:, EYE_CORNERS[1], :2].double()
    roll = torch.rad2deg(torch.atan2(b[:, 1] - a[:, 1], b[:, 0] - a[:, 0]))
    ref = size.median()

    def rms_acc(x: torch.Tensor) -> float:
        acc = (x[2:] - 2 * x[1:-1] + x[:-2]).reshape(x.shape[0] - 2, -1)
        return float(acc.pow(2).sum(1).mean().sqrt())

    return {"jitter_position": 100 * rms_acc(centre) / float(ref), "jitter_scale": 100 * rms_acc(size) / float(ref),
            "jitter_roll": rms_acc(roll)}


__all__ = ["image_metrics", "head_boxes", "landmark_distance", "blink_rate", "pose_jitter", "eye_aspect_ratio"]
