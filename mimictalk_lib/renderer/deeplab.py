"""DeepLabV3 low-resolution encoder of the canonical image-to-plane model
(``cano_img2plane_backbone.low_reso_encoder``; Chen et al. 2017, "Rethinking Atrous Convolution").

Upstream (``modules/img2plane/deeplabv3``) builds it from a segmentation_models_pytorch-style
ResNet34 encoder and a trimmed DeepLabV3 decoder:

- Encoder: torchvision ResNet (BasicBlocks, keys ``conv1, bn1, layer1..4, downsample.{0,1}``)
  with a 5-channel first conv and output stride 8: *every* conv of ``layer3`` and ``layer4``
  (the first block's ``conv1`` and the 1×1 ``downsample`` conv included) gets stride 1 and
  dilation 2 resp. 4 with padding ``(k // 2)·dilation``. ImageNet weights are never fetched here;
  the official checkpoints carry the trained encoder.
- Decoder ``Sequential(ASPP, conv3×3)``: ASPP branches (1×1, three 3×3 atrous at rates 12/24/36,
  image pooling) are conv + ReLU **without BatchNorm** (upstream comments the BN out), the
  projection is 1×1 conv + ReLU + Dropout(0.5), and the final 3×3 conv has no bias, no norm and
  no activation.

``[B, 5, R, R] -> [B, 256, R/8, R/8]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

OUTPUT_STRIDE = 8
"""Upstream ``DeepLabV3(..., output_stride=8)``; the input side must be a multiple of it."""

LAYER_DILATIONS = (1, 1, 2, 4)
"""Dilation of every conv in layer1..layer4 for output stride 8 (smp ``make_dilated``)."""

ASPP_DROPOUT = 0.5
"""Dropout after the ASPP projection (active in training mode only)."""


class BasicBlock(nn.Module):
    """ResNet basic block (torchvision naming): conv-bn-relu-conv-bn + shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, *, stride: int, dilation: int,
                 downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNetEncoder(nn.Module):
    """ResNet with BasicBlocks and output stride 8 (see the module docstring).

    ``[B, in, R, R] -> [B, widths[-1], R/8, R/8]``; only the last stage's features are used.
    """

    def __init__(self, in_channels: int, *, widths: Sequence[int], blocks: Sequence[int]):
        super().__init__()
        stem = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        prev = stem
        for i, (width, n, dilation) in enumerate(zip(widths, blocks, LAYER_DILATIONS)):
            # torchvision strides layers 2-4 by 2; dilation replaces the stride in layers 3-4,
            # but the downsample branch exists wherever torchvision built one.
            tv_stride = 1 if i == 0 else 2
            stride = tv_stride if dilation == 1 else 1
            layer = [BasicBlock(prev, width, stride=stride, dilation=dilation,
                                downsample=tv_stride != 1 or prev != width)]
            layer += [BasicBlock(width, width, stride=1, dilation=dilation, downsample=False)
                      for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            prev = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, C0, R/4, R/4]
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, C3, R/8, R/8]


class ImagePooling(nn.Sequential):
    """ASPP image-level branch: global average -> 1×1 conv -> ReLU, broadcast back to H×W
    (upstream resizes the 1×1 map bilinearly, which is the same constant)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1, bias=False),
                         nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling without BatchNorm (keys ``convs.{0..4}``, ``project.0``)."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]):
        super().__init__()
        branches = [nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), nn.ReLU())]
        branches += [
            nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=r, dilation=r, bias=False),
                          nn.ReLU())
            for r in rates
        ]
        branches.append(ImagePooling(in_channels, channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * channels, channels, 1, bias=False),
            nn.ReLU(),
            nn.Dropout(ASPP_DROPOUT),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3Encoder(nn.Module):
    """ResNet encoder + ``decoder = Sequential(ASPP, conv3×3 no bias)``.

    ``[B, in, R, R] -> [B, aspp_channels, R/8, R/8]``.
    """

    def __init__(self, in_channels: int, *, widths: Sequence[int], blocks: Sequence[int],
                 aspp_channels: int, aspp_rates: Sequence[int]):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, widths=widths, blocks=blocks)
        self.decoder = nn.Sequential(
            ASPP(widths[-1], aspp_channels, aspp_rates),
            nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
