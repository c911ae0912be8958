"""A live server on tiny weights (a subprocess of ``python -m mimictalk_lib serve``) and a real
headless Chromium (Debian's, driven by Playwright through ``executable_path``) whose microphone
is a wav file. Missing aiortc / aiohttp / Chromium / Playwright skip the browser tests with the
reason, except in CI (``CI=true``), where they fail: CI installs them."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.comfy_server import skip_or_fail
from tests.frontend.page import CHROMIUM_FLAGS, chromium_path
from tests.nodes.harness import tiny_root
from tests.nodes.tiny_assets import write_wav

REPO = Path(__file__).resolve().parents[2]
MIC_RATE = 48_000
SPEECH_S, PAUSE_S = 0.6, 0.9  # the fake microphone: 0.6 s of speech every 1.5 s (it loops)
START_TIMEOUT_S = 240


def speech_bursts(seconds: float, rate: int) -> torch.Tensor:
    """Voiced-sounding bursts (a 150-250 Hz glide with harmonics) separated by silence."""
    t = torch.arange(int(seconds * rate)) / rate
    f = 150 + 100 * torch.sin(2 * math.pi * 0.5 * t)
    phase = 2 * math.pi * torch.cumsum(f, 0) / rate
    wav = 0.3 * sum(torch.sin(k * phase) / k for k in (1, 2, 3))
    on = (t % (SPEECH_S + PAUSE_S)) < SPEECH_S
    return (wav * on).float()


@pytest.fixture(scope="session")
def live_assets(tmp_path_factory) -> dict:
    for module in ("aiortc", "aiohttp"):
        try:
            __import__(module)
        except ImportError:
            skip_or_fail(f"the optional package {module} is not installed (pip install -r requirements-test.txt)")
    paths = dict(tiny_root())  # the tiny weights the node tests use (built once per process)
    paths["mic"] = tmp_path_factory.mktemp("live_mic") / "mic.wav"
    write_wav(paths["mic"], speech_bursts(3 * (SPEECH_S + PAUSE_S), MIC_RATE), MIC_RATE)
    return paths


class LiveServer:
    def __init__(self, assets: dict, *extra: str):
        models = assets["models"]
        cmd = [sys.executable, "-m", "mimictalk_lib", "serve", "--models-dir", str(models),
               "--adapter", "adapters/person.safetensors", "--renderer", "tiny/mimictalk_renderer",
               "--a2m", "tiny/ics_a2m", "--hubert", "tiny/hubert", "--port", "0", *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.log: list[str] = []
        self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = None
        ready = threading.Event()

        def read():
            for line in self.process.stdout:
                self.log.append(line.rstrip())
                if line.startswith("live avatar: http://"):
                    self.url = line.split(": ", 1)[1].strip()
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(START_TIMEOUT_S)
        if self.url is None:
            self.stop()
            raise RuntimeError("the live server did not start:\n" + "\n".join(self.log[-40:]))

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(scope="module")
def live_server(live_assets):
    server = LiveServer(live_assets, "--max-sessions", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(live_assets):
    chromium = chromium_path()
    if not chromium:
        skip_or_fail("no Chromium found (install Debian's 'chromium' or set CHROMIUM to its path)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the 'playwright' package is not installed (pip install -r requirements-test.txt)")
    mic = live_assets["mic"]
    flags = CHROMIUM_FLAGS + ["--autoplay-policy=no-user-gesture-required", "--use-fake-device-for-media-stream",
                              "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={mic}"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=flags, chromium_sandbox=False)
        yield b
        b.close()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
