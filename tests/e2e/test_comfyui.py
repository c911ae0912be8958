"""End to end in a real ComfyUI (comfyui_conventions.md §6.3, §8.4 tier 3): the server of
tests/e2e/comfy_server.py (runs when ``COMFYUI_DIR`` is set; must run in CI). The checks: every node
in ``/object_info`` with the input order and types of our schemas (and the core nodes' with the
executor's pinned order), our workflows in ``/workflow_templates``, each API twin to ``success`` in
``/history`` with its outputs checked (mp4s with PyAV, the saved adapter), an invalid prompt
answered 400 with our ``validate_inputs`` message, and no IMPORT FAILED for the pack in the server
log."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.comfy_server import PACK_FOLDER
from tests.nodes.harness import fakehost_module, import_pack, load_twin, load_workflow, node_list, submodule, tiny_root, \
    video_facts, with_overrides
from tests.nodes.tiny_assets import motion_frames


@pytest.fixture
def server(comfy_server):
    return comfy_server


def test_server_loaded_the_pack(server):
    stats = server.get("/system_stats")
    print(f"ComfyUI {stats['system'].get('comfyui_version')} (python {stats['system'].get('python_version', '')[:6]})")
    log = server.log.read_text()
    assert PACK_FOLDER in log and not any("IMPORT FAILED" in line and PACK_FOLDER in line for line in log.splitlines())


def test_object_info_matches_our_schemas(server):
    pack = import_pack()
    executor = fakehost_module(pack, "executor")
    info = server.get("/object_info")
    for cls in node_list(pack) + executor.CORE_NODES:
        schema = cls.define_schema()
        served = info[schema.node_id]
        order = served["input_order"].get("required", []) + served["input_order"].get("optional", [])
        assert order == [i.id for i in schema.inputs or []], schema.node_id
        types = {**served["input"].get("required", {}), **served["input"].get("optional", {})}
        for i in schema.inputs or []:
            served_type = types[i.id][0]
            assert (served_type == i.io_type) or (i.io_type == "COMBO" and isinstance(served_type, (list, str))), (schema.node_id, i.id)
        assert served["output"] == [o.io_type for o in schema.outputs or []], schema.node_id
        if schema.node_id.startswith("MimicTalk"):
            assert served["category"] == schema.category and served["description"] == schema.description
            assert served["output_node"] == schema.is_output_node


def test_workflow_templates_lists_our_workflows(server):
    listed = server.get("/workflow_templates").get(PACK_FOLDER, [])
    assert sorted(listed) == ["mimictalk_dub", "mimictalk_evaluate", "mimictalk_one_shot", "mimictalk_personalise",
                              "mimictalk_talk"]


def _check_video(server, entry, node_class):
    (node_id,) = [k for k, v in entry["prompt"][2].items() if v["class_type"] == node_class]
    (saved,) = entry["outputs"][node_id]["images"]
    facts = video_facts(server.base / "output" / saved["subfolder"] / saved["filename"])
    assert facts["frames"] == motion_frames() and facts["fps"] == 25.0 and facts["codec"] == "h264"
    assert facts["audio_codec"] == "aac" and abs(facts["audio_seconds"] - motion_frames() / 25) < 0.05
    embedded = json.loads(facts["metadata"]["prompt"])  # ComfyUI adds its cache keys ("is_changed") to the nodes
    assert {k: (v["class_type"], v["inputs"]) for k, v in embedded.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in entry["prompt"][2].items()}
    assert json.loads(facts["metadata"]["workflow"])["version"] == 0.4


def test_talk_twin_succeeds(server):
    entry = server.run(with_overrides(load_twin("mimictalk_talk")), load_workflow("mimictalk_talk"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    _check_video(server, entry, "MimicTalkVideoCombine")


def test_one_shot_twin_succeeds(server):
    prompt = with_overrides(load_twin("mimictalk_one_shot"), MimicTalkLoadRenderer={"weights": "tiny/real3d_renderer"})
    entry = server.run(prompt, load_workflow("mimictalk_one_shot"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    _check_video(server, entry, "MimicTalkVideoCombine")


def test_personalise_twin_succeeds(server):
    # held-out validation on the 26-frame clip: the last 5 frames (0.2 s), measured after every step
    prompt = with_overrides(load_twin("mimictalk_personalise"),
                            MimicTalkTrainAdapter={"run_name": "e2e", "holdout_seconds": 0.2, "validate_every": 1},
                            MimicTalkSaveAdapter={"name": "e2e_person", "overwrite": True})
    entry = server.run(prompt, load_workflow("mimictalk_personalise"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (node_id,) = [k for k, v in entry["prompt"][2].items() if v["class_type"] == "MimicTalkSaveAdapter"]
    assert entry["outputs"][node_id]["text"] == ["e2e_person.safetensors"]
    saved = server.base / "models" / "mimictalk" / "adapters" / "e2e_person.safetensors"  # the default adapter folder
    from mimictalk_lib.adapt.adapter import load_adapter

    meta = load_adapter(saved).metadata
    assert [h["step"] for h in meta["validation"]["history"]] == [1, 2, 3] and meta["validation"]["held_out"] == [21, 26]
    assert meta["training"]["steps_done"] == meta["validation"]["best_step"]  # the best validated adapter is kept
    report_id = next(k for k, v in entry["prompt"][2].items() if v["_meta"]["title"] == "Training report")
    (report,) = entry["outputs"][report_id]["images"]  # the curves, shown by the preview node
    assert (server.base / report["type"] / report["subfolder"] / report["filename"]).stat().st_size > 0


def test_evaluate_twin_succeeds(server):
    from tests.nodes.tiny_assets import CLIP_FRAMES
    from tests.workflows.test_workflows import EVALUATE_OVERRIDES

    entry = server.run(with_overrides(load_twin("mimictalk_evaluate"), **EVALUATE_OVERRIDES), load_workflow("mimictalk_evaluate"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    ids = {v["class_type"]: k for k, v in entry["prompt"][2].items()}
    (table,) = entry["outputs"][ids["MimicTalkEvaluate"]]["text"]
    assert table.startswith("| metric |") and "| head_ssim |" in table and "LSE-C" in table and "CSIM" in table
    assert f"{CLIP_FRAMES} frames at 25.0 fps" in table
    (plot,) = entry["outputs"][ids["PreviewImage"]]["images"]
    assert (server.base / plot["type"] / plot["subfolder"] / plot["filename"]).stat().st_size > 0


def test_dub_twin_succeeds(server):
    from tests.dub.test_dub_node import DUB_OVERRIDES, check_dub_video

    entry = server.run(with_overrides(load_twin("mimictalk_dub"), **DUB_OVERRIDES), load_workflow("mimictalk_dub"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (node_id,) = [k for k, v in entry["prompt"][2].items() if v["class_type"] == "MimicTalkDubVideo"]
    (saved,) = entry["outputs"][node_id]["images"]
    facts = video_facts(server.base / "output" / saved["subfolder"] / saved["filename"])
    check_dub_video(facts)  # the source's 320x240 at 30 fps, as long as the speech
    assert json.loads(facts["metadata"]["workflow"])["version"] == 0.4


def test_invalid_prompt_gets_a_400_with_our_message(server):
    prompt = with_overrides(load_twin("mimictalk_talk"), MimicTalkLoadRenderer={"precision": "fp16"})
    status, reply = server.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 400 and reply["error"]["type"] == "prompt_outputs_failed_validation"
    details = [e["details"] for errs in reply["node_errors"].values() for e in errs["errors"]]
    assert any("half precision is not supported" in d and "fp16" in d for d in details), reply


def test_files_outside_their_folders_are_refused_at_validation(server):
    """Issue 21 item 3 on the real server: absolute paths (of files that exist) in the audio and
    adapter widgets are refused before anything runs, with a message naming the folders."""
    tiny = tiny_root()
    prompt = {
        "1": {"class_type": "MimicTalkLoadAudio", "inputs": {"audio": str(tiny["input"] / "speech.wav")}},
        "2": {"class_type": "MimicTalkLoadAdapter",
              "inputs": {"adapter": str(tiny["models"] / "adapters" / "person.safetensors")}},
        "3": {"class_type": "MimicTalkSaveAdapter", "inputs": {"adapter": ["2", 0], "name": "never", "overwrite": False,
                                                              "triplane_precision": "fp32"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}},
        "5": {"class_type": "MimicTalkVideoCombine", "inputs": {"images": ["4", 0], "fps": 25.0, "audio": ["1", 0],
                                                               "filename_prefix": "never", "crf": 19, "audio_fit": "fit"}},
    }
    status, reply = server.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 400 and set(reply["node_errors"]) == {"1", "2"}, reply
    text = json.dumps(reply["node_errors"])
    assert str(server.base / "input") in text and "adapters" in text and "no absolute path" in text
