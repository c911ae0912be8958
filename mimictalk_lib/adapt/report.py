"""Report images: the loss curve Train Adapter shows next to the adapter, the training report
(training loss and validation metrics against steps, a strip of validation frames real above
rendered) and the Evaluate plot (metrics per frame). Curves are drawn directly into IMAGE tensors;
panel titles are written with Pillow when it is installed (ComfyUI ships it), else left out."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..utils import ProgressFn, logger, report

CURVE_HEIGHT, CURVE_WIDTH = 256, 512  # IMAGE size of the curve
CURVE_MARGIN = 16  # pixels between the plot area and the image border (the axes sit in it)
LINE_COLOUR = (0.1, 0.2, 0.6)  # dark blue on white
SECOND_COLOUR = (0.85, 0.4, 0.05)  # orange: the head-region variant of a metric
AXIS_GREY = 0.5
SEGMENT_SAMPLES = 64  # points drawn along each segment between two steps
PANEL_HEIGHT, PANEL_WIDTH = 192, 384  # one panel of a report figure (two per row)

Series = tuple[Sequence[float], Sequence[float], tuple[float, float, float]]
"""(x values, y values, RGB colour) of one line."""


def plot_panel(series: Sequence[Series], *, log: bool = False, height: int = CURVE_HEIGHT, width: int = CURVE_WIDTH,
               title: str = "") -> torch.Tensor:
    """[H, W, 3] (float 0..1, CPU): each series as a two-pixel line on white, all sharing the
    x and y ranges (min..max filling the plot area; log10 y with ``log``). A lone point sits in the
    middle; points whose value is not finite (or not positive on a log scale) are left out."""
    img = torch.ones(height, width, 3)
    kept = []
    for xs, ys, colour in series:
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log)]
        if pts:
            x, y = torch.tensor(pts, dtype=torch.float64).T
            kept.append((x, torch.log10(y) if log else y, colour))
    if kept:
        xs_all, ys_all = torch.cat([k[0] for k in kept]), torch.cat([k[1] for k in kept])
        x_lo, x_hi, y_lo, y_hi = float(xs_all.min()), float(xs_all.max()), float(ys_all.min()), float(ys_all.max())
        for x, y, colour in kept:
            x = (x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else torch.full_like(x, 0.5)
            y = (y - y_lo) / (y_hi - y_lo) if y_hi > y_lo else torch.full_like(y, 0.5)
            if len(x) > 1:  # densely sampled segments between the points: [n-1, k] -> [(n-1)·k]
                t = torch.linspace(0, 1, SEGMENT_SAMPLES, dtype=x.dtype)[None]
                x = (x[:-1, None] + (x[1:] - x[:-1])[:, None] * t).flatten()
                y = (y[:-1, None] + (y[1:] - y[:-1])[:, None] * t).flatten()
            cols = (CURVE_MARGIN + x * (width - 1 - 2 * CURVE_MARGIN)).round().long()
            rows = (height - 1 - CURVE_MARGIN - y * (height - 1 - 2 * CURVE_MARGIN)).round().long()
            for dr in (0, 1):  # a two-pixel line
                img[(rows + dr).clamp(0, height - 1), cols] = torch.tensor(colour, dtype=img.dtype)
        if title:
            title = f"{title}  [{_fmt(10 ** y_lo if log else y_lo)} .. {_fmt(10 ** y_hi if log else y_hi)}]"
    elif title:
        title = f"{title}: not measured"
    img[height - 1 - CURVE_MARGIN + 2, CURVE_MARGIN:width - CURVE_MARGIN] = AXIS_GREY  # x axis
    img[CURVE_MARGIN:height - CURVE_MARGIN + 2, CURVE_MARGIN - 2] = AXIS_GREY  # y axis
    return _write(img, title, (CURVE_MARGIN, 2)) if title else img


def loss_curve_image(values: Sequence[float], height: int = CURVE_HEIGHT, width: int = CURVE_WIDTH) -> torch.Tensor:
    """IMAGE [1, H, W, 3] (float 0..1, CPU): the loss per step as a dark two-pixel line on white,
    log10 scale (:func:`plot_panel`; only the axes for no values)."""
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    return plot_panel([(range(len(finite)), finite, LINE_COLOUR)], log=True, height=height, width=width)[None]


def frame_strip(real: torch.Tensor, rendered: torch.Tensor, width: int) -> torch.Tensor:
    """[H', width, 3]: the frames ``real`` (top row) above ``rendered`` (bottom row), each
    [k, H, W, 3] float 0..1, resized side by side to fill ``width``."""
    k = real.shape[0]
    side = max(1, width // max(k, 1))
    rows = []
    for frames in (real, rendered):
        x = F.interpolate(frames.float().permute(0, 3, 1, 2), size=(side, side), mode="bilinear", align_corners=False,
                          antialias=True).clamp(0, 1)
        row = torch.ones(side, width, 3)
        row[:, :side * k] = x.permute(2, 0, 3, 1).reshape(side, side * k, 3)
        rows.append(row)
    return torch.cat(rows)


def figure(panels: Sequence[torch.Tensor], strip: Optional[torch.Tensor] = None, columns: int = 2) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: panels (each [PANEL_HEIGHT, PANEL_WIDTH, 3]) in rows of ``columns``,
    then ``strip`` (:func:`frame_strip` at the figure's width) below."""
    width = PANEL_WIDTH * columns
    rows = []
    for i in range(0, len(panels), columns):
        row = torch.ones(PANEL_HEIGHT, width, 3)
        for j, panel in enumerate(panels[i:i + columns]):
            row[:, j * PANEL_WIDTH:(j + 1) * PANEL_WIDTH] = panel
        rows.append(row)
    if strip is not None:
        rows.append(strip)
    return torch.cat(rows or [torch.ones(PANEL_HEIGHT, width, 3)])[None]


def training_report_image(
    losses: Sequence[tuple[int, float]],
    validation: Sequence[dict],
    strip: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """IMAGE [1, H, 768, 3]: training loss (log) and the validation metrics (full frame blue, head
    region orange) against steps, and the validation frames real above rendered (``strip`` =
    (real, rendered), each [k, H, W, 3] float 0..1)."""
    panels = [plot_panel([([s for s, _ in losses], [v for _, v in losses], LINE_COLOUR)], log=True,
                         height=PANEL_HEIGHT, width=PANEL_WIDTH, title="training loss")]
    steps = [v["step"] for v in validation]
    for name, unit in (("lpips", ""), ("psnr", " (dB)"), ("ssim", "")):
        panels.append(plot_panel(
            [(steps, [_num(v.get(name)) for v in validation], LINE_COLOUR),
             (steps, [_num(v.get("head_" + name)) for v in validation], SECOND_COLOUR)],
            height=PANEL_HEIGHT, width=PANEL_WIDTH, title=f"validation {name.upper()}{unit} (head: orange)"))
    return figure(panels, frame_strip(*strip, PANEL_WIDTH * 2) if strip is not None else None)


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _write(img: torch.Tensor, text: str, xy: tuple[int, int]) -> torch.Tensor:
    """``img`` with ``text`` in black at ``xy`` (Pillow's default font), or unchanged without Pillow."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return img
    pil = Image.fromarray((img * 255).round().to(torch.uint8).numpy())
    ImageDraw.Draw(pil).text(xy, text, fill=(0, 0, 0))
    import numpy as np

    return torch.from_numpy(np.asarray(pil).copy()).float() / 255


class TrainingLog:
    """An ``on_step`` for :func:`~mimictalk_lib.adapt.train.train_adapter` that keeps the total
    loss per step, the validation results and the latest validation frames, logs each validation,
    and passes progress on to ``forward`` — at validation steps with the training report as the
    preview image (the curves so far)."""

    def __init__(self, forward: Optional[ProgressFn] = None) -> None:
        self.forward = forward
        self.losses: list[tuple[int, float]] = []
        self.validation: list[dict] = []
        self.strip: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def __call__(self, step: int, total: int, losses=None, preview=None, validation=None, validation_strip=None,
                 **info) -> None:
        if losses and "total_loss" in losses:
            self.losses.append((step, float(losses["total_loss"])))
        if validation is not None:
            self.validation.append(validation)
            self.strip = validation_strip if validation_strip is not None else self.strip
            logger.info("MimicTalk validation at step %d: %s", step, ", ".join(
                f"{k} {_fmt(_num(validation.get(k)))}" for k in ("psnr", "ssim", "lpips", "head_psnr", "head_ssim", "head_lpips")))
            preview = self.image()[0]
        report(self.forward, step, total, preview=preview, **info)

    def image(self, validation: Optional[Sequence[dict]] = None) -> torch.Tensor:
        """The training report (:func:`training_report_image`); ``validation`` replaces the
        collected history (e.g. the adapter's full history after a resume)."""
        return training_report_image(self.losses, self.validation if validation is None else validation, self.strip)
