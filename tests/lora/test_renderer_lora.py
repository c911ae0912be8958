"""LoRA on the real renderer: upstream's parameter count on the full configuration, merged ==
on-the-fly on the tiny renderer, and official personalised checkpoints rendered through the
merged loader == through our peft layers applied on the fly."""

import pytest
import torch

from mimictalk_lib.lora.inject import inject_lora, lora_parameters, lora_state_dict, load_lora_state_dict, merge_lora
from mimictalk_lib.lora.official import official_lora_keys, split_official_lora
from mimictalk_lib.renderer import RendererConfig, load_renderer
from mimictalk_lib.renderer.model import Renderer
from tests.fixtures.tiny_renderer import official_shapes, random_renderer, renderer_inputs, tiny_checkpoint


def _render(model, inputs):
    with torch.no_grad():
        return model.render(**inputs, deterministic=True).image


def test_full_config_lora_matches_upstream_count_and_layout():
    """r=2, secc2plane_sr on the official 288-channel base: 91 108 LoRA parameters (§3.1), with
    exactly the official LoRA keys and shapes (meta device: no memory)."""
    with torch.device("meta"):
        base = Renderer(RendererConfig.full())
    model = inject_lora(base, "secc2plane_sr", r=2)
    assert sum(p.numel() for p in lora_parameters(model)) == 91_108
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 91_108
    table = official_shapes("personalised")
    expected = {k: shape for k, (shape, _) in table.items() if k.endswith((".lora_A", ".lora_B"))}
    assert {k: tuple(v.shape) for k, v in lora_state_dict(model).items()} == expected


@pytest.fixture(scope="module")
def tiny_base():
    return random_renderer("mimictalk", seed=3)


@pytest.fixture(scope="module")
def tiny_inputs(tiny_base):
    return renderer_inputs(tiny_base.cfg, frames=2, seed=4)


@pytest.mark.parametrize("conv_lora", ["upstream", "peft"])
def test_tiny_renderer_merged_equals_on_the_fly(tiny_base, tiny_inputs, conv_lora):
    before = {k: v.clone() for k, v in tiny_base.state_dict().items()}
    base_img = _render(tiny_base, tiny_inputs)
    model = inject_lora(tiny_base, "secc2plane_sr", r=2, conv_lora=conv_lora)
    assert torch.equal(_render(model, tiny_inputs), base_img)  # fresh adapter = identity
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 / p.shape[1] ** 0.5)
    on_the_fly = _render(model, tiny_inputs)
    merged = _render(merge_lora(model), tiny_inputs)
    assert (on_the_fly - merged).abs().max().item() < 1e-5
    assert (on_the_fly - base_img).abs().max().item() > 1e-3
    after = tiny_base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("zero_b", [False, True])
def test_official_checkpoint_merged_equals_peft_on_the_fly(zero_b):
    ckpt = tiny_checkpoint("personalised", seed=11, zero_lora_b=zero_b)
    sd = ckpt["state_dict"]["model"]
    loaded = load_renderer(ckpt, base_config=RendererConfig.tiny())  # merges at load
    base_sd, lora = split_official_lora(sd, r=2)
    base = load_renderer(base_sd, base_config=RendererConfig.tiny()).model
    model = inject_lora(base, lora.lora_mode, r=lora.r)
    load_lora_state_dict(model, {k: sd[k] for k in official_lora_keys(sd)})
    inputs = renderer_inputs(loaded.config, frames=2, seed=12, cano_planes=loaded.cano_planes)
    ours, theirs = _render(model, inputs), _render(loaded.model, inputs)
    assert (ours - theirs).abs().max().item() < 1e-5
    if zero_b:  # all-zero B: the personalised renderer is its base
        assert (_render(base, inputs) - ours).abs().max().item() < 1e-6
