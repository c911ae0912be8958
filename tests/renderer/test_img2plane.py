"""Canonical image->plane backbone and tri-grid v2 on the tiny preset: shapes, input checks, the
coordinate channels, the per-plane flips and the (k c d) channel layout."""

import pytest
import torch
import torch.nn.functional as F

from mimictalk_lib.errors import InputError
from mimictalk_lib.renderer.deeplab import DeepLabV3Encoder
from mimictalk_lib.renderer.img2plane import (CanoBackboneConfig, CanoImg2PlaneBackbone, Plane2Grid,
                                              Plane2GridConfig, orient_planes)
from mimictalk_lib.renderer.vit import encode_stage

RES = 64


@pytest.fixture(scope="module")
def cano():
    torch.manual_seed(0)
    return CanoImg2PlaneBackbone(CanoBackboneConfig.tiny()).eval()


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, RES, RES, generator=g) * 2 - 1
    img[:, :, :8] = -1  # black background band, as the reference images have
    return img


def test_forward_shape_and_determinism(cano, image):
    with torch.no_grad():
        a, b = cano(image), cano(image)
    cfg = cano.cfg
    assert a.shape == (2, 3, cfg.out_channels // 3, RES // 2, RES // 2)
    assert torch.isfinite(a).all() and a.abs().max() > 0
    assert torch.equal(a, b)


def test_batch_items_are_independent(cano, image):
    with torch.no_grad():
        together = cano(image)
        alone = torch.cat([cano(image[:1]), cano(image[1:])])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, match", [
    ((1, 4, RES, RES), "expected shape"),
    ((1, 3, RES, RES + 16), "square"),
    ((1, 3, 72, 72), "multiple of 16"),
])
def test_bad_input_is_rejected(cano, shape, match):
    with pytest.raises(InputError, match=match):
        cano(torch.zeros(shape))


def test_coordinate_channels_are_row_and_column_over_height(cano, image):
    seen = {}
    hook = cano.low_reso_encoder.encoder.conv1.register_forward_hook(
        lambda mod, inp, out: seen.update(x=inp[0]))
    try:
        with torch.no_grad():
            cano(image)
    finally:
        hook.remove()
    x = seen["x"]
    assert x.shape == (2, 5, RES, RES)
    torch.testing.assert_close(x[:, :3], image)
    idx = torch.arange(RES, dtype=torch.float32) / RES
    torch.testing.assert_close(x[1, 3], idx[:, None].expand(RES, RES))  # i / H (rows)
    torch.testing.assert_close(x[1, 4], idx[None, :].expand(RES, RES))  # j / H (columns)


def test_orient_planes_flips_each_plane_as_upstream():
    c, h, w = 2, 4, 5
    raw = torch.arange(3 * c * h * w, dtype=torch.float32).view(1, 3 * c, h, w)
    out = orient_planes(raw)
    assert out.shape == (1, 3, c, h, w)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                assert out[0, 0, ch, i, j] == raw[0, 0 * c + ch, h - 1 - i, j]  # xy: flip H
                assert out[0, 1, ch, i, j] == raw[0, 1 * c + ch, h - 1 - i, j]  # xz: flip H
                assert out[0, 2, ch, i, j] == raw[0, 2 * c + ch, h - 1 - i, w - 1 - j]  # zy: H, W


def test_backbone_output_is_the_oriented_predictor_output(cano, image):
    seen = {}
    hook = cano.triplane_predictor_vit.final_conv.register_forward_hook(
        lambda mod, inp, out: seen.update(raw=out))
    try:
        with torch.no_grad():
            planes = cano(image)
    finally:
        hook.remove()
    raw = seen["raw"]
    assert not torch.equal(planes, raw.view_as(planes))  # the flips really change the data
    assert torch.equal(planes, orient_planes(raw))


def test_deeplab_output_stride_8_and_dilated_last_layers():
    enc = DeepLabV3Encoder(5, widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1), aspp_channels=16,
                           aspp_rates=(2, 4, 6)).eval()
    assert enc(torch.zeros(1, 5, 64, 64)).shape == (1, 16, 8, 8)
    layer3, layer4 = enc.encoder.layer3[0], enc.encoder.layer4[0]
    assert layer3.conv1.dilation == (2, 2) and layer3.conv1.stride == (1, 1)
    assert layer4.conv2.dilation == (4, 4) and layer4.downsample[0].stride == (1, 1)
    assert enc.encoder.layer2[0].conv1.stride == (2, 2)


def test_plane2grid_alpha_zero_is_identity():
    p2g = Plane2Grid(Plane2GridConfig.tiny())
    with torch.no_grad():
        p2g.res_blocks_3d[0].alpha.zero_()
    planes = torch.randn(2, 3, 12, 8, 8)
    assert torch.equal(p2g(planes), planes)


def test_plane2grid_channel_layout_is_c_major_then_depth():
    """Each plane's C·D channels are read as a [C, D] grid (index c·D + d), planes separately."""
    torch.manual_seed(0)
    cfg = Plane2GridConfig.tiny()
    p2g = Plane2Grid(cfg).eval()
    with torch.no_grad():
        p2g.res_blocks_3d[0].alpha.fill_(0.5)
        planes = torch.randn(2, 3, cfg.plane_channels, 6, 6)
        out = p2g(planes)
        block = p2g.res_blocks_3d[0]
        for b in range(2):
            for k in range(3):
                grid = planes[b, k].view(cfg.channels, cfg.depth, 6, 6)[None]  # [1, C, D, H, W]
                ref = block(grid)[0].reshape(cfg.plane_channels, 6, 6)
                torch.testing.assert_close(out[b, k], ref)


def test_plane2grid_rejects_wrong_plane_channels():
    with pytest.raises(InputError, match="tri-grid planes"):
        Plane2Grid(Plane2GridConfig.tiny())(torch.zeros(1, 3, 13, 4, 4))


def test_low_res_upsampling_uses_align_corners_true(cano):
    """``nn.UpsamplingBilinear2d`` semantics (align_corners=True) after the PixelShuffle."""
    vit = cano.low_reso_vit
    x = torch.randn(1, cano.cfg.aspp_channels, RES // 8, RES // 8)
    seen = {}
    hook = vit.conv_after_upsample1.register_forward_hook(
        lambda mod, inp, out: seen.update(up=inp[0]))
    try:
        with torch.no_grad():
            vit(x)
            shuffled = F.pixel_shuffle(encode_stage(vit.patch_embed, [vit.block1, vit.block2], x), 2)
    finally:
        hook.remove()
    up = lambda ac: F.interpolate(shuffled, scale_factor=2, mode="bilinear", align_corners=ac)  # noqa: E731
    torch.testing.assert_close(seen["up"], up(True))
    assert not torch.allclose(seen["up"], up(False), atol=1e-3)
