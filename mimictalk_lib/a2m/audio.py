"""Audio input: any common file, a waveform array, or a ComfyUI AUDIO dict -> mono 16 kHz float32.

Upstream converts every input with `ffmpeg -ar 16000` to a 16-bit wav and reads it back with
soundfile, keeping only the first channel of a stereo file. We decode with soundfile (the
backend of `librosa.load`; PyAV for containers such as mp4/m4a that libsndfile cannot read),
average the channels (librosa's mono convention) and resample with librosa's default
high-quality soxr resampler (librosa.resample(res_type="soxr_hq")). The waveform therefore differs from upstream's by the resampler
and by the channel mix on stereo input; there is no 16-bit quantisation.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..video import as_audio, read_audio, require_file

SAMPLE_RATE = 16_000  # HuBERT-large (facebook/hubert-large-ls960-ft) input rate
MIN_SAMPLES = 400  # one HuBERT frame: the CNN front end's receptive field (25 ms)
SILENCE_PEAK = 1e-4  # peak |amplitude| at or below this (-80 dBFS, ~3 LSB of 16-bit) = silent
MIN_RATE, MAX_RATE = 1_000, 768_000  # plausible sample rates (Hz)


def _decode_file(path: str) -> tuple[np.ndarray, int]:
    """Decode a file to float32 [C, T] and its sample rate: soundfile (librosa's backend) first,
    then PyAV for what libsndfile cannot read (mp4, m4a, aac, webm, ...)."""
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)  # [T, C]
        return np.ascontiguousarray(data.T), int(rate)
    except soundfile.LibsndfileError:
        pass
    audio = read_audio(path)  # raises InputError if FFmpeg cannot open it either
    if audio is None:
        raise InputError(
            f"'{path}' has no audio track. Pass a speech recording (wav, flac, mp3, ogg, m4a) "
            "or a video that contains sound."
        )
    return audio.waveform.numpy(), audio.sample_rate


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


def load_audio(source: Any, sample_rate: int | None = None) -> torch.Tensor:
    """Return mono 16 kHz float32 audio [T] (CPU) from any of:

    - a path (str / PathLike) to an audio or video file;
    - a ComfyUI AUDIO dict `{"waveform": Tensor[1, C, T], "sample_rate": int}` or a
      `mimictalk_lib.video.Audio`;
    - a waveform tensor/array [T] or [C, T] together with `sample_rate`.

    Raises InputError for a missing/unreadable file, a bad sample rate, non-finite samples,
    empty or silent audio, and audio shorter than one HuBERT frame (400 samples = 25 ms)."""
    if isinstance(source, (str, os.PathLike)):
        what = require_file(source, "audio")
        wave, rate = _decode_file(what)
    else:
        what = "audio input"
        audio = as_audio(source, sample_rate)  # AUDIO dict / Audio / waveform + rate, validated
        if audio is None:
            raise InputError("audio input is missing (None); connect speech audio.")
        wave, rate = audio.waveform.numpy(), audio.sample_rate
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
