"""The whole renderer against the official key tables (tests/data/state_dict_keys/*.tsv): every
layout loads strictly, our state_dict() has exactly the table's keys and shapes, and the
configuration read from shapes equals the official presets. Meta tensors keep this fast."""

import pytest
import torch

from mimictalk_lib.errors import CheckpointError
from mimictalk_lib.renderer import Renderer, RendererConfig, infer_renderer_config, load_renderer
from tests.fixtures.tiny_renderer import official_shapes, official_state_dict

LAYOUTS = ("mimictalk", "real3d", "personalised")
PRESETS = {
    "mimictalk": RendererConfig.full("mimictalk"),
    "real3d": RendererConfig.full("real3d"),
    "personalised": RendererConfig.full("mimictalk").with_lora(2),
}


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_official_layout_loads_strictly_with_identical_keys(layout):
    loaded = load_renderer(official_state_dict(layout), device="meta", merge_lora=False)
    assert loaded.layout == layout
    table = official_shapes(layout)
    got = loaded.model.state_dict()
    assert set(got) == set(table)
    assert _shapes(got) == {k: shape for k, (shape, _) in table.items()}
    assert {k: v.dtype for k, v in got.items()} == {k: dtype for k, (_, dtype) in table.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_presets_build_the_official_layout_and_are_inferred_from_shapes(layout):
    with torch.device("meta"):
        model = Renderer(PRESETS[layout])
    assert _shapes(model.state_dict()) == {k: shape for k, (shape, _) in official_shapes(layout).items()}
    assert infer_renderer_config(official_state_dict(layout)) == PRESETS[layout]


def test_personalised_checkpoint_is_merged_into_the_base_layout():
    loaded = load_renderer(official_state_dict("personalised"), device="meta")
    assert loaded.layout == "personalised"
    assert loaded.config.lora_rank == 0
    assert set(loaded.model.state_dict()) == set(official_shapes("mimictalk"))
    assert loaded.lora.r == 2 and loaded.lora.lora_mode == "secc2plane_sr"
    # 46 extra keys = 19 (A, B) pairs (prenet, 4 to_plane_cnn, 3 blocks x 2 convs x (conv, affine),
    # 2 torgb) + the 8 loralib `.conv.weight`/`.conv.bias` aliases
    assert len(loaded.lora.pairs) == 19


def test_real3d_and_mimictalk_differ_where_the_reference_says():
    real3d, mimictalk = PRESETS["real3d"], PRESETS["mimictalk"]
    assert (real3d.feature_type, real3d.plane_channels, real3d.torso_in_channels) == ("triplane", 32, 5)
    assert (mimictalk.feature_type, mimictalk.plane_channels, mimictalk.torso_in_channels) == ("trigrid_v2", 96, 3)
    assert mimictalk.head_threshold == 1.0 and real3d.head_threshold == 0.9


def test_mis_shaped_key_is_named():
    sd = official_state_dict("mimictalk")
    sd["superresolution.bg_encoder.2.weight"] = torch.empty(256, 32, 3, 3, device="meta")
    with pytest.raises(CheckpointError, match="bg_encoder"):
        load_renderer(sd, device="meta")


def test_missing_and_unexpected_keys_are_named():
    sd = official_state_dict("real3d")
    del sd["secc_img2plane_backbone.fuse_head.linear_fuse.bn.running_var"]
    with pytest.raises(CheckpointError, match="linear_fuse.bn.running_var"):
        load_renderer(sd, device="meta")
    sd = official_state_dict("real3d")
    sd["superresolution.extra_head.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointError, match="extra_head"):
        load_renderer(sd, device="meta")


def test_foreign_checkpoint_gets_a_helpful_error():
    a2m = {"hubert_encoder.0.weight": torch.empty(256, 1024, 3, device="meta")}
    with pytest.raises(CheckpointError, match="os_secc2plane_torso"):
        load_renderer(a2m, device="meta")
