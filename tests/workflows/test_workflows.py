"""The shipped workflows: statically valid against the node schemas (types, widget counts with
control_after_generate and upload values, combo values and ranges, link types, registry ids),
their API-format twins regenerate from them, and each twin runs on tiny weights to its real
outputs (an mp4 checked with PyAV, or a saved adapter)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.nodes.harness import (
    API_TWINS, REPO, WORKFLOWS, fakehost_module, load_twin, load_workflow, node_list, run, video_facts, with_overrides,
)
from tests.nodes.tiny_assets import SPEECH_SECONDS, motion_frames

NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
FRONTEND_ONLY = ("MarkdownNote", "Note")  # the notes: kept by the frontend, never in a prompt
UPLOAD_VALUES = {"image_upload": 1, "video_upload": 1, "audio_upload": 2}  # saved after the widgets by the frontend
PACK_VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def schemas(pack):
    executor = fakehost_module(pack, "executor")
    return executor.schemas(node_list(pack) + executor.CORE_NODES)


def test_the_workflows_ship_with_their_twins():
    assert NAMES == ["mimictalk_dub", "mimictalk_evaluate", "mimictalk_one_shot", "mimictalk_personalise", "mimictalk_talk"]
    assert sorted(p.stem for p in API_TWINS.glob("*.json")) == NAMES


def test_every_node_of_the_pack_is_in_a_shipped_workflow(pack):
    """The browser test (tests/frontend) opens every shipped workflow and runs it from the page,
    so a node in one of them is covered through the frontend (issue 19: every node added later
    must be); a new node needs a workflow, or a place in one."""
    used = {n["type"] for name in NAMES for n in load_workflow(name)["nodes"]}
    missing = sorted({cls.define_schema().node_id for cls in node_list(pack)} - used)
    assert not missing, f"nodes in no shipped workflow: {missing}"


def without_notes(wf: dict) -> dict:
    return {**wf, "nodes": [n for n in wf["nodes"] if n["type"] not in FRONTEND_ONLY]}


@pytest.mark.parametrize("name", NAMES)
def test_workflow_has_a_note_and_a_group_per_stage(name):
    """First-time users open these from the templates browser: a note says what to load where,
    and every node sits in one of the stage groups (tests/frontend/resave.py lays them out)."""
    wf = load_workflow(name)
    (note,) = [n for n in wf["nodes"] if n["type"] in FRONTEND_ONLY]
    assert "models/mimictalk" in note["widgets_values"][0] and "**Run**" in note["widgets_values"][0]
    groups = wf["groups"]
    assert len(groups) == 3 and [g["title"][0] for g in groups] == ["1", "2", "3"]
    for node in without_notes(wf)["nodes"]:
        x, y = node["pos"]
        inside = [g["title"] for g in groups if g["bounding"][0] <= x and x + node["size"][0] <= g["bounding"][0] + g["bounding"][2]
                  and g["bounding"][1] <= y and y <= g["bounding"][1] + g["bounding"][3]]
        assert len(inside) == 1, (name, node["type"], inside)


def test_every_workflow_has_its_thumbnail():
    from PIL import Image

    for name in NAMES:  # served as /api/workflow_templates/comfyui-mimictalk/<name>.jpg
        with Image.open(WORKFLOWS / f"{name}.jpg") as im:
            assert im.format == "JPEG" and 200 <= im.width <= 800 and (WORKFLOWS / f"{name}.jpg").stat().st_size < 100_000


def _widgets(schema):
    return [i for i in schema.inputs or [] if i.io_type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_is_statically_valid(name, schemas, pack):
    wf = load_workflow(name)
    assert wf["version"] == 0.4 and set(wf) >= {"nodes", "links", "last_node_id", "last_link_id", "extra"}
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(link[0] for link in wf["links"])
    core = {cls.define_schema().node_id for cls in fakehost_module(pack, "executor").CORE_NODES}
    for node in without_notes(wf)["nodes"]:
        assert node["type"] in schemas, f"unknown node type {node['type']}"
        cls, schema = schemas[node["type"]]
        props = node["properties"]
        assert (props["cnr_id"], props["ver"]) == (("comfy-core", "0.3.64") if node["type"] in core else ("mimictalk", PACK_VERSION))
        assert node.get("mode", 0) == 0
        widgets = _widgets(schema)
        # positional widgets_values: one per widget, one more after a control_after_generate INT,
        # then what the upload widgets save
        expected = len(widgets) + sum(bool(getattr(i, "control_after_generate", False)) for i in widgets)
        expected += sum(UPLOAD_VALUES[i.upload.value] for i in widgets if getattr(i, "upload", None) is not None)
        values = node["widgets_values"]
        assert len(values) == expected, (name, node["type"], values)
        taken_over = set(cls.validate_inputs.__code__.co_varnames) if "validate_inputs" in vars(cls) else set()
        pos = 0
        for i in widgets:
            v = values[pos]
            pos += 2 if getattr(i, "control_after_generate", False) else 1
            if getattr(i, "control_after_generate", False):
                assert values[pos - 1] in ("fixed", "increment", "decrement", "randomize")
            if i.io_type == "COMBO" and i.id not in taken_over:  # as ComfyUI: validate_inputs takes file lists over
                assert v in i.options, (node["type"], i.id, v)
            elif i.io_type in ("INT", "FLOAT"):
                assert isinstance(v, (int, float)) and not isinstance(v, bool) and i.min <= v <= i.max, (node["type"], i.id, v)
            elif i.io_type == "BOOLEAN":
                assert isinstance(v, bool)
            if isinstance(v, str):
                assert not (v.startswith("/") or re.match(r"[A-Za-z]:\\", v)), f"absolute path in {node['type']}.{i.id}"


@pytest.mark.parametrize("name", NAMES)
def test_links_connect_matching_types(name, schemas):
    wf = load_workflow(name)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out_schema = schemas[nodes[src]["type"]][1].outputs[src_slot]
        assert out_schema.io_type == typ and link_id in nodes[src]["outputs"][src_slot]["links"]
        slot = nodes[dst]["inputs"][dst_slot]
        assert slot["link"] == link_id and slot["type"] == typ
        target = next(i for i in schemas[nodes[dst]["type"]][1].inputs if i.id == slot["name"])
        assert target.io_type == typ, (name, nodes[dst]["type"], slot["name"])
    for node in without_notes(wf)["nodes"]:  # every required socket is connected
        linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for i in schemas[node["type"]][1].inputs or []:
            if i not in _widgets(schemas[node["type"]][1]) and not i.optional:
                assert i.id in linked, (name, node["type"], i.id)


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_regenerates_from_the_ui_workflow(name, schemas, pack):
    convert = fakehost_module(pack, "workflow").ui_to_api
    assert convert(without_notes(load_workflow(name)), schemas) == load_twin(name)
    assert json.loads(json.dumps(load_twin(name))) == load_twin(name)


def test_converter_rejects_a_wrong_widget_count(schemas, pack):
    wf = load_workflow("mimictalk_talk")
    render = next(n for n in wf["nodes"] if n["type"] == "MimicTalkRender")
    render["widgets_values"] = render["widgets_values"][:-1]  # e.g. the seed's control value forgotten
    with pytest.raises(ValueError, match="widgets_values"):
        fakehost_module(pack, "workflow").ui_to_api(wf, schemas)


def test_executor_rejects_an_invalid_graph(pack):
    executor = fakehost_module(pack, "executor")
    prompt = with_overrides(load_twin("mimictalk_talk"), MimicTalkLoadRenderer={"precision": "fp16"},
                            MimicTalkRender={"chunk_size": 0})
    with pytest.raises(executor.PromptError) as e:
        run(pack, prompt)
    assert "half precision is not supported" in str(e.value)  # our validate_inputs message
    assert "chunk_size: value 0 smaller than min of 1" in str(e.value)  # the schema range


# --- running the twins on tiny weights ----------------------------------------------------------

EXTRA = {"extra_pnginfo": {"workflow": {"name": "from the test"}}}


def _saved_video(result, tiny):
    (files,) = [u["images"] for u in result.ui.values() if u.get("images")]
    (f,) = files
    return tiny["output"] / f["subfolder"] / f["filename"]


def _check_talking_video(path, prompt):
    facts = video_facts(path)
    frames = motion_frames()
    assert facts["frames"] == frames and facts["fps"] == 25.0 and facts["codec"] == "h264"
    assert facts["audio_codec"] == "aac" and abs(facts["audio_seconds"] - frames / 25) < 0.05
    assert abs(frames / 25 - SPEECH_SECONDS) < 0.05
    assert json.loads(facts["metadata"]["prompt"]) == prompt and json.loads(facts["metadata"]["workflow"]) == EXTRA["extra_pnginfo"]["workflow"]


@pytest.mark.slow  # tiny models, but a full graph: ~10-30 s on 2 cores
def test_talk_twin_runs_to_an_mp4(pack, tiny):
    prompt = with_overrides(load_twin("mimictalk_talk"))
    result = run(pack, prompt, EXTRA)
    _check_talking_video(_saved_video(result, tiny), prompt)


@pytest.mark.slow  # identity preparation (MediaPipe double, 3DMM fit) + one-shot render: ~20-60 s
def test_one_shot_twin_runs_to_an_mp4(pack, tiny, fake_mediapipe):
    prompt = with_overrides(load_twin("mimictalk_one_shot"), MimicTalkLoadRenderer={"weights": "tiny/real3d_renderer"})
    result = run(pack, prompt, EXTRA)
    _check_talking_video(_saved_video(result, tiny), prompt)
    assert any("images" in u and not u["images"] for u in result.ui.values())  # the preview node ran (nothing to show)


@pytest.mark.slow  # clip preparation + 3 training steps: ~20-60 s
def test_personalise_twin_trains_and_saves_an_adapter(pack, tiny, fake_mediapipe):
    from mimictalk_lib.adapt.adapter import load_adapter

    prompt = with_overrides(load_twin("mimictalk_personalise"), MimicTalkTrainAdapter={"run_name": "twin"},
                            MimicTalkSaveAdapter={"name": "twin_person", "overwrite": True})
    result = run(pack, prompt, EXTRA)
    (saved,) = [u["text"][0] for u in result.ui.values() if "text" in u]
    adapter = load_adapter(tiny["models"] / "adapters" / saved)
    assert saved == "twin_person.safetensors" and adapter.metadata["training"]["steps_done"] == 3
    assert adapter.metadata["training"]["num_frames"] == 26 and adapter.identity.bg.shape[-1] == 64
    assert torch.isfinite(adapter.triplane).all()


# the Evaluate workflow on tiny weights: the drawn clip has 26 frames (under the 2 s a held-out
# slice needs), the tiny models folder has no LPIPS weights, and downloads are off in tests
EVALUATE_OVERRIDES = dict(MimicTalkEvaluate={"frames": "all", "perceptual": False, "auto_download": False})


def check_evaluate_outputs(table: str, metrics_json: str, frames: int) -> None:
    """What the Evaluate node returns for the tiny twin: the table, JSON with every frame measured
    and the optional models named in notes."""
    data = json.loads(metrics_json)
    assert table.startswith("| metric |") and "| psnr |" in table and "| head_ssim |" in table
    assert data["info"]["frames"] == frames and len(data["per_frame"]["psnr"]) == frames
    assert 0 < data["metrics"]["psnr"] < 60 and -1 <= data["metrics"]["head_ssim"] <= 1
    assert any("LSE-C" in n for n in data["notes"]) and any("CSIM" in n for n in data["notes"])


@pytest.mark.slow  # clip preparation + re-rendering 26 frames of the tiny renderer: ~20-60 s
def test_evaluate_twin_measures_the_adapter_on_its_clip(pack, tiny, fake_mediapipe):
    from tests.nodes.tiny_assets import CLIP_FRAMES

    result = run(pack, with_overrides(load_twin("mimictalk_evaluate"), **EVALUATE_OVERRIDES), EXTRA)
    (table,) = [u["text"][0] for u in result.ui.values() if "text" in u]
    evaluate_id = next(k for k, v in load_twin("mimictalk_evaluate").items() if v["class_type"] == "MimicTalkEvaluate")
    out_table, plot, metrics_json = result.outputs[evaluate_id]
    assert out_table == table and plot.shape[0] == 1 and plot.shape[-1] == 3
    check_evaluate_outputs(table, metrics_json, CLIP_FRAMES)
