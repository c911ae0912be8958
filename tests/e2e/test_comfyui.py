"""End to end in a real ComfyUI (comfyui_conventions.md §6.3, §8.4 tier 3).

Runs when ``COMFYUI_DIR`` points at a ComfyUI checkout (its Python: ``COMFYUI_PYTHON``, default
this interpreter, with ComfyUI's and the pack's requirements); skips with the reason otherwise.

One headless CPU server per session: ``main.py --cpu --listen 127.0.0.1 --port <free>
--disable-auto-launch --base-directory <tmp> --output-directory <tmp>/output
--extra-model-paths-config <yaml>``, the pack linked through the yaml's ``custom_nodes:`` entry (a
temp folder holding a symlink to this repository) and ``mimictalk:`` pointing at the tiny weights
(tests/nodes/tiny_assets.py); ``PYTHONPATH`` carries the torchvision stand-in (stubs/) and the
mediapipe test double. Nothing is written into the ComfyUI checkout (no bytecode, every folder
under the temp base). The checks: every node in ``/object_info`` with the input order and types
of our schemas (and the core nodes' with the executor's pinned order), our workflows in
``/workflow_templates``, each API twin to ``success`` in ``/history`` with its outputs checked
(mp4s with PyAV, the saved adapter), an invalid prompt answered 400 with our ``validate_inputs``
message, and no IMPORT FAILED for the pack in the server log. The server is stopped with SIGINT,
then killed if it lingers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.nodes.harness import DOUBLES, REPO, import_pack, load_twin, load_workflow, node_list, submodule, tiny_root, \
    video_facts, with_overrides
from tests.nodes.tiny_assets import motion_frames

STUBS = Path(__file__).resolve().parent / "stubs"
PACK_FOLDER = "comfyui-mimictalk"
START_TIMEOUT, RUN_TIMEOUT = 240, 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path, base: Path):
        self.url, self.process, self.log, self.base = url, process, log, base

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def run(self, prompt: dict, workflow: dict) -> dict:
        """Queue ``prompt`` and wait for its history entry."""
        status, reply = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex,
                                              "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
        assert status == 200 and not reply.get("node_errors"), reply
        deadline = time.time() + RUN_TIMEOUT
        while time.time() < deadline:
            entry = self.get(f"/history/{reply['prompt_id']}").get(reply["prompt_id"])
            if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            assert self.process.poll() is None, self.log.read_text()[-4000:]
            time.sleep(1)
        raise AssertionError(f"prompt did not finish in {RUN_TIMEOUT} s")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run the real-ComfyUI end-to-end test")
    if not (Path(comfy_dir) / "main.py").is_file():
        pytest.skip(f"COMFYUI_DIR={comfy_dir} holds no main.py")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    tiny = tiny_root()
    base = tmp_path_factory.mktemp("comfy_e2e")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
    (base / "input").mkdir()
    for f in tiny["input"].iterdir():
        (base / "input" / f.name).symlink_to(f)
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"mimictalk_e2e:\n  custom_nodes: {base / 'custom_nodes'}\n  mimictalk: {tiny['models']}\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MIMICTALK_MODELS_DIR", "FAKEHOST_BASE")}
    env.update(PYTHONPATH=os.pathsep.join([str(STUBS), str(DOUBLES), str(REPO)]), PYTHONDONTWRITEBYTECODE="1",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    log = base / "server.log"
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--base-directory", str(base), "--output-directory", str(base / "output"),
           "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(yaml)]
    with open(log, "w") as fh:
        process = subprocess.Popen(cmd, cwd=comfy_dir, env=env, stdout=fh, stderr=subprocess.STDOUT)
    srv = Server(f"http://127.0.0.1:{port}", process, log, base)
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError("ComfyUI exited during start-up:\n" + log.read_text()[-4000:])
            try:
                srv.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.time() > deadline:
                    raise AssertionError("ComfyUI did not answer in time:\n" + log.read_text()[-4000:])
                time.sleep(0.5)
        yield srv
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def test_server_loaded_the_pack(server):
    stats = server.get("/system_stats")
    print(f"ComfyUI {stats['system'].get('comfyui_version')} (python {stats['system'].get('python_version', '')[:6]})")
    log = server.log.read_text()
    assert PACK_FOLDER in log and not any("IMPORT FAILED" in line and PACK_FOLDER in line for line in log.splitlines())


def test_object_info_matches_our_schemas(server):
    pack = import_pack()
    executor = submodule(pack, "nodes.executor")
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
    assert sorted(listed) == ["mimictalk_one_shot", "mimictalk_personalise", "mimictalk_talk"]


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
    prompt = with_overrides(load_twin("mimictalk_personalise"), MimicTalkTrainAdapter={"run_name": "e2e"},
                            MimicTalkSaveAdapter={"name": "e2e_person", "overwrite": True})
    entry = server.run(prompt, load_workflow("mimictalk_personalise"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (node_id,) = [k for k, v in entry["prompt"][2].items() if v["class_type"] == "MimicTalkSaveAdapter"]
    assert entry["outputs"][node_id]["text"] == ["e2e_person.safetensors"]
    saved = server.base / "models" / "mimictalk" / "adapters" / "e2e_person.safetensors"  # the default adapter folder
    from mimictalk_lib.adapt.adapter import load_adapter

    assert load_adapter(saved).metadata["training"]["steps_done"] == 3


def test_invalid_prompt_gets_a_400_with_our_message(server):
    prompt = with_overrides(load_twin("mimictalk_talk"), MimicTalkLoadRenderer={"precision": "fp16"})
    status, reply = server.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 400 and reply["error"]["type"] == "prompt_outputs_failed_validation"
    details = [e["details"] for errs in reply["node_errors"].values() for e in errs["errors"]]
    assert any("half precision is not supported" in d and "fp16" in d for d in details), reply
