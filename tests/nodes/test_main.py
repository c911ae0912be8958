"""``python -m mimictalk_lib talk``: the README's main command, run in a fresh interpreter without
ComfyUI (standalone host), on tiny weights; and its offline failure with the downloader's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.nodes.harness import DOUBLES, REPO, video_facts
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
    graph = tmp_path / "graph.json"
    r = talk(tiny, tmp_path, "--adapter", "person.safetensors", "--out", str(out), *TINY, "--seed", "7",
             "--save-graph", str(graph))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(out)
    facts = video_facts(out)
    assert facts["frames"] == motion_frames() and facts["fps"] == 25.0 and facts["codec"] == "h264"
    assert facts["audio_codec"] == "aac" and abs(facts["audio_seconds"] - motion_frames() / 25) < 0.05
    prompt = json.loads(graph.read_text())
    assert json.loads(facts["metadata"]["prompt"]) == prompt  # the graph that ran is embedded
    seeds = {n["class_type"]: n["inputs"].get("seed") for n in prompt.values()}
    assert seeds["MimicTalkAudioToMotion"] == 7 and seeds["MimicTalkRender"] == 7
    assert json.loads(facts["metadata"]["workflow"])["version"] == 0.4  # the UI workflow, like core SaveVideo


@pytest.mark.slow  # photo preparation with the mediapipe double + one-shot render in a fresh interpreter
def test_talk_command_one_shot_from_a_portrait(tiny, tmp_path):
    out = tmp_path / "portrait.mp4"
    r = talk(tiny, tmp_path, "--portrait", str(tiny["input"] / "portrait.png"), "--out", str(out),
             "--renderer", "tiny/real3d_renderer", "--a2m", "tiny/ics_a2m", "--hubert", "tiny/hubert", "--steps", "3",
             "--set", "MimicTalkPrepareIdentity.fit_iterations=2", doubles=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert video_facts(out)["frames"] == motion_frames()


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
    assert r.returncode != 0 and "no node of type ['Nope']" in r.stderr
