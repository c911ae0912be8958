"""peft LoRA on the renderer's layers: injection, identity at init, merged == on-the-fly,
official layout round trips, and the base renderer left untouched."""

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Conv2d as PeftConv2d
from torch import nn

from mimictalk_lib.errors import CheckpointError, InputError
from mimictalk_lib.lora.inject import (
    inject_lora,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    lora_targets,
    load_lora_state_dict,
    merge_lora,
)
from mimictalk_lib.lora.layers import LoraConv2dLoralib, LoraFullyConnected, LoraStyleConv2d, LoraSynthesis, LoraToRGB
from mimictalk_lib.lora.official import merge_official_lora, official_lora_shapes, to_official_layout
from mimictalk_lib.renderer.stylegan import Conv2dLayer, FullyConnectedLayer


def _randomise(model, scale=0.05, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {n: p.requires_grad for n, p in model.named_parameters()}


def test_private_peft_hook_still_exists():
    """peft's custom-layer registration is private/experimental: fail loudly if it disappears."""
    assert callable(getattr(LoraConfig(), "_register_custom_module", None))


def test_targets_and_layer_types(toy):
    assert lora_targets(toy, "secc2plane_sr") == [
        "secc_img2plane_backbone.prenet",
        "secc_img2plane_backbone.to_plane_cnn.0",
        "secc_img2plane_backbone.to_plane_cnn.2",
        "superresolution.block0.conv0",
        "superresolution.block0.conv0.affine",
        "superresolution.block0.conv1",
        "superresolution.block0.conv1.affine",
        "superresolution.block0.torgb",
        "superresolution.head_torso_block.conv0",
        "superresolution.head_torso_block.conv0.affine",
        "superresolution.head_torso_block.conv1",
        "superresolution.head_torso_block.conv1.affine",
        "superresolution.block1.conv0",
        "superresolution.block1.conv0.affine",
        "superresolution.block1.conv1",
        "superresolution.block1.conv1.affine",
        "superresolution.block1.torgb",
    ]
    model = inject_lora(toy, "all", r=2)
    layers = lora_layers(model)
    assert isinstance(layers["secc_img2plane_backbone.prenet"], LoraStyleConv2d)
    assert isinstance(layers["secc_img2plane_backbone.to_plane_cnn.0"], LoraConv2dLoralib)
    assert isinstance(layers["superresolution.block0.conv0"], LoraSynthesis)
    assert isinstance(layers["superresolution.block0.conv0.affine"], LoraFullyConnected)
    assert isinstance(layers["superresolution.block1.torgb"], LoraToRGB)
    assert isinstance(layers["decoder.net.2"], LoraFullyConnected)
    assert "superresolution.head_torso_block.torgb" not in layers  # upstream: no LoRA there
    with pytest.raises(InputError, match="lora_mode"):
        inject_lora(toy, "everything")


def test_parameter_count_and_names_match_the_official_layout(toy):
    model = inject_lora(toy, "secc2plane_sr", r=2)
    ours = {k: tuple(v.shape) for k, v in lora_state_dict(model).items()}
    official = official_lora_shapes(toy.state_dict(), "secc2plane_sr", r=2)
    expected = {f"{p}.lora_{ab}": s for p, (sa, sb) in official.items() for ab, s in (("A", sa), ("B", sb))}
    assert ours == expected
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in lora_parameters(model)) == sum(
        sa[0] * sa[1] + sb[0] * sb[1] for sa, sb in official.values()
    )


@torch.no_grad()
def test_fresh_adapter_is_identity_and_base_is_untouched(toy, toy_inputs):
    before, grads = _snapshot(toy)
    ref = toy(*toy_inputs)
    model = inject_lora(toy, "all", r=2)
    out = model(*toy_inputs)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)  # B = 0: exactly the base output
    layers = lora_layers(model)
    torgb = layers["superresolution.block0.torgb"]
    assert not torgb.lora_A["default"].weight.any() and not torgb.lora_B["default"].weight.any()
    assert layers["superresolution.block0.conv0"].lora_A["default"].weight.any()  # Kaiming A
    _randomise(model)
    model(*toy_inputs)
    merge_lora(model)
    after, grads_after = _snapshot(toy)
    assert all(torch.equal(before[k], after[k]) for k in before) and grads == grads_after
    assert all(p.requires_grad for p in toy.parameters())  # the base's flags were not touched


@pytest.mark.parametrize("conv_lora", ["upstream", "peft"])
@torch.no_grad()
def test_merged_equals_on_the_fly(toy, toy_inputs, conv_lora):
    model = inject_lora(toy, "all", r=2, conv_lora=conv_lora)
    conv = lora_layers(model)["secc_img2plane_backbone.to_plane_cnn.0"]
    assert isinstance(conv, LoraConv2dLoralib if conv_lora == "upstream" else PeftConv2d)
    _randomise(model)
    on_the_fly = model(*toy_inputs)
    merged = merge_lora(model)
    assert not lora_layers(merged)
    assert set(merged.state_dict()) == set(toy.state_dict())
    base = toy(*toy_inputs)
    for a, b, c in zip(on_the_fly, merged(*toy_inputs), base):
        assert (a - b).abs().max().item() < 1e-5
        assert (a - c).abs().max().item() > 1e-3
    assert lora_layers(model)  # merge_lora returned a new model; the personalised one is intact
    for a, b in zip(on_the_fly, model(*toy_inputs)):
        assert torch.equal(a, b)


@torch.no_grad()
def test_official_checkpoint_renders_like_peft_on_the_fly(toy, toy_inputs):
    """A personalised state dict in the official layout (random nonzero LoRA): merged at load
    into the base layout == loaded into our peft layers and applied on the fly."""
    g = torch.Generator().manual_seed(7)
    base_sd = toy.state_dict()
    pairs = {
        p: (torch.randn(sa, generator=g) * 0.05, torch.randn(sb, generator=g) * 0.05)
        for p, (sa, sb) in official_lora_shapes(base_sd, "secc2plane_sr", 2).items()
    }
    official = to_official_layout(base_sd, pairs)
    merged_sd, info = merge_official_lora(official, r=2)
    assert info.lora_mode == "secc2plane_sr"
    merged_model = type(toy)().eval()
    merged_model.load_state_dict(merged_sd, strict=True)

    model = inject_lora(toy, info.lora_mode, r=info.r)
    load_lora_state_dict(model, {f"{p}.lora_{ab}": t for p, (a, b) in pairs.items() for ab, t in (("A", a), ("B", b))})
    for a, b in zip(merged_model(*toy_inputs), model(*toy_inputs)):
        assert (a - b).abs().max().item() < 1e-5


def test_load_errors(toy):
    model = inject_lora(toy, "sr", r=2)
    sd = lora_state_dict(model)
    with pytest.raises(CheckpointError, match="missing"):
        load_lora_state_dict(model, {k: v for k, v in sd.items() if "torgb" not in k})
    other = lora_state_dict(inject_lora(toy, "sr", r=3))
    with pytest.raises(CheckpointError, match="shape"):
        load_lora_state_dict(model, other)


def test_only_lora_trains_and_torgb_stays_zero(toy, toy_inputs):
    model = inject_lora(toy, "secc2plane_sr", r=2).train()
    base_before, _ = _snapshot(toy)
    opt = torch.optim.Adam(lora_parameters(model), lr=1e-2)
    for _ in range(3):
        img, _ = model(*toy_inputs)
        loss = img.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        n for n, p in model.named_parameters() if "lora_" in n
    }
    layers = lora_layers(model)
    assert not layers["superresolution.block1.torgb"].lora_B["default"].weight.any()
    assert layers["superresolution.block1.conv1"].lora_B["default"].weight.abs().sum() > 0
    base_after, _ = _snapshot(toy)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)  # BN stats too


def _single_layer(kind):
    """One base layer of each dW placement, its LoRA wrapper and an input."""
    torch.manual_seed(0)
    if kind == "fc":  # dW after the gain; lr_multiplier != 1 so the gain is not 1 / sqrt(in) alone
        return LoraFullyConnected, FullyConnectedLayer(6, 5, lr_multiplier=0.5), torch.randn(4, 6)
    if kind == "conv":
        return LoraStyleConv2d, Conv2dLayer(4, 3, 3), torch.randn(2, 4, 7, 7)
    return LoraConv2dLoralib, nn.Conv2d(4, 3, 3, padding=1), torch.randn(2, 4, 7, 7)


@pytest.mark.parametrize("kind", ["fc", "conv", "loralib"])
@torch.no_grad()
def test_peft_merge_unmerge_and_disable_on_one_layer(kind):
    """peft's own layer API (merge / unmerge / safe_merge / enable_adapters), which merge_lora
    does not use: merged output == on-the-fly output, the adapter is added once, unmerge restores
    the raw weight, a disabled layer is its base (unmerging first), a non-finite merge is refused.
    Tolerances: fp32 sums of <= 36 products of O(1) numbers (~1e-6); the weight round trip
    through float64 casts twice (one fp32 ulp of |W| <= ~8)."""
    cls, base, x = _single_layer(kind)
    raw, plain = base.weight.detach().clone(), base(x)
    layer = cls(base, "default", r=2)
    assert repr(layer).startswith("lora.")
    g = torch.Generator().manual_seed(1)
    for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    live = layer(x)
    assert (live - plain).abs().max() > 1e-2
    if kind == "conv":  # keyword arguments reach the base layer (linear activation: gain scales)
        assert torch.allclose(layer(x, gain=0.5), live * 0.5, atol=1e-5)

    layer.merge()
    assert layer.merged
    expected = (raw.double() + layer.get_delta_weight("default").double()).float()
    assert torch.equal(base.weight, expected)  # formed in float64, cast once: exact by construction
    assert torch.allclose(base(x), live, atol=1e-5)  # the base alone now renders the adapted layer
    assert torch.allclose(layer(x), live, atol=1e-5) and layer.merged  # not added twice, stays merged
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()  # nothing happens
    assert torch.equal(base.weight, expected)

    layer.unmerge()
    assert not layer.merged and torch.allclose(base.weight, raw, rtol=0, atol=1e-6)
    assert torch.allclose(layer(x), live, atol=1e-5)

    layer.merge()
    layer.enable_adapters(False)
    assert torch.allclose(layer(x), plain, atol=1e-5) and not layer.merged
    if kind == "conv":
        assert torch.allclose(layer(x, gain=0.5), plain * 0.5, atol=1e-5)
    assert torch.allclose(base.weight, raw, rtol=0, atol=1e-6)
    layer.enable_adapters(True)
    assert torch.allclose(layer(x), live, atol=1e-5)

    layer.update_layer("other", 2, 4.0)  # positional lora_alpha: scaling 4 / 2
    assert layer.scaling["other"] == 2.0
    for p in (layer.lora_A["other"].weight, layer.lora_B["other"].weight):
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    layer.set_adapter(["default", "other"])
    both = layer(x)  # two active adapters: both deltas added
    assert (both - live).abs().max() > 1e-2
    layer.merge()
    assert torch.allclose(base(x), both, atol=1e-5) and torch.allclose(layer(x), both, atol=1e-5)
    layer.unmerge()
    layer.set_adapter("default")

    layer.lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer.merge(safe_merge=True)
    assert not layer.merged and torch.allclose(base.weight, raw, rtol=0, atol=1e-6)


@torch.no_grad()
def test_loralib_conv_layer_checks_and_bias_free_conv():
    """loralib-form conv LoRA: grouped or non-square kernels are refused with the way out named;
    a bias-free conv computes conv(x, W + B @ A / r) (fp32 sums of 36 products: 1e-5)."""
    for conv in (nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 3, (3, 1))):
        with pytest.raises(InputError, match="groups=1 and a square kernel.*conv_lora='peft'"):
            LoraConv2dLoralib(conv, "default", r=2)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1, bias=False)
    layer = LoraConv2dLoralib(conv, "default", r=2, lora_alpha=4.0)
    assert layer.scaling["default"] == 2.0
    layer.lora_B["default"].weight.normal_()
    x = torch.randn(2, 4, 7, 7)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = torch.nn.functional.conv2d(x, conv.weight + (b @ a).view(3, 4, 3, 3) * 2.0, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_layer_defaults_and_config():
    """Constructor and update_layer defaults (r=2, alpha=1: upstream), the adapter shapes, a
    config's init_lora_weights=False (both random) against the default (B zero), dropout refused."""
    base = FullyConnectedLayer(6, 5)
    layer = LoraFullyConnected(base, "default")
    assert (layer.in_features, layer.out_features) == (6, 5)
    assert layer.r["default"] == 2 and layer.scaling["default"] == 0.5
    assert not layer.lora_B["default"].weight.any() and layer.lora_A["default"].weight.any()
    layer.update_layer("four", 4)
    assert layer.scaling["four"] == 0.25 and not layer.lora_B["four"].weight.any()
    layer.update_layer("random", 2, config=LoraConfig(init_lora_weights=False))
    assert layer.lora_B["random"].weight.any()
    rand = LoraFullyConnected(FullyConnectedLayer(6, 5), "default", config=LoraConfig(init_lora_weights=False))
    assert rand.lora_B["default"].weight.any()
    plain = LoraFullyConnected(FullyConnectedLayer(6, 5), "default", config=LoraConfig())
    assert not plain.lora_B["default"].weight.any()
    with pytest.raises(InputError, match=r"LoRA dropout is not supported on the renderer's layers \(got 0.1\); use 0"):
        LoraFullyConnected(FullyConnectedLayer(6, 5), "default", config=LoraConfig(lora_dropout=0.1))


def test_register_custom_layers_refusals():
    """A conv form that does not exist, and a peft without the private custom-layer hook."""
    from mimictalk_lib.lora.layers import register_custom_layers

    with pytest.raises(InputError, match=r"^conv_lora must be one of \('upstream', 'peft'\), got 'loralib'$"):
        register_custom_layers(LoraConfig(), conv_lora="loralib")
    with pytest.raises(InputError, match=r"^the installed peft has no LoraConfig\._register_custom_module .*pip install 'peft>=0\.13,<0\.22'$"):
        register_custom_layers(object())
    assert register_custom_layers(LoraConfig())._custom_modules[nn.Conv2d] is LoraConv2dLoralib  # default: upstream form


def test_a_is_kaiming_uniform_with_a_sqrt5():
    """upstream / loralib init: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming a=sqrt(5)); with
    128 draws the largest |A| lies within 7 % of the bound (chance of missing: 0.93^128 < 1e-4)."""
    torch.manual_seed(0)
    a = LoraFullyConnected(FullyConnectedLayer(64, 5), "default").lora_A["default"].weight
    assert 0.93 / 8 < a.abs().max().item() <= 1 / 8


@torch.no_grad()
def test_peft_merge_of_named_adapters_skips_foreign_ones_and_checks_only_on_request():
    """peft's merge arguments: ``adapter_names`` merges just those (the others stay on the fly),
    an active adapter this layer does not hold (a model-wide name targeting other modules) is
    skipped without stopping the loop, ``safe_merge=True`` merges finite weights, and the check
    runs only on request (peft's default ``safe_merge=False``). Weights formed in float64 and
    cast once are exact by construction; outputs within fp32 sums of 6 products (1e-5)."""
    cls, base, x = _single_layer("fc")
    raw = base.weight.detach().clone()
    layer = cls(base, "default", r=2)
    layer.update_layer("other", 2)
    g = torch.Generator().manual_seed(2)
    for name in ("default", "other"):
        for p in (layer.lora_A[name].weight, layer.lora_B[name].weight):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    layer.set_adapter(["default", "other"])
    both = layer(x)

    layer.merge(adapter_names=["other"])
    assert layer.merged_adapters == ["other"]
    assert torch.equal(base.weight, (raw.double() + layer.get_delta_weight("other").double()).float())
    assert torch.allclose(layer(x), both, atol=1e-5)  # "default" still added on the fly
    layer.unmerge()

    layer.set_adapter(["ghost", "default"])  # "ghost" has no matrices in this layer
    w0 = base.weight.detach().clone()  # the unmerge round trip moves raw by up to an ulp
    layer.merge(safe_merge=True)
    assert layer.merged_adapters == ["default"]
    assert torch.equal(base.weight, (w0.double() + layer.get_delta_weight("default").double()).float())
    layer.unmerge()
    layer.set_adapter("default")

    layer.lora_B["default"].weight[0, 0] = float("inf")
    layer.merge()  # no check unless asked
    assert layer.merged_adapters == ["default"] and not torch.isfinite(base.weight).all()
