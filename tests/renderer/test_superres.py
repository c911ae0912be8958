"""Super-resolution with head/torso/background compositing (mimictalk_lib.renderer.superres):
checkpoint layout, configuration inference and the tiny forward."""

import ast
import dataclasses
import pathlib

import pytest
import torch
import torch.nn.functional as F

from mimictalk_lib.errors import CheckpointError, InputError
from mimictalk_lib.renderer.superres import SuperResConfig, SuperResolution

KEY_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "state_dict_keys"
LAYOUTS = {"mimictalk_base_torso_trigridv2_d3.tsv": 3, "real3dportrait_secc2plane_torso_orig.tsv": 5}
PREFIX = "superresolution."


def _reference_shapes(tsv: str) -> dict[str, tuple[tuple[int, ...], str]]:
    rows = {}
    for line in (KEY_DIR / tsv).read_text().splitlines():
        key, shape, *dtype = line.split("\t")
        if key.startswith(PREFIX):
            rows[key[len(PREFIX):]] = (tuple(ast.literal_eval(shape)), (dtype or ["float32"])[0])
    return rows


def _random_state_dict(rows, prefix=PREFIX):
    """Exactly the reference keys, shapes and dtypes; uninitialised memory (cheap for 55 M
    values) except a few random tensors the test checks after loading."""
    g = torch.Generator().manual_seed(0)
    sd = {prefix + k: torch.empty(s, dtype=getattr(torch, dt)) for k, (s, dt) in rows.items()}
    for k in ("block0.conv0.weight", "torso_model.deform_based_generator.in_conv.layers.0.weight_u"):
        sd[prefix + k] = torch.randn(rows[k][0], generator=g)
    return sd


@pytest.mark.parametrize("tsv", list(LAYOUTS))
def test_full_state_dict_matches_reference(tsv):
    rows = _reference_shapes(tsv)
    assert len(rows) == 462
    with torch.device("meta"):
        model = SuperResolution(SuperResConfig.full(torso_in_channels=LAYOUTS[tsv]))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: s for k, (s, _) in rows.items()}


@pytest.mark.parametrize("tsv", list(LAYOUTS))
def test_infer_and_strict_load_of_official_layout(tsv):
    sd = _random_state_dict(_reference_shapes(tsv))
    cfg = SuperResConfig.infer(sd)
    assert cfg == SuperResConfig.full(torso_in_channels=LAYOUTS[tsv])
    with torch.device("meta"):
        model = SuperResolution(cfg)
    model.load_state_dict({k[len(PREFIX):]: v for k, v in sd.items()}, strict=True, assign=True)
    assert torch.equal(model.block0.conv0.weight, sd[PREFIX + "block0.conv0.weight"])
    sn_u = model.torso_model.deform_based_generator.in_conv.layers[0].weight_u
    assert torch.equal(sn_u, sd[PREFIX + "torso_model.deform_based_generator.in_conv.layers.0.weight_u"])


@pytest.mark.parametrize("in_channels", [3, 5])
def test_infer_round_trips_tiny(in_channels):
    cfg = dataclasses.replace(SuperResConfig.tiny(in_channels), head_threshold=0.5)
    sd = SuperResolution(cfg).state_dict()
    assert SuperResConfig.infer(sd, prefix="", head_threshold=0.5) == cfg
    sd_lora = {**sd, "block0.conv0.lora_A": torch.zeros(6, 96)}  # LoRA tensors are not the SR's business
    assert SuperResConfig.infer(sd_lora, prefix="", head_threshold=0.5) == cfg


def test_infer_names_offending_keys():
    sd = SuperResolution(SuperResConfig.tiny()).state_dict()
    bad = dict(sd)
    bad["bg_encoder.2.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"bg_encoder\.2\.weight"):
        SuperResConfig.infer(bad, prefix="")
    missing = {k: v for k, v in sd.items() if k != "fuse_fg_bg_convs.4.bias"}
    with pytest.raises(CheckpointError, match=r"missing 'fuse_fg_bg_convs\.4\.bias'"):
        SuperResConfig.infer(missing, prefix="")
    with pytest.raises(CheckpointError, match="block0.conv0.weight"):
        SuperResConfig.infer({}, prefix="")


def _inputs(cfg: SuperResConfig, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, big = cfg.neural_resolution, cfg.final_resolution
    x = torch.randn(batch, cfg.feature_channels, n, n, generator=g)
    labels = torch.zeros(batch, big, big, dtype=torch.long)
    labels[:, big // 2 :] = 4
    kp_s = torch.cat([torch.rand(1, 68, 2, generator=g) * 1.6 - 0.8, torch.zeros(1, 68, 1)], -1)
    return dict(
        rgb=x[:, :3],
        x=x,
        ref_torso=torch.rand(1, 3, big, big, generator=g) * 2 - 1,
        bg=torch.rand(1, 3, big, big, generator=g) * 2 - 1,
        weights=torch.rand(batch, 1, n, n, generator=g),
        segmap=F.one_hot(labels[:1], 6).permute(0, 3, 1, 2).float(),
        kp_s=kp_s,
        kp_d=kp_s + torch.randn(batch, 68, 3, generator=g) * 0.03 * torch.tensor([1.0, 1.0, 0.0]),
    )


def _run(sr, inp, **kwargs):
    """``sr`` on ``inp`` (:func:`_inputs`), the reference encoded first."""
    reference = sr.encode_reference(inp["ref_torso"], inp["bg"], inp["segmap"])
    return sr(inp["rgb"], inp["x"], inp["weights"], inp["kp_s"], inp["kp_d"], reference, **kwargs)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SuperResolution(SuperResConfig.tiny()).eval()


def test_tiny_forward_shapes_and_ranges(tiny):
    cfg = tiny.cfg
    with torch.no_grad():
        out = _run(tiny, _inputs(cfg))
    r, m = cfg.final_resolution, cfg.mid_resolution
    assert out["image"].shape == (2, 3, r, r) and torch.isfinite(out["image"]).all()
    assert out["rgb_torso"].shape == (2, 3, m, m)
    assert out["person_occlusion"].shape == (2, 1, m, m)
    assert 0 <= out["person_occlusion"].min() and out["person_occlusion"].max() <= 1
    assert 0 < out["occlusion_2"].min() and out["occlusion_2"].max() < 1
    assert out["kp_src"].shape == (2, 4, 3)


def test_head_threshold_semantics(tiny):
    inp = _inputs(tiny.cfg)
    with torch.no_grad():
        out_1 = _run(tiny, inp)
        tiny_low = SuperResolution(dataclasses.replace(tiny.cfg, head_threshold=0.5)).eval()
        tiny_low.load_state_dict(tiny.state_dict())
        out_05 = _run(tiny_low, inp)
    alpha = F.interpolate(inp["weights"], size=tiny.cfg.mid_resolution, mode="bilinear", align_corners=False, antialias=True)
    torso = out_1["occlusion_2"]
    assert torch.allclose(out_1["person_occlusion"], (torso + alpha).clamp(0, 1), atol=1e-6)  # threshold 1: head_occ = alpha
    expect = (torso + torch.where(alpha > 0.5, torch.ones_like(alpha), alpha)).clamp(0, 1)
    assert torch.allclose(out_05["person_occlusion"], expect, atol=1e-6)


def test_batching_equals_per_frame_and_the_reference_broadcasts(tiny):
    inp = _inputs(tiny.cfg, batch=3)
    with torch.no_grad():
        batched = _run(tiny, inp)["image"]
        ref = tiny.encode_reference(inp["ref_torso"], inp["bg"], inp["segmap"])
        per_frame_ref = type(ref)(*(t.expand(3, *t.shape[1:]) for t in (ref.torso_volume, ref.torso_seg, ref.bg, ref.bg_features)))
        expanded = tiny(inp["rgb"], inp["x"], inp["weights"], inp["kp_s"], inp["kp_d"], per_frame_ref)["image"]
        frames = [
            tiny(inp["rgb"][i : i + 1], inp["x"][i : i + 1], inp["weights"][i : i + 1], inp["kp_s"], inp["kp_d"][i : i + 1], ref)["image"]
            for i in range(3)
        ]
    assert torch.allclose(expanded, batched, atol=1e-6)
    assert torch.allclose(torch.cat(frames), batched, atol=1e-5)


def test_input_is_resized_to_neural_resolution(tiny):
    inp = _inputs(tiny.cfg)
    big = {k: (F.interpolate(v, scale_factor=2.0) if k in ("rgb", "x", "weights") else v) for k, v in inp.items()}
    with torch.no_grad():
        out = _run(tiny, big)
    assert out["image"].shape[-1] == tiny.cfg.final_resolution


def test_opacity_gets_no_gradient_through_sr(tiny):
    inp = _inputs(tiny.cfg)
    inp["weights"].requires_grad_(True)
    inp["x"].requires_grad_(True)
    _run(tiny, inp)["image"].sum().backward()
    assert inp["weights"].grad is None and inp["x"].grad.abs().sum() > 0


def test_bad_inputs_are_reported(tiny):
    inp = _inputs(tiny.cfg)
    with pytest.raises(InputError, match="segmap"):
        _run(tiny, {**inp, "segmap": inp["segmap"][:, :5]})
    with pytest.raises(InputError, match="kp_d"):
        _run(tiny, {**inp, "kp_d": inp["kp_d"][:, :10]})
    with pytest.raises(TypeError, match="reference"):
        tiny(inp["rgb"], inp["x"], inp["weights"], inp["kp_s"], inp["kp_d"], None)
