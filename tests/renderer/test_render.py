"""Tiny-preset renderer: shapes and ranges, determinism, batched == per-frame, LoRA handling,
chunked clip rendering (progress, interruption, output device / dtype). CPU only."""

import pytest
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.lora.official import split_official_lora
from mimictalk_lib.renderer import RendererConfig, load_renderer
from tests.fixtures.tiny_renderer import frames_of, random_renderer, renderer_inputs, tiny_checkpoint, with_planes

TINY = RendererConfig.tiny()
FIELDS = ("image", "image_raw", "alpha", "depth")


def _max_diff(a, b):
    return max((getattr(a, f) - getattr(b, f)).abs().max().item() for f in FIELDS)


@pytest.fixture(scope="module")
def model():
    return random_renderer("mimictalk")


@pytest.fixture(scope="module")
def inputs(model):
    return renderer_inputs(model.cfg, frames=3)


@pytest.mark.parametrize("layout", ["mimictalk", "real3d"])
def test_output_shapes_and_ranges(layout):
    m = random_renderer(layout)
    inp = renderer_inputs(m.cfg, frames=2)
    with torch.no_grad():
        inp = with_planes(inp, m.cano_planes(inp["source"].ref_torso))  # one-shot path: planes from an image
        out = m.render(**inp)
    cfg, r = m.cfg, m.cfg.neural_resolution
    assert out.image.shape == (2, 3, cfg.image_resolution, cfg.image_resolution)
    assert out.image_raw.shape == (2, 3, r, r) and out.alpha.shape == out.depth.shape == (2, 1, r, r)
    assert out.image.min() >= -1 and out.image.max() <= 1 and out.image.std() > 0.05
    assert out.image_raw.min() >= -1 and out.image_raw.max() <= 1
    assert out.alpha.min() > 0 and out.alpha.max() < 1
    assert 2.0 < out.depth.min() and out.depth.max() < 3.5  # inside the box seen from 2.86
    assert not torch.allclose(out.image[0], out.image[1])  # different driving frames and cameras


def test_deterministic_rendering_is_repeatable_and_stochastic_follows_the_generator(model, inputs):
    a = model.render_frames(**inputs, chunk_size=3)
    b = model.render_frames(**inputs, chunk_size=3)
    assert _max_diff(a, b) == 0
    s1 = model.render_frames(**inputs, deterministic=False, generator=torch.Generator().manual_seed(5))
    s2 = model.render_frames(**inputs, deterministic=False, generator=torch.Generator().manual_seed(5))
    s3 = model.render_frames(**inputs, deterministic=False, generator=torch.Generator().manual_seed(6))
    assert _max_diff(s1, s2) == 0 and _max_diff(s1, s3) > 0
    assert (s1.image - a.image).abs().mean() < 0.1  # same frames, other sample positions


def test_batched_equals_per_frame(model, inputs):
    batched = model.render_frames(**inputs, chunk_size=3)
    single = model.render_frames(**inputs, chunk_size=1)
    assert _max_diff(batched, single) < 1e-5
    with torch.no_grad():  # render() on one frame with per-frame slices of everything
        one = model.render(**frames_of(inputs, slice(1, 2)))
    assert _max_diff(one, type(one)(*(getattr(batched, f)[1:2] for f in FIELDS))) < 1e-5


def test_personalised_with_zero_lora_b_renders_like_its_base():
    ckpt = tiny_checkpoint("personalised", zero_lora_b=True)
    personal = load_renderer(ckpt, base_config=TINY)
    base_sd, _ = split_official_lora(ckpt["state_dict"]["model"])
    base = load_renderer(base_sd, base_config=TINY)
    assert personal.layout == "personalised" and base.layout == "mimictalk"
    inp = with_planes(renderer_inputs(personal.config, frames=2), personal.cano_planes)
    assert _max_diff(personal.model.render_frames(**inp), base.model.render_frames(**inp)) == 0
    # and a real LoRA does change the frames
    lora = load_renderer(tiny_checkpoint("personalised"), base_config=TINY)
    assert (lora.model.render_frames(**inp).image - base.model.render_frames(**inp).image).abs().max() > 1e-3


def test_merged_lora_equals_lora_held_in_the_official_layout():
    ckpt = tiny_checkpoint("personalised")
    merged = load_renderer(ckpt, base_config=TINY)
    on_the_fly = load_renderer(ckpt, base_config=TINY, merge_lora=False)
    assert on_the_fly.config.lora_rank == 2 and merged.config.lora_rank == 0
    inp = with_planes(renderer_inputs(merged.config, frames=2), merged.cano_planes)
    assert _max_diff(merged.model.render_frames(**inp), on_the_fly.model.render_frames(**inp)) < 1e-5


def test_render_frames_progress_interrupt_and_outputs(model, inputs):
    calls = []
    out = model.render_frames(**inputs, chunk_size=2, on_step=lambda done, total, **kw: calls.append((done, total)),
                              output_dtype=torch.float64)
    assert calls == [(2, 3), (3, 3)] and out.image.dtype == torch.float64 and out.image.shape[0] == 3

    class Stop(Exception):
        pass

    def stop(done, total, **kw):
        raise Stop

    with pytest.raises(Stop):
        model.render_frames(**inputs, chunk_size=1, on_step=stop)
    with pytest.raises(InputError, match="chunk_size"):
        model.render_frames(**inputs, chunk_size=0)


def test_half_precision_is_refused_on_cpu(model, monkeypatch):
    """fp16 is refused on the CPU always, bf16 on a CPU without native bf16 (the opt-in below)."""
    from mimictalk_lib import utils

    with pytest.raises(InputError, match="half precision"):
        load_renderer(tiny_checkpoint("mimictalk"), base_config=TINY, dtype=torch.float16)
    monkeypatch.setattr(utils, "cpu_bf16_native", lambda: False)
    with pytest.raises(InputError, match="no native bf16"):
        load_renderer(tiny_checkpoint("mimictalk"), base_config=TINY, dtype=torch.bfloat16)
    bf16 = random_renderer("mimictalk").to(torch.bfloat16)
    with pytest.raises(InputError, match="no native bf16"):
        bf16.render_frames(**renderer_inputs(bf16.cfg, frames=1))


@pytest.mark.skipif(not __import__("mimictalk_lib.utils").utils.cpu_bf16_native(),
                    reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
def test_cpu_bf16_is_an_opt_in_close_to_fp32(model, inputs):
    """bf16 on a CPU with native bf16 (opt-in; docs/benchmarks.md: ~2x, 37-61 dB PSNR at the
    full size, depending on the random weights): renders (the ops PyTorch has no bf16 CPU kernel for run in fp32), with the
    convolution weights stored channels-last, and stays near the fp32 frames. Bound: bf16 keeps
    8 significant bits (relative rounding 2^-9 per op) through ~40 layers of the tiny SR;
    measured mean |diff| 9e-4, max 8e-3 here, the bound is ~5x that. Frames of other inputs
    differ from these by 0.03 on average, so a broken path does not pass."""
    import copy

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    want = model.render_frames(**inputs)
    got = bf16.render_frames(**inputs)
    convs = [m for m in bf16.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last if m.weight.dim() == 4
                                                else torch.channels_last_3d) for m in convs)
    assert got.image.dtype == torch.float32 and bool(torch.isfinite(got.image).all())
    diff = (got.image - want.image).abs()
    assert diff.mean().item() < 5e-3 and diff.max().item() < 0.05


def test_inputs_are_checked(model, inputs):
    bad = dict(inputs, camera=inputs["camera"][:, :16])
    with pytest.raises(InputError, match="camera"):
        model.render_frames(**bad)
    bad = dict(inputs, drv_secc=inputs["drv_secc"][..., :32, :32])
    with pytest.raises(InputError, match="drv_secc"):
        model.render_frames(**bad)
