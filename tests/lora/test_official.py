"""The official (loralib-style) LoRA layout: key tables, the dW maths, and exact merging."""

import pathlib

import pytest
import torch
import torch.nn.functional as F

from mimictalk_lib.errors import CheckpointError, InputError
from mimictalk_lib.lora.official import (
    merge_official_lora,
    official_alias_keys,
    official_lora_delta,
    official_lora_keys,
    official_lora_shapes,
    official_pair_shapes,
    split_official_lora,
    to_official_layout,
)
from mimictalk_lib.lora.targets import parse_lora_mode
from mimictalk_lib.renderer.stylegan import Conv2dLayer, FullyConnectedLayer, SynthesisLayer, ToRGBLayer

KEYS = pathlib.Path(__file__).resolve().parents[1] / "data" / "state_dict_keys"


def _meta_table(name: str) -> dict[str, torch.Tensor]:
    out = {}
    for line in (KEYS / name).read_text().splitlines():
        key, shape = line.split("\t")[:2]
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        out[key] = torch.empty(dims, device="meta")
    return out


def test_layout_round_trip_against_reference_tables():
    base = _meta_table("mimictalk_base_torso_trigridv2_d3.tsv")
    pers = _meta_table("mimictalk_personalized_lora_r2.tsv")
    shapes = official_lora_shapes(base, "secc2plane_sr", r=2)
    pairs = {p: (torch.empty(a, device="meta"), torch.empty(b, device="meta")) for p, (a, b) in shapes.items()}
    built = to_official_layout(base, pairs)
    assert set(built) == set(pers)
    assert all(built[k].shape == pers[k].shape for k in pers)
    assert sum(a.numel() + b.numel() for a, b in pairs.values()) == 91_108  # §3.1

    split, info = split_official_lora(pers, r=2)
    assert set(split) == set(base) and len(split) == 1039
    assert info.r == 2 and info.lora_mode == "secc2plane_sr" and info.num_parameters() == 91_108
    assert len(official_lora_keys(pers)) == 46 - 8  # 46 new keys, 8 of them the .conv.* aliases
    assert len(official_alias_keys(pers)) == 8
    assert info.kinds["secc_img2plane_backbone.prenet"] == "stylegan_conv"
    assert info.kinds["secc_img2plane_backbone.to_plane_cnn.7"] == "loralib_conv"
    assert info.kinds["superresolution.block1.conv0"] == "stylegan_modconv"
    assert info.kinds["superresolution.block0.torgb"] == "stylegan_modconv"
    assert info.kinds["superresolution.head_torso_block.conv1.affine"] == "stylegan_fc"


def test_modes():
    assert parse_lora_mode("all") == {"secc2plane", "sr", "decoder"}
    assert parse_lora_mode("secc2plane_sr") == {"secc2plane", "sr"}
    assert parse_lora_mode("none") == frozenset()
    with pytest.raises(InputError, match="lora_mode"):
        parse_lora_mode("full")
    base = _meta_table("mimictalk_base_torso_trigridv2_d3.tsv")
    assert set(official_lora_shapes(base, "all", 2)) - set(official_lora_shapes(base, "secc2plane_sr", 2)) == {
        "decoder.net.0",
        "decoder.net.2",
    }


def test_conv_delta_is_a_plain_reshape_of_b_at_a():
    g = torch.Generator().manual_seed(0)
    out_c, in_c, k, r = 5, 4, 3, 2
    a, b = torch.randn(r * k, in_c * k, generator=g), torch.randn(out_c * k, r * k, generator=g)
    dw = official_lora_delta(a, b, (out_c, in_c, k, k))
    m = (b @ a).flatten()  # [out*k * in*k]
    for o, i, p, q in [(0, 0, 0, 0), (4, 3, 2, 2), (2, 1, 0, 2), (3, 0, 1, 1)]:
        # row-major flat index of [o, i, p, q] in a [out, in, k, k] tensor
        flat = ((o * in_c + i) * k + p) * k + q
        assert torch.allclose(dw[o, i, p, q], m[flat] / r)
    with pytest.raises(CheckpointError, match="expected A"):
        official_lora_delta(a, b, (out_c, in_c + 1, k, k))


def _rand_pair(shape_a, shape_b, g):
    return torch.randn(shape_a, generator=g) * 0.1, torch.randn(shape_b, generator=g) * 0.1


@torch.no_grad()
def test_merge_equals_upstream_on_the_fly_for_every_kind():
    """Merging into raw weights reproduces each layer's on-the-fly LoRA (delta_weight hook, which
    follows upstream: after the gain for FC/Conv2dLayer, on the raw weight for Synthesis/ToRGB)."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    r = 2
    fc = FullyConnectedLayer(8, 6, bias_init=1)
    conv = Conv2dLayer(9, 3, 1)
    syn = SynthesisLayer(4, 5, w_dim=8, resolution=8)
    rgb = ToRGBLayer(5, 3, w_dim=8)
    plain = torch.nn.Conv2d(4, 6, 3, padding=1)
    layers = {"fc": fc, "prenet": conv, "syn": syn, "rgb": rgb, "to_plane_cnn.0": plain}
    sd = {f"{n}.{k}": v.clone() for n, m in layers.items() for k, v in m.state_dict().items()}
    pairs = {}
    for key, w in sd.items():  # every toy layer gets LoRA (official_lora_shapes knows renderer paths only)
        if key.endswith(".weight") and key != "rgb.affine.weight":  # upstream: no LoRA on torgb's affine
            pairs[key[: -len(".weight")]] = _rand_pair(*official_pair_shapes(tuple(w.shape), r), g)
    pers = to_official_layout(sd, pairs)
    assert "to_plane_cnn.0.conv.weight" in pers
    merged, info = merge_official_lora(pers, r=r)
    assert set(merged) == set(sd)
    assert info.kinds == {
        "fc": "stylegan_fc", "prenet": "stylegan_conv", "syn": "stylegan_modconv", "syn.affine": "stylegan_fc",
        "rgb": "stylegan_modconv", "to_plane_cnn.0": "loralib_conv",
    }

    x8, w = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    xc, xs, xr = (torch.randn(2, c, 8, 8, generator=g) for c in (9, 4, 5))

    def run(sd_, delta):
        for n, m in layers.items():
            m.load_state_dict({k[len(n) + 1:]: v for k, v in sd_.items() if k.startswith(n + ".") and not k.startswith(n + ".affine")}, strict=False)
            if n == "syn":
                m.affine.load_state_dict({k[len("syn.affine."):]: v for k, v in sd_.items() if k.startswith("syn.affine.")})
        d = (lambda p: info.delta(p)) if delta else (lambda p: None)
        styles_delta = d("syn.affine")
        outs = [fc(x8, delta_weight=d("fc")), conv(xc, delta_weight=d("prenet"))]
        if styles_delta is not None:  # LoRA on the style affine: wrap it the way upstream does
            orig = syn.affine.forward
            syn.affine.forward = lambda x_, **kw: orig(x_, delta_weight=styles_delta)
        outs.append(syn(xs, w, delta_weight=d("syn")))
        if styles_delta is not None:
            syn.affine.forward = orig
        outs.append(rgb(xr, w, delta_weight=d("rgb")))
        wp = plain.weight + (d("to_plane_cnn.0") if delta else 0)
        outs.append(F.conv2d(xs, wp, plain.bias, padding=1))
        return outs

    on_the_fly = run(sd, delta=True)
    after_merge = run(merged, delta=False)
    base_out = run(sd, delta=False)
    for a, b, c in zip(on_the_fly, after_merge, base_out):
        assert (a - b).abs().max() < 1e-5
        assert (a - c).abs().max() > 1e-4  # the LoRA really changes the output


def test_rank_checks_and_zero_b():
    w = torch.randn(6, 8)
    sd = {"x.affine.weight": w, "x.affine.lora_A": torch.randn(2, 8), "x.affine.lora_B": torch.zeros(6, 2)}
    _, info = split_official_lora(sd)
    assert info.r == 2 and info.zero_b == ["x.affine"]
    merged, _ = merge_official_lora(sd)
    assert torch.equal(merged["x.affine.weight"], w)  # zero B: merge is the identity
    with pytest.raises(CheckpointError, match="lora_r=3"):
        split_official_lora(sd, r=3)
    bad = dict(sd, **{"y.weight": torch.randn(4, 8), "y.lora_A": torch.randn(3, 8), "y.lora_B": torch.randn(4, 3)})
    with pytest.raises(CheckpointError, match="different ranks"):
        split_official_lora(bad)
    with pytest.raises(CheckpointError, match="incomplete"):
        split_official_lora({"x.weight": w, "x.lora_A": torch.randn(2, 8)})
