"""Paste-back: a rendered ``R``² head crop goes back into the full-resolution source frame it was
cut from.

An identity remembers how its frames were cut from the source (``Identity.meta``: ``crop`` =
``[x0, y0, side]`` in source pixels, ``source_size`` = ``[H, W]``, ``crop_pad``; optionally one
box per frame under ``crop_boxes``), see :meth:`CropTransform.from_meta`. The forward cut
(``identity.frames.crop_frames``) maps the square ``[x0, x0 + side) x [y0, y0 + side)`` onto the
``R``² crop; its inverse is the affine ``crop pixel -> source pixel`` matrix of
:meth:`CropTransform.matrix` (pixel centres at integer coordinates, kornia's ``align_corners``
convention). The render is warped through it with :func:`kornia.geometry.transform.warp_affine`,
only over the part of the frame the box covers, and blended with a feathered mask
(:func:`blend_mask`): the renderer's head alpha united with the face-skin segmentation of the
source frame (so the source's own mouth never shows beside the rendered one), slightly eroded,
Gaussian-feathered (:mod:`kornia.filters`) and tapered to zero at the crop border (the crop's
padding never reaches the frame). :func:`colour_match` optionally moves the rendered region's
per-channel mean and spread onto the source's inside the mask.

Images here are float ``[n, 3, h, w]`` in 0..1 unless stated; frames in and out are uint8
``[n, H, W, 3]`` (ComfyUI / PyAV layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..errors import InputError
from ..utils import check_shape, count

COLOUR_MODES = ("none", "mean_std")
DEFAULT_FEATHER = 0.04
"""Feather width (Gaussian sigma) as a fraction of the render side: 20 px of a 512² render."""
DEFAULT_GROW = 0.06
"""How far the rendered head may reach beyond the source frame's head, fraction of the render side."""
DEFAULT_ERODE = 0.01
"""Mask erosion before feathering, fraction of the render side (keeps the blend inside the head)."""
BORDER_TAPER = 0.03
"""Width of the ramp to zero at the crop border, fraction of the render side."""


def _kornia():
    try:
        import kornia
    except ImportError as e:  # pragma: no cover - kornia is a core dependency
        from ..errors import DependencyMissingError

        raise DependencyMissingError("kornia is needed for paste-back: pip install kornia") from e
    return kornia


@dataclass(frozen=True)
class CropTransform:
    """How a ``size``² crop sits in a source frame of ``source_hw`` = (H, W): the square
    ``[x0, x0 + side) x [y0, y0 + side)`` in source pixels (it may leave the frame; the outside was
    padded by the forward cut)."""

    x0: float
    y0: float
    side: float
    size: int
    source_hw: tuple[int, int]

    def __post_init__(self):
        if not self.side > 0 or self.size < 1:
            raise InputError(f"crop transform: side {self.side} and size {self.size} must be positive")

    @classmethod
    def from_meta(cls, meta: dict, size: int, frame: int = 0) -> "CropTransform":
        """The transform of identity frame ``frame`` from an identity's ``meta`` (``crop`` or the
        per-frame ``crop_boxes``, ``source_size``); ``size`` = the render side."""
        boxes = meta.get("crop_boxes")
        box = boxes[frame] if boxes else meta.get("crop")
        hw = meta.get("source_size")
        if box is None or hw is None or len(box) != 3 or len(hw) != 2:
            raise InputError(
                "this identity does not record where its frames were cut from the source (meta 'crop' and "
                "'source_size'); prepare it again from the source video with crop='auto' to dub that video."
            )
        return cls(float(box[0]), float(box[1]), float(box[2]), int(size), (int(hw[0]), int(hw[1])))

    @property
    def scale(self) -> float:
        """Source pixels per crop pixel."""
        return self.side / self.size

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[3, 3]`` affine map crop pixel (u, v) -> source pixel (x, y), pixel centres at integers:
        ``x = x0 + (u + 0.5) * scale - 0.5``."""
        s = self.scale
        return torch.tensor(
            [[s, 0.0, self.x0 + 0.5 * s - 0.5], [0.0, s, self.y0 + 0.5 * s - 0.5], [0.0, 0.0, 1.0]], dtype=dtype
        )

    def region(self) -> Optional[tuple[int, int, int, int]]:
        """Integer source-pixel bounds ``(x0, y0, x1, y1)`` (exclusive ends) of the box inside the
        frame, or None when the box misses the frame."""
        h, w = self.source_hw
        x0, y0 = max(0, int(self.x0 // 1)), max(0, int(self.y0 // 1))
        x1 = min(w, int(-(-(self.x0 + self.side) // 1)))
        y1 = min(h, int(-(-(self.y0 + self.side) // 1)))
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _batched(m: torch.Tensor, n: int, device) -> torch.Tensor:
    return m[:2].to(device).unsqueeze(0).expand(n, 2, 3)


def _shift(m: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    t = torch.eye(3, dtype=m.dtype)
    t[0, 2], t[1, 2] = dx, dy
    return t @ m


def to_crop(images: torch.Tensor, tf: CropTransform, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Forward cut with the same geometry: float ``[n, C, h, w]`` source pixels whose top-left
    pixel is source pixel ``origin`` = (x, y) (the whole frame by default, or a region of it) ->
    ``[n, C, R, R]`` (bilinear, edge padding outside; Gaussian-prefiltered when shrinking)."""
    kornia = _kornia()
    if images.dim() != 4:
        raise InputError(f"to_crop: images must be [n, C, h, w], got {list(images.shape)}")
    if tf.scale > 1.0:
        images = _prefilter(images, tf.scale)
    inv = torch.linalg.inv(_shift(tf.matrix(torch.float64), -origin[0], -origin[1])).to(images.dtype)
    return kornia.geometry.transform.warp_affine(
        images, _batched(inv, images.shape[0], images.device), (tf.size, tf.size), mode="bilinear",
        padding_mode="border", align_corners=True,
    )


def _prefilter(images: torch.Tensor, shrink: float) -> torch.Tensor:
    """Gaussian low-pass before shrinking by ``shrink`` (> 1) so the warp does not alias."""
    sigma = 0.5 * (shrink - 1.0) + 1e-6
    k = 2 * int(3 * sigma + 0.5) + 1
    if k < 3:
        return images
    return _kornia().filters.gaussian_blur2d(images, (k, k), (sigma, sigma), border_type="replicate")


def warp_to_source(images: torch.Tensor, tf: CropTransform, region: tuple[int, int, int, int]) -> torch.Tensor:
    """The inverse transform: ``[n, C, R, R]`` crop-space images -> ``[n, C, y1-y0, x1-x0]``, the
    ``region`` of the source frame the crop covers (zeros outside the crop square)."""
    kornia = _kornia()
    check_shape(images, (None, None, tf.size, tf.size), "paste-back images")
    x0, y0, x1, y1 = region
    if tf.scale < 1.0:  # shrinking the render into a small face: low-pass first
        images = _prefilter(images, 1.0 / tf.scale)
    m = _shift(tf.matrix(torch.float64), -x0, -y0).to(images.dtype)
    return kornia.geometry.transform.warp_affine(
        images, _batched(m, images.shape[0], images.device), (y1 - y0, x1 - x0), mode="bilinear",
        padding_mode="zeros", align_corners=True,
    )


def border_taper(size: int, width: float, device=None) -> torch.Tensor:
    """``[size, size]`` weight rising linearly from 0 at the crop's outer pixel to 1 ``width``
    pixels inside."""
    r = torch.arange(size, dtype=torch.float32, device=device)
    d = torch.minimum(r, size - 1 - r)
    ramp = (d / max(width, 1e-6)).clamp(0, 1)
    return ramp[:, None] * ramp[None, :]


def blend_mask(
    alpha: torch.Tensor,
    face: Optional[torch.Tensor] = None,
    *,
    limit: Optional[torch.Tensor] = None,
    grow: float = DEFAULT_GROW,
    feather: float = DEFAULT_FEATHER,
    erode: float = DEFAULT_ERODE,
    taper: float = BORDER_TAPER,
) -> torch.Tensor:
    """Feathered paste-back mask ``[n, 1, R, R]`` in 0..1 from the renderer's head alpha
    ``[n, R, R]`` (0..1), kept inside ``limit`` (bool ``[n, R, R]``: the source frame's head,
    grown by ``grow``; the render's own torso and background never replace the video's), united
    with ``face`` (bool/0..1 ``[n, R, R]``: the source frame's face skin, so the source's own
    mouth never shows beside the rendered one), eroded by ``erode`` and Gaussian-feathered by
    ``feather`` (``grow`` / ``erode`` / ``feather``: fractions of R), then multiplied by a
    ``taper``-wide ramp to zero at the crop border."""
    kornia = _kornia()
    if alpha.dim() != 3 or alpha.shape[1] != alpha.shape[2]:
        raise InputError(f"blend_mask: alpha must be [n, R, R], got {list(alpha.shape)}")
    size = alpha.shape[-1]
    m = alpha.float().clamp(0, 1)
    if limit is not None:
        check_shape(limit, tuple(alpha.shape), "blend_mask limit mask")
        r = int(round(grow * size))
        region = limit.to(m.device).float()[:, None]
        if r > 0:  # dilation (a max filter)
            region = torch.nn.functional.max_pool2d(region, 2 * r + 1, stride=1, padding=r)
        m = torch.minimum(m, region[:, 0])
    if face is not None:
        check_shape(face, tuple(alpha.shape), "blend_mask face mask")
        m = torch.maximum(m, face.to(m.device).float())
    m = m[:, None]
    r_erode = int(round(erode * size))
    if r_erode > 0:
        kernel = torch.ones(2 * r_erode + 1, 2 * r_erode + 1, device=m.device)
        m = kornia.morphology.erosion(m, kernel, border_value=0.0)
    sigma = feather * size
    if sigma > 0.3:
        k = 2 * int(3 * sigma + 0.5) + 1
        m = kornia.filters.gaussian_blur2d(m, (k, k), (sigma, sigma), border_type="constant")
    if taper > 0:
        m = m * border_taper(size, taper * size, m.device)
    return m.clamp(0, 1)


def colour_match(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, min_weight: float = 16.0,
                 stride: int = 1) -> torch.Tensor:
    """Shift and scale each channel of ``render`` [n, 3, h, w] so its mask-weighted mean and
    standard deviation equal ``target``'s (same layout); ``mask`` [n, 1, h, w]. The statistics
    are taken on every ``stride``-th pixel (large regions: 4 is plenty and 16x cheaper). Frames
    whose mask weighs less than ``min_weight`` (sampled) pixels are returned unchanged; the gain is
    limited to 0.5..2 so a flat region never explodes."""
    w = mask[..., ::stride, ::stride].float()
    r_s, t_s = render[..., ::stride, ::stride], target[..., ::stride, ::stride]
    total = w.sum(dim=(2, 3), keepdim=True)  # [n, 1, 1, 1]
    ok = total > min_weight
    total = total.clamp(min=1e-6)

    def stats(x):
        mean = (x * w).sum(dim=(2, 3), keepdim=True) / total
        var = (((x - mean) ** 2) * w).sum(dim=(2, 3), keepdim=True) / total
        return mean, var.clamp(min=1e-8).sqrt()

    m_r, s_r = stats(r_s)
    m_t, s_t = stats(t_s)
    gain = torch.where(ok, (s_t / s_r).clamp(0.5, 2.0), torch.ones_like(s_r))
    offset = torch.where(ok, m_t - m_r * gain, torch.zeros_like(m_r))
    return torch.addcmul(offset, render, gain).clamp(0, 1) if bool(ok.any()) else render


def paste_back(
    frames: torch.Tensor,
    renders: torch.Tensor,
    masks: torch.Tensor,
    tf: CropTransform | Sequence[CropTransform],
    *,
    colour: str = "none",
) -> torch.Tensor:
    """Blend ``renders`` (float [n, 3, R, R] 0..1 or uint8 [n, R, R, 3]) into uint8 source
    ``frames`` [n, H, W, 3] through the inverse crop transform(s), weighted by ``masks``
    [n, 1, R, R] (see :func:`blend_mask`). ``colour``: 'none' or 'mean_std' (:func:`colour_match`
    against the source frame under the mask). Returns new uint8 frames; pixels outside the crop's
    region are the source's, byte for byte."""
    if colour not in COLOUR_MODES:
        raise InputError(f"colour must be one of {COLOUR_MODES}, got {colour!r}")
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise InputError(f"paste_back: frames must be uint8 [n, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    n, h, w, _ = frames.shape
    if renders.dtype == torch.uint8:
        renders = renders.permute(0, 3, 1, 2).float() / 255.0
    tfs = list(tf) if isinstance(tf, (list, tuple)) else [tf] * n
    if len(tfs) != n or renders.shape[0] != n or masks.shape[0] != n:
        raise InputError(f"paste_back: {count(n, 'frame')}, {count(renders.shape[0], 'render')}, {count(masks.shape[0], 'mask')}, "
                         f"{count(len(tfs), 'transform')}")
    out = frames.clone()
    # frames sharing a transform are warped together
    groups: dict[CropTransform, list[int]] = {}
    for i, t in enumerate(tfs):
        if t.source_hw != (h, w):
            raise InputError(f"paste_back: the crop was cut from {t.source_hw[1]}x{t.source_hw[0]} frames, these are {w}x{h}")
        groups.setdefault(t, []).append(i)
    for t, idx in groups.items():
        region = t.region()
        if region is None:
            continue
        x0, y0, x1, y1 = region
        sel = torch.tensor(idx)
        src = frames[sel, y0:y1, x0:x1].permute(0, 3, 1, 2).float() / 255.0  # [k, 3, rh, rw]
        warped = warp_to_source(torch.cat([renders[sel].float(), masks[sel].float()], 1), t, region)
        rend_s, mask_s = warped[:, :3], warped[:, 3:].clamp(0, 1)
        if colour == "mean_std":  # statistics in source space, where both images are already aligned
            rend_s = colour_match(rend_s, src, mask_s, stride=max(1, min(src.shape[-2:]) // 128))
        blended = torch.lerp(src, rend_s, mask_s).mul_(255).round_().clamp_(0, 255)
        out[sel, y0:y1, x0:x1] = blended.to(torch.uint8).permute(0, 2, 3, 1)
    return out
