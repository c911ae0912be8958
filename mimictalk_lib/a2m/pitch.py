"""Fundamental frequency (f0) at the HuBERT frame rate and its coarse mel-scale bins.

Upstream (`data_gen/utils/process_audio/extract_mel_f0.py`) uses Praat's autocorrelation pitch
tracker through parselmouth: `to_pitch_ac(time_step=0.02, pitch_floor=80, pitch_ceiling=750,
voicing_threshold=0.6)` on the 16 kHz signal right-padded with zeros to (T // 320 + 1) * 320
samples. Praat then centres frame i at 20 ms + i * 20 ms. The f0 track is padded with its last
value (or cropped) to the mel length floor((T - 512) / 320) + 1, then cropped or zero-padded to
the (padded) HuBERT length.

Two trackers (`extract_f0(..., tracker=)`):

- "praat": the same Praat call, padding and length bookkeeping, so f0 equals upstream's. Needs
  the optional `praat-parselmouth` package, which is GPL-3 and therefore never a dependency of
  this MIT pack; the user installs it. Praat runs on the whole signal in one pass: its voicing
  decision compares each frame with the peak of the whole sound, so chunks would change frames
  near quiet passages (about 0.2 s per minute of audio on one CPU core; peak memory about 4x the
  16 kHz float32 waveform).
- "pyin": librosa's probabilistic YIN (pYIN, Mauch & Dixon 2014) with the same floor, ceiling
  and 20 ms hop, centred on the same instants, and the same length bookkeeping, tracked in
  30 s chunks so memory stays flat. Praat's silence rule is applied on top: a frame is unvoiced
  when its local peak is below 0.03 (Praat's default silence threshold, which upstream keeps) of
  the global peak, both measured as Praat does (local peak: +-half a floor period around the
  frame centre, after removing the mean over +-one floor period and weighting by Praat's 37.5 ms
  Hann window; global peak: the largest deviation from the mean of the whole, zero-padded
  signal, computed once so chunks agree with one pass). Praat folds this into its path search
  as a soft cost; here it is a hard gate. Remaining differences: pYIN's voicing comes from an
  HMM over YIN thresholds rather than Praat's 0.6 autocorrelation threshold plus path costs,
  so voiced/unvoiced boundaries and rare octave jumps differ. Measured against Praat on 10 s of
  speech (80_vs_60_10s.wav at 16 kHz): the coarse bin differs on 21.0% of frames and voicing on
  9.0% (49.7% and 37.7% without the silence rule, which mostly removes pYIN's voiced pauses:
  132 voiced frames vs Praat's 123, was 275; a plain peak over 37.5 ms or over pYIN's 64 ms
  frame gives 23.0% / 11.0% and 23.8% / 11.8%); on clean speech voiced f0 values usually agree
  within a few percent (about one coarse bin).
- "auto" (default): "praat" when parselmouth is importable, else "pyin".

f0 only feeds the optional auxiliary pitch embedding of the motion model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..errors import DependencyMissingError, InputError
from ..utils import ProgressFn, logger, report

SAMPLE_RATE = 16_000
HOP = 320  # 20 ms: the HuBERT frame step and Praat's time_step
MEL_N_FFT = 512  # upstream mel (center=False) fixes the f0 length: floor((T - 512) / 320) + 1
F0_FLOOR, F0_CEILING = 80.0, 750.0  # upstream pitch_floor / pitch_ceiling (Hz)
PRAAT_VOICING_THRESHOLD = 0.6  # upstream voicing_threshold
PYIN_FRAME = 1024  # 64 ms analysis window (Praat AC uses 3 periods of the floor = 37.5 ms)
CHUNK_FRAMES = 1500  # f0 is tracked in 30 s chunks so memory stays flat on long audio
CHUNK_MARGIN = 50  # 1 s of extra frames on each side of a chunk, discarded after tracking
# Praat's silence rule (Sound: To Pitch (ac), Boersma 1993; values at 16 kHz for the 80 Hz floor)
PRAAT_SILENCE_THRESHOLD = 0.03  # to_pitch_ac default silence_threshold (upstream keeps it)
FLOOR_PERIOD = round(SAMPLE_RATE / F0_FLOOR)  # 200 samples: the longest period Praat looks for
PRAAT_WINDOW = 3 * FLOOR_PERIOD  # 37.5 ms: Praat's AC analysis window, 3 periods of the floor

PitchTracker = Literal["auto", "praat", "pyin"]
PITCH_TRACKERS: tuple[str, ...] = ("auto", "praat", "pyin")
PRAAT_INSTALL_HINT = "pip install praat-parselmouth"
_pyin_hint_logged = False  # the "auto" fallback hint is logged once per process

# f0_to_coarse constants (upstream utils/commons/pitch_utils.py)
F0_BIN = 256
F0_MIN, F0_MAX = 50.0, 1100.0
F0_MEL_MIN = 1127 * np.log(1 + F0_MIN / 700)
F0_MEL_MAX = 1127 * np.log(1 + F0_MAX / 700)


def f0_to_coarse(f0: torch.Tensor) -> torch.Tensor:
    """Quantise f0 (Hz, 0 = unvoiced) to 256 mel-scale bins: bin 1 = unvoiced or <= 50 Hz,
    255 = >= 1100 Hz. Same operations and rounding (+0.5, truncate) as upstream's torch path."""
    f0_mel = 1127 * (1 + torch.nan_to_num(f0, nan=0.0) / 700).log()
    voiced = f0_mel > 0
    f0_mel = torch.where(
        voiced, (f0_mel - F0_MEL_MIN) * (F0_BIN - 2) / (F0_MEL_MAX - F0_MEL_MIN) + 1, f0_mel
    )
    f0_mel = f0_mel.clamp(min=1, max=F0_BIN - 1)  # <= 1 -> 1; > 255 -> 255
    return (f0_mel + 0.5).long()


def num_f0_frames(num_samples: int) -> int:
    """Upstream's f0 length: the mel frame count floor((T - 512) / 320) + 1 (0 if shorter)."""
    return max(0, (num_samples - MEL_N_FFT) // HOP + 1)


def _import_parselmouth():
    """The parselmouth module, or None when it is not installed (it is optional: GPL-3)."""
    try:
        import parselmouth
    except ImportError:
        return None
    return parselmouth


def resolve_pitch_tracker(tracker: str = "auto") -> str:
    """The concrete tracker ("praat" or "pyin") for a choice in PITCH_TRACKERS.

    "auto" picks "praat" when parselmouth is importable, else "pyin" (logging once per process
    how to get upstream's exact pitch); "praat" without parselmouth raises
    DependencyMissingError."""
    global _pyin_hint_logged
    if tracker not in PITCH_TRACKERS:
        raise InputError(
            f"unknown pitch tracker {tracker!r}; choose one of {', '.join(PITCH_TRACKERS)}"
        )
    if tracker == "pyin":
        return "pyin"
    if _import_parselmouth() is not None:
        return "praat"
    if tracker == "praat":
        raise DependencyMissingError(
            "pitch tracker 'praat' needs the optional package praat-parselmouth (GPL-3), which is "
            f"not installed; install it with `{PRAAT_INSTALL_HINT}` in ComfyUI's Python, or "
            "choose 'pyin' (or 'auto')"
        )
    if not _pyin_hint_logged:
        logger.info(
            "f0 uses librosa pYIN (close to, not equal to, upstream's Praat pitch); "
            "`%s` (GPL-3) gives upstream's exact pitch", PRAAT_INSTALL_HINT,
        )
        _pyin_hint_logged = True
    return "pyin"


def num_f0_steps(num_samples: int, tracker: str, chunk_frames: int = CHUNK_FRAMES) -> int:
    """How many times extract_f0 calls on_step: one per pYIN chunk, one for the Praat pass."""
    n_f0 = num_f0_frames(num_samples)
    if resolve_pitch_tracker(tracker) == "praat":
        return 1 if n_f0 else 0
    return -(-n_f0 // chunk_frames)


def _praat_f0(wav: np.ndarray, n_f0: int) -> np.ndarray:
    """Upstream's f0 of frames [0, n_f0): Praat's autocorrelation tracker on the whole signal
    right-padded to (T // 320 + 1) * 320 samples (frame i centred on 20 ms * (i + 1)), the track
    padded with its last value or cropped to n_f0 frames."""
    parselmouth = _import_parselmouth()
    padded = np.pad(wav, (0, (len(wav) // HOP + 1) * HOP - len(wav)))
    pitch = parselmouth.Sound(padded, SAMPLE_RATE).to_pitch_ac(
        time_step=HOP / SAMPLE_RATE, voicing_threshold=PRAAT_VOICING_THRESHOLD,
        pitch_floor=F0_FLOOR, pitch_ceiling=F0_CEILING,
    )
    f0 = pitch.selected_array["frequency"]  # float64, 0 = unvoiced
    if 0 < len(f0) < n_f0:  # repeat the last value (does not occur for 16 kHz input)
        f0 = np.concatenate([f0, np.full(n_f0 - len(f0), f0[-1])])
    out = np.zeros(n_f0)
    out[: min(len(f0), n_f0)] = f0[:n_f0]
    return out


def _global_peak(wav: np.ndarray) -> float:
    """Praat's reference for silence: the largest |x - mean| of the whole signal, taken as Praat
    sees it (right-padded with zeros to (T // 320 + 1) * 320 samples). Two reductions, no copy."""
    if not len(wav):
        return 0.0
    mean = float(wav.sum(dtype=np.float64)) / ((len(wav) // HOP + 1) * HOP)
    return max(float(wav.max()) - mean, mean - float(wav.min()), abs(mean))


def _local_peaks(seg: np.ndarray, centre: int, count: int) -> np.ndarray:
    """Praat's local peak [count] of frames centred on seg[centre + HOP * j]: the largest
    |x - local mean| * Hann within half a floor period of the centre, the local mean taken over
    one floor period on each side and the Hann window being Praat's 37.5 ms analysis window.
    seg must hold FLOOR_PERIOD samples on either side of every centre."""
    from numpy.lib.stride_tricks import sliding_window_view

    half = FLOOR_PERIOD // 2
    stop = centre + HOP * (count - 1) + FLOOR_PERIOD  # one past the last frame's mean window
    # [count, 2 * FLOOR_PERIOD] views, one row per frame, no copy
    around = sliding_window_view(seg[centre - FLOOR_PERIOD: stop], 2 * FLOOR_PERIOD)[::HOP]
    local_mean = around.mean(axis=1, dtype=np.float64, keepdims=True)
    near = around[:, FLOOR_PERIOD - half: FLOOR_PERIOD + half + 1]  # [count, 2 * half + 1]
    hann = 0.5 + 0.5 * np.cos(2 * np.pi * np.arange(-half, half + 1) / (PRAAT_WINDOW + 1))
    return (np.abs(near - local_mean) * hann).max(axis=1)


def _pyin_frames(wav: np.ndarray, first: int, count: int, silence: float) -> np.ndarray:
    """pYIN f0 of frames [first, first + count), frame i centred on sample 320 * (i + 1), zero
    where the frame's local peak is below `silence` (Praat's silence rule; see _local_peaks)."""
    import librosa  # heavy import (numba); only needed here

    half = PYIN_FRAME // 2
    start = HOP * (first + 1) - half  # sample where frame `first`'s window starts
    stop = HOP * (first + count) + half  # end of the last frame's window
    seg = wav[max(start, 0): max(min(stop, len(wav)), 0)]
    seg = np.pad(seg, (max(0, -start), max(0, stop - max(start, len(wav)))))  # zeros off the ends
    f0, voiced, _ = librosa.pyin(
        seg.astype(np.float32), fmin=F0_FLOOR, fmax=F0_CEILING, sr=SAMPLE_RATE,
        frame_length=PYIN_FRAME, hop_length=HOP, center=False,
    )
    voiced = voiced[:count] & (_local_peaks(seg, half, count) >= silence)
    return np.where(voiced, np.nan_to_num(f0[:count], nan=0.0), 0.0)


def extract_f0(
    wav: np.ndarray | torch.Tensor,
    num_frames: int,
    *,
    tracker: PitchTracker = "auto",
    chunk_frames: int = CHUNK_FRAMES,
    on_step: ProgressFn | None = None,
) -> torch.Tensor:
    """f0 in Hz (0 = unvoiced) of mono 16 kHz audio, one value per 20 ms HuBERT frame, float32
    [num_frames]: the first floor((T - 512) / 320) + 1 frames carry f0, the rest are zero
    (upstream aligns f0 to the zero-padded HuBERT length the same way).

    tracker: "praat" (upstream's exact f0; needs praat-parselmouth), "pyin" (librosa, in
    chunks of chunk_frames), or "auto" (praat when installed); see the module docstring."""
    tracker = resolve_pitch_tracker(tracker)
    wav = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    wav = wav.astype(np.float32).reshape(-1)
    n_f0 = min(num_f0_frames(len(wav)), num_frames)
    f0 = np.zeros(num_frames, dtype=np.float32)
    if tracker == "praat":
        if n_f0:
            f0[:n_f0] = _praat_f0(wav, n_f0)
            report(on_step, 1, 1, stage="f0")
        return torch.from_numpy(f0)
    starts = list(range(0, n_f0, chunk_frames))
    silence = PRAAT_SILENCE_THRESHOLD * _global_peak(wav)  # global, so chunks match one pass
    for i, a in enumerate(starts):
        b = min(a + chunk_frames, n_f0)
        lo, hi = max(0, a - CHUNK_MARGIN), min(n_f0, b + CHUNK_MARGIN)
        f0[a:b] = _pyin_frames(wav, lo, hi - lo, silence)[a - lo: b - lo]
        report(on_step, i + 1, len(starts), stage="f0")
    return torch.from_numpy(f0)
