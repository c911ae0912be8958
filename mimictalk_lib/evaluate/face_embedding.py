"""Identity similarity (CSIM): cosine similarity of face embeddings of rendered and reference frames.

The embedding network is FaceNet's Inception-ResNet-v1 (Szegedy et al. 2017; Schroff et al. 2015)
with the ``face_embedding`` asset's weights (facenet-pytorch's port of David Sandberg's model
20180402-114759, trained on VGGFace2, MIT licensed). The module here is the pack's own, written from
the checkpoint's key names and shapes (``conv2d_1a`` ... ``repeat_1/2/3``, ``mixed_6a/7a``,
``block8``, ``last_linear``, ``last_bn``); the 8631-class ``logits`` layer of the file is unused.
Input: 160x160 RGB face crops standardised as (255 x - 127.5) / 128; output: unit 512-d vectors.
Embedding networks for ArcFace-style CSIM (insightface) are not used: their weights are licensed
for non-commercial research only.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from .syncnet import crop_resize, read_state_dict

FACE_EMBEDDING_ASSET = "face_embedding"
CROP_SIZE = 160
MARGIN = 0.2
"""Face box extended by this share of its longer side on every side before cropping."""
EMBED_DIM = 512
BN_EPS = 1e-3  # the TensorFlow original's batch-norm epsilon, kept by the port
MAX_FILE_BYTES = 512 << 20
"""The checkpoint is 112 MB; larger files are refused before reading them."""


class _Conv(nn.Module):
    """Convolution without bias, batch norm, ReLU (keys ``conv.weight``, ``bn.*``)."""

    def __init__(self, cin: int, cout: int, k, s=1, p=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _chain(*convs) -> nn.Sequential:
    return nn.Sequential(*(_Conv(*c) for c in convs))


class _Residual(nn.Module):
    """Inception-ResNet block: parallel branches, concatenated, projected by a 1x1 convolution
    (with bias) and added to the input scaled by ``scale``; ReLU unless ``relu`` is False."""

    def __init__(self, channels: int, branches: Sequence[nn.Module], width: int, scale: float, relu: bool = True):
        super().__init__()
        for i, b in enumerate(branches):
            self.add_module(f"branch{i}", b)
        self.n, self.scale, self.relu = len(branches), scale, relu
        self.conv2d = nn.Conv2d(width, channels, 1)

    def forward(self, x):
        out = self.conv2d(torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n)], 1))
        out = x + self.scale * out
        return F.relu(out) if self.relu else out


def _block35(scale: float) -> _Residual:
    return _Residual(256, [_Conv(256, 32, 1), _chain((256, 32, 1), (32, 32, 3, 1, 1)),
                           _chain((256, 32, 1), (32, 32, 3, 1, 1), (32, 32, 3, 1, 1))], 96, scale)


def _block17(scale: float) -> _Residual:
    return _Residual(896, [_Conv(896, 128, 1), _chain((896, 128, 1), (128, 128, (1, 7), 1, (0, 3)),
                                                      (128, 128, (7, 1), 1, (3, 0)))], 256, scale)


def _block8(scale: float, relu: bool = True) -> _Residual:
    return _Residual(1792, [_Conv(1792, 192, 1), _chain((1792, 192, 1), (192, 192, (1, 3), 1, (0, 1)),
                                                        (192, 192, (3, 1), 1, (1, 0)))], 384, scale, relu)


class _Mixed(nn.Module):
    """Reduction block: convolution branches and a 3x3/2 max pool, concatenated."""

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        for i, b in enumerate(branches):
            self.add_module(f"branch{i}", b)
        self.n = len(branches)

    def forward(self, x):
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n)]
                         + [F.max_pool2d(x, 3, 2)], 1)


class FaceEmbedder(nn.Module):
    """Inception-ResNet-v1 face embedding: faces [B, 3, 160, 160] (RGB 0..1) -> unit [B, 512]."""

    def __init__(self):
        super().__init__()
        self.conv2d_1a = _Conv(3, 32, 3, 2)
        self.conv2d_2a = _Conv(32, 32, 3)
        self.conv2d_2b = _Conv(32, 64, 3, 1, 1)
        self.conv2d_3b = _Conv(64, 80, 1)
        self.conv2d_4a = _Conv(80, 192, 3)
        self.conv2d_4b = _Conv(192, 256, 3, 2)
        self.repeat_1 = nn.Sequential(*(_block35(0.17) for _ in range(5)))
        self.mixed_6a = _Mixed([_Conv(256, 384, 3, 2), _chain((256, 192, 1), (192, 192, 3, 1, 1), (192, 256, 3, 2))])
        self.repeat_2 = nn.Sequential(*(_block17(0.10) for _ in range(10)))
        self.mixed_7a = _Mixed([_chain((896, 256, 1), (256, 384, 3, 2)), _chain((896, 256, 1), (256, 256, 3, 2)),
                                _chain((896, 256, 1), (256, 256, 3, 1, 1), (256, 256, 3, 2))])
        self.repeat_3 = nn.Sequential(*(_block8(0.20) for _ in range(5)))
        self.block8 = _block8(1.0, relu=False)
        self.last_linear = nn.Linear(1792, EMBED_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBED_DIM, eps=BN_EPS)
        self.eval()

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() != 4 or faces.shape[1] != 3 or min(faces.shape[-2:]) < 75:
            raise InputError(f"face embedding: faces must be [B, 3, H, W] with H, W >= 75 (160 recommended), "
                             f"got {list(faces.shape)}")
        x = (faces * 255 - 127.5) / 128
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.repeat_3(self.mixed_7a(self.repeat_2(self.mixed_6a(self.repeat_1(x)))))
        x = self.block8(x).mean(dim=(2, 3))
        return F.normalize(self.last_bn(self.last_linear(x)), dim=1)


def load_face_embedder(path, device: torch.device | str = "cpu") -> FaceEmbedder:
    """The embedding network from ``20180402-114759-vggface2.pt`` (or a file with the same keys
    and shapes; a ``logits.*`` classifier in it is ignored)."""
    net = FaceEmbedder()
    net.load_state_dict(read_state_dict(path, net, "face embedding", MAX_FILE_BYTES, ignore=("logits.",)), strict=False)
    return net.to(device).eval()


def face_crops(frames: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Frames float [n, 3, H, W] (0..1) and face boxes [n, 4] (x0, y0, x1, y1) -> square crops
    [n, 3, 160, 160] around each box's centre, side = longer box side x (1 + 2 x MARGIN)."""
    if frames.dim() != 4 or boxes.shape != (frames.shape[0], 4):
        raise InputError(f"face crops: expected frames [n, 3, H, W] and boxes [n, 4], got "
                         f"{list(frames.shape)} and {list(boxes.shape)}")
    out = []
    for img, (x0, y0, x1, y1) in zip(frames.float(), boxes.tolist()):
        half = max(x1 - x0, y1 - y0) * (0.5 + MARGIN)
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        out.append(crop_resize(img, (mx - half, my - half, mx + half, my + half), CROP_SIZE, 0.0))
    return torch.stack(out)


@torch.no_grad()
def csim(embedder: FaceEmbedder, rendered: torch.Tensor, reference: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per-frame identity similarity [n]: cosine of the embeddings of the same face box cropped
    from ``rendered`` and ``reference`` (float [n, 3, H, W], 0..1). 1 = same embedding."""
    dev = next(embedder.parameters()).device
    a = embedder(face_crops(rendered, boxes).to(dev))
    b = embedder(face_crops(reference, boxes).to(dev))
    return (a * b).sum(1).clamp(-1, 1).float().cpu()


__all__ = ["FACE_EMBEDDING_ASSET", "FaceEmbedder", "csim", "face_crops", "load_face_embedder"]
