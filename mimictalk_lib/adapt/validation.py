"""Held-out validation of an adaptation run: which frames are never trained on, and when to stop.

The clip's last ``holdout_fraction`` of frames (at least ``holdout_min_frames``, 1 s at 25 fps) is
the validation slice; training draws its frames from the rest only. A clip too short to spare the
slice (fewer than two slices' worth of frames, e.g. a photo) trains on everything, without
validation. Every ``validate_every`` steps the trainer renders up to ``validation_frames`` evenly
spaced held-out frames and measures them (:func:`..evaluate.metrics.image_metrics`).

Early stop (:class:`EarlyStop`): the monitored score (validation LPIPS, lower is better) must
improve on the best so far by more than ``margin``; after ``patience`` evaluations without such an
improvement the run stops. The best adapter (lowest score) is the one kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch


def holdout_split(num_frames: int, fraction: float, min_frames: int) -> Optional[tuple[range, range]]:
    """(training frames, held-out frames) of a clip, or None when validation is off (``fraction``
    0) or the clip is shorter than two held-out slices."""
    if fraction <= 0 or num_frames < 2:
        return None
    held = max(math.ceil(num_frames * fraction), min_frames)
    if num_frames < 2 * held:
        return None
    return range(0, num_frames - held), range(num_frames - held, num_frames)


def spread(frames: range, count: int) -> torch.Tensor:
    """``count`` (at most all) evenly spaced frame indices of ``frames``, first and last included."""
    n = min(count, len(frames))
    if n <= 1:
        return torch.tensor([frames[0]])
    pos = torch.linspace(0, len(frames) - 1, n).round().long()
    return torch.tensor([frames[int(i)] for i in pos])


def score_of(metrics: dict) -> Optional[float]:
    """The monitored validation score: full-frame LPIPS, or 1 - SSIM when no LPIPS network runs
    (tests, ``perceptual_loss`` off); None when neither was measured."""
    for key, value in (("lpips", metrics.get("lpips")), ("ssim", metrics.get("ssim"))):
        if value is not None and math.isfinite(value):
            return float(value) if key == "lpips" else 1.0 - float(value)
    return None


@dataclass
class EarlyStop:
    """Best score so far and evaluations since it improved by more than ``margin``."""

    patience: int = 0  # 0: never stop early (the best is still tracked)
    margin: float = 0.0
    best: float = math.inf
    best_step: int = 0
    waited: int = 0
    history: list = field(default_factory=list)  # one metrics dict per evaluation, with "step"

    def update(self, step: int, metrics: dict) -> bool:
        """Record an evaluation; True when it is the new best."""
        self.history.append(dict(metrics, step=step))
        score = score_of(metrics)
        if score is not None and score < self.best - self.margin:
            self.best, self.best_step, self.waited = score, step, 0
            return True
        self.waited += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.waited >= self.patience

    def state(self) -> dict:
        return {"best": None if math.isinf(self.best) else self.best, "best_step": self.best_step,
                "waited": self.waited, "history": self.history}

    def load(self, state: Optional[dict]) -> None:
        if not state:
            return
        best = state.get("best")
        self.best = math.inf if best is None else float(best)
        self.best_step, self.waited = int(state.get("best_step", 0)), int(state.get("waited", 0))
        self.history = [dict(h) for h in state.get("history", [])]
