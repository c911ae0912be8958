"""Video and audio files through PyAV (FFmpeg's libraries in the wheel; no system ffmpeg).

Upstream writes its 25 fps frames with imageio's ffmpeg plugin and then muxes the 16 kHz wav with
the ffmpeg command line (``-shortest``, architecture reference §1.1). Here one streaming writer
does both:

* :class:`VideoWriter` / :func:`write_video` -- frames (uint8 0..255 or float 0..1, ``[T, H, W, 3]``,
  given at once or as an iterator of chunks so memory stays flat for long clips) -> H.264 yuv420p
  (libx264, ``crf``) in an mp4, with optional AAC audio interleaved as the frames arrive, and
  optional container metadata (string key/values; ComfyUI stores its ``prompt``/``workflow`` JSON
  there, written with ``movflags=use_metadata_tags`` as core ``SaveVideo`` does). The audio may be
  a file path: its track is then decoded as the frames arrive, never held whole.
* :func:`read_video` -- frames (uint8), fps, per-frame timestamps and the audio track.
  :func:`read_audio` -- only the audio track (``None`` when the file has none).
* :func:`iter_video` / :func:`iter_frames` -- the one decoder of video (and image) files, frame by
  frame or in chunks, with timestamps; :func:`probe` -- rate, reported length and size without
  decoding. The identity preparation decodes its clips and photos through these too, so every
  file error (missing, unreadable, no video stream) is the same :class:`InputError`.

Audio is an :class:`Audio`: float32 waveform ``[C, N]`` in about -1..1 and a sample rate.
:func:`as_audio` accepts that, a ComfyUI AUDIO dict (``{"waveform": [1, C, N], "sample_rate"}``), or
a raw waveform with ``sample_rate``. Sample rates AAC cannot store are resampled by the encoder to
the nearest rate it supports; more than two channels are reduced to the first two.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

import numpy as np
import torch

from .errors import InputError
from .utils import ProgressFn, logger, report

DEFAULT_FPS = 25.0  # MimicTalk renders at 25 fps (architecture reference §1.1)
DEFAULT_CRF = 19  # libx264 constant-rate factor: visually near-lossless for talking heads
AUDIO_MODES = ("fit", "trim", "pad", "keep")
"""How the audio length follows the video: 'fit' trims or pads with silence to the video duration,
'trim' only trims a longer track, 'pad' only pads a shorter one, 'keep' writes it unchanged."""
ODD_SIZE_MODES = ("pad", "error")
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
"""Sample rates FFmpeg's native AAC encoder accepts (its ``supported_samplerates``)."""
VIDEO_CODECS = ("libx264", "h264")  # the PyAV wheels ship libx264; 'h264' picks any H.264 encoder

Frames = Union[torch.Tensor, np.ndarray]


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a core dependency
        from .errors import DependencyMissingError

        raise DependencyMissingError("PyAV is needed to read and write videos: pip install av") from e
    return av


# --- audio ---------------------------------------------------------------------------------------


@dataclass
class Audio:
    """A waveform [C, N] (float32, CPU, about -1..1) with its sample rate in Hz."""

    waveform: torch.Tensor
    sample_rate: int

    @property
    def num_samples(self) -> int:
        return int(self.waveform.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.waveform.shape[0])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def to_comfy(self) -> dict:
        """ComfyUI AUDIO: ``{"waveform": [1, C, N], "sample_rate": int}``."""
        return {"waveform": self.waveform.unsqueeze(0), "sample_rate": self.sample_rate}


def as_audio(audio: Any, sample_rate: Optional[int] = None) -> Optional[Audio]:
    """Normalise ``audio`` to an :class:`Audio` (``None`` stays ``None``).

    Accepts an :class:`Audio`, a ComfyUI AUDIO dict, or a waveform tensor/array [N], [C, N] or
    [1, C, N] together with ``sample_rate``."""
    if audio is None:
        return None
    if isinstance(audio, Audio):
        return audio
    if isinstance(audio, Mapping):
        if "waveform" not in audio or "sample_rate" not in audio:
            raise InputError(f"audio: expected a dict with 'waveform' and 'sample_rate', got keys {sorted(audio)}")
        wave, sample_rate = audio["waveform"], audio["sample_rate"]
    elif isinstance(audio, (torch.Tensor, np.ndarray)):
        if sample_rate is None:
            raise InputError("audio: a raw waveform needs sample_rate=... (Hz)")
        wave = audio
    else:
        raise InputError(f"audio: expected an AUDIO dict, a waveform or None, got {type(audio).__name__}")
    wave = torch.as_tensor(wave).detach().cpu().float()
    if wave.dim() == 3:
        if wave.shape[0] != 1:
            raise InputError(f"audio: expected one clip, got a batch of {wave.shape[0]} (shape {list(wave.shape)})")
        wave = wave[0]
    if wave.dim() == 1:
        wave = wave[None]
    if wave.dim() != 2 or wave.shape[0] < 1:
        raise InputError(f"audio: expected a waveform [N], [C, N] or [1, C, N], got shape {list(wave.shape)}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer, float)) or sample_rate != int(sample_rate) or sample_rate <= 0:
        raise InputError(f"audio: sample rate must be a positive whole number of Hz, got {sample_rate!r}")
    if not torch.isfinite(wave).all():
        raise InputError("audio: the waveform contains NaN or infinite samples")
    return Audio(wave, int(sample_rate))


def fit_audio_length(audio: Audio, num_samples: int, mode: str = "fit") -> Audio:
    """Trim and/or pad ``audio`` with silence to ``num_samples`` per ``mode`` (see AUDIO_MODES)."""
    if mode not in AUDIO_MODES:
        raise InputError(f"audio mode must be one of {AUDIO_MODES}, got {mode!r}")
    wave, n = audio.waveform, audio.num_samples
    if n > num_samples and mode in ("fit", "trim"):
        wave = wave[:, :num_samples]
    elif n < num_samples and mode in ("fit", "pad"):
        wave = torch.cat([wave, wave.new_zeros(wave.shape[0], num_samples - n)], dim=1)
    return Audio(wave, audio.sample_rate)


def _aac_rate(rate: int) -> int:
    return min(AAC_RATES, key=lambda r: (abs(r - rate), -r))


# --- frames --------------------------------------------------------------------------------------


def to_uint8_array(frames: Frames) -> np.ndarray:
    """Frames to encode: [T, H, W, 3] or [H, W, 3], uint8 (0..255) or float (0..1; values outside
    are clamped, as renders may overshoot slightly) -> uint8 numpy [T, H, W, 3].

    The float -> uint8 rounding here is the one every frame conversion uses; input images that
    need checking (range, grayscale, alpha) go through ``identity.frames.to_uint8_frames`` first."""
    if isinstance(frames, torch.Tensor):
        t = frames.detach()
        if t.is_floating_point():
            t = (t.float().clamp(0, 1) * 255).round_().to(torch.uint8)
        frames = t.cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"video frames: expected [T, H, W, 3] RGB (or [H, W, 3]), got shape {list(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"video frames: expected uint8 or float frames, got {arr.dtype}")
    return arr


def _check_fps(fps: Any) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.number)) or not math.isfinite(float(fps)) or not 0 < float(fps) <= 1000:
        raise InputError(f"fps must be a number in (0, 1000], got {fps!r}")
    if isinstance(fps, Fraction):
        return fps
    return Fraction(round(float(fps) * 1000), 1000)  # e.g. 29.97 -> 2997/100, 25 -> 25


# --- writing -------------------------------------------------------------------------------------


@dataclass
class WrittenVideo:
    """What :class:`VideoWriter` wrote."""

    path: Path
    num_frames: int
    width: int  # encoded size (odd sizes padded to even)
    height: int
    fps: float
    audio_samples: int  # samples of audio handed to the encoder (input rate), 0 without audio
    audio_rate: int  # the AAC stream's sample rate, 0 without audio

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


class _AudioFeed:
    """The audio a :class:`VideoWriter` muxes, taken in order: from an in-memory :class:`Audio`, or
    streamed from a file (:func:`open_audio`), so full-rate audio from a file is never held whole.
    At most the first two channels."""

    def __init__(self, audio: Any, sample_rate: Optional[int]):
        self._chunks: Optional[Iterator[np.ndarray]] = None
        if isinstance(audio, (str, os.PathLike)):
            source = open_audio(audio)
            if source is None:
                raise InputError(f"'{os.fspath(audio)}' has no audio track to put in the video; pick a file with sound")
            self.rate, channels, self._chunks = source.rate, source.channels, source.chunks()
            self._wave = None
        else:
            a = as_audio(audio, sample_rate)
            self.rate, channels, self._wave = a.sample_rate, a.channels, a.waveform
        if channels > 2:
            logger.warning("audio has %d channels; writing the first two (stereo)", channels)
        self.channels = min(channels, 2)
        self._pending = np.zeros((self.channels, 0), np.float32)
        self._pos = 0  # samples taken

    def take(self, n: int) -> np.ndarray:
        """Up to ``n`` next samples, float32 ``[C, m]`` (``m < n`` only at the end of the audio)."""
        if self._wave is not None:
            part = self._wave[: self.channels, self._pos : self._pos + n].numpy()
            self._pos += part.shape[1]
            return part
        parts, have = [self._pending], self._pending.shape[1]
        while have < n and self._chunks is not None:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._chunks = None
                break
            parts.append(chunk[: self.channels])
            have += chunk.shape[1]
        pending = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        part, self._pending = pending[:, :n], pending[:, n:]
        self._pos += part.shape[1]
        return part


class VideoWriter:
    """Streaming mp4 writer: ``write(chunk)`` any number of times, then ``close()`` (or use it as a
    context manager). H.264 yuv420p + AAC; audio is interleaved as the frames arrive. ``audio`` is
    an :class:`Audio`, a ComfyUI AUDIO dict, a waveform with ``sample_rate``, or the path of an
    audio/video file, whose track is then decoded as the frames arrive (full-rate audio is never
    held whole; its length limit is :func:`max_audio_seconds`).

    ``audio_mode`` (AUDIO_MODES) fits the audio to the final video duration; ``odd_size`` 'pad'
    repeats the last row/column to make odd frame sizes even (H.264 4:2:0 needs even sizes),
    'error' refuses them. ``metadata`` values that are not strings are stored as JSON. An
    exception inside the ``with`` block removes the partial file."""

    def __init__(
        self,
        path: Union[str, os.PathLike],
        fps: float = DEFAULT_FPS,
        *,
        audio: Any = None,
        sample_rate: Optional[int] = None,
        audio_mode: str = "fit",
        crf: float = DEFAULT_CRF,
        preset: str = "medium",
        metadata: Optional[Mapping[str, Any]] = None,
        odd_size: str = "pad",
    ):
        if audio_mode not in AUDIO_MODES:
            raise InputError(f"audio_mode must be one of {AUDIO_MODES}, got {audio_mode!r}")
        if odd_size not in ODD_SIZE_MODES:
            raise InputError(f"odd_size must be one of {ODD_SIZE_MODES}, got {odd_size!r}")
        if isinstance(crf, bool) or not isinstance(crf, (int, float)) or not 0 <= crf <= 51:
            raise InputError(f"crf must be a number in [0, 51] (lower = better quality), got {crf!r}")
        self.path = Path(path)
        self.rate = _check_fps(fps)
        self.audio = None if audio is None else _AudioFeed(audio, sample_rate)
        self.audio_mode, self.crf, self.preset, self.odd_size = audio_mode, crf, preset, odd_size
        self.metadata = dict(metadata or {})
        self.num_frames = 0
        self._audio_sent = 0
        self._av = _import_av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = self._av.open(str(self.path), mode="w", format="mp4", options={"movflags": "use_metadata_tags"})
        for key, value in self.metadata.items():
            self._container.metadata[str(key)] = value if isinstance(value, str) else _json(value)
        self._video = None  # created with the first frame (its size)
        self._audio_stream = None
        self._size: Optional[tuple[int, int]] = None

    # -- streams

    def _open_video(self, height: int, width: int) -> None:
        if (height % 2 or width % 2) and self.odd_size == "error":
            raise InputError(f"video frames are {width}x{height}; H.264 (yuv420p) needs even sizes. Crop or pad the frames, or use odd_size='pad'.")
        stream = None
        for name in VIDEO_CODECS:
            try:
                stream = self._container.add_stream(name, rate=self.rate)
                break
            except (ValueError, self._av.error.FFmpegError):  # encoder not in this FFmpeg build
                continue
        if stream is None:  # pragma: no cover - the PyAV wheels include libx264
            raise InputError(f"this PyAV/FFmpeg build has no H.264 encoder (tried {VIDEO_CODECS})")
        stream.height, stream.width = height + height % 2, width + width % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        self._video, self._size = stream, (height, width)
        if self.audio is not None:
            audio = self._container.add_stream("aac", rate=_aac_rate(self.audio.rate))
            audio.codec_context.layout = "mono" if self.audio.channels == 1 else "stereo"
            self._audio_stream = audio

    def _mux(self, packets) -> None:
        self._container.mux(packets)

    def _send_audio(self, stop: Optional[int], pad_to: int = 0) -> None:
        """Encode the next input-rate audio samples up to sample ``stop`` (``None``: to the end of
        the audio), then silence up to sample ``pad_to``; in pieces of at most 10 s."""
        if self._audio_stream is None:
            return
        piece = 10 * self.audio.rate
        while stop is None or self._audio_sent < stop:
            part = self.audio.take(piece if stop is None else min(piece, stop - self._audio_sent))
            if part.shape[1] == 0:
                break
            self._encode_audio(part)
        while self._audio_sent < pad_to:  # silence after the end
            self._encode_audio(np.zeros((self.audio.channels, min(piece, pad_to - self._audio_sent)), np.float32))

    def _encode_audio(self, part: np.ndarray) -> None:
        arr = np.ascontiguousarray(np.clip(part, -1, 1), dtype=np.float32)  # planar [C, n]
        frame = self._av.AudioFrame.from_ndarray(arr, format="fltp", layout="mono" if arr.shape[0] == 1 else "stereo")
        frame.sample_rate = self.audio.rate
        frame.pts, frame.time_base = self._audio_sent, Fraction(1, self.audio.rate)  # lets the muxer trim the AAC priming
        self._mux(self._audio_stream.encode(frame))
        self._audio_sent += arr.shape[1]

    def _video_samples(self) -> int:
        """Input-rate audio samples spanned by the frames written so far."""
        return math.ceil(self.num_frames * self.audio.rate / self.rate)

    # -- public

    def write(self, frames: Frames) -> None:
        """Append frames: [T, H, W, 3] or one [H, W, 3], uint8 0..255 or float 0..1."""
        arr = to_uint8_array(frames)
        if self._video is None:
            self._open_video(arr.shape[1], arr.shape[2])
        if arr.shape[1:3] != self._size:
            raise InputError(f"video frames changed size mid-clip: {arr.shape[2]}x{arr.shape[1]} after {self._size[1]}x{self._size[0]}")
        h, w = self._size
        if h % 2 or w % 2:  # replicate the last row / column
            arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for img in arr:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.num_frames
            frame.time_base = 1 / self.rate
            self._mux(self._video.encode(frame))
            self.num_frames += 1
        if self.audio is not None:  # interleave: audio up to the current video time
            self._send_audio(self._video_samples())

    def close(self) -> WrittenVideo:
        """Flush the encoders, finish the audio per ``audio_mode`` and close the file."""
        if self._container is None:
            raise InputError("VideoWriter is already closed")
        if self._video is None:
            self.abort()
            raise InputError(f"no frames were written to {self.path}; a video needs at least one frame")
        try:
            self._mux(self._video.encode(None))
            if self.audio is not None:
                video = self._video_samples()  # AUDIO_MODES: 'fit' and 'trim' stop at the video's end, 'fit' and 'pad' fill it
                self._send_audio(video if self.audio_mode in ("fit", "trim") else None,
                                 pad_to=video if self.audio_mode in ("fit", "pad") else 0)
                self._mux(self._audio_stream.encode(None))
        except BaseException:
            self.abort()
            raise
        self._container.close()
        self._container = None
        h, w = self._size
        return WrittenVideo(
            path=self.path, num_frames=self.num_frames, width=w + w % 2, height=h + h % 2, fps=float(self.rate),
            audio_samples=self._audio_sent, audio_rate=self._audio_stream.rate if self._audio_stream is not None else 0,
        )

    def abort(self) -> None:
        """Close without finishing and delete the partial file."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away; report the original error
                pass
            self._container = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._container is not None:
            self.result = self.close()


def write_video(
    path: Union[str, os.PathLike],
    frames: Union[Frames, Iterable[Frames]],
    fps: float = DEFAULT_FPS,
    *,
    on_step: Optional[ProgressFn] = None,
    **options: Any,
) -> WrittenVideo:
    """Write ``frames`` (one array/tensor [T, H, W, 3], or an iterable of such chunks, consumed
    lazily) to an mp4. ``options`` are :class:`VideoWriter`'s: ``audio``, ``sample_rate``,
    ``audio_mode``, ``crf``, ``preset``, ``metadata``, ``odd_size``.
    ``on_step(frames_written, total or 0)`` after each chunk (total 0 when streaming)."""
    whole = isinstance(frames, (torch.Tensor, np.ndarray))
    chunks: Iterable[Frames] = [frames] if whole else frames
    total = int(frames.shape[0]) if whole and frames.ndim == 4 else 0
    with VideoWriter(path, fps, **options) as writer:
        for chunk in chunks:
            writer.write(chunk)
            report(on_step, writer.num_frames, total)
    return writer.result


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# --- reading -------------------------------------------------------------------------------------


@dataclass
class VideoClip:
    """A decoded video file."""

    frames: torch.Tensor  # uint8 [T, H, W, 3] RGB
    fps: float  # the stream's average frame rate
    timestamps: torch.Tensor  # float64 [T] presentation times in seconds
    audio: Optional[Audio]  # the first audio track, None if there is none
    metadata: dict  # container metadata (strings)


def require_file(path: Union[str, os.PathLike], what: str = "video") -> str:
    """``path`` as a string, or InputError naming it when there is no such file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{what} file not found: '{path}'. Check the path or upload the file.")
    return path


def _open(path: Union[str, os.PathLike], what: str = "video"):
    av = _import_av()
    path = require_file(path, what)
    try:
        return av.open(path)
    except av.error.FFmpegError as e:
        raise InputError(f"cannot open '{path}' as a media file: {e}") from e


@dataclass(frozen=True)
class StreamInfo:
    """What a file's container says about its first video stream, without decoding it."""

    fps: float  # average frame rate (guessed when the container has none; DEFAULT_FPS last)
    num_frames: int  # frame count the container reports, 0 when unknown (never trust it as exact)
    width: int
    height: int
    metadata: dict  # container metadata (strings)
    duration: float = 0.0  # seconds the stream (or else the container) states, 0 when unknown; may lie


def _video_stream(container, path: str):
    if not container.streams.video:
        raise InputError(f"'{path}' has no video stream; expected a video or image file")
    return container.streams.video[0]


def _stream_fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)


def _stated_duration(container, stream) -> float:
    """Seconds the stream (else the container) states; 0 when neither does. Untrusted: files may lie."""
    if stream.duration is not None and stream.time_base:
        return max(0.0, float(stream.duration * stream.time_base))
    return max(0.0, (container.duration or 0) / 1_000_000)  # AV_TIME_BASE


def probe(path: Union[str, os.PathLike]) -> StreamInfo:
    """Frame rate, reported length, size and metadata of a video (or image) file."""
    with _open(path) as container:
        stream = _video_stream(container, os.fspath(path))
        return StreamInfo(
            fps=_stream_fps(stream), num_frames=int(stream.frames or 0), width=stream.codec_context.width,
            height=stream.codec_context.height, metadata=dict(container.metadata),
            duration=_stated_duration(container, stream),
        )


DEFAULT_MAX_AUDIO_SECONDS = 7200.0
"""Longest audio read by default (2 h: 460 MB at 16 kHz mono, 2.8 GB at 48 kHz stereo as float32);
raise it with the environment variable ``MIMICTALK_MAX_AUDIO_SECONDS`` or ``max_seconds=``."""
MAX_AUDIO_SECONDS_ENV = "MIMICTALK_MAX_AUDIO_SECONDS"


def length_limit(max_seconds: Optional[float], env: str, default: float) -> float:
    """A length limit in seconds: ``max_seconds`` if given, else the environment variable ``env``,
    else ``default``; InputError naming where a bad value came from."""
    source = "max_seconds"
    if max_seconds is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        source, max_seconds = f"environment variable {env}", text
    try:
        value = float(max_seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{source} must be a positive number of seconds, got {max_seconds!r}")
    return value


def max_audio_seconds(max_seconds: Optional[float] = None) -> float:
    """The audio length limit: ``max_seconds`` if given, else ``MIMICTALK_MAX_AUDIO_SECONDS``, else
    ``DEFAULT_MAX_AUDIO_SECONDS``."""
    return length_limit(max_seconds, MAX_AUDIO_SECONDS_ENV, DEFAULT_MAX_AUDIO_SECONDS)


def check_audio_length(seconds: float, limit: float, what: str, how: str = "at least", slack: float = 0.0) -> None:
    """InputError when ``seconds`` of audio exceed ``limit`` + ``slack`` (``how``: "stated to be" before
    decoding, with a second of slack for containers that round up; "at least" while decoding)."""
    if seconds > limit + slack:
        raise InputError(
            f"{what}: the audio is {how} {seconds:.0f} s ({seconds / 3600:.2f} h) long; audio is limited to "
            f"{limit:g} s ({limit / 3600:.2f} h) so that it fits in memory. Use a shorter file (cut the speech you "
            f"need), or raise the limit with the environment variable {MAX_AUDIO_SECONDS_ENV}=<seconds> "
            "(from Python: max_seconds=...)."
        )


class SampleBuffer:
    """float32 ``[C, N]`` samples appended chunk by chunk into one growing array: the memory held is
    the samples themselves (plus one growth step), never a list of chunks and their concatenation.
    An allocation the machine cannot serve is an InputError saying how much was needed."""

    def __init__(self, channels: int, expected: int, what: str, rate: int):
        self.what, self.rate, self.n = what, rate, 0
        self.data = self._alloc(channels, max(int(expected), 1))

    def _alloc(self, channels: int, n: int) -> np.ndarray:
        try:
            return np.empty((channels, n), np.float32)
        except MemoryError:
            raise InputError(
                f"{self.what}: not enough memory for {n / self.rate:.0f} s of {self.rate} Hz {channels}-channel "
                f"audio ({channels * n * 4 / 1e9:.1f} GB as float32). Use a shorter file, or fewer channels / a "
                "lower sample rate."
            ) from None

    def append(self, chunk: np.ndarray) -> None:
        if chunk.shape[0] != self.data.shape[0]:
            raise InputError(f"{self.what}: the channel count changes mid-stream ({self.data.shape[0]} -> "
                             f"{chunk.shape[0]}); re-encode the file")
        n = chunk.shape[1]
        if self.n + n > self.data.shape[1]:  # the stated length was short (or absent): grow by half
            grown = self._alloc(self.data.shape[0], max(self.n + n, self.data.shape[1] * 3 // 2))
            grown[:, : self.n] = self.data[:, : self.n]
            self.data = grown
        self.data[:, self.n : self.n + n] = chunk
        self.n += n

    def result(self) -> np.ndarray:
        """The samples, C-contiguous ``[C, N]``: the channels are moved together inside the buffer
        (no second buffer); a buffer over a third unused is trimmed by a copy."""
        c, cap = self.data.shape
        n = self.n
        if n * 3 < cap * 2:
            return np.ascontiguousarray(self.data[:, :n])
        flat = self.data.reshape(-1)
        for i in range(1, c):  # row i to offset i * n (destinations never pass their sources)
            flat[i * n : (i + 1) * n] = flat[i * cap : i * cap + n]
        return flat[: c * n].reshape(c, n)


@dataclass
class AudioSource:
    """An opened audio track for streaming: ``chunks()`` yields float32 ``[C, n]`` at ``rate``."""

    rate: int
    channels: int
    stated_seconds: float  # what the file states (0 unknown; untrusted)
    path: str
    max_seconds: float
    what: str

    def chunks(self) -> Iterator[np.ndarray]:
        """Decode the first audio stream (format conversion only: rate and layout kept), stopping
        with InputError as soon as the decoded length passes ``max_seconds``."""
        av = _import_av()
        limit = int(self.max_seconds * self.rate)
        done = 0
        with _open(self.path, self.what) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # float planar [C, n]
            frames = container.decode(stream)
            for frame in itertools.chain(frames, [None]):  # None flushes the resampler
                for out in resampler.resample(frame):
                    arr = out.to_ndarray()
                    done += arr.shape[1]
                    if done > limit:
                        check_audio_length(done / self.rate, self.max_seconds, self.what)
                    yield arr


def open_audio(path: Union[str, os.PathLike], *, max_seconds: Optional[float] = None,
               what: str = "audio") -> Optional[AudioSource]:
    """The first audio track of a file for streaming (``None`` when the file has none). Refuses a
    track whose stated length exceeds the audio limit (``max_audio_seconds(max_seconds)``) before
    decoding anything; ``chunks()`` refuses one that lies about it while decoding."""
    limit = max_audio_seconds(max_seconds)
    path = os.fspath(path)
    with _open(path, what) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        stated = _stated_duration(container, stream)
        check_audio_length(stated, limit, what, "stated to be", slack=1.0)
        rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        if rate <= 0:
            raise InputError(f"{what}: '{path}' has an audio stream without a sample rate; the file is damaged")
        channels = int(stream.codec_context.channels or 1)
    return AudioSource(rate, channels, stated, path, limit, what)


def read_audio(path: Union[str, os.PathLike], *, max_seconds: Optional[float] = None) -> Optional[Audio]:
    """The first audio track of a video or audio file as an :class:`Audio` at its own rate and
    channels, or ``None``. Audio longer than ``max_seconds`` (default 2 h, see
    :func:`max_audio_seconds`) is refused before decoding when the file states its length and while
    decoding when it does not (or lies); the samples are decoded straight into one buffer (no
    chunk list + concatenation), and a buffer the machine cannot hold is an InputError.

    For the models use ``a2m.load_audio``, which streams straight to 16 kHz mono (15x less memory
    than 48 kHz stereo float32)."""
    source = open_audio(path, max_seconds=max_seconds)
    if source is None:
        return None
    buf = None
    for chunk in source.chunks():
        if buf is None:
            expected = min(source.stated_seconds, source.max_seconds) * source.rate + 4096
            buf = SampleBuffer(chunk.shape[0], expected, source.what, source.rate)
        buf.append(chunk)
    wave = buf.result() if buf is not None else np.zeros((source.channels, 0), np.float32)
    return Audio(torch.from_numpy(wave), source.rate)


def iter_video(path: Union[str, os.PathLike]) -> Iterator[tuple[np.ndarray, float]]:
    """Decode the first video stream frame by frame: yields (uint8 numpy [H, W, 3] RGB, seconds).

    Frames without a presentation time get the previous time plus one frame at the stream rate
    (the first one 0.0), so the timestamps are always numbers."""
    with _open(path) as container:
        stream = _video_stream(container, os.fspath(path))
        stream.thread_type = "AUTO"
        step = 1.0 / _stream_fps(stream)
        last = -step
        for frame in container.decode(stream):
            last = frame.time if frame.time is not None else last + step
            yield frame.to_ndarray(format="rgb24"), last


def iter_frames(path: Union[str, os.PathLike], chunk_size: int = 16) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`iter_video` in chunks: yields (uint8 [n, H, W, 3], float64 [n] seconds)."""
    imgs, times = [], []
    for img, t in iter_video(path):
        imgs.append(img)
        times.append(t)
        if len(imgs) == chunk_size:
            yield torch.from_numpy(np.stack(imgs)), torch.tensor(times, dtype=torch.float64)
            imgs, times = [], []
    if imgs:
        yield torch.from_numpy(np.stack(imgs)), torch.tensor(times, dtype=torch.float64)


def read_video(path: Union[str, os.PathLike], *, with_audio: bool = True, max_frames: Optional[int] = None) -> VideoClip:
    """Decode a video file: all frames (or the first ``max_frames``), fps, timestamps, audio."""
    frames, times = [], []
    count = 0
    for chunk, ts in iter_frames(path):
        frames.append(chunk)
        times.append(ts)
        count += chunk.shape[0]
        if max_frames is not None and count >= max_frames:
            break
    if not frames:
        raise InputError(f"'{os.fspath(path)}' has no decodable video frames")
    info = probe(path)
    audio = read_audio(path) if with_audio else None
    out_frames, out_times = torch.cat(frames), torch.cat(times)
    if max_frames is not None:
        out_frames, out_times = out_frames[:max_frames], out_times[:max_frames]
    return VideoClip(frames=out_frames, fps=info.fps, timestamps=out_times, audio=audio, metadata=info.metadata)
