"""Shared set-up of the node, workflow and main-command tests: tiny weights (``tiny_assets``) in
a fake ComfyUI tree, the pack imported the way ComfyUI imports it with the fake host
(``tests/fakehost``) on ``sys.path``, the ``mediapipe`` test double, and helpers to run graphs.

The pack is imported once per test process, as ComfyUI does: by file location, under its
mangled module name (the folder path with '.' -> '_x_'), through a symlinked folder with a
hyphen in its name. Its library is therefore a separate copy (``pack.mimictalk_lib``) from the
``mimictalk_lib`` the fixtures use: compare error types through :func:`lib`.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import pytest

from tests.nodes import tiny_assets

REPO = Path(__file__).resolve().parents[2]
FAKEHOST = REPO / "tests" / "fakehost"
DOUBLES = REPO / "tests" / "nodes" / "doubles"
WORKFLOWS = REPO / "workflows"
API_TWINS = REPO / "tests" / "workflows" / "api"
MEDIAPIPE_MODULES = ("mediapipe", "mediapipe.tasks", "mediapipe.tasks.python", "mediapipe.tasks.python.vision")

_STATE: dict[str, Any] = {}


def tiny_root() -> dict[str, Path]:
    """The fake ComfyUI base folder with tiny weights and inputs (built once per process)."""
    if "assets" not in _STATE:
        root = Path(tempfile.mkdtemp(prefix="mimictalk-tiny-"))
        _STATE["assets"] = tiny_assets.build(root)
    return _STATE["assets"]


def import_pack() -> ModuleType:
    """The pack, imported like ComfyUI's ``load_custom_node`` with the fake host."""
    if "pack" in _STATE:
        return _STATE["pack"]
    assets = tiny_root()
    if "folder_paths" in sys.modules and not sys.modules["folder_paths"].__file__.startswith(str(FAKEHOST)):
        raise RuntimeError("a real ComfyUI folder_paths is already imported; run these tests without ComfyUI")
    os.environ["FAKEHOST_BASE"] = str(assets["root"])
    sys.path.insert(0, str(FAKEHOST))
    link = assets["root"] / "custom_nodes" / "comfyui-mimictalk"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(REPO, target_is_directory=True)
    name = str(link).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, link / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _STATE["pack"] = module
    return module


def submodule(pack: ModuleType, name: str) -> ModuleType:
    return importlib.import_module(f"{pack.__name__}.{name}")


def fakehost_module(pack: ModuleType, name: str) -> ModuleType:
    """A module of the fake host's test tooling (``executor``, ``workflow``), imported once ``pack``
    is imported (the fake ``comfy_api`` / ``folder_paths`` are then on ``sys.path``)."""
    return importlib.import_module(f"tests.fakehost.{name}")


def lib(pack: ModuleType, name: str) -> ModuleType:
    """A module of the pack's own copy of the library (``lib(pack, "errors").InputError``)."""
    return submodule(pack, f"mimictalk_lib.{name}")


def node_list(pack: ModuleType) -> list[type]:
    ext = asyncio.run(pack.comfy_entrypoint())
    return asyncio.run(ext.get_node_list())


def load_mediapipe_double() -> dict[str, ModuleType]:
    """The four ``mediapipe`` modules of the test double (imported once, then kept aside)."""
    if "mediapipe" not in _STATE:
        saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "mediapipe" or k.startswith("mediapipe.")}
        sys.path.insert(0, str(DOUBLES))
        try:
            for name in MEDIAPIPE_MODULES:
                importlib.import_module(name)
            _STATE["mediapipe"] = {k: sys.modules.pop(k) for k in MEDIAPIPE_MODULES}
        finally:
            sys.path.remove(str(DOUBLES))
            sys.modules.update(saved)
    return _STATE["mediapipe"]


@pytest.fixture
def fake_mediapipe(monkeypatch):
    """The ``mediapipe`` double in ``sys.modules`` for one test (the real package, if any, after)."""
    for name, module in load_mediapipe_double().items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture(scope="session")
def tiny():
    return tiny_root()


@pytest.fixture(scope="session")
def pack(tiny):
    return import_pack()


# ---------------------------------------------------------------- graphs


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


def load_twin(name: str) -> dict:
    return json.loads((API_TWINS / f"{name}.json").read_text(encoding="utf-8"))


TINY_OVERRIDES = {
    "MimicTalkLoadRenderer": {"weights": "tiny/mimictalk_renderer"},
    "MimicTalkLoadAudio2Motion": {"a2m": "tiny/ics_a2m", "hubert": "tiny/hubert"},
    "MimicTalkPrepareIdentity": {"fit_iterations": 2},
    "MimicTalkTrainAdapter": {"steps": 3, "perceptual_loss": False},
    "MimicTalkAudioToMotion": {"steps": 3},
    "MimicTalkRender": {"chunk_size": 4},
    "LoadVideo": {"file": "clip.mp4"},
}
"""What a test changes in a shipped graph to run it on tiny weights in seconds."""


def with_overrides(prompt: dict, overrides: Optional[dict] = None, **per_class: dict) -> dict:
    """A copy of an API prompt with widget values replaced per class type."""
    out = copy.deepcopy(prompt)
    table = {k: dict(v) for k, v in (overrides if overrides is not None else TINY_OVERRIDES).items()}
    for cls, values in per_class.items():
        table.setdefault(cls, {}).update(values)
    for node in out.values():
        node["inputs"].update(table.get(node["class_type"], {}))
    return out


def run(pack: ModuleType, prompt: dict, extra_data: Optional[dict] = None):
    nodes = submodule(pack, "nodes")
    return fakehost_module(pack, "executor").run_prompt(prompt, nodes.NODE_LIST, extra_data=extra_data)


def video_facts(path: Path) -> dict:
    """Frames, fps, size, codecs, audio duration and metadata of a video file, read with PyAV."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        facts = {"frames": frames, "fps": float(v.average_rate), "codec": v.codec_context.name,
                 "size": (v.codec_context.width, v.codec_context.height), "metadata": dict(c.metadata)}
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            samples = sum(f.samples for f in c.decode(a))
            facts.update(audio_codec=a.codec_context.name, audio_seconds=samples / a.codec_context.sample_rate)
    return facts
