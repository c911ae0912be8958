"""Hostile or damaged adapter files (issue 21 items 2 and 6, issue 12 item 5): every metadata
field is checked for type and range, every shape the metadata implies is checked against the
safetensors header before anything is allocated, and an upstream .ckpt is recognised."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimictalk_lib.adapt.adapter import load_adapter, save_adapter
from mimictalk_lib.adapt.official_import import import_official_checkpoint
from mimictalk_lib.checkpoint import METADATA_KEY, read_safetensors_metadata
from mimictalk_lib.errors import CheckpointError
from mimictalk_lib.renderer import RendererConfig
from tests.fixtures.tiny_renderer import tiny_checkpoint


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "person.safetensors"
    save_adapter(path, import_official_checkpoint(tiny_checkpoint("personalised", seed=5), base_config=RendererConfig.tiny()))
    return path


def rewrite(src, dst, *, meta=None, tensors=None):
    """A copy of ``src`` with its metadata dict / tensors changed (``meta``: a function of the dict)."""
    t = load_file(str(src))
    m = read_safetensors_metadata(src)
    if tensors is not None:
        t = tensors(t)
    if meta is not None:
        m = meta(m)
    save_file(t, str(dst), metadata={METADATA_KEY: json.dumps(m)})
    return dst


def _set(path, value):
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return m
    return edit


BAD_METADATA = {
    "lora_as_string": (_set(["lora"], "secc2plane_sr"), "'lora' is a str"),
    "no_lora": (_set(["lora"], KeyError), "no 'lora' settings"),
    "rank_as_string": (_set(["lora", "r"], "2"), "lora.r is '2'"),
    "rank_as_float": (_set(["lora", "r"], 2.5), "lora.r is 2.5"),
    "rank_as_bool": (_set(["lora", "r"], True), "lora.r is True"),
    "rank_negative": (_set(["lora", "r"], -2), "lora.r is -2"),
    "rank_missing": (_set(["lora", "r"], KeyError), "lora.r is None"),
    "unknown_lora_mode": (_set(["lora", "lora_mode"], "everything"), "lora.lora_mode is 'everything'"),
    "lora_mode_as_list": (_set(["lora", "lora_mode"], ["sr"]), "lora.lora_mode is \\['sr'\\]"),
    "conv_lora_unknown": (_set(["lora", "conv_lora"], 3), "lora.conv_lora is 3"),
    "version_as_string": (_set(["version"], "1"), "'version' is '1'"),
    "version_missing": (_set(["version"], KeyError), "'version' is None"),
    "base_as_string": (_set(["base"], "abc"), "'base' is a str"),
    "base_sha_as_number": (_set(["base", "structure_sha256"], 12), "structure_sha256 is a int"),
    "video_id_as_number": (_set(["video_id"], 7), "'video_id' is a int"),
    "metadata_a_list": (lambda m: [m], "a list instead of a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_malformed_metadata_is_a_checkpoint_error(adapter_file, tmp_path, case):
    edit, message = BAD_METADATA[case]
    bad = rewrite(adapter_file, tmp_path / "bad.safetensors", meta=edit)
    with pytest.raises(CheckpointError, match=message):
        load_adapter(bad)


def test_a_huge_claimed_rank_is_refused_before_allocation(adapter_file, tmp_path):
    """Rank 10^7 in the metadata with rank-2 matrices in the file: refused by load_adapter (from
    the header), so personalise never asks peft for gigabytes of LoRA matrices."""
    bad = rewrite(adapter_file, tmp_path / "huge.safetensors", meta=_set(["lora", "r"], 10**7))
    with pytest.raises(CheckpointError, match=r"rank dimension 2 .*declared rank r=10000000"):
        load_adapter(bad)


@pytest.mark.parametrize("case", ["triplane_4d", "triplane_missing", "lora_b_missing", "lora_rank_mismatch",
                                  "id_shape", "segmap_shape", "lora_for_mode_none"])
def test_shapes_are_checked_against_the_metadata(adapter_file, tmp_path, case):
    def tensors(t):
        if case == "triplane_4d":
            t["triplane"] = t["triplane"][0]
        elif case == "triplane_missing":
            del t["triplane"]
        elif case == "lora_b_missing":
            del t[next(k for k in t if k.endswith("lora_B"))]
        elif case == "lora_rank_mismatch":
            key = next(k for k in t if k.endswith("affine.lora_A"))
            t[key] = torch.zeros(3, t[key].shape[1])
        elif case == "id_shape":
            t["identity.id"] = torch.zeros(1, 81)
        elif case == "segmap_shape":
            t["identity.segmap"] = torch.zeros(1, 5, 8, 8, dtype=torch.uint8)
        return t

    meta = _set(["lora", "lora_mode"], "none") if case == "lora_for_mode_none" else None
    bad = rewrite(adapter_file, tmp_path / "bad.safetensors", meta=meta, tensors=tensors)
    with pytest.raises(CheckpointError, match="triplane|LoRA|identity"):
        load_adapter(bad)


def test_the_untouched_adapter_still_loads(adapter_file, tmp_path):
    same = rewrite(adapter_file, tmp_path / "same.safetensors")
    assert load_adapter(same).spec.r == 2


def test_an_upstream_ckpt_says_how_to_import_it(tmp_path):
    path = tmp_path / "model_ckpt_steps_10.ckpt"
    torch.save(tiny_checkpoint("personalised", seed=6), path, _use_new_zipfile_serialization=False)
    for p in (path, tmp_path / "zip.ckpt"):
        if p.name == "zip.ckpt":
            torch.save({"state_dict": {}}, p)
        with pytest.raises(CheckpointError, match="looks like an upstream MimicTalk checkpoint.*import_official_checkpoint"):
            load_adapter(p)
    with pytest.raises(CheckpointError, match="not found"):
        load_adapter(tmp_path / "missing.safetensors")
