"""A checkpoint folder as upstream writes it: its config.yaml is read (issue 12 item 4), a
converted personalised folder loads to the same personalised renderer as the original (issue 12
item 2), and the sizes a config file states are bounded (issue 21 item 6)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mimictalk_lib.convert import convert_checkpoint
from mimictalk_lib.errors import CheckpointError
from mimictalk_lib.renderer import RendererConfig, load_renderer
from tests.fixtures.tiny_renderer import renderer_inputs, tiny_checkpoint, with_planes

TINY = {"mimictalk": RendererConfig.tiny(), "real3d": RendererConfig.tiny("real3d")}
PERSONALISED_YAML = ("task_cls: tasks.os_avatar.secc_img2plane_torso_task.SECC_Img2PlaneEG3D_TorsoTask\n"
                     "triplane_feature_type: trigrid_v2\ntriplane_depth: 3\nhtbsr_head_threshold: 0.9\n"
                     "lora_r: 2\nlora_mode: secc2plane_sr\n")


def _folder(tmp_path, layout: str, yaml_text=None, seed=0):
    folder = tmp_path / f"run_{layout}"
    folder.mkdir()
    torch.save(tiny_checkpoint(layout, seed=seed), folder / "model_ckpt_steps_10000.ckpt", _use_new_zipfile_serialization=False)
    if yaml_text is not None:
        (folder / "config.yaml").write_text(yaml_text)
    return folder


def _render(loaded, inputs):
    with torch.no_grad():
        return loaded.model.render(**with_planes(inputs, loaded.cano_planes), deterministic=True).image


def test_converted_personalised_folder_loads_to_the_same_personalised_renderer(tmp_path):
    src = _folder(tmp_path, "personalised", PERSONALISED_YAML, seed=3)
    out = convert_checkpoint(src, tmp_path / "converted", base_config=TINY["mimictalk"])
    original = load_renderer(src, base_config=TINY["mimictalk"])
    converted = load_renderer(out)  # everything from the converted folder itself
    assert converted.layout == original.layout == "personalised"
    assert converted.config == original.config
    assert converted.person is not None and converted.person.video_id == original.person.video_id == "synthetic"
    for name in ("gt_img", "id", "src_kp"):
        assert torch.equal(getattr(converted.person, name), getattr(original.person, name)), name
    assert torch.equal(converted.cano_planes, original.cano_planes)
    assert converted.lora_args == original.lora_args
    inputs = renderer_inputs(original.config, frames=2, seed=4)
    # Same values, but not exact by construction: tensors read from a safetensors file are views of
    # the mapped file, not 64-byte aligned, and BLAS/oneDNN kernels may take another (peeled) path
    # for unaligned data on some CPUs: 1.8e-7 apart here with ATEN_CPU_CAPABILITY=default and
    # MKL_ENABLE_INSTRUCTIONS=SSE4_2 (0 once the weights are copied to aligned memory). 1e-5 is ~50x
    # that fp32 floor and far below one 8-bit level of the image (a wrong tensor shows at that scale).
    torch.testing.assert_close(_render(converted, inputs), _render(original, inputs), rtol=0, atol=1e-5)


def test_a_converted_folder_missing_its_person_file_says_so(tmp_path):
    out = convert_checkpoint(_folder(tmp_path, "personalised"), tmp_path / "c", base_config=TINY["mimictalk"])
    (out / "personalization.safetensors").unlink()
    with pytest.raises(CheckpointError, match="personalization.safetensors is missing"):
        load_renderer(out)


def test_yaml_settings_are_read_and_carried_through_convert(tmp_path):
    yaml_text = ("task_cls: tasks.os_avatar.secc_img2plane_torso_task.SECC_Img2PlaneEG3D_TorsoTask\n"
                 "torso_inp_mode: rgb_alpha\nhtbsr_head_threshold: 0.8\nnum_samples_coarse: 5\nnum_samples_fine: 3\nbox_warp: 1.0\n")
    src = _folder(tmp_path, "real3d", yaml_text)
    loaded = load_renderer(src, base_config=TINY["real3d"])
    assert loaded.config.head_threshold == 0.8 and (loaded.config.num_coarse, loaded.config.num_fine) == (5, 3)
    assert load_renderer(src, base_config=TINY["real3d"], head_threshold=0.5).config.head_threshold == 0.5
    out = convert_checkpoint(src, tmp_path / "converted", base_config=TINY["real3d"])
    converted = load_renderer(out)
    assert converted.config == loaded.config
    assert json.loads((out / "config.json").read_text())["head_threshold"] == 0.8


@pytest.mark.parametrize("yaml_text", [None, "lr: 0.0001\n", "htbsr_head_threshold: null\n"], ids=["absent", "silent", "null"])
def test_defaults_when_the_yaml_is_absent_or_silent(tmp_path, yaml_text):
    loaded = load_renderer(_folder(tmp_path, "real3d", yaml_text), base_config=TINY["real3d"])
    assert loaded.config.head_threshold == 0.9
    assert (loaded.config.num_coarse, loaded.config.num_fine) == (TINY["real3d"].num_coarse, TINY["real3d"].num_fine)


def test_mimictalk_layout_keeps_the_forced_threshold_and_says_so(tmp_path, caplog):
    src = _folder(tmp_path, "mimictalk", "htbsr_head_threshold: 0.8\nnum_samples_coarse: 6\n")
    with caplog.at_level(logging.INFO, logger="MimicTalk"):
        loaded = load_renderer(src, base_config=TINY["mimictalk"])
    assert loaded.config.head_threshold == 1.0 and loaded.config.num_coarse == 6
    assert "forces" in caplog.text


def test_a_yaml_contradicting_the_weights_is_reported(tmp_path, caplog):
    src = _folder(tmp_path, "real3d", "triplane_feature_type: trigrid_v2\ntriplane_depth: 3\n")
    with caplog.at_level(logging.WARNING, logger="MimicTalk"):
        loaded = load_renderer(src, base_config=TINY["real3d"])
    assert loaded.config.triplane_depth == 1  # the weights win
    assert "triplane_depth: yaml says 3, the weights say 1" in caplog.text
    with pytest.raises(CheckpointError, match="disagrees with the tensor shapes"):
        convert_checkpoint(src, tmp_path / "c", base_config=TINY["real3d"])


@pytest.mark.parametrize("yaml_text, message", [
    ("num_samples_coarse: 1000000000\n", r"num_samples_coarse = 1000000000 is outside"),
    ("num_samples_fine: many\n", "num_samples_fine is 'many', expected an integer"),
    ("htbsr_head_threshold: 7\n", "htbsr_head_threshold = 7 is outside"),
    ("box_warp: [1, 2]\n", "box_warp is \\[1, 2\\]"),
    ("- a\n- list\n", "not a yaml mapping"),
    ("key: [unclosed\n", "cannot read"),
])
def test_bad_yaml_values_are_refused(tmp_path, yaml_text, message):
    with pytest.raises(CheckpointError, match=message):
        load_renderer(_folder(tmp_path, "real3d", yaml_text), base_config=TINY["real3d"])


@pytest.mark.parametrize("field, value", [("num_coarse", 10**9), ("plane_resolution", 10**6), ("image_resolution", -5),
                                          ("box_warp", "wide"), ("num_fine", [1, 2])])
def test_sizes_in_config_json_are_bounded(tmp_path, field, value):
    out = convert_checkpoint(_folder(tmp_path, "real3d"), tmp_path / "c", base_config=TINY["real3d"])
    meta = json.loads((out / "config.json").read_text())
    meta["config"][field] = value
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        load_renderer(out)


def test_a_huge_yaml_is_not_read(tmp_path):
    src = _folder(tmp_path, "real3d", "a: 1\n" + "#" * (2 << 20) + "\n")
    with pytest.raises(CheckpointError, match="an upstream config.yaml is a few KB"):
        load_renderer(src, base_config=TINY["real3d"])
