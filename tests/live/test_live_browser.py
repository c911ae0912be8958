"""The live server in a real headless Chromium (issue 18): microphone speech over WebRTC in,
video frames and the speech back; speech POSTed over HTTP; bad audio; session bound and
disconnects. Tiny random weights: frames are checked for count, size and timing, never looks.

Timing on the shared CPU test machine is not a performance test: the bounds below hold for any
machine that renders the 64 px tiny model at a few frames per second; what they check is that
frames are paced (never faster than 25 fps), that every frame of the stream clock is either
sent or counted as dropped (so latency cannot pile up), and that latency stays bounded.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.live.conftest import wait_for
from tests.fixtures.tiny_a2m import speech_like
from tests.nodes.tiny_assets import SPEECH_RATE, write_wav

FPS = 25
VIDEO_CLOCK = 90_000
MAX_DRIFT_S = 1.5  # the received stream may fall behind the wall clock by at most this over a run
RUN_S = 8.0  # seconds of streaming observed per test
LATENCY_BOUND_S = 3.0  # speech in -> its first frame out, on a loaded 2-core CPU with the tiny model


def http(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(autouse=True)
def _sessions_end_with_their_test(request):
    """Tests share one server (``--max-sessions 2``) and run in random order: each test's
    sessions must be gone before the next starts. A closed tab frees its session at once (the
    page's DELETE, or the connection closing); a peer that vanishes without a word within
    about 30 s (ICE consent), so at most 45 s are waited."""
    yield
    if "live_server" in request.fixturenames:
        url = request.getfixturevalue("live_server").url
        wait_for(lambda: http(f"{url}status")[1]["sessions"] == 0, 45, "the test's sessions to end")


class Client:
    """One browser tab on the live page."""

    def __init__(self, browser, url: str, query: str):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        self.page.goto(f"{url}?autostart=1&{query}")

    def state(self) -> str:
        return self.page.evaluate("window.live.state")

    def connected(self, timeout: float = 60) -> str:
        wait_for(lambda: self.state() in ("connected", "refused", "failed"), timeout, "the WebRTC connection")
        assert self.state() == "connected", (self.state(), self.page.evaluate("window.live.error"), self.console)
        return self.page.evaluate("window.live.session")

    def received(self) -> dict:
        return self.page.evaluate("window.receivedStats().then(s => JSON.parse(JSON.stringify(s)))")

    def close(self):
        self.context.close()


def _check_stream(client: Client, server_url: str, sid: str, seconds: float) -> tuple[dict, dict]:
    time.sleep(seconds)
    rx = client.received()
    _, stats = http(f"{server_url}stats/{sid}")
    video, audio = rx["video"], rx["audio"]
    assert video is not None and audio is not None, rx
    print(f"\nlive session {sid}: server {stats}\nbrowser video: decoded {video.get('framesDecoded')}, "
          f"{video.get('framesPerSecond')} fps, mean gap {video.get('totalInterFrameDelay', 0) / max(1, video.get('framesDecoded', 2) - 1):.3f} s; "
          f"audio samples {audio.get('totalSamplesReceived')}, energy {audio.get('totalAudioEnergy')}")
    # frames: the tiny renderer's 64 px frames, all decoded, as many as the server sent (in flight: a few)
    assert (video["frameWidth"], video["frameHeight"]) == (64, 64)
    assert video["framesDecoded"] >= 10, (video, stats)
    assert video["framesDecoded"] >= stats["frames_sent"] - 2 * FPS * 0.5, (video, stats)
    # timing: paced, never above 25 fps; every frame of the stream clock rendered or counted as dropped
    mean_gap = video["totalInterFrameDelay"] / max(1, video["framesDecoded"] - 1)
    assert mean_gap >= 0.8 / FPS, mean_gap
    # the frames the page presented: stamped on the 25 fps stream clock (RTP 90 kHz, frame n at
    # n * 3600), in order, gaps only where frames were dropped; and the stream clock keeps up with
    # the wall clock (were latency growing, the stream would fall further and further behind)
    frames = client.page.evaluate("window.live.frames")
    assert len(frames) >= 10 and all((f["width"], f["height"]) == (64, 64) for f in frames)
    steps = [((b["rtp"] - a["rtp"]) % 2**32) / (VIDEO_CLOCK // FPS) for a, b in zip(frames, frames[1:])]
    assert all(step >= 1 and step == int(step) for step in steps), steps
    stream_s = sum(steps) / FPS
    wall_s = (frames[-1]["received"] - frames[0]["received"]) / 1000
    assert wall_s - stream_s <= MAX_DRIFT_S, (wall_s, stream_s)
    clock_frames = stats["uptime_s"] * FPS
    accounted = stats["frames_rendered"] + stats["frames_dropped"]
    assert accounted >= clock_frames - FPS * 1.5, stats  # at most ~1.5 s of frames in flight / unaccounted
    assert stats["errors"] == 0, stats
    return video, audio


@pytest.mark.slow
def test_microphone_speech_to_video_and_audio(browser, live_server):
    client = Client(browser, live_server.url, "mic=1")
    try:
        sid = client.connected()
        video, audio = _check_stream(client, live_server.url, sid, RUN_S)
        # the microphone's speech comes back as audio with energy (not only silence)
        assert audio["totalSamplesReceived"] > 16_000, audio
        assert audio["totalAudioEnergy"] > 1e-3, audio
        _, stats = http(f"{live_server.url}stats/{sid}")
        assert stats["speech_events"] >= 2, stats  # bursts every 1.5 s: several onsets measured
        lat = stats["latency_last_ms"] / 1000
        assert 0 < lat <= LATENCY_BOUND_S, stats
        page_text = client.page.inner_text("body")
        assert f"{stats['latency_last_ms']}" in page_text or "latency" in page_text
        assert client.page.inner_text("#latency") not in ("–", "") and client.page.inner_text("#fps") not in ("–", "")
    finally:
        client.close()


@pytest.mark.slow
def test_speech_posted_over_http(browser, live_server, live_assets, tmp_path):
    client = Client(browser, live_server.url, "mic=0")
    try:
        sid = client.connected()
        time.sleep(2.0)
        before = client.received()["audio"]["totalAudioEnergy"]
        _, stats0 = http(f"{live_server.url}stats/{sid}")
        assert stats0["speech_events"] == 0  # nobody speaks: idle frames only
        # 44.1 kHz speech (not the model's 16 kHz): resampled on arrival
        write_wav(tmp_path / "tts.wav", speech_like(1.0, 44_100, seed=2), 44_100)
        status, body = http(f"{live_server.url}speech/{sid}", (tmp_path / "tts.wav").read_bytes(), "POST")
        assert status == 200 and abs(body["seconds"] - 1.0) < 0.01, body
        stats = wait_for(lambda: (s := http(f"{live_server.url}stats/{sid}")[1])["speech_events"] >= 1 and s,
                         LATENCY_BOUND_S + 5, "the posted speech's first frame")
        assert 0 < stats["latency_last_ms"] / 1000 <= LATENCY_BOUND_S, stats
        time.sleep(1.5)
        after = client.received()["audio"]["totalAudioEnergy"]
        assert after - before > 1e-3, (before, after)  # the posted speech came back as audio
        # bad audio never stops the stream: garbage, silence, nothing -> 422 with the reason
        for payload, reason in ((b"RIFF\x00\x00garbage" * 50, "speech not used"), (b"", "no audio")):
            status, body = http(f"{live_server.url}speech/{sid}", payload, "POST")
            assert status == 422 and reason in body["error"], body
        write_wav(tmp_path / "silence.wav", speech_like(0.5) * 0, SPEECH_RATE)
        status, body = http(f"{live_server.url}speech/{sid}", (tmp_path / "silence.wav").read_bytes(), "POST")
        assert status == 422 and "silent" in body["error"], body
        sent = http(f"{live_server.url}stats/{sid}")[1]["frames_sent"]
        wait_for(lambda: http(f"{live_server.url}stats/{sid}")[1]["frames_sent"] > sent + 5, 20, "frames after bad audio")
        _check_stream(client, live_server.url, sid, 0)
    finally:
        client.close()


@pytest.mark.slow
def test_speech_file_is_said_by_every_new_session(browser, live_assets, tmp_path):
    """``serve --speech FILE``: each new session says the file first (here 22.05 kHz, resampled),
    with nothing from the microphone or over HTTP; its latency is measured and the speech comes
    back as audio, then the stream goes on idle."""
    from tests.live.conftest import LiveServer

    write_wav(tmp_path / "greeting.wav", speech_like(1.0, 22_050, seed=3), 22_050)
    server = LiveServer(live_assets, "--speech", str(tmp_path / "greeting.wav"), "--max-sessions", "1")
    try:
        for _ in range(2):  # a second session says it again
            client = Client(browser, server.url, "mic=0")
            try:
                sid = client.connected()
                stats = wait_for(lambda: (s := http(f"{server.url}stats/{sid}")[1])["speech_events"] >= 1 and s,
                                 LATENCY_BOUND_S + 5, "the speech file's first frame")
                assert stats["speech_events"] == 1 and 0 < stats["latency_last_ms"] / 1000 <= LATENCY_BOUND_S, stats
                wait_for(lambda: client.received()["audio"]["totalAudioEnergy"] > 1e-3, 10, "the speech file's audio")
                _check_stream(client, server.url, sid, 2.0)
                assert http(f"{server.url}stats/{sid}")[1]["speech_events"] == 1  # said once, then idle
            finally:
                client.close()
            wait_for(lambda: http(f"{server.url}status")[1]["sessions"] == 0, 45, "the closed tab's session to end")
    finally:
        server.stop()


@pytest.mark.slow
def test_session_bound_and_disconnect(browser, live_server):
    """Two sessions run at once; a third client is refused with the reason; a client that goes
    away frees its session for the next one."""
    a, b = Client(browser, live_server.url, "mic=0"), Client(browser, live_server.url, "mic=0")
    c = None
    try:
        a.connected()
        b.connected()
        assert http(f"{live_server.url}status")[1]["sessions"] == 2
        c = Client(browser, live_server.url, "mic=0")
        wait_for(lambda: c.state() == "refused", 30, "the refusal")
        assert "full" in c.page.inner_text("#error") and "--max-sessions" in c.page.inner_text("#error")
        a.page.evaluate("window.live.pc.close()")  # only the WebRTC connection tells the server
        wait_for(lambda: http(f"{live_server.url}status")[1]["sessions"] == 1, 15, "the closed connection's session to end")
        c.page.click("#start")
        c.connected()
        b.close()  # the tab goes away
        wait_for(lambda: http(f"{live_server.url}status")[1]["sessions"] == 1, 45, "the closed tab's session to end")
    finally:
        for client in (a, b, c):
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - already closed
                    pass
    wait_for(lambda: http(f"{live_server.url}status")[1]["sessions"] == 0, 60, "every session to end")


def test_bad_requests_are_refused_with_the_reason(live_server):
    url = live_server.url
    status, body = http(f"{url}offer", b"junk", "POST")
    assert status == 400 and "an offer is JSON" in body["error"]
    status, body = http(f"{url}offer", json.dumps({"sdp": "garbage", "type": "offer"}).encode(), "POST")
    assert status == 400 and "could not be answered" in body["error"]
    assert http(f"{url}status")[1]["sessions"] == 0  # a refused offer leaves no session behind
    status, body = http(f"{url}speech/s999", b"RIFF", "POST")
    assert status == 404 and "no live session" in body["error"]
    status, body = http(f"{url}stats/s999")
    assert status == 404
