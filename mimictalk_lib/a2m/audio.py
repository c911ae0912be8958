"""Audio input: any common file, a waveform array, or a ComfyUI AUDIO dict -> mono 16 kHz float32.

Upstream converts every input with `ffmpeg -ar 16000` to a 16-bit wav and reads it back with
soundfile, keeping only the first channel of a stereo file. We decode with soundfile (the
backend of `librosa.load`; PyAV for containers such as mp4/m4a that libsndfile cannot read),
average the channels (librosa's mono convention) and resample with librosa's default
high-quality soxr resampler (librosa.resample(res_type="soxr_hq")). The waveform therefore differs from upstream's by the resampler
and by the channel mix on stereo input; there is no 16-bit quantisation.

Files are streamed: blocks are decoded, averaged to mono and fed to soxr's streaming resampler
(bit-identical to the one-shot call), so only the 16 kHz result is held, never the file at its
own rate and channel count. Length is bounded (``video.max_audio_seconds``, 2 h by default).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import InputError
from ..video import SampleBuffer, as_audio, check_audio_length, max_audio_seconds, open_audio, require_file

SAMPLE_RATE = 16_000  # HuBERT-large (facebook/hubert-large-ls960-ft) input rate
MIN_SAMPLES = 400  # one HuBERT frame: the CNN front end's receptive field (25 ms)
SILENCE_PEAK = 1e-4  # peak |amplitude| at or below this (-80 dBFS, ~3 LSB of 16-bit) = silent
MIN_RATE, MAX_RATE = 1_000, 768_000  # plausible sample rates (Hz)


BLOCK = 1 << 16  # samples per channel decoded at a time by libsndfile


def _open_file(path: str, max_seconds) -> tuple[int, float, float, Iterator[np.ndarray]]:
    """(rate, stated seconds, limit, chunks float32 [C, n]) of a file: soundfile (librosa's backend)
    first, then PyAV for what libsndfile cannot read (mp4, m4a, aac, webm, ...). The stated length is
    checked against the limit here, before decoding; the chunks stop at the limit while decoding."""
    import soundfile

    limit = max_audio_seconds(max_seconds)
    try:
        info = soundfile.info(path)
    except soundfile.LibsndfileError:
        info = None
    if info is not None and info.samplerate > 0 and 0 <= info.frames < 2**62:  # unknown length: huge; PyAV reads it
        rate = int(info.samplerate)
        stated = info.frames / rate
        check_audio_length(stated, limit, path, "stated to be", slack=1.0)

        def chunks() -> Iterator[np.ndarray]:
            done = 0
            for block in soundfile.blocks(path, blocksize=BLOCK, dtype="float32", always_2d=True):  # [n, C]
                done += block.shape[0]
                if done > limit * rate:
                    check_audio_length(done / rate, limit, path)
                yield block.T

        return rate, stated, limit, chunks()
    source = open_audio(path, max_seconds=limit)  # raises InputError if FFmpeg cannot open it either
    if source is None:
        raise InputError(
            f"'{path}' has no audio track. Pass a speech recording (wav, flac, mp3, ogg, m4a) "
            "or a video that contains sound."
        )
    return source.rate, source.stated_seconds, limit, source.chunks()


def _stream_file(path: str, max_seconds) -> tuple[np.ndarray, int]:
    """Decode ``path`` straight to 16 kHz mono float32 [T] while reading (channels averaged, soxr_hq
    resampling in a stream: bit-identical to one ``_resample`` call on the whole file), so memory
    holds only the 16 kHz result. Returns it and the number of source samples per channel."""
    import soxr

    rate, stated, limit, chunks = _open_file(path, max_seconds)
    rate = _check_rate(rate, path)
    stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="soxr_hq")
    buf = SampleBuffer(1, min(stated, limit) * SAMPLE_RATE + 4096, path, SAMPLE_RATE)
    total = 0
    for chunk in chunks:
        if not np.isfinite(chunk).all():
            raise InputError(f"{path}: the waveform contains NaN or infinite samples.")
        total += chunk.shape[1]
        mono = chunk.mean(axis=0)
        buf.append((stream.resample_chunk(mono) if stream is not None else mono)[None])
    if stream is not None:
        buf.append(stream.resample_chunk(np.zeros(0, np.float32), last=True)[None])
    out = buf.result()[0]
    if stream is not None:  # librosa.resample's length: ceil(T * 16000 / rate)
        n = int(np.ceil(total * SAMPLE_RATE / rate))
        out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    return out, total


def _resample(wav: np.ndarray, rate: int) -> np.ndarray:
    """librosa.resample(wav, orig_sr=rate, target_sr=16000, res_type="soxr_hq"), called through
    soxr directly: the same resampler and output length ceil(T * 16000 / rate), without
    librosa's numba start-up (tens of seconds on a busy machine)."""
    import soxr

    out = soxr.resample(wav, rate, SAMPLE_RATE, quality="soxr_hq")
    n = int(np.ceil(wav.shape[-1] * SAMPLE_RATE / rate))
    return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


def _check_rate(rate: Any, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer, float)) or rate != int(rate):
        raise InputError(f"{what}: sample rate must be a whole number of Hz, got {rate!r}")
    rate = int(rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InputError(
            f"{what}: unsupported sample rate {rate} Hz (expected {MIN_RATE}-{MAX_RATE} Hz, "
            "e.g. 16000, 44100 or 48000). Check that the sample rate belongs to this waveform."
        )
    return rate


def load_audio(source: Any, sample_rate: int | None = None, *, max_seconds: float | None = None) -> torch.Tensor:
    """Return mono 16 kHz float32 audio [T] (CPU) from any of:

    - a path (str / PathLike) to an audio or video file;
    - a ComfyUI AUDIO dict `{"waveform": Tensor[1, C, T], "sample_rate": int}` or a
      `mimictalk_lib.video.Audio`;
    - a waveform tensor/array [T] or [C, T] together with `sample_rate`.

    A file is decoded straight to 16 kHz mono while reading (memory: the 16 kHz result, 460 MB for
    2 h), and refused beyond ``max_seconds`` (default 2 h; ``video.max_audio_seconds``) before
    decoding when it states its length, while decoding when it lies.

    Raises InputError for a missing/unreadable file, a bad sample rate, non-finite samples,
    empty or silent audio, audio over the length limit, and audio shorter than one HuBERT frame
    (400 samples = 25 ms)."""
    if isinstance(source, (str, os.PathLike)):
        what = require_file(source, "audio")
        mono, total = _stream_file(what, max_seconds)
        if total == 0:
            raise InputError(f"{what}: the audio is empty (0 samples). Provide a speech recording.")
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        check_speech(mono, what)
        return torch.from_numpy(mono)
    what = "audio input"
    audio = as_audio(source, sample_rate)  # AUDIO dict / Audio / waveform + rate, validated
    if audio is None:
        raise InputError("audio input is missing (None); connect speech audio.")
    wave, rate = audio.waveform.numpy(), audio.sample_rate
    check_audio_length(wave.shape[-1] / max(int(rate), 1), max_audio_seconds(max_seconds), what)
    rate = _check_rate(rate, what)
    if wave.shape[-1] == 0:
        raise InputError(f"{what}: the audio is empty (0 samples). Provide a speech recording.")
    if not np.isfinite(wave).all():
        raise InputError(f"{what}: the waveform contains NaN or infinite samples.")
    mono = wave.mean(axis=0)  # [C, T] -> [T]
    if rate != SAMPLE_RATE:
        mono = _resample(mono, rate)
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    check_speech(mono, what)
    return torch.from_numpy(mono)


def check_speech(wav: np.ndarray | torch.Tensor, what: str = "audio") -> None:
    """Raise InputError if 16 kHz mono audio is too short for one HuBERT frame or silent."""
    n = int(wav.shape[-1])
    if n < MIN_SAMPLES:
        raise InputError(
            f"{what}: the audio is {n / SAMPLE_RATE * 1000:.1f} ms long ({n} samples at 16 kHz), "
            f"shorter than one audio-feature frame ({MIN_SAMPLES} samples = 25 ms). Use longer audio."
        )
    peak = float(np.abs(np.asarray(wav)).max()) if not isinstance(wav, torch.Tensor) else float(wav.abs().max())
    if peak <= SILENCE_PEAK:
        raise InputError(
            f"{what}: the audio is silent (peak amplitude {peak:.2e}); nothing to lip-sync. "
            "Check the file or the input volume."
        )
