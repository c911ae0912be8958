"""The serve command's entry and its optional dependencies; the bench script's smoke run."""

import os
import subprocess
import sys

import pytest

from mimictalk_lib.errors import DependencyMissingError, InputError


def test_missing_webrtc_packages_say_how_to_install(monkeypatch):
    from mimictalk_lib.live import server

    monkeypatch.setitem(sys.modules, "aiortc", None)  # import aiortc -> ImportError
    with pytest.raises(DependencyMissingError, match=r"aiortc.*pip install"):
        server.import_webrtc()


def test_serve_is_a_command_and_checks_its_arguments(repo_root, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "mimictalk_lib", "serve", "--help"], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--max-sessions" in done.stdout and "127.0.0.1" in done.stdout
    done = subprocess.run([sys.executable, "-m", "mimictalk_lib", "serve", "--adapter", "nowhere.safetensors",
                           "--models-dir", str(tmp_path)], cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "neither a file/folder nor a model" in done.stderr, done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "mimictalk_lib", "serve", "--adapter", "a.safetensors", "--dtype", "fp16",
                           "--models-dir", str(tmp_path)], cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "GPU" in done.stderr, done.stderr[-2000:]  # half precision is refused on the CPU


def test_load_avatar_needs_exactly_one_who(tmp_path):
    from mimictalk_lib.live.avatar import load_avatar

    with pytest.raises(InputError, match="exactly one"):
        load_avatar(models_dir=tmp_path)


@pytest.mark.slow
def test_bench_live_tiny_prints_both_tables(repo_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "bench.live", "--tiny", "--figure", str(tmp_path / "borders.png")],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    borders = [line for line in lines if line.startswith("| in-context") or line.startswith("| independent")]
    assert len(borders) == 3 and all(float(row.split("|")[8]) > 0 for row in borders), done.stdout
    session = [line for line in lines if line.startswith("| cpu |")]
    assert len(session) == 1 and int(session[0].split("|")[3]) > 0, done.stdout
    assert (tmp_path / "borders.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


PORTRAIT_SNIPPET = """
import sys, numpy as np
from mimictalk_lib.live.avatar import load_avatar
avatar = load_avatar(models_dir=sys.argv[1], portrait=sys.argv[2], renderer='tiny/real3d_renderer', a2m='tiny/ics_a2m',
                     hubert='tiny/hubert', pitch='off')
frames = avatar.session().step(np.zeros(2 * 3200, np.float32))
print('RESULT', avatar.source.kind, len(frames), frames[0].image.shape, frames[0].image.dtype)
"""


@pytest.mark.slow
def test_one_shot_avatar_from_a_portrait(repo_root):
    """--portrait: the photo is prepared (MediaPipe test double) into a one-shot source, whose
    sessions render frames."""
    from tests.nodes.harness import DOUBLES, tiny_root

    assets = tiny_root()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(DOUBLES), str(repo_root)]))
    done = subprocess.run([sys.executable, "-c", PORTRAIT_SNIPPET, str(assets["models"]), str(assets["input"] / "portrait.png")],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # 2 hops = 10 frames, minus the 2 tentative ones
    assert "RESULT one-shot 8 (64, 64, 3) uint8" in done.stdout, done.stdout


def test_server_settings(tmp_path):
    pytest.importorskip("aiortc")
    pytest.importorskip("aiohttp")
    from mimictalk_lib.live.server import LiveServer
    from tests.fixtures.tiny_a2m import speech_like
    from tests.nodes.tiny_assets import write_wav

    write_wav(tmp_path / "hello.wav", speech_like(0.5, 22_050), 22_050)
    server = LiveServer(object(), speech_file=str(tmp_path / "hello.wav"))  # --speech: decoded once, at 16 kHz
    assert server.speech.dtype.name == "float32" and abs(len(server.speech) - 8000) <= 1
    with pytest.raises(InputError, match="max_sessions"):
        LiveServer(object(), max_sessions=0)
    (tmp_path / "noise.wav").write_bytes(b"not audio at all" * 100)
    with pytest.raises(InputError):
        LiveServer(object(), speech_file=str(tmp_path / "noise.wav"))
