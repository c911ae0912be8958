"""A real ComfyUI server with the pack and the tiny weights, for the end-to-end (tests/e2e) and
browser (tests/frontend) tests; one per test session (the ``comfy_server`` fixture of tests/conftest.py).

It runs when ``COMFYUI_DIR`` points at a ComfyUI checkout (its Python: ``COMFYUI_PYTHON``, default
this interpreter, with ComfyUI's and the pack's requirements); it skips with the reason otherwise,
except in CI (``CI=true``), where a missing ComfyUI is a failure: .ci/run provides one.
``COMFYUI_FRONTEND_ROOT`` serves another frontend build (``--front-end-root``, e.g. the static
folder of a newer ``comfyui-frontend-package``).

Start-up: ``main.py --cpu --listen 127.0.0.1 --port <free> --disable-auto-launch --base-directory
<tmp> --output-directory <tmp>/output --extra-model-paths-config <yaml>``, the pack linked through
the yaml's ``custom_nodes:`` entry (a temp folder holding a symlink to this repository, named
``comfyui-mimictalk``) and ``mimictalk:`` pointing at the tiny weights (tests/nodes/tiny_assets.py);
``PYTHONPATH`` carries the torchvision stand-in (stubs/) and the mediapipe test double. Nothing is
written into the ComfyUI checkout (no bytecode, every folder under the temp base). The server is
stopped with SIGINT, then killed if it lingers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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

from tests.nodes.harness import DOUBLES, REPO, tiny_root

STUBS = Path(__file__).resolve().parent / "stubs"
PACK_FOLDER = "comfyui-mimictalk"
START_TIMEOUT, RUN_TIMEOUT = 240, 900
EXAMPLE_INPUTS = {"mimictalk_clip.mp4": "clip.mp4"}
"""Files the shipped workflows name that the tiny inputs hold under another name (the frontend
previews them on load: a missing one is a 404 in the page)."""
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
"""The browser's user settings: no first-run templates dialog or minimap over the canvas."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str):
    """Skip with ``reason``; in CI, where .ci/run provides ComfyUI and Chromium, fail instead."""
    if in_ci():
        pytest.fail(f"CI must run this test, but: {reason}", pytrace=False)
    pytest.skip(reason)


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

    def wait(self, prompt_id: str) -> dict:
        """The history entry of ``prompt_id`` once it has finished (successfully or not)."""
        deadline = time.time() + RUN_TIMEOUT
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            assert self.process.poll() is None, self.log.read_text()[-4000:]
            time.sleep(1)
        raise AssertionError(f"prompt did not finish in {RUN_TIMEOUT} s")

    def run(self, prompt: dict, workflow: dict) -> dict:
        """Queue ``prompt`` and wait for its history entry."""
        status, reply = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex,
                                              "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
        assert status == 200 and not reply.get("node_errors"), reply
        return self.wait(reply["prompt_id"])


def serve(tmp_path_factory):
    """The ``comfy_server`` fixture (tests/conftest.py): yields a started :class:`Server`."""
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        skip_or_fail("set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run the real-ComfyUI tests")
    if not (Path(comfy_dir) / "main.py").is_file():
        skip_or_fail(f"COMFYUI_DIR={comfy_dir} holds no main.py")
    yield from running(Path(comfy_dir), tmp_path_factory.mktemp("comfy_e2e"))


@contextlib.contextmanager
def server_in(comfy_dir: Path, base: Path):
    """:func:`running` as a context manager, for scripts (tests/frontend/resave.py)."""
    yield from running(comfy_dir, base)


def running(comfy_dir: Path, base: Path):
    """Start ComfyUI from ``comfy_dir`` with every folder under the empty folder ``base``; yield
    the :class:`Server` once it answers; stop it afterwards."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    tiny = tiny_root()
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
    (base / "input").mkdir()
    for f in tiny["input"].iterdir():  # copies: the pack refuses links leading out of the input folder
        shutil.copy(f, base / "input" / f.name)
    for name, tiny_name in EXAMPLE_INPUTS.items():
        shutil.copy(tiny["input"] / tiny_name, base / "input" / name)
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(SETTINGS))
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
    if os.environ.get("COMFYUI_FRONTEND_ROOT"):
        cmd += ["--front-end-root", os.environ["COMFYUI_FRONTEND_ROOT"]]
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
