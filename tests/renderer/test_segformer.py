"""SECC motion adapter (SegFormer-b0) on the tiny preset: shapes, stage resolutions, the head's
concat order and resize mode, the plane CNN and the per-plane flips."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimictalk_lib.errors import InputError
from mimictalk_lib.renderer.img2plane import orient_planes
from mimictalk_lib.renderer.segformer import SeccBackboneConfig, SeccImg2PlaneBackbone
from mimictalk_lib.renderer.stylegan import Conv2dLayer

RES = 64


@pytest.fixture(scope="module")
def secc():
    torch.manual_seed(0)
    model = SeccImg2PlaneBackbone(SeccBackboneConfig.tiny()).eval()
    with torch.no_grad():  # non-trivial BN statistics so eval-mode BN is exercised
        model.fuse_head.linear_fuse.bn.running_mean.normal_(0, 0.1)
        model.fuse_head.linear_fuse.bn.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def cond():
    g = torch.Generator().manual_seed(2)
    return torch.rand(2, 9, RES, RES, generator=g) * 2 - 1


def capture(module, store, key, what="out"):
    """Forward hook saving the module's output (or first input) without altering it."""
    def hook(mod, inp, out):
        store[key] = out if what == "out" else inp[0]
    return module.register_forward_hook(hook)


def test_forward_shape_determinism_and_batch_independence(secc, cond):
    with torch.no_grad():
        a, b = secc(cond), secc(cond)
        split = torch.cat([secc(cond[:1]), secc(cond[1:])])
    assert a.shape == (2, 3, secc.cfg.out_channels // 3, RES // 2, RES // 2)
    assert torch.isfinite(a).all() and a.abs().max() > 0
    assert torch.equal(a, b)
    torch.testing.assert_close(a, split, rtol=1e-5, atol=1e-5)


def test_mit_stage_resolutions(secc, cond):
    with torch.no_grad():
        feats = secc.mix_vit(secc.prenet(cond))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (d, RES // s, RES // s) for d, s in zip(secc.cfg.embed_dims, (4, 8, 16, 32))]


def test_prenet_is_equalized_lr_1x1(secc):
    assert isinstance(secc.prenet, Conv2dLayer)
    assert secc.prenet.weight.shape == (3, 9, 1, 1)
    x = torch.randn(1, 9, 4, 4)
    ref = F.conv2d(x, secc.prenet.weight / 3.0, secc.prenet.bias)  # gain 1/sqrt(9·1·1)
    torch.testing.assert_close(secc.prenet(x), ref)


def test_head_concatenates_c4_c3_c2_c1_with_bilinear_resize(secc, cond):
    head, seen = secc.fuse_head, {}
    hook = capture(head.linear_fuse, seen, "fuse_in", what="in")
    try:
        with torch.no_grad():
            feats = secc.mix_vit(secc.prenet(cond))
            head(feats)
            embedded = [getattr(head, f"linear_c{i}")(feats[i - 1]) for i in (4, 3, 2, 1)]
    finally:
        hook.remove()
    e = secc.cfg.head_channels
    parts = seen["fuse_in"].split(e, dim=1)
    size = feats[0].shape[-2:]
    for part, emb in zip(parts[:3], embedded[:3]):
        torch.testing.assert_close(part, F.interpolate(emb, size=size, mode="bilinear",
                                                       align_corners=False))
    torch.testing.assert_close(parts[3], embedded[3])
    assert not torch.allclose(parts[0], F.interpolate(embedded[0], size=size, mode="bilinear",
                                                      align_corners=True))


def test_head_fuse_is_conv_bn_relu(secc):
    fuse = secc.fuse_head.linear_fuse
    assert fuse.conv.bias is None
    x = torch.randn(1, 4 * secc.cfg.head_channels, 4, 4)
    with torch.no_grad():
        ref = F.relu(F.batch_norm(F.conv2d(x, fuse.conv.weight), fuse.bn.running_mean,
                                  fuse.bn.running_var, fuse.bn.weight, fuse.bn.bias))
        torch.testing.assert_close(fuse(x), ref)


def test_plane_cnn_layout_for_peft(secc):
    cnn = secc.to_plane_cnn
    assert [type(m) for m in cnn] == [nn.Conv2d, nn.LeakyReLU] * 3 + [nn.UpsamplingBilinear2d, nn.Conv2d]
    assert all(cnn[i].negative_slope == 0.01 for i in (1, 3, 5))
    assert cnn[6].align_corners is True and cnn[6].scale_factor == 2.0
    assert cnn[7].out_channels == secc.cfg.out_channels


def test_output_is_oriented_plane_cnn_output(secc, cond):
    seen = {}
    hook = capture(secc.to_plane_cnn, seen, "raw")
    try:
        with torch.no_grad():
            planes = secc(cond)
    finally:
        hook.remove()
    assert torch.equal(planes, orient_planes(seen["raw"]))
    assert not torch.equal(planes, seen["raw"].view_as(planes))


def test_dropout_and_batch_norm_follow_train_mode(cond):
    torch.manual_seed(0)
    model = SeccImg2PlaneBackbone(SeccBackboneConfig.tiny()).train()
    torch.manual_seed(1)
    a = model(cond)
    torch.manual_seed(2)
    b = model(cond)
    assert not torch.allclose(a, b)  # Dropout2d / stochastic depth are active in training
    assert model.fuse_head.linear_fuse.bn.num_batches_tracked == 2


@pytest.mark.parametrize("shape, match", [
    ((1, 6, RES, RES), "expected shape"),
    ((1, 9, RES, RES // 2), "square"),
    ((1, 9, 66, 66), "multiple of 4"),
])
def test_bad_condition_is_rejected(secc, shape, match):
    with pytest.raises(InputError, match=match):
        secc(torch.zeros(shape))


def test_cano_tgt_mode_takes_six_channels():
    model = SeccImg2PlaneBackbone(SeccBackboneConfig(in_channels=6, embed_dims=(8, 16, 24, 32),
                                                     num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                                     head_channels=8, plane_cnn_channels=8,
                                                     out_channels=12)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 6, 32, 32)).shape == (1, 3, 4, 16, 16)
