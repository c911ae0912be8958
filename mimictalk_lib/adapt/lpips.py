"""LPIPS v0.1 with AlexNet features (Zhang et al., CVPR 2018), in plain PyTorch.

MimicTalk's adaptation (``train_mimictalk_on_a_video.py``) uses ``lpips.LPIPS(net='alex')`` on
images in [-1, 1] (architecture reference §3.4). This module computes the same distance without
the ``lpips`` or ``torchvision`` packages:

1. scale the input: ``(x - shift) / scale`` with the LPIPS constants below;
2. AlexNet ``features`` (torchvision layout), taking the five ReLU outputs
   relu1..relu5 (after convs 0, 3, 6, 8, 10; max-pools 2 and 5 between them);
3. per layer: unit-normalise each feature vector over channels (eps 1e-10), square the
   difference of the two images' features, weight channels with the layer's 1x1 linear head,
   average over space;
4. sum over the five layers -> one distance per image pair.

Weights come from two files the models manifest provides (``lpips_alex``), both plain state
dicts read with ``torch.load(weights_only=True)``: torchvision's AlexNet ImageNet weights
(``features.{0,3,6,8,10}.{weight,bias}``; the classifier is ignored) and the LPIPS v0.1 linear
heads (``lin{0..4}.model.1.weight``, shapes ``(1, C, 1, 1)``). The network is frozen.
"""

from __future__ import annotations

import os
import pickle
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..utils import check_shape

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
"""Input normalisation of LPIPS v0.1 (``ScalingLayer``), for images in [-1, 1]."""

NORM_EPS = 1e-10
"""Epsilon of LPIPS' channel-wise feature normalisation."""

# torchvision AlexNet ``features``: index -> (in, out, kernel, stride, padding); max-pool 3/2 at 2, 5.
ALEX_CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1), 10: (256, 256, 3, 1, 1)}
ALEX_POOLS = (2, 5)
TAP_CHANNELS = (64, 192, 384, 256, 256)  # relu1..relu5
MIN_SIZE = 31
"""Smallest input side for which relu5 is non-empty (11/4 conv, then two 3/2 max-pools)."""


class AlexNetFeatures(nn.Module):
    """AlexNet conv trunk up to relu5, with torchvision's module indices (``features.N``)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(12):
            if i in ALEX_CONVS:
                c_in, c_out, k, s, p = ALEX_CONVS[i]
                layers.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
            elif i in ALEX_POOLS:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            else:
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] (scaled) -> [relu1, ..., relu5]."""
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):  # the ReLU after each conv
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet) distance between image batches in [-1, 1]: ``[B, 3, H, W]`` x 2 -> ``[B]``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_shape(x, (None, 3, None, None), "LPIPS input")
        if x.shape != y.shape:
            raise InputError(f"LPIPS: both images must have the same shape, got {list(x.shape)} and {list(y.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise InputError(f"LPIPS: images must be at least {MIN_SIZE}x{MIN_SIZE} for AlexNet, got {list(x.shape[-2:])}")
        dtype = self.shift.dtype
        both = torch.cat([x, y]).to(dtype)  # one pass for both images: [2B, 3, H, W]
        taps = self.net((both - self.shift) / self.scale)
        dist = 0
        for feat, lin in zip(taps, self.lins):
            feat = feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + NORM_EPS)
            fx, fy = feat.chunk(2)
            dist = dist + lin((fx - fy).square()).mean(dim=(2, 3))  # [B, 1]
        return dist[:, 0]


def _torch_load(path: str | os.PathLike) -> dict:
    try:
        sd = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"cannot read LPIPS weight file {path}: {e}") from e
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path} is not a state dict (got {type(sd).__name__})")
    return dict(sd)


def lpips_state_dict(alexnet_sd: Mapping[str, torch.Tensor], heads_sd: Mapping[str, torch.Tensor]) -> dict:
    """Map torchvision AlexNet keys (``features.N.*``; or the lpips package's ``net.sliceK.N.*``)
    and LPIPS head keys (``linK.model.1.weight``) onto :class:`LPIPS`'s names."""
    out = {}
    for key, value in alexnet_sd.items():
        parts = key.split(".")
        if parts[0] == "features":
            out["net." + key] = value
        elif parts[0] == "net" and parts[1].startswith("slice"):
            out["net.features." + ".".join(parts[2:])] = value
    for key, value in heads_sd.items():
        parts = key.split(".")
        if parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
            out[f"lins.{parts[0][3:]}.weight"] = value
    return out


def load_lpips(
    alexnet_path: str | os.PathLike,
    heads_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LPIPS:
    """Build the frozen LPIPS network from the two manifest files (``lpips_alex``)."""
    model = LPIPS()
    sd = lpips_state_dict(_torch_load(alexnet_path), _torch_load(heads_path))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"LPIPS weights do not fit: missing {missing}, unexpected {unexpected}. Expected torchvision's "
            f"alexnet-owt-7be5be79.pth ({alexnet_path}) and LPIPS v0.1 alex.pth ({heads_path})"
        )
    return model.to(device=device, dtype=dtype)


__all__ = ["LPIPS", "load_lpips", "lpips_state_dict", "MIN_SIZE"]
