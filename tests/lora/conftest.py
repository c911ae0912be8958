"""A toy module with the renderer's LoRA-relevant layers at the renderer's module paths, so the
LoRA machinery is tested on its own, independently of the full renderer."""

import pytest
import torch
from torch import nn

from mimictalk_lib.renderer.stylegan import Conv2dLayer, FullyConnectedLayer, SynthesisBlock, SynthesisBlockNoUp


class ToyRenderer(nn.Module):
    """prenet -> to_plane_cnn -> (decoder MLP on the features) and super-resolution blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.secc_img2plane_backbone = nn.Module()
        self.secc_img2plane_backbone.prenet = Conv2dLayer(9, 3, 1)
        self.secc_img2plane_backbone.to_plane_cnn = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.01), nn.Conv2d(8, 6, 3, padding=1)
        )
        self.secc_img2plane_backbone.norm = nn.BatchNorm2d(6)  # a buffer that moves in train mode
        self.decoder = nn.Module()
        self.decoder.net = nn.Sequential(FullyConnectedLayer(6, 8), nn.Softplus(), FullyConnectedLayer(8, 4))
        self.superresolution = nn.Module()
        self.superresolution.block0 = SynthesisBlock(6, 8, w_dim=8, resolution=16)
        self.superresolution.head_torso_block = SynthesisBlockNoUp(8, 8, w_dim=8, resolution=16)
        self.superresolution.block1 = SynthesisBlock(8, 4, w_dim=8, resolution=32, is_last=True)

    def forward(self, x: torch.Tensor, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bb = self.secc_img2plane_backbone
        h = bb.norm(bb.to_plane_cnn(bb.prenet(x)))  # [B, 6, 8, 8]
        feats = self.decoder.net(h.permute(0, 2, 3, 1).reshape(-1, 6))  # [B*64, 4]
        sr = self.superresolution
        x0, img = sr.block0(h, None, ws)  # [B, 8, 16, 16]
        xh, img = sr.head_torso_block(x0, img, ws)
        _, img = sr.block1(xh, img, ws)  # [B, 3, 32, 32]
        return img, feats


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyRenderer().eval()


@pytest.fixture
def toy_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 9, 8, 8, generator=g), torch.randn(2, 3, 8, generator=g)
