"""Adapter file: official checkpoint import renders like the renderer's own loader, save ->
load -> render round trip, base-model checks, and the base renderer left untouched."""

import pytest
import torch

from mimictalk_lib.adapt.adapter import load_adapter, personalise, save_adapter
from mimictalk_lib.adapt.official_import import import_official_checkpoint
from mimictalk_lib.errors import CheckpointError
from mimictalk_lib.lora.inject import lora_targets
from mimictalk_lib.lora.official import split_official_lora
from mimictalk_lib.renderer import RendererConfig, load_renderer
from tests.fixtures.tiny_renderer import random_renderer, renderer_inputs, tiny_checkpoint, with_planes


def _render(model, inputs, planes):
    with torch.no_grad():
        return model.render(**with_planes(inputs, planes), deterministic=True).image


@pytest.fixture(scope="module")
def official():
    """A tiny personalised checkpoint whose BatchNorm statistics moved during 'training' (as in
    upstream's train-mode adaptation), and the base renderer it was trained from."""
    ckpt = tiny_checkpoint("personalised", seed=21)
    sd = ckpt["state_dict"]["model"]
    base_sd, _ = split_official_lora(sd, r=2)
    base = load_renderer(base_sd, base_config=RendererConfig.tiny()).model
    key = next(k for k in sd if k.startswith("superresolution.torso_model") and k.endswith("running_mean"))
    sd[key] = sd[key] + 0.5  # what train-mode BatchNorm does to the personalised checkpoint
    return ckpt, base, key


def test_official_import_renders_like_the_renderer_loader(official, tmp_path):
    ckpt, base, moved = official
    before = {k: v.clone() for k, v in base.state_dict().items()}
    loaded = load_renderer(ckpt, base_config=RendererConfig.tiny())  # renderer-core: merged at load
    adapter = import_official_checkpoint(ckpt, base)
    assert adapter.spec.lora_mode == "secc2plane_sr" and adapter.spec.r == 2
    assert moved in adapter.norm_state
    assert torch.equal(adapter.identity.id, ckpt["person_ds"]["id"])
    inputs = renderer_inputs(loaded.config, frames=2, seed=22)
    theirs = _render(loaded.model, inputs, loaded.cano_planes)
    for merge in (True, False):
        pers = personalise(base, adapter, merge=merge)
        assert torch.equal(pers.cano_planes, loaded.cano_planes)
        ours = _render(pers.model, inputs, pers.cano_planes)
        assert (ours - theirs).abs().max().item() < 1e-5

    # without the moved statistics the rendering differs: the norm state is needed
    stale = dict(adapter.norm_state)
    stale[moved] = before[moved]
    adapter.norm_state = stale
    assert (_render(personalise(base, adapter).model, inputs, loaded.cano_planes) - theirs).abs().max() > 1e-4

    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_save_load_round_trip_and_base_check(official, tmp_path):
    ckpt, base, _ = official
    adapter = import_official_checkpoint(ckpt, base_config=RendererConfig.tiny())  # no base given
    path = tmp_path / "person.safetensors"
    save_adapter(path, adapter)
    back = load_adapter(path)
    assert set(back.lora) == set(adapter.lora) and all(torch.equal(back.lora[k], adapter.lora[k]) for k in adapter.lora)
    assert torch.equal(back.triplane, adapter.triplane) and back.spec == adapter.spec
    assert back.metadata["format"] == "mimictalk-adapter" and back.metadata["lora"]["conv_lora"] == "upstream"
    inputs = renderer_inputs(base.cfg, frames=1, seed=23)
    a, b = personalise(base, adapter), personalise(base, back)
    # Same values, but not exact by construction: tensors read from a safetensors file are views of
    # the mapped file, not 64-byte aligned, and BLAS/oneDNN kernels may take another (peeled) path
    # for unaligned data on some CPUs: a converted renderer rendered 1.8e-7 off with
    # ATEN_CPU_CAPABILITY=default and MKL_ENABLE_INSTRUCTIONS=SSE4_2 (0 once the weights are copied to
    # aligned memory). 1e-5 is ~50x
    # that fp32 floor and far below one 8-bit level of the image (a wrong tensor shows at that scale).
    torch.testing.assert_close(_render(a.model, inputs, a.cano_planes), _render(b.model, inputs, b.cano_planes),
                               rtol=0, atol=1e-5)

    save_adapter(tmp_path / "half.safetensors", adapter, triplane_dtype=torch.float16)
    half = load_adapter(tmp_path / "half.safetensors")
    assert (half.triplane - adapter.triplane).abs().max() < 1e-2
    assert (tmp_path / "half.safetensors").stat().st_size < path.stat().st_size

    other = random_renderer("mimictalk", seed=99)
    with pytest.raises(CheckpointError, match="different base model"):
        personalise(other, back)
    with pytest.raises(CheckpointError, match="not a MimicTalk adapter"):
        from mimictalk_lib.checkpoint import save_safetensors

        save_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, {"format": "other"})
        load_adapter(tmp_path / "x.safetensors")


def test_personalise_under_inference_mode_shares_the_base_weights(official):
    """A host that loads models under torch.inference_mode: applying an adapter copies no base
    weight (only the LoRA'd layers get new merged tensors) and renders like the plain path."""
    ckpt, base, _ = official
    adapter = import_official_checkpoint(ckpt, base)
    with torch.inference_mode():
        frozen = load_renderer(split_official_lora(ckpt["state_dict"]["model"], r=2)[0], base_config=RendererConfig.tiny()).model
        pers = personalise(frozen, adapter)
    shared = {p.data_ptr() for p in frozen.parameters()}
    targets = set(lora_targets(frozen, "secc2plane_sr"))
    for name, p in pers.model.named_parameters():
        prefix, _, leaf = name.rpartition(".")
        merged = prefix in targets and leaf == "weight"  # only the LoRA'd weights are new tensors
        assert (p.data_ptr() in shared) != merged, name
    inputs = renderer_inputs(base.cfg, frames=1, seed=24)
    plain = personalise(base, adapter)
    # merged weights of equal value in other allocations: within the fp32 floor (see the round-trip test)
    torch.testing.assert_close(_render(pers.model, inputs, pers.cano_planes),
                               _render(plain.model, inputs, plain.cano_planes), rtol=0, atol=1e-5)
