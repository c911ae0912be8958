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
  30 s chunks so memory stays flat. Differences from Praat: pYIN's voicing comes from an HMM
  over YIN thresholds rather than Praat's 0.6 autocorrelation threshold plus path costs, so
  voiced/unvoiced boundaries and rare octave jumps differ; on clean speech voiced f0 values
  usually agree within a few percent (about one coarse bin).
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


def _pyin_frames(wav: np.ndarray, first: int, count: int) -> np.ndarray:
    """pYIN f0 of frames [first, first + count), frame i centred on sample 320 * (i + 1)."""
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
    f0 = np.where(voiced, np.nan_to_num(f0, nan=0.0), 0.0)
    return f0[:count]


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
    for i, a in enumerate(starts):
        b = min(a + chunk_frames, n_f0)
        lo, hi = max(0, a - CHUNK_MARGIN), min(n_f0, b + CHUNK_MARGIN)
        f0[a:b] = _pyin_frames(wav, lo, hi - lo)[a - lo: b - lo]
        report(on_step, i + 1, len(starts), stage="f0")
    return torch.from_numpy(f0)
