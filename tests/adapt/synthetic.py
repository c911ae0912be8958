"""Synthetic adaptation data (tests and bench/adapt.py): a prepared ``Identity`` of any size whose
frames are smooth random images (far from a renderer's initial output, so the adaptation loss
starts high), and a SECC source driven by the expression coefficients."""

import torch

from mimictalk_lib.adapt.data import AdaptationData
from mimictalk_lib.identity.identity import Identity
from mimictalk_lib.identity.prepare import lip_rects
from tests.fixtures.tiny_renderer import eg3d_camera, face_keypoints, secc_map, segmentation, smooth_image


class SyntheticSecc:
    """SECC-like maps whose mouth opening / sideways shift follow exp[:, 0] / exp[:, 1]; a blink
    darkens an eye band in proportion to the amount."""

    def __init__(self, side: int):
        self.side = side

    def render(self, exp):
        maps = [secc_map(self.side, mouth_open=float(torch.sigmoid(e[0])) * 0.5, shift=0.05 * float(torch.tanh(e[1])))
                for e in exp]
        return torch.cat(maps)

    def blink(self, secc, amount):
        out = secc.clone()
        band = slice(int(self.side * 0.35), int(self.side * 0.45))
        a = amount.view(-1, 1, 1, 1).to(secc.dtype)
        out[:, :, band] = out[:, :, band] * (1 - a) - a
        return out


def _uint8(images):  # [N, 3, S, S] in [-1, 1] -> uint8 [N, S, S, 3]
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def synthetic_identity(side: int, frames: int = 6, seed: int = 0) -> Identity:
    g = torch.Generator().manual_seed(seed)
    seg = segmentation(side).argmax(1).expand(frames, -1, -1).to(torch.uint8).contiguous()
    images = smooth_image(side, 3, g).expand(frames, -1, -1, -1).clone()
    images[1:] += 0.05 * torch.randn(frames - 1, 3, side, side, generator=g)
    kps = face_keypoints(frames, g)
    return Identity(
        frames=_uint8(images), segmaps=seg, landmarks=torch.zeros(frames, 478, 3),
        id=torch.randn(1, 80, generator=g), exp=torch.randn(frames, 64, generator=g),
        euler=torch.zeros(frames, 3), trans=torch.zeros(frames, 3),
        cameras=torch.stack([eg3d_camera(yaw=0.1 * i / max(frames - 1, 1) - 0.05) for i in range(frames)]),
        keypoints=kps, lip_rects=lip_rects((kps[..., :2] + 1) / 2 * side, side),
        plate=_uint8(smooth_image(side, 3, g))[0], torso_ref=_uint8(smooth_image(side, 3, g))[0],
        torso_ref_mask=torch.ones(side, side, dtype=torch.bool), meta={"kind": "clip", "source": "synthetic"},
    )


def make_data(base, frames: int = 6, seed: int = 0) -> AdaptationData:
    return AdaptationData(synthetic_identity(base.cfg.image_resolution, frames, seed), SyntheticSecc(base.cfg.secc_resolution))
