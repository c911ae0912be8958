"""Safe checkpoint loading: legacy upstream pickles only through torch.load(weights_only=True),
safetensors with JSON metadata for our own files."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from mimictalk_lib.checkpoint import (
    checkpoint_steps,
    find_latest_checkpoint,
    load_legacy_checkpoint,
    load_model_state_dict,
    load_safetensors,
    model_state_dict,
    read_safetensors_metadata,
    resolve_model_file,
    save_safetensors,
)
from mimictalk_lib.errors import CheckpointError


def upstream_like(model: dict) -> dict:
    """What upstream's trainer writes (mimictalk_architecture.md §6), with plain objects only."""
    return {
        "epoch": 7,
        "global_step": 100000,
        "checkpoint_callback_best": np.float64(0.25),  # a numpy scalar, as np.less/np.Inf can leave
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "params": [0]}]}],
        "state_dict": {"model": model, "disc": {"w": torch.ones(1)}},
    }


class Sneaky:
    """Unpickling this for real would create a file: the safe loader must never do that."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-pickle", "zip"])
def test_upstream_checkpoint_loads_with_weights_only(tmp_path, legacy):
    model = {"decoder.net.0.weight": torch.randn(4, 3), "decoder.net.0.bias": torch.randn(4)}
    path = tmp_path / "model_ckpt_steps_100000.ckpt"
    torch.save(upstream_like(model), path, _use_new_zipfile_serialization=not legacy)
    ckpt = load_legacy_checkpoint(path)
    assert ckpt["global_step"] == 100000 and float(ckpt["checkpoint_callback_best"]) == 0.25
    sd = model_state_dict(ckpt, source=str(path))
    assert sd.keys() == model.keys() and all(torch.equal(sd[k], model[k]) for k in model)


def test_old_numpy_spelling_is_accepted(tmp_path):
    """Pickles written under numpy 1.x name numpy.core.multiarray instead of numpy._core."""
    path = tmp_path / "a.ckpt"
    torch.save(upstream_like({"w": torch.ones(2)}), path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert float(load_legacy_checkpoint(path)["checkpoint_callback_best"]) == 0.25


class PlainRecord:
    """A harmless custom class: still not something an upstream checkpoint contains."""

    def __init__(self):
        self.note = "hello"


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-pickle", "zip"])
def test_custom_class_is_refused_clearly(tmp_path, legacy):
    ckpt = upstream_like({"w": torch.ones(2)})
    ckpt["extra"] = PlainRecord()
    path = tmp_path / "custom.ckpt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=r"weights_only=True\): it contains `[\w.]*PlainRecord`") as err:
        load_legacy_checkpoint(path)
    assert "never unpickles arbitrary objects" in str(err.value)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-pickle", "zip"])
def test_code_in_a_pickle_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    ckpt = upstream_like({"w": torch.ones(2)})
    ckpt["extra"] = Sneaky(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        load_legacy_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_give_clear_errors(tmp_path):
    path = tmp_path / "model_ckpt_steps_1.ckpt"
    torch.save(upstream_like({"w": torch.randn(1000)}), path)
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_legacy_checkpoint(path)
    torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError, match="expected a checkpoint dict"):
        load_legacy_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_legacy_checkpoint(tmp_path / "nope.ckpt")


def test_model_state_dict_layouts_and_refusals():
    flat = {"state_dict": {"model.a.weight": torch.ones(1), "model.b": torch.zeros(1), "disc.x": torch.ones(1)}}
    assert set(model_state_dict(flat)) == {"a.weight", "b"}
    with pytest.raises(CheckpointError, match="no 'state_dict'.*optimizer-only"):
        model_state_dict({"optimizer_states": [{}], "epoch": 1})
    with pytest.raises(CheckpointError, match="no 'model' weights.*disc"):
        model_state_dict({"state_dict": {"disc": {"x": torch.ones(1)}}})


def test_latest_checkpoint_is_the_highest_step_number(tmp_path):
    for n in (9, 100000, 20000):
        (tmp_path / f"model_ckpt_steps_{n}.ckpt").write_bytes(b"x")
    (tmp_path / "model_ckpt_best.pt").write_bytes(b"x")
    (tmp_path / "model_ckpt_steps_5.ckpt.part").write_bytes(b"x")
    assert find_latest_checkpoint(tmp_path).name == "model_ckpt_steps_100000.ckpt"
    assert checkpoint_steps("model_ckpt_steps_1856000.ckpt") == 1856000
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model_ckpt_steps"):
        find_latest_checkpoint(tmp_path / "empty")


def test_model_weights_from_a_file_or_folder(tmp_path):
    """A folder gives its converted model.safetensors when present, else its latest upstream
    checkpoint; either way the 'model' tensors come back."""
    ckpt_dir, conv_dir = tmp_path / "upstream", tmp_path / "converted"
    ckpt_dir.mkdir()
    for n, value in ((10, 1.0), (200, 2.0)):
        torch.save({"state_dict": {"model": {"w": torch.full((2,), value)}, "disc": {"x": torch.ones(1)}}},
                   ckpt_dir / f"model_ckpt_steps_{n}.ckpt")
    assert resolve_model_file(ckpt_dir).name == "model_ckpt_steps_200.ckpt"
    assert torch.equal(load_model_state_dict(ckpt_dir)["w"], torch.full((2,), 2.0))
    assert set(load_model_state_dict(ckpt_dir / "model_ckpt_steps_10.ckpt")) == {"w"}
    save_safetensors(conv_dir / "model.safetensors", {"w": torch.full((2,), 3.0)})
    (conv_dir / "model_ckpt_steps_5.ckpt").write_bytes(b"not used")
    assert resolve_model_file(conv_dir) == conv_dir / "model.safetensors"
    assert torch.equal(load_model_state_dict(conv_dir)["w"], torch.full((2,), 3.0))


def test_safetensors_round_trip_with_metadata_and_aliases(tmp_path):
    w = torch.randn(3, 5)
    tensors = {"conv.weight": w, "conv.conv.weight": w, "t": w.t(), "half": torch.randn(2).half()}
    meta = {"kind": "adapter", "config": {"rank": 2, "modes": ["a", "b"]}, "steps": 2000}
    path = save_safetensors(tmp_path / "sub" / "x.safetensors", tensors, meta)
    assert not [p for p in path.parent.iterdir() if p.name != "x.safetensors"]  # no temp file left
    loaded, got = load_safetensors(path)
    assert got == meta == read_safetensors_metadata(path)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype for k in tensors)
    with pytest.raises(CheckpointError, match="'bad'.*not a tensor"):
        save_safetensors(tmp_path / "y.safetensors", {"bad": np.ones(2)})


def test_foreign_safetensors_metadata_is_returned_raw(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(1)}, str(tmp_path / "f.safetensors"), metadata={"format": "pt"})
    assert read_safetensors_metadata(tmp_path / "f.safetensors") == {"format": "pt"}
    (tmp_path / "g.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_safetensors_metadata(tmp_path / "g.safetensors")
