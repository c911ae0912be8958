"""The ICS-A2M module tree reproduces both official key layouts and loads them strictly."""

import pytest
import torch

from mimictalk_lib.a2m import A2MConfig, InContextAudio2MotionModel, build_a2m, infer_a2m_config
from mimictalk_lib.errors import CheckpointError
from tests.fixtures.tiny_a2m import randomize_

LAYOUTS = {True: "ics_a2m_flowmatching_auxfeat.tsv", False: "ics_a2m_flowmatching_noaux.tsv"}


def read_tsv(repo_root, name):
    rows = {}
    for line in (repo_root / "tests" / "data" / "state_dict_keys" / name).read_text().splitlines():
        key, shape = line.split("\t")[:2]
        rows[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return rows


def fake_state_dict(shapes, theta=50_000.0):
    """Meta tensors with exactly the listed keys and shapes (no memory: full-size tensors cost
    seconds on a loaded 2-core machine); inv_freq holds real RoPE frequencies on the CPU."""
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("inv_freq"):
            d = 2 * shape[0]
            sd[key] = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
        else:
            dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
            sd[key] = torch.empty(shape, dtype=dtype, device="meta")
    return sd


@pytest.mark.parametrize("aux", [True, False])
def test_official_layout_loads_strictly(repo_root, aux):
    ref = read_tsv(repo_root, LAYOUTS[aux])
    sd = fake_state_dict(ref)
    assert infer_a2m_config(sd) == A2MConfig.full(use_aux_features=aux)
    model = build_a2m(sd, device="meta")  # strict: raises on any missing/extra/misshapen key
    assert not model.training
    back = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in back.items()] == list(ref.items())  # order too
    assert sum(p.numel() for p in model.parameters()) == (34_968_736 if aux else 34_946_624)


def test_state_dict_values_round_trip():
    """Same key names at tiny size with real values: each loaded tensor lands on its key."""
    for aux in (True, False):
        sd = randomize_(InContextAudio2MotionModel(A2MConfig.tiny(aux)), seed=3).state_dict()
        assert infer_a2m_config(sd) == A2MConfig.tiny(aux)
        back = build_a2m(sd).state_dict()
        assert list(back) == list(sd)
        for key, value in sd.items():
            assert torch.equal(back[key], value), key


def test_inferred_rope_base_follows_inv_freq(repo_root):
    sd = fake_state_dict(read_tsv(repo_root, LAYOUTS[False]), theta=10_000.0)
    assert infer_a2m_config(sd).rope_theta == 10_000.0


def test_layout_errors_name_the_key(repo_root):
    sd = fake_state_dict(read_tsv(repo_root, LAYOUTS[True]))
    broken = dict(sd)
    del broken["backbone.icl_transformer_model.to_embed.weight"]
    with pytest.raises(CheckpointError, match="to_embed.weight"):
        build_a2m(broken)
    mixed = dict(sd)
    mixed["backbone.icl_transformer_model.to_cond_emb.weight"] = torch.zeros(64, 256)
    with pytest.raises(CheckpointError, match="to_cond_emb"):
        build_a2m(mixed)
    extra = InContextAudio2MotionModel(A2MConfig.tiny()).state_dict()  # CPU: real values
    extra["backbone.icl_transformer_model.unexpected"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected"):
        build_a2m(extra)
    wrong = InContextAudio2MotionModel(A2MConfig.tiny()).state_dict()
    wrong["backbone.icl_transformer_model.transformer.layers.1.5.0.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="layers.1.5.0.bias"):
        build_a2m(wrong)
    with pytest.raises(CheckpointError, match="hubert_encoder"):
        build_a2m({"model.weight": torch.zeros(1)})
