"""The live session's real-time bookkeeping without a browser: the audio timeline, speech onsets
and latency, dropping frames under load, and posted audio decoding."""

import io
import wave

import numpy as np
import pytest
import torch

from mimictalk_lib.a2m.hubert import normalize_waveform
from mimictalk_lib.errors import InputError
from mimictalk_lib.live.session import RATE, AudioTimeline, LiveSession, speech_from_bytes
from tests.fixtures.tiny_a2m import speech_like, tiny_hubert


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_microphone_and_clips_mix_without_pushing_each_other_back():
    clock = Clock()
    tl = AudioTimeline(clock)
    hum = np.full(320, 0.1, np.float32)  # a microphone sending 20 ms blocks
    tl.write(hum, at_clock=True)
    assert tl.write(np.full(16_000, 0.2, np.float32)) == 0  # a 1 s clip arrives: plays now
    clock.t = 0.02
    assert tl.write(hum, at_clock=True) == 320  # the microphone stays at the clock, not after the clip
    out = tl.read(1000)
    assert np.allclose(out[:640], 0.3) and np.allclose(out[640:], 0.2)  # mixed where both sound
    assert tl.queued_seconds() == pytest.approx((16_000 - 1000) / RATE)


def test_timeline_places_audio_on_the_clock():
    clock = Clock()
    tl = AudioTimeline(clock)
    speech = np.full(3200, 0.5, np.float32)
    assert tl.write(speech, 0.0) == 0  # a clip arriving at t = 0 plays from sample 0
    assert tl.write(speech) == 3200  # the next one queues behind it
    clock.t = 2.0
    assert tl.write(speech, at_clock=True) == 32_000  # live audio lands at the clock, never in the past
    assert np.array_equal(tl.read(6400), np.full(6400, 0.5, np.float32))
    gap = tl.read(32_000 - 6400)
    assert not gap.any()  # nothing written there: silence
    assert np.array_equal(tl.read(4000)[:3200], speech)
    assert tl.write(speech) == 36_000  # a clip written later plays from the read position
    tl.write(speech)  # continues that clip: no new onset
    tl.read(12_000)
    clock.t = 10.0
    assert tl.write(speech) == 48_000  # after a pause: a new onset
    assert [s for s, _ in tl.onsets] == [0, 32_000, 36_000, 48_000]
    arrivals = [a for _, a in tl.onsets]
    assert arrivals == [0.0, 2.0, 2.25, 10.0]  # arrival, or when its turn on the clock came
    assert tl.pop_onsets(36_000) == [0.0, 2.0] and [s for s, _ in tl.onsets] == [36_000, 48_000]
    nan = np.full(640, np.nan, np.float32)
    tl.write(nan)  # garbage samples are silence, not an error
    with pytest.raises(InputError, match="queued"):
        tl.write(np.zeros(int(121 * RATE), np.float32))


class _Motion:
    """Stand-in for MotionStream: one 64-d frame per 640 samples, value = frame number."""

    class s:  # noqa: N801 - mirrors MotionStream.s
        hop = 5

    def __init__(self):
        self.frames_out = 0

    def push(self, wav):
        n = len(wav) // 640
        out = torch.arange(self.frames_out, self.frames_out + n, dtype=torch.float32)[:, None].expand(n, 64)
        self.frames_out += n
        return out


class _Renderer:
    def __init__(self):
        self.rendered, self.skipped = [], []

    def render(self, motion, d_euler, d_trans, closure):
        self.rendered += motion[:, 0].int().tolist()
        return torch.zeros(len(motion), 4, 4, 3, dtype=torch.uint8)

    def skip(self, motion, d_euler, d_trans):
        self.skipped += motion[:, 0].int().tolist()


def test_under_load_frames_are_dropped_not_delayed():
    renderer = _Renderer()
    session = LiveSession(_Motion(), renderer, max_queue=10)
    wav = np.zeros(3 * 3200, np.float32)
    wav[3200 + 640 * 2: 3200 + 640 * 3] = 0.5  # the audio of frame 7
    frames = session.step(wav, render_last=5)  # three hops behind: only the newest hop is rendered
    assert [f.index for f in frames] == [10, 11, 12, 13, 14] and renderer.rendered == list(range(10, 15))
    assert renderer.skipped == list(range(10)) and session.stats.frames_dropped == 10
    assert all(f.audio.shape == (640,) for f in frames)
    for _ in range(3):  # a consumer that does not keep up loses the oldest frames
        session.step(np.zeros(3200, np.float32))
    assert len(session._out) == 10 and session.stats.frames_dropped == 20
    assert session.take_frame().index == 20


def test_latency_is_speech_arrival_to_its_first_frame_out():
    clock = Clock()
    session = LiveSession(_Motion(), _Renderer())
    session.clock, session.timeline = clock, AudioTimeline(clock)
    clock.t = 1.0
    session.step(session.timeline.read(16_000))  # 1 s of silence: frames 0-24
    while session.take_frame() is not None:
        pass
    clip = np.concatenate([np.zeros(1280, np.float32), np.full(1920, 0.3, np.float32)])
    assert session.timeline.write(clip) == 16_000  # posted at t = 1 s: speech from sample 17 280 = frame 27
    clock.t = 1.2
    session.step(session.timeline.read(3200))  # frames 25-29
    assert session.take_frame().index == 25 and session.take_frame().index == 26
    assert list(session.stats.latencies) == []  # frames before the speech are not its first frame
    clock.t = 1.3
    assert session.take_frame().index == 27
    # speech came in at max(arrival 1.0, its time on the clock 1.08); its first frame left at 1.3
    assert list(session.stats.latencies) == [pytest.approx(1.3 - 17_280 / RATE)]
    assert session.summary()["speech_events"] == 1 and session.summary()["latency_last_ms"] == 220
    # speech whose own frame is dropped: its latency is measured at the first frame out after it
    clock.t = 2.0
    session.step(session.timeline.read(16_000 - 3200))  # up to 2 s
    session.timeline.write(np.full(640, 0.3, np.float32))  # frame 50
    session.step(session.timeline.read(3 * 3200), render_last=5)  # frames 50-59 dropped, 60-64 rendered
    while (f := session.take_frame()) is not None and f.index < 60:
        pass
    assert f.index == 60 and len(session.stats.latencies) == 2 and session.stats.latencies[1] == pytest.approx(0.0)


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def test_posted_audio_any_rate_and_bad_audio():
    speech = speech_like(0.5, 8000).numpy()
    out = speech_from_bytes(_wav_bytes(speech, 8000))
    assert out.dtype == np.float32 and abs(len(out) - 8000) <= 1  # 0.5 s at 16 kHz
    with pytest.raises(InputError, match="silent"):
        speech_from_bytes(_wav_bytes(np.zeros(8000), 16_000))
    with pytest.raises(InputError, match="no audio"):
        speech_from_bytes(b"")
    with pytest.raises(InputError):
        speech_from_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" * 10)


def test_hubert_on_a_normalised_stream_accepts_silence():
    hubert = tiny_hubert(seed=0)
    wav = speech_like(0.3).numpy()
    a = hubert(wav)
    b = hubert(normalize_waveform(wav), normalized=True)  # the caller normalised: same features
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(InputError, match="silent"):
        hubert(np.zeros(4800, np.float32))
    assert torch.isfinite(hubert(np.zeros(4800, np.float32), normalized=True)).all()


class _SimulatedTime:
    """Stands in for the worker's stop event on a simulated clock: waiting moves the clock on,
    and the stream ends at ``until`` seconds."""

    def __init__(self, clock: Clock, until: float):
        self.clock, self.until = clock, until

    def is_set(self) -> bool:
        return self.clock.t >= self.until

    def wait(self, seconds: float) -> bool:
        self.clock.t += seconds
        return self.is_set()

    def set(self) -> None:
        self.until = self.clock.t


def _run_under_load(max_lag: float, seconds: float = 30.0, cost_per_frame: float = 0.08) -> tuple[LiveSession, list]:
    """The real worker loop (``LiveSession._run``) on a simulated clock, with a renderer twice as
    slow as real time (``cost_per_frame`` s per frame against 0.04 s of audio) and a consumer that
    takes every frame as soon as it is queued; speech bursts (0.6 s every 1.5 s) from the start.
    Returns the session and the worker's lag behind the clock after each step."""
    clock = Clock()

    class SlowRenderer(_Renderer):
        def render(self, motion, d_euler, d_trans, closure):
            clock.t += cost_per_frame * len(motion)
            return super().render(motion, d_euler, d_trans, closure)

    session = LiveSession(_Motion(), SlowRenderer(), max_lag=max_lag)
    session.clock, session.timeline, session._stop = clock, AudioTimeline(clock), _SimulatedTime(clock, seconds)
    burst = np.concatenate([np.full(int(0.6 * RATE), 0.3, np.float32), np.zeros(int(0.9 * RATE), np.float32)])
    session.timeline.write(np.tile(burst, int(seconds / 1.5) + 2), arrival=0.0)
    lags, step = [], session.step

    def step_and_consume(wav, render_last=None):
        frames = step(wav, render_last)
        while session.take_frame() is not None:
            pass
        lags.append(clock.t - session.timeline.read_pos / RATE)
        return frames

    session.step = step_and_consume
    session._run()
    return session, lags


def test_worker_under_load_drops_frames_and_latency_does_not_grow():
    """Issue 18: under load the stream drops frames rather than letting latency grow. The worker
    loop itself decides (when it is more than ``max_lag`` behind it renders only the newest hop):
    on a renderer that needs 2 s per second of video, the worker's lag stays under max_lag + one
    hop's audio + one hop's render time, every speech latency under that + one more hop's render
    (speech at the oldest unread sample waits for the step that reads it and for its render), and
    about half the frames are dropped. Without the bound (max_lag = inf) the same run falls
    further behind with every hop."""
    max_lag, hop_s, hop_render_s = 0.5, 5 * 0.04, 5 * 0.08
    bound = max_lag + hop_s + hop_render_s + 1e-9
    session, lags = _run_under_load(max_lag)
    s = session.stats
    assert s.errors == 0, s.last_error
    assert max(lags) <= bound, max(lags)
    latencies = list(s.latencies)
    assert len(latencies) >= 18 and max(latencies) <= bound + hop_render_s, latencies  # a burst every 1.5 s for 30 s
    assert max(latencies[-5:]) <= max(latencies[:5]) + hop_render_s, latencies  # not growing over the run
    produced = session.motion.frames_out
    assert s.frames_rendered + s.frames_dropped == produced and s.frames_sent == s.frames_rendered
    assert 0.35 <= s.frames_dropped / produced <= 0.65, (s.frames_dropped, produced)  # renders half of real time

    _, unbounded = _run_under_load(float("inf"))  # the control: nothing dropped, the lag piles up
    assert unbounded[-1] > 10 * bound and unbounded[-1] > unbounded[len(unbounded) // 2] + 5
