"""``python -m mimictalk_lib talk``: the README's main command, run in a fresh interpreter without
ComfyUI (the library only, no node module), on tiny weights; the same frames as the node graph on
the test host; and its offline failure with the downloader's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.nodes.harness import DOUBLES, REPO, load_twin, node_list, run, video_facts, with_overrides
from tests.nodes.tiny_assets import motion_frames

TINY = ["--renderer", "tiny/mimictalk_renderer", "--a2m", "tiny/ics_a2m", "--hubert", "tiny/hubert", "--steps", "3"]


def talk(tiny, tmp_path, *args, doubles=False):
    paths = [str(DOUBLES)] * doubles + [str(REPO)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MIMICTALK_MODELS_DIR", "FAKEHOST_BASE")}
    env.update(PYTHONPATH=os.pathsep.join(paths), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    cmd = [sys.executable, "-m", "mimictalk_lib", "talk", "--audio", str(tiny["input"] / "speech.wav"),
           "--models-dir", str(tiny["models"]), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # a fresh interpreter loads torch and runs the whole talk graph: ~15-40 s
def test_talk_command_writes_the_video(tiny, tmp_path):
    out = tmp_path / "out" / "talk.mp4"
    saved = tmp_path / "settings.json"
    r = talk(tiny, tmp_path, "--adapter", "person.safetensors", "--out", str(out), *TINY, "--seed", "7",
             "--set", "MimicTalkRender.chunk_size=3", "--set", "crf=20", "--save-settings", str(saved))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(out)
    facts = video_facts(out)
    assert facts["frames"] == motion_frames() and facts["fps"] == 25.0 and facts["codec"] == "h264"
    assert facts["audio_codec"] == "aac" and abs(facts["audio_seconds"] - motion_frames() / 25) < 0.05
    settings = json.loads(saved.read_text())
    assert json.loads(facts["metadata"]["mimictalk_settings"]) == settings  # the settings that ran are embedded
    assert settings["seed"] == settings["render_seed"] == 7 and settings["steps"] == 3
    assert settings["chunk_size"] == 3 and settings["crf"] == 20 and settings["pose"] == "static"


@pytest.mark.slow  # photo preparation with the mediapipe double + one-shot render in a fresh interpreter
def test_talk_command_one_shot_from_a_portrait(tiny, tmp_path):
    out = tmp_path / "portrait.mp4"
    r = talk(tiny, tmp_path, "--portrait", str(tiny["input"] / "portrait.png"), "--out", str(out),
             "--renderer", "tiny/real3d_renderer", "--a2m", "tiny/ics_a2m", "--hubert", "tiny/hubert", "--steps", "3",
             "--set", "MimicTalkPrepareIdentity.fit_iterations=2", doubles=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert video_facts(out)["frames"] == motion_frames()


def _frames(path):
    """The decoded frames (rgb24) and the decoded audio samples of a video, as bytes."""
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24").tobytes() for f in c.decode(c.streams.video[0])]
    with av.open(str(path)) as c:
        audio = b"".join(f.to_ndarray().tobytes() for f in c.decode(c.streams.audio[0]))
    return frames, audio


@pytest.mark.slow  # the talk graph on the test host + the command in a fresh interpreter: ~30-60 s
def test_talk_command_and_the_node_graph_give_the_same_video(pack, tiny, tmp_path):
    """The CLI calls the library directly; the talk workflow runs the node classes on the test
    host. Same inputs and seed: the same decoded frames and sound (both paths encode the same
    uint8 frames with the same encoder settings, so equality is exact by construction)."""
    prompt = with_overrides(load_twin("mimictalk_talk"), MimicTalkAudioToMotion={"steps": 3, "seed": 7},
                            MimicTalkRender={"seed": 7}, MimicTalkLoadAdapter={"adapter": "person.safetensors"})
    result = run(pack, prompt)
    (files,) = [u["images"] for u in result.ui.values() if u.get("images")]
    graph_video = tiny["output"] / files[0]["subfolder"] / files[0]["filename"]
    out = tmp_path / "cli.mp4"
    r = talk(tiny, tmp_path, "--adapter", "person.safetensors", "--out", str(out), *TINY, "--seed", "7")
    assert r.returncode == 0, r.stderr[-3000:]
    graph_frames, graph_audio = _frames(graph_video)
    cli_frames, cli_audio = _frames(out)
    assert len(cli_frames) == len(graph_frames) == motion_frames()
    assert cli_frames == graph_frames and cli_audio == graph_audio
    other = tmp_path / "seed8.mp4"  # the comparison can fail: another seed gives other frames
    assert talk(tiny, tmp_path, "--adapter", "person.safetensors", "--out", str(other), *TINY, "--seed", "8").returncode == 0
    assert _frames(other)[0] != graph_frames


def test_command_defaults_are_the_nodes_defaults(pack):
    """``talk`` without --set does what the shipped graphs do: each setting's default equals the
    default of every node widget it stands for (a drift between CLI and nodes fails here)."""
    from mimictalk_lib import __main__ as cli

    defaults = cli.default_settings()
    schemas = {cls.define_schema().node_id: cls.define_schema() for cls in node_list(pack)}
    assert set(defaults) == set(cli.SETTINGS)
    for name, aliases in cli.SETTINGS.items():
        for alias in aliases:
            node, widget = alias.split(".")
            (inp,) = [i for i in schemas[node].inputs if i.id == widget]
            assert inp.default == defaults[name], (alias, inp.default, defaults[name])


def test_the_library_never_reaches_the_nodes_package(repo_root):
    """No file of the library imports ``nodes`` (import statement, importlib, a module-name
    string) or loads the pack by file location."""
    import re

    pattern = re.compile(r"^\s*(from|import)\s+\.*nodes\b|spec_from_file_location|[\"'][\w.{}]*\bnodes\.[\w]+[\"']"
                         r"|import_module\([^)]*nodes", re.M)
    offenders = [f"{p.relative_to(repo_root)}: {m.group(0).strip()}" for p in sorted((repo_root / "mimictalk_lib").rglob("*.py"))
                 for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_talk_command_offline_fails_with_the_downloader_message(tiny, tmp_path):
    out = tmp_path / "never.mp4"
    r = talk(tiny, tmp_path, "--adapter", "person.safetensors", "--out", str(out),
             "--renderer", "tiny/mimictalk_renderer", "--a2m", "tiny/ics_a2m")  # HuBERT: the manifest's, absent
    assert r.returncode == 1 and not out.exists()
    assert "could not obtain" in r.stderr and "hubert" in r.stderr.lower()
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in r.stderr and "Traceback" not in r.stderr
    assert "python -m mimictalk_lib.download status --models-dir" in r.stderr  # lists every missing file


def test_talk_command_usage_errors(tiny, tmp_path):
    r = talk(tiny, tmp_path, "--out", str(tmp_path / "x.mp4"))  # neither --adapter nor --portrait
    assert r.returncode == 2 and "one of the arguments --adapter --portrait is required" in r.stderr
    r = talk(tiny, tmp_path, "--adapter", "person.safetensors", "--out", str(tmp_path / "x.mp4"), "--set", "Nope.x=1")
    assert r.returncode != 0 and "unknown setting 'Nope.x'" in r.stderr and "chunk_size" in r.stderr


@pytest.mark.slow  # two fresh interpreters load torch; the bf16 one runs the whole talk graph on a native-bf16 CPU
def test_talk_command_precision_on_the_cpu_is_the_loader_nodes_rule(tiny, tmp_path):
    """--set precision=bf16 is the same opt-in as on Load Renderer / Load Audio-to-Motion: accepted
    where the CPU has native bf16 (HuBERT kept fp32), refused with the reason elsewhere; fp16 never."""
    from mimictalk_lib.utils import cpu_bf16_native

    out = tmp_path / "bf16.mp4"
    r = talk(tiny, tmp_path, "--adapter", "person.safetensors", "--out", str(out), *TINY, "--set", "precision=bf16")
    if cpu_bf16_native():
        assert r.returncode == 0, r.stderr[-3000:]
        assert video_facts(out)["frames"] == motion_frames()
    else:
        assert r.returncode == 1 and "no native bf16" in r.stderr and "Use fp32" in r.stderr, r.stderr[-3000:]
    r = talk(tiny, tmp_path, "--adapter", "person.safetensors", "--out", str(tmp_path / "fp16.mp4"), *TINY,
             "--set", "precision=fp16")
    assert r.returncode == 1 and "only supported on a GPU" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
