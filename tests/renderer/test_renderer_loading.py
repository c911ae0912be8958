"""load_renderer on every source kind: state dicts, upstream checkpoint dicts and files (legacy
pickles, read with weights_only=True), folders, and our safetensors + config.json."""

import json

import pytest
import torch

from mimictalk_lib.checkpoint import save_safetensors
from mimictalk_lib.errors import CheckpointError
from mimictalk_lib.renderer import RendererConfig, load_renderer
from tests.fixtures.tiny_renderer import tiny_checkpoint

TINY = RendererConfig.tiny()


def _same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_personalised_checkpoint_file_gives_tri_grid_person_and_lora_args(tmp_path):
    ckpt = tiny_checkpoint("personalised")
    path = tmp_path / "model_ckpt_steps_10000.ckpt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)  # upstream's legacy format
    from_file = load_renderer(path, base_config=TINY)
    from_folder = load_renderer(tmp_path, base_config=TINY)
    from_dict = load_renderer(ckpt, base_config=TINY)
    assert from_file.layout == "personalised" and from_file.lora_args == {"lora_mode": "secc2plane_sr", "lora_r": 2}
    assert torch.equal(from_file.cano_planes, ckpt["state_dict"]["learnable_triplane"])
    assert from_file.person.video_id == "synthetic" and from_file.person.src_kp.shape == (68, 3)
    assert torch.equal(from_file.person.id, ckpt["person_ds"]["id"])
    assert _same_weights(from_file, from_dict) and _same_weights(from_file, from_folder)


def test_flat_model_prefix_and_safetensors_round_trip(tmp_path):
    ckpt = tiny_checkpoint("real3d")
    sd = ckpt["state_dict"]["model"]
    flat = load_renderer({f"model.{k}": v for k, v in sd.items()}, base_config=RendererConfig.tiny("real3d"))
    save_safetensors(tmp_path / "model.safetensors", sd)
    (tmp_path / "config.json").write_text(json.dumps({"head_threshold": 0.5}))
    ours = load_renderer(tmp_path, base_config=RendererConfig.tiny("real3d"))
    assert flat.layout == ours.layout == "real3d"
    assert flat.config.head_threshold == 0.9 and ours.config.head_threshold == 0.5  # config.json wins
    assert _same_weights(flat, ours)


def test_learnable_triplane_of_the_wrong_size_is_refused():
    ckpt = tiny_checkpoint("personalised")
    ckpt["state_dict"]["learnable_triplane"] = torch.zeros(1, 3, 12, 16, 16)
    with pytest.raises(CheckpointError, match="learnable_triplane"):
        load_renderer(ckpt, base_config=TINY)


def test_lora_args_disagreeing_with_the_matrices_is_refused():
    ckpt = tiny_checkpoint("personalised")
    ckpt["lora_args"] = {"lora_mode": "secc2plane_sr", "lora_r": 4}
    with pytest.raises(CheckpointError, match="lora_r=4"):
        load_renderer(ckpt, base_config=TINY)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_renderer(tmp_path / "nope.ckpt")
