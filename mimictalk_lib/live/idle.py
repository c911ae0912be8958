"""Idle motion of a live avatar: eye blinks and a small, slow head movement that go on whether or
not anyone speaks (the mouth's idle motion comes from the motion model fed with silence).

Both are functions of the global frame index, so a stream can ask for any span in any order and
gets the same values for a seed: blinks follow the offline 'period' schedule (one blink of 8-12
frames every 5 s, :func:`mimictalk_lib.face.blink.blink_schedule`) block after block; the head
sways as a sum of three slow sinusoids per axis (0.05-0.3 Hz, random phases) around the source
pose.
"""

from __future__ import annotations

import math

import torch

from ..face.blink import BLINK_PERIOD, blink_schedule

FPS = 25


class IdleMotion:
    """Blink closure and head-pose offsets for frames [start, start + n) of a stream.

    ``sway`` is the peak head rotation in radians (default 0.03, about 1.7 degrees; 0 = still),
    ``shift`` the peak translation (default 0.005 in the BFM camera space); ``blinks`` False
    keeps the eyes open."""

    def __init__(self, seed: int = 0, *, sway: float = 0.03, shift: float = 0.005, blinks: bool = True):
        self.seed, self.blinks = int(seed), bool(blinks)
        g = torch.Generator().manual_seed(self.seed)
        self._freq = 0.05 + 0.25 * torch.rand(6, 3, generator=g, dtype=torch.float64)  # Hz, per axis x 3 terms
        self._phase = 2 * math.pi * torch.rand(6, 3, generator=g, dtype=torch.float64)
        amp = torch.tensor([sway] * 3 + [shift] * 3, dtype=torch.float64)[:, None]
        self._amp = amp / 6  # three terms, minus their value at frame 0: |offset| <= amplitude
        self._blocks: dict[int, torch.Tensor] = {}

    def pose(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets (euler [n, 3] radians, trans [n, 3]) to add to the source pose (fp32)."""
        t = torch.arange(start, start + n, dtype=torch.float64)[:, None, None] / FPS  # [n, 1, 1]
        v = (self._amp * torch.sin(2 * math.pi * self._freq * t + self._phase)).sum(-1)  # [n, 6]
        # the offsets start at 0 so frame 0 is the source pose
        t0 = torch.zeros(1, 1, 1, dtype=torch.float64)
        v = v - (self._amp * torch.sin(2 * math.pi * self._freq * t0 + self._phase)).sum(-1)
        v = v.float()
        return v[:, :3], v[:, 3:]

    def _block(self, b: int) -> torch.Tensor:
        if b not in self._blocks:
            if len(self._blocks) > 64:
                self._blocks.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
            self._blocks[b] = blink_schedule(BLINK_PERIOD + 1, "period", g)[:BLINK_PERIOD].float()
        return self._blocks[b]

    def blink(self, start: int, n: int) -> torch.Tensor:
        """Eye closure [n] in [0, 1] (fp32)."""
        if not self.blinks:
            return torch.zeros(n)
        idx = torch.arange(start, start + n)
        out = torch.empty(n)
        for b in range(start // BLINK_PERIOD, (start + n - 1) // BLINK_PERIOD + 1):
            sel = (idx // BLINK_PERIOD) == b
            out[sel] = self._block(b)[idx[sel] % BLINK_PERIOD]
        return out
