"""peft LoRA on the renderer's layers: injection, identity at init, merged == on-the-fly,
official layout round trips, and the base renderer left untouched."""

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Conv2d as PeftConv2d

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
