"""Fundamental frequency (f0) at the HuBERT frame rate and its coarse mel-scale bins.

Upstream (`data_gen/utils/process_audio/extract_mel_f0.py`) uses Praat's autocorrelation pitch
tracker through parselmouth (GPL, so not used here): `to_pitch_ac(time_step=0.02,
pitch_floor=80, pitch_ceiling=750, voicing_threshold=0.6)` on the 16 kHz signal right-padded to
a whole number of 320-sample hops. Praat then centres frame i at 20 ms + i * 20 ms. The f0
track is padded with its last value (or cropped) to the mel length floor((T - 512) / 320) + 1,
then cropped or zero-padded to the (padded) HuBERT length.

We use librosa's probabilistic YIN (pYIN, Mauch & Dixon 2014) with the same floor, ceiling and
20 ms hop, centred on the same instants, and the same length bookkeeping. Differences from
Praat: pYIN's voicing comes from an HMM over YIN thresholds rather than Praat's 0.6
autocorrelation threshold plus path costs, so voiced/unvoiced boundaries and rare octave jumps
differ; on clean speech voiced f0 values usually agree within a few percent (about one coarse
bin). f0 only feeds the optional auxiliary pitch embedding of the motion model.
"""

from __future__ import annotations

import numpy as np
import torch

from ..utils import ProgressFn, report

SAMPLE_RATE = 16_000
HOP = 320  # 20 ms: the HuBERT frame step and Praat's time_step
MEL_N_FFT = 512  # upstream mel (center=False) fixes the f0 length: floor((T - 512) / 320) + 1
F0_FLOOR, F0_CEILING = 80.0, 750.0  # upstream pitch_floor / pitch_ceiling (Hz)
PYIN_FRAME = 1024  # 64 ms analysis window (Praat AC uses 3 periods of the floor = 37.5 ms)
CHUNK_FRAMES = 1500  # f0 is tracked in 30 s chunks so memory stays flat on long audio
CHUNK_MARGIN = 50  # 1 s of extra frames on each side of a chunk, discarded after tracking

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
    chunk_frames: int = CHUNK_FRAMES,
    on_step: ProgressFn | None = None,
) -> torch.Tensor:
    """f0 in Hz (0 = unvoiced) of mono 16 kHz audio, one value per 20 ms HuBERT frame, float32
    [num_frames]: the first floor((T - 512) / 320) + 1 frames carry f0, the rest are zero
    (upstream aligns f0 to the zero-padded HuBERT length the same way)."""
    wav = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    wav = wav.astype(np.float32).reshape(-1)
    n_f0 = min(num_f0_frames(len(wav)), num_frames)
    f0 = np.zeros(num_frames, dtype=np.float32)
    starts = list(range(0, n_f0, chunk_frames))
    for i, a in enumerate(starts):
        b = min(a + chunk_frames, n_f0)
        lo, hi = max(0, a - CHUNK_MARGIN), min(n_f0, b + CHUNK_MARGIN)
        f0[a:b] = _pyin_frames(wav, lo, hi - lo)[a - lo: b - lo]
        report(on_step, i + 1, len(starts), stage="f0")
    return torch.from_numpy(f0)
