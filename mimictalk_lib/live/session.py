"""One live avatar session: speech in (microphone frames, posted clips, a file) on a real-time
sample clock -> motion -> rendered frames with their audio, produced by a worker thread.

Timeline: the session's 16 kHz sample clock starts when it starts. Live (microphone) audio is
placed at the clock as it arrives; a posted clip plays from the moment it arrives, after the
clips before it; the two are mixed, so neither pushes the other back. Where nothing was written
the stream hears silence (idle motion). The worker reads one hop at a time once that
hop's audio is due, so speech is heard in real time, never ahead of it.

Latency: a speech onset (a write after at least ``ONSET_GAP_S`` of silence) remembers its
arrival time and its sample; when the first frame at or after that sample leaves the session
(:meth:`LiveSession.take_frames`, called by the video track), latency = leave time - arrival
time.

Load: when the worker is more than ``max_lag`` seconds behind the clock it reads the whole
backlog in one step (the motion stays continuous) but renders only the newest hop; the frames
in between and their audio are dropped and counted. Consumers that fall behind lose the oldest
queued frames (``max_queue``), so latency stays bounded instead of growing.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..errors import InputError
from ..utils import logger
from .idle import IdleMotion
from .motion import SAMPLES_PER_FRAME, MotionStream
from .render import FrameRenderer

RATE = 16_000
SPEECH_RMS = 0.01  # a 20 ms block above this rms (-40 dBFS) is speech for onset detection
ONSET_GAP_S = 0.3  # silence before speech that makes it a new onset
MAX_BUFFER_S = 120.0  # audio queued ahead of the clock that a session accepts
MAX_ONSETS = 256  # speech onsets remembered until their first frame is out


@dataclass
class OutFrame:
    index: int  # stream frame number (25 fps)
    image: np.ndarray  # uint8 [R, R, 3]
    audio: np.ndarray  # float32 [640]: the 16 kHz audio of this frame


class _Lane:
    """Chunks of one kind of source in the order written (they never overlap each other)."""

    def __init__(self):
        self.chunks: deque[tuple[int, np.ndarray]] = deque()  # (first sample, samples)
        self.end = 0  # one past the last written sample
        self.last_speech = -1e9  # clock time of the end of the last speech block written


class AudioTimeline:
    """Thread-safe 16 kHz sample buffer on the session clock (see the module docstring).

    Two lanes, mixed when read: live audio (microphone) lands at the clock; clips (posted files)
    queue behind each other from the read position. So a microphone that keeps sending (room
    noise, silence) never pushes a posted clip back, nor a clip the microphone."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._lock = threading.Lock()
        self._live, self._clips = _Lane(), _Lane()
        self._onsets: list[tuple[int, float]] = []  # (sample, arrival time), sorted by sample
        self.read_pos = 0

    def now_samples(self) -> int:
        return int(self._clock() * RATE)

    @property
    def onsets(self) -> list[tuple[int, float]]:
        with self._lock:
            return list(self._onsets)

    def write(self, wav: np.ndarray, arrival: Optional[float] = None, *, at_clock: bool = False) -> int:
        """Place mono 16 kHz float audio; returns its first sample. ``at_clock``: live audio,
        placed at the clock's present (a late packet never lands in the past); otherwise a clip,
        played after the clips before it."""
        wav = np.nan_to_num(np.asarray(wav, dtype=np.float32).reshape(-1)).clip(-1, 1)
        arrival = self._clock() if arrival is None else arrival
        with self._lock:
            lane = self._live if at_clock else self._clips
            start = max(lane.end, self.read_pos, self.now_samples() if at_clock else 0)
            if start + len(wav) - self.read_pos > MAX_BUFFER_S * RATE:
                raise InputError(f"the live session already has {MAX_BUFFER_S:.0f} s of speech queued; "
                                 "wait until it has played before sending more")
            lane.chunks.append((start, wav))
            lane.end = start + len(wav)
            block = 320
            for k in range(0, len(wav) - block + 1, block):
                if float(np.sqrt(np.mean(wav[k: k + block] ** 2))) > SPEECH_RMS:
                    if (start + k) / RATE - lane.last_speech > ONSET_GAP_S:
                        # speech "comes in" when it has arrived and its turn on the clock has come
                        bisect.insort(self._onsets, (start + k, max(arrival, (start + k) / RATE)))
                        del self._onsets[:-MAX_ONSETS]
                    lane.last_speech = (start + k + block) / RATE
        return start

    def read(self, n: int) -> np.ndarray:
        """The next n samples from the read position: both lanes mixed, silence where nothing
        was written."""
        out = np.zeros(n, dtype=np.float32)
        with self._lock:
            a, b = self.read_pos, self.read_pos + n
            for lane in (self._live, self._clips):
                while lane.chunks and lane.chunks[0][0] + len(lane.chunks[0][1]) <= a:
                    lane.chunks.popleft()
                for s, w in lane.chunks:
                    if s >= b:
                        break
                    lo, hi = max(a, s), min(b, s + len(w))
                    if hi > lo:
                        out[lo - a: hi - a] += w[lo - s: hi - s]
            self.read_pos = b
        return out.clip(-1, 1)

    def pop_onsets(self, stop: int) -> list[float]:
        """Arrival times of the speech onsets before sample ``stop``, removed."""
        with self._lock:
            i = bisect.bisect_left(self._onsets, (stop, -math.inf))
            out = [arrival for _, arrival in self._onsets[:i]]
            del self._onsets[:i]
        return out

    def queued_seconds(self) -> float:
        """Seconds of clips waiting to be played."""
        with self._lock:
            return max(0, self._clips.end - self.read_pos) / RATE


@dataclass
class Stats:
    frames_rendered: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0  # not rendered (load) or discarded from the queue (slow consumer)
    latencies: deque = field(default_factory=lambda: deque(maxlen=1000))  # seconds, one per speech onset
    sent_times: deque = field(default_factory=lambda: deque(maxlen=100))
    errors: int = 0
    last_error: str = ""
    motion_s: float = 0.0  # time spent on audio features + motion sampling
    render_s: float = 0.0  # time spent rendering frames
    steps: int = 0

    def fps(self, now: float) -> float:
        recent = [t for t in self.sent_times if now - t <= 2.0]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)


class LiveSession:
    """A worker thread turning the session's audio timeline into frames (see the module docstring).

    ``motion``: a :class:`MotionStream`; ``renderer``: a :class:`FrameRenderer`; ``idle``: an
    :class:`IdleMotion`. ``max_lag``: seconds the worker may fall behind before it drops frames;
    ``max_queue``: frames kept for a slow consumer."""

    def __init__(self, motion: MotionStream, renderer: FrameRenderer, idle: Optional[IdleMotion] = None, *,
                 max_lag: float = 0.5, max_queue: Optional[int] = None, name: str = "live"):
        self.motion, self.renderer = motion, renderer
        self.idle = idle or IdleMotion()
        self.hop = motion.s.hop
        self.max_lag = max_lag
        self.max_queue = max_queue or 2 * self.hop
        self.name = name
        self._t0 = time.monotonic()
        self.timeline = AudioTimeline(self.clock)
        self.stats = Stats()
        self._out: deque[OutFrame] = deque()
        self._out_lock = threading.Lock()
        self._audio_hist: deque[np.ndarray] = deque()  # consumed audio not yet emitted, per frame
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def clock(self) -> float:
        return time.monotonic() - self._t0

    def start(self) -> "LiveSession":
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"mimictalk-{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._out_lock:
            self._out.clear()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    # --- producer ------------------------------------------------------------------------------

    def _run(self) -> None:
        hop_samples = self.hop * SAMPLES_PER_FRAME
        while not self._stop.is_set():
            due = (self.timeline.read_pos + hop_samples) / RATE  # clock time when the hop has arrived
            wait = due - self.clock()
            if wait > 0:
                self._stop.wait(wait)
                continue
            behind = int(max(0.0, -wait - self.max_lag) * RATE) // hop_samples
            try:
                self.step(self.timeline.read((1 + behind) * hop_samples), render_last=self.hop if behind else None)
            except Exception as e:  # noqa: BLE001 - a failing hop must not end the stream; it is logged and counted
                self.stats.errors += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"
                logger.exception("live session %s: a step failed; the stream continues", self.name)
                if self.stats.errors > 20:
                    logger.error("live session %s: too many failures, closing", self.name)
                    self._stop.set()

    def step(self, wav: np.ndarray, render_last: Optional[int] = None) -> list[OutFrame]:
        """Motion for ``wav`` (whole frames of 16 kHz audio), frames rendered (only the last
        ``render_last`` when given; the others are dropped), queued for the tracks."""
        n_in = len(wav) // SAMPLES_PER_FRAME
        for k in range(n_in):
            self._audio_hist.append(wav[k * SAMPLES_PER_FRAME: (k + 1) * SAMPLES_PER_FRAME])
        first = self.motion.frames_out
        t0 = time.perf_counter()
        motion = self.motion.push(wav)  # frames [first, first + len)
        self.stats.motion_s += time.perf_counter() - t0
        self.stats.steps += 1
        n = motion.shape[0]
        audio = [self._audio_hist.popleft() for _ in range(n)]
        if n == 0:
            return []
        d_euler, d_trans = self.idle.pose(first, n)
        closure = self.idle.blink(first, n)
        keep = n if render_last is None else min(n, render_last)
        if keep < n:
            self.renderer.skip(motion[: n - keep], d_euler[: n - keep], d_trans[: n - keep])
            self.stats.frames_dropped += n - keep
        t0 = time.perf_counter()
        images = self.renderer.render(motion[n - keep:], d_euler[n - keep:], d_trans[n - keep:], closure[n - keep:])
        self.stats.render_s += time.perf_counter() - t0
        frames = [OutFrame(first + n - keep + i, images[i].numpy(), audio[n - keep + i]) for i in range(keep)]
        self.stats.frames_rendered += keep
        with self._out_lock:
            self._out.extend(frames)
            while len(self._out) > self.max_queue:
                self._out.popleft()
                self.stats.frames_dropped += 1
        return frames

    # --- consumers -----------------------------------------------------------------------------

    def take_frame(self) -> Optional[OutFrame]:
        """The next frame to send (None when none is ready); records latency and rate."""
        with self._out_lock:
            frame = self._out.popleft() if self._out else None
        if frame is None:
            return None
        now = self.clock()
        self.stats.frames_sent += 1
        self.stats.sent_times.append(now)
        # every onset up to this frame: this is the first frame out since that speech came in
        # (the onset's own frame may have been dropped)
        for arrival in self.timeline.pop_onsets((frame.index + 1) * SAMPLES_PER_FRAME):
            self.stats.latencies.append(now - arrival)
        return frame

    def summary(self) -> dict[str, Any]:
        s, now = self.stats, self.clock()
        lat = s.latencies
        return {
            "frames_rendered": s.frames_rendered, "frames_sent": s.frames_sent, "frames_dropped": s.frames_dropped,
            "fps": round(s.fps(now), 2), "latency_last_ms": round(1000 * lat[-1]) if lat else None,
            "latency_mean_ms": round(1000 * float(np.mean(lat))) if lat else None, "speech_events": len(lat),
            "queued_speech_s": round(self.timeline.queued_seconds(), 2), "errors": s.errors, "last_error": s.last_error,
            "uptime_s": round(now, 1),
            "motion_ms_per_step": round(1000 * s.motion_s / s.steps) if s.steps else None,
            "render_ms_per_frame": round(1000 * s.render_s / s.frames_rendered) if s.frames_rendered else None,
        }


def speech_from_bytes(data: bytes, suffix: str = ".wav") -> np.ndarray:
    """Decode an uploaded audio file (any format FFmpeg / libsndfile reads, any rate) to mono
    16 kHz float32. Raises InputError for undecodable, empty or silent audio."""
    import os
    import tempfile

    from ..a2m.audio import load_audio

    if not data:
        raise InputError("no audio in the request body: POST an audio file (wav, flac, mp3, ogg)")
    fd, path = tempfile.mkstemp(prefix="mimictalk-live-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_audio(path).numpy()
    finally:
        os.unlink(path)
