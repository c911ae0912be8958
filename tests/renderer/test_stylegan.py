"""StyleGAN2 / EG3D primitives (mimictalk_lib.renderer.stylegan) against slow references
written independently here: per-sample loops, explicit zero-stuffing, hand-computed gains."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mimictalk_lib.renderer import stylegan as sg

torch.manual_seed(0)
ATOL = 1e-5


def _ref_modconv(x, weight, styles, demodulate=True):
    """Per-sample loop: scale the kernel's input channels by the style, demodulate each output
    channel by hand, then an ordinary 'same' correlation."""
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i].view(1, -1, 1, 1)
        if demodulate:
            norm = torch.sqrt((w**2).sum(dim=(1, 2, 3)) + 1e-8)
            w = w / norm.view(-1, 1, 1, 1)
        outs.append(F.conv2d(x[i : i + 1], w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


def _ref_up2_conv(x, weight, taps=(1, 3, 3, 1)):
    """x2 'transposed' convolution then FIR, written as: zero-stuff (samples at even positions,
    length 2H-1), full true convolution with the kernel, pad 1, 4x4 FIR of gain 4 ('valid')."""
    b, c, h, w = x.shape
    z = torch.zeros(b, c, 2 * h - 1, 2 * w - 1)
    z[:, :, ::2, ::2] = x
    k = weight.shape[-1]
    y = F.conv2d(F.pad(z, [k - 1] * 4), weight.flip([2, 3]))  # full convolution
    t = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(t, t) / t.sum() ** 2 * 4
    y = F.pad(y, [1, 1, 1, 1])
    return F.conv2d(y, f.flip([0, 1]).expand(y.shape[1], 1, 4, 4).contiguous(), groups=y.shape[1])


def test_resample_filter_is_normalised_binomial():
    f = sg.make_resample_filter()
    assert f.shape == (4, 4)
    assert torch.allclose(f, torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1])) / 64)


def test_upsample_of_constant_is_constant_inside():
    x = torch.full((1, 2, 8, 8), 3.0)
    y = sg.upsample2d(x, sg.make_resample_filter())
    assert y.shape == (1, 2, 16, 16)
    assert torch.allclose(y[:, :, 2:-2, 2:-2], torch.full_like(y[:, :, 2:-2, 2:-2], 3.0), atol=1e-6)
    assert not torch.allclose(y[:, :, 0, 0], torch.tensor(3.0))  # zero padding shows at the border


def test_upfirdn2d_downsample_and_crop():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    identity = torch.ones(1, 1)
    assert torch.equal(sg.upfirdn2d(x, identity, down=2), x[:, :, ::2, ::2])
    assert torch.equal(sg.upfirdn2d(x, identity, padding=(-1, 0, 0, -1)), x[:, :, :3, 1:])


def test_bias_act_gain_and_clamp():
    x = torch.tensor([[-2.0, 0.5, 300.0]]).view(1, 3, 1, 1)
    b = torch.tensor([0.0, 0.5, 0.0])
    y = sg.bias_act(x, b, act="lrelu", clamp=256).flatten()
    assert torch.allclose(y, torch.tensor([-2.0 * 0.2 * math.sqrt(2), 1.0 * math.sqrt(2), 256.0]))
    assert torch.equal(sg.bias_act(x, act="linear").flatten(), x.flatten())


def test_fully_connected_equalized_lr():
    fc = sg.FullyConnectedLayer(16, 8, lr_multiplier=0.01, bias_init=1.0)
    x = torch.randn(3, 16)
    gain = 0.01 / math.sqrt(16)
    assert fc.weight_gain == pytest.approx(gain)
    expect = x @ (fc.weight * gain).t() + fc.bias * 0.01
    assert torch.allclose(fc(x), expect, atol=ATOL)
    fc_lrelu = sg.FullyConnectedLayer(16, 8, activation="lrelu")
    expect = F.leaky_relu(x @ (fc_lrelu.weight / 4).t(), 0.2) * math.sqrt(2)
    assert torch.allclose(fc_lrelu(x), expect, atol=ATOL)


@pytest.mark.parametrize("k", [1, 3])
def test_conv2d_layer_equalized_lr(k):
    conv = sg.Conv2dLayer(6, 5, k, activation="lrelu")
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 6, 9, 9)
    expect = F.leaky_relu(F.conv2d(x, conv.weight / math.sqrt(6 * k * k), conv.bias, padding=k // 2), 0.2) * math.sqrt(2)
    assert torch.allclose(conv(x), expect, atol=ATOL)


@pytest.mark.parametrize("fused", [True, False])
def test_synthesis_layer_matches_per_sample_modulation(fused):
    layer = sg.SynthesisLayer(6, 5, w_dim=7, resolution=8).eval()
    with torch.no_grad():
        layer.bias.normal_()
    x, w = torch.randn(3, 6, 8, 8), torch.randn(3, 7)
    styles = layer.affine(w)
    expect = F.leaky_relu(_ref_modconv(x, layer.weight, styles) + layer.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
    assert torch.allclose(layer(x, w, fused_modconv=fused), expect, atol=ATOL)


def test_synthesis_layer_upsampling_matches_zero_stuffing_reference():
    layer = sg.SynthesisLayer(4, 5, w_dim=7, resolution=16, up=2, activation="linear")
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 7)
    styles = layer.affine(w)
    expect = []
    for i in range(2):
        wi = layer.weight * styles[i].view(1, -1, 1, 1)
        wi = wi / torch.sqrt((wi**2).sum(dim=(1, 2, 3)) + 1e-8).view(-1, 1, 1, 1)
        expect.append(_ref_up2_conv(x[i : i + 1], wi))
    expect = torch.cat(expect)
    got = layer(x, w)
    assert got.shape == (2, 5, 16, 16)
    assert torch.allclose(got, expect, atol=ATOL)


def test_shared_styles_equal_per_sample_styles():
    layer = sg.SynthesisLayer(6, 5, w_dim=7, resolution=16, up=2)
    x, w = torch.randn(3, 6, 8, 8), torch.randn(1, 7)
    assert torch.allclose(layer(x, w), layer(x, w.expand(3, -1)), atol=ATOL)


def test_noise_modes():
    layer = sg.SynthesisLayer(4, 4, w_dim=5, resolution=8, activation="linear")
    with torch.no_grad():
        layer.noise_strength.fill_(0.5)
    x, w = torch.randn(1, 4, 8, 8), torch.randn(1, 5)
    none, const = layer(x, w, noise_mode="none"), layer(x, w, noise_mode="const")
    assert torch.allclose(const - none, (layer.noise_const * 0.5).expand_as(none), atol=ATOL)
    r1 = layer(x, w, noise_mode="random", generator=torch.Generator().manual_seed(3))
    r2 = layer(x, w, noise_mode="random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1, r2) and not torch.allclose(r1, none)
    with pytest.raises(ValueError):
        layer(x, w, noise_mode="bogus")


def test_torgb_is_modulated_without_demodulation():
    torgb = sg.ToRGBLayer(6, 3, w_dim=7)
    x, w = torch.randn(2, 6, 5, 5), torch.randn(2, 7)
    styles = torgb.affine(w) / math.sqrt(6)
    expect = _ref_modconv(x, torgb.weight, styles, demodulate=False) + torgb.bias.view(1, -1, 1, 1)
    assert torch.allclose(torgb(x, w), expect, atol=ATOL)
    assert torch.allclose(torgb(x, w, fused_modconv=False), expect, atol=ATOL)


def test_delta_weight_after_gain_for_fc_and_conv():
    fc, conv = sg.FullyConnectedLayer(6, 4), sg.Conv2dLayer(3, 4, 3)
    d_fc, d_conv = torch.randn(4, 6), torch.randn(4, 3, 3, 3)
    x = torch.randn(2, 6)
    assert torch.allclose(fc(x, delta_weight=d_fc), x @ (fc.weight / math.sqrt(6) + d_fc).t() + fc.bias, atol=ATOL)
    xi = torch.randn(2, 3, 6, 6)
    expect = F.conv2d(xi, conv.weight / math.sqrt(27) + d_conv, conv.bias, padding=1)
    assert torch.allclose(conv(xi, delta_weight=d_conv), expect, atol=ATOL)
    with pytest.raises(ValueError):
        fc(x, delta_weight=torch.zeros(6, 4))


@pytest.mark.parametrize("kind", ["synthesis", "torgb"])
def test_delta_weight_on_raw_weight_for_modulated_layers(kind):
    if kind == "synthesis":
        layer = sg.SynthesisLayer(4, 5, w_dim=6, resolution=8, up=2)
        args = (torch.randn(2, 4, 4, 4), torch.randn(2, 6))
    else:
        layer = sg.ToRGBLayer(4, 3, w_dim=6)
        args = (torch.randn(2, 4, 8, 8), torch.randn(2, 6))
    delta = torch.randn_like(layer.weight) * 0.3
    merged = copy.deepcopy(layer)
    with torch.no_grad():
        merged.weight += delta  # raw-weight semantics: the delta is modulated (and demodulated) too
    assert torch.allclose(layer(*args, delta_weight=delta), merged(*args), atol=ATOL)
    assert not torch.allclose(layer(*args, delta_weight=delta), layer(*args), atol=1e-3)


@pytest.mark.parametrize("block_cls,in_res", [(sg.SynthesisBlock, 4), (sg.SynthesisBlockNoUp, 8)])
def test_synthesis_blocks_skip_architecture(block_cls, in_res):
    block = block_cls(6, 5, w_dim=7, resolution=8, img_channels=3).eval()
    x, img, ws = torch.randn(2, 6, in_res, in_res), torch.randn(2, 3, in_res, in_res), torch.randn(2, 3, 7)
    y, out = block(x, img, ws)
    assert y.shape == (2, 5, 8, 8) and out.shape == (2, 3, 8, 8)
    w0, w1, w2 = ws.unbind(1)
    expect_x = block.conv1(block.conv0(x, w0), w1)
    skip = sg.upsample2d(img, block.resample_filter) if block.up == 2 else img
    assert torch.allclose(y, expect_x, atol=ATOL)
    assert torch.allclose(out, skip + block.torgb(expect_x, w2), atol=ATOL)
    block.train()  # unfused path during training gives the same numbers
    assert torch.allclose(block(x, img, ws)[1], out, atol=ATOL)
    with pytest.raises(ValueError):
        block(x, img, ws[:, :2])


def test_state_dict_names():
    keys = set(sg.SynthesisBlock(4, 8, w_dim=16, resolution=8).state_dict())
    assert {"resample_filter", "conv0.weight", "conv0.bias", "conv0.noise_const", "conv0.noise_strength",
            "conv0.resample_filter", "conv0.affine.weight", "conv0.affine.bias", "torgb.weight", "torgb.bias",
            "torgb.affine.weight", "torgb.affine.bias"} <= keys
    assert set(sg.Conv2dLayer(9, 3, 1).state_dict()) == {"weight", "bias", "resample_filter"}
    assert "in_features=4" in repr(sg.FullyConnectedLayer(4, 2))


@pytest.mark.parametrize("shape, out, groups", [((1, 64, 32, 32), 32, 1), ((2, 8, 9, 7), 5, 1), ((2, 8, 9, 7), 4, 2)])
def test_cpu_transposed_conv_layout_shortcut_keeps_the_values(shape, out, groups):
    """The x2 modulated conv's transposed convolution runs on channels-last input with blocked
    2-D transposes around it on the CPU (PyTorch's own NHWC -> NCHW copy was as slow as the
    convolution): a contiguous result with the same values and gradients. At the renderer's
    sizes oneDNN computes both layouts with one kernel (bit-identical on this machine); small
    inputs may take PyTorch's reference kernel on the contiguous side (1 ulp apart here), so
    the bound is fp32 reordering noise: sums of ~600 products of values <= 4, |out| <= ~40."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    w = torch.randn(shape[1], out // groups, 3, 3, generator=g)
    want = F.conv_transpose2d(x, w, stride=2, groups=groups)
    got = sg._conv_transpose2d(x, w, stride=2, groups=groups)
    assert got.is_contiguous() and torch.allclose(got, want, rtol=0, atol=2e-5)
    cl = sg._transpose_layout(x, torch.channels_last)
    assert torch.equal(cl, x) and cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(sg._transpose_layout(cl), x) and sg._transpose_layout(cl).is_contiguous()
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    grads = torch.autograd.grad(sg._conv_transpose2d(xg, wg, stride=2, groups=groups).square().sum(), (xg, wg))
    ref = torch.autograd.grad(F.conv_transpose2d(xg, wg, stride=2, groups=groups).square().sum(), (xg, wg))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-5 * b.abs().max().item()) for a, b in zip(grads, ref))
