"""Node contract: the pack registers through ComfyUI's V3 entry point, every schema validates,
ids are unique and prefixed, every input and output is documented, defaults are legal, and the
custom socket types connect."""

from __future__ import annotations

import re

import pytest

from tests.nodes.harness import fakehost_module, node_list, submodule

WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@pytest.fixture(scope="module")
def schemas(pack):
    executor = fakehost_module(pack, "executor")
    return executor.schemas(node_list(pack))


def test_pack_registers_through_the_v3_entry_point_only(pack):
    assert hasattr(pack, "comfy_entrypoint") and not hasattr(pack, "NODE_CLASS_MAPPINGS")
    nodes = node_list(pack)
    assert len(nodes) == 14 and nodes == list(submodule(pack, "nodes").NODE_LIST)


def test_ids_unique_prefixed_and_categorised(schemas):
    # executor.schemas raises on a duplicate id; check prefix and category of each
    for node_id, (cls, schema) in schemas.items():
        assert re.fullmatch(r"MimicTalk[A-Z][A-Za-z0-9]+", node_id), node_id
        assert schema.category.startswith("MimicTalk/"), (node_id, schema.category)
        assert schema.display_name.startswith("MimicTalk "), node_id
        assert len(schema.description) > 40, node_id


def test_every_input_and_output_has_a_tooltip(schemas):
    missing = [(n, i.id) for n, (_, s) in schemas.items() for i in s.inputs or [] if not (i.tooltip or "").strip()]
    missing += [(n, o.display_name) for n, (_, s) in schemas.items() for o in s.outputs or [] if not (o.tooltip or "").strip()]
    assert missing == []


def test_widget_defaults_are_legal(schemas):
    for node_id, (_, schema) in schemas.items():
        for i in schema.inputs or []:
            if i.io_type == "COMBO":
                assert i.options and i.default in i.options, (node_id, i.id)
            elif i.io_type in ("INT", "FLOAT"):
                assert i.default is not None and i.min <= i.default <= i.max, (node_id, i.id)
            elif i.io_type in WIDGETS:
                assert i.default is not None, (node_id, i.id)


def test_custom_sockets_connect(schemas):
    produced = {o.io_type for _, s in schemas.values() for o in s.outputs or []}
    consumed = {i.io_type for _, s in schemas.values() for i in s.inputs or []}
    ours = {t for t in produced | consumed if t.startswith("MIMICTALK_")}
    assert ours == {"MIMICTALK_RENDERER", "MIMICTALK_FACE_MODEL", "MIMICTALK_A2M", "MIMICTALK_IDENTITY",
                    "MIMICTALK_ADAPTER", "MIMICTALK_MOTION"}
    assert ours <= produced and ours <= consumed  # every custom type has a source and a use


def test_output_nodes_and_seeds(schemas):
    outputs = {n for n, (_, s) in schemas.items() if s.is_output_node}
    assert outputs == {"MimicTalkVideoCombine", "MimicTalkSaveAdapter", "MimicTalkEvaluate", "MimicTalkDubVideo"}
    assert {"prompt", "extra_pnginfo"} <= {h.name for h in schemas["MimicTalkVideoCombine"][1].hidden}
    seeds = {n for n, (_, s) in schemas.items() for i in s.inputs or [] if getattr(i, "control_after_generate", False)}
    assert seeds == {"MimicTalkTrainAdapter", "MimicTalkAudioToMotion", "MimicTalkRender", "MimicTalkDubVideo"}


def test_optional_inputs_have_python_defaults(schemas):
    """ComfyUI leaves unconnected optional inputs out of the call: execute must default them."""
    import inspect

    for node_id, (cls, schema) in schemas.items():
        params = inspect.signature(cls.execute).parameters
        for i in schema.inputs or []:
            assert i.id in params, (node_id, i.id)
            if i.optional:
                assert params[i.id].default is None, (node_id, i.id)


def test_validate_inputs_messages(pack):
    loaders = submodule(pack, "nodes.loaders")
    msg = loaders.LoadRenderer.validate_inputs(weights="tiny/mimictalk_renderer", precision="fp16")
    assert "CPU" in msg and "fp16" in msg
    assert loaders.LoadRenderer.validate_inputs(weights="tiny/mimictalk_renderer", precision="auto") is True
    assert loaders.LoadRenderer.validate_inputs(weights="mimictalk_base_renderer", precision="fp32") is True  # may download
    msg = loaders.LoadRenderer.validate_inputs(weights="nowhere/model", precision="auto")
    assert "'nowhere/model' was not found" in msg
    train = submodule(pack, "nodes.train")
    assert "run_name" in train.TrainAdapter.validate_inputs(run_name="../escape")
    adapters = submodule(pack, "nodes.adapters")
    assert "not found" in adapters.LoadAdapter.validate_inputs(adapter="nobody.safetensors")
    assert "'..'" in adapters.SaveAdapter.validate_inputs(name="a/../b")


def test_loader_lists_show_converted_models(schemas):
    weights = schemas["MimicTalkLoadRenderer"][1].inputs[0].options
    assert weights[:2] == ["mimictalk_base_renderer", "real3dportrait_renderer"]
    assert {"tiny/mimictalk_renderer", "tiny/real3d_renderer"} <= set(weights)
    a2m, hubert = schemas["MimicTalkLoadAudio2Motion"][1].inputs[:2]
    assert a2m.options == ["ics_a2m", "tiny/ics_a2m"] and hubert.options == ["hubert_large", "tiny/hubert"]
    adapters = schemas["MimicTalkLoadAdapter"][1].inputs[0].options
    assert "person.safetensors" in adapters


def test_optional_inputs_come_last(schemas):
    """ComfyUI serves required inputs before optional ones (input_order); keeping that order in
    the schema makes widget and slot positions the same in ComfyUI, the converter and the docs."""
    for node_id, (_, schema) in schemas.items():
        flags = [i.optional for i in schema.inputs or []]
        assert flags == sorted(flags), node_id
