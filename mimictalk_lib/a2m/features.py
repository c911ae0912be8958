"""Audio features that drive ICS-A2M: HuBERT (50 Hz) + f0, aligned as upstream
(`inference/real3d_infer.py:prepare_batch_from_inp`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..utils import ProgressFn, check_shape, report
from .audio import load_audio
from .hubert import CLIP_FRAMES, HubertEncoder, num_hubert_frames, pad_to_multiple
from .pitch import PitchTracker, extract_f0, num_f0_frames, num_f0_steps, resolve_pitch_tracker


@dataclass(frozen=True)
class AudioFeatures:
    """Per-clip audio condition.

    hubert [T_a, hidden] fp32 CPU, T_a a multiple of 8 (zero-padded at the end); f0 [T_a] in Hz
    (0 = unvoiced / padding); num_samples = length of the 16 kHz source. Motion has
    T_a / 2 frames at 25 fps."""

    hubert: torch.Tensor
    f0: torch.Tensor
    num_samples: int

    def __post_init__(self):
        check_shape(self.hubert, (None, None), "hubert features")
        check_shape(self.f0, (self.hubert.shape[0],), "f0")

    @property
    def num_frames(self) -> int:
        """T_a: HuBERT frames including the padding to a multiple of 8."""
        return int(self.hubert.shape[0])

    @property
    def num_motion_frames(self) -> int:
        """T_m = T_a // 2 frames of 25 fps motion the sampler returns."""
        return self.num_frames // 2

    @property
    def num_voiced_frames(self) -> int:
        """Frames that carry real f0 values: upstream's mel length floor((T - 512) / 320) + 1."""
        return min(num_f0_frames(self.num_samples), self.num_frames)

    @property
    def duration(self) -> float:
        """Seconds of source audio."""
        return self.num_samples / 16_000


def extract_audio_features(
    audio: Any,
    hubert: HubertEncoder,
    *,
    sample_rate: int | None = None,
    with_f0: bool = True,
    pitch_tracker: PitchTracker = "auto",
    on_step: ProgressFn | None = None,
) -> AudioFeatures:
    """Load `audio` (path, ComfyUI AUDIO dict, or waveform + sample_rate; see `load_audio`) and
    compute HuBERT features padded to a multiple of 8 and the f0 track aligned to them.

    with_f0=False skips pitch tracking (f0 = 0): enough for checkpoints without auxiliary
    features, whose motion does not depend on f0. pitch_tracker picks the f0 tracker ("auto",
    "praat" = upstream's exact f0 if praat-parselmouth is installed, "pyin"; see `extract_f0`).
    on_step(done, total, stage=...) is called after each HuBERT clip and f0 chunk."""
    wav = load_audio(audio, sample_rate)
    tracker = resolve_pitch_tracker(pitch_tracker) if with_f0 else None  # fail before HuBERT
    n_clips = -(-num_hubert_frames(len(wav)) // CLIP_FRAMES)
    n_f0 = num_f0_steps(len(wav), tracker) if with_f0 else 0
    total = n_clips + n_f0

    def step(offset):
        return lambda done, _total, **info: report(on_step, offset + done, total, **info)

    feats = pad_to_multiple(hubert(wav, on_step=step(0)))  # [T_a, hidden]
    if with_f0:
        f0 = extract_f0(wav, feats.shape[0], tracker=tracker, on_step=step(n_clips))
    else:
        f0 = torch.zeros(feats.shape[0])
    return AudioFeatures(hubert=feats, f0=f0, num_samples=len(wav))
