"""3DMM coefficients as values: :class:`HeadPose` (euler + trans) and :class:`Coefficients` (id, exp
and a pose), the one shape that the face model, the landmark fit, the cameras and the render
session pass around instead of four loose tensors.

Rows are frames: ``exp`` / ``euler`` / ``trans`` are ``[T, *]``; ``id`` is one identity ``[1, 80]``
shared by every frame (a clip) or one per frame ``[T, 80]`` (independent images). The face-model
functions broadcast leading dimensions, so ``[..., T, *]`` stacks (the fit's batched problems) are
fine too. Nothing here is stored: an identity file keeps its four tensors (``Identity.coefficients``
views them).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch


def _take(x: torch.Tensor, index) -> torch.Tensor:
    """Rows ``index`` of ``x`` as a 2-D tensor (an int keeps its row: ``x[i:i+1]``)."""
    return x[index: index + 1] if isinstance(index, int) else x[index]


@dataclass(frozen=True)
class HeadPose:
    """Head pose per frame: ``euler`` ``[T, 3]`` (radians, BFM convention) and ``trans`` ``[T, 3]``."""

    euler: torch.Tensor
    trans: torch.Tensor

    def __len__(self) -> int:
        return int(self.euler.shape[-2])

    def __getitem__(self, index) -> "HeadPose":
        """Frames ``index`` (int, slice, index tensor or list); an int keeps a frame axis of 1."""
        return HeadPose(_take(self.euler, index), _take(self.trans, index))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "HeadPose":
        return HeadPose(fn(self.euler), fn(self.trans))

    def to(self, *args, **kwargs) -> "HeadPose":
        """``Tensor.to`` on both tensors (device and/or dtype)."""
        return self.map(lambda x: x.to(*args, **kwargs))


@dataclass(frozen=True)
class Coefficients:
    """BFM coefficients of ``T`` frames: ``id`` ``[1 or T, 80]``, ``exp`` ``[T, 64]``, ``euler``
    ``[T, 3]`` (radians), ``trans`` ``[T, 3]``."""

    id: torch.Tensor
    exp: torch.Tensor
    euler: torch.Tensor
    trans: torch.Tensor

    @classmethod
    def of(cls, pose: HeadPose, *, id: torch.Tensor, exp: torch.Tensor) -> "Coefficients":
        return cls(id, exp, pose.euler, pose.trans)

    @property
    def pose(self) -> HeadPose:
        return HeadPose(self.euler, self.trans)

    def __len__(self) -> int:
        return int(self.exp.shape[-2])

    def __getitem__(self, index) -> "Coefficients":
        """Frames ``index`` (int, slice, index tensor or list); a shared identity stays shared."""
        id_ = self.id if self.id.shape[-2] == 1 else _take(self.id, index)
        return Coefficients(id_, _take(self.exp, index), _take(self.euler, index), _take(self.trans, index))

    def per_frame(self) -> "Coefficients":
        """The same coefficients with the identity repeated for every frame (``id`` ``[..., T, 80]``)."""
        lead = self.exp.shape[:-1]
        return Coefficients(self.id.expand(*lead, self.id.shape[-1]), self.exp, self.euler, self.trans)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Coefficients":
        """``fn`` applied to each of the four tensors."""
        return Coefficients(*(fn(getattr(self, f.name)) for f in fields(self)))

    def to(self, *args, **kwargs) -> "Coefficients":
        """``Tensor.to`` on every tensor (device and/or dtype)."""
        return self.map(lambda x: x.to(*args, **kwargs))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(id, exp, euler, trans)``, e.g. for an optimiser's parameter list."""
        return self.id, self.exp, self.euler, self.trans
