"""Incremental ICS-A2M: speech arriving in small hops -> 25 fps expression motion, window by
window, each window continuing the motion already generated (issue 18, "incremental motion
without seams").

Every hop of ``hop`` motion frames (``hop * 640`` samples at 16 kHz):

1. audio features: HuBERT (and f0 when the checkpoint uses it) on the last ``audio_context``
   frames of audio plus the hop, so the new frames see left context; the features of the new
   frames are appended to a cache holding the last ``context`` frames;
2. motion: :func:`mimictalk_lib.a2m.continue_motion` on [cached context | hop], with the motion
   already generated for the context frames shown to the model as known in-context motion (the
   model is trained for infilling, as in the offline sampler's long-audio windows) and the
   style prompt prepended as usual;
3. the last ``fade`` frames of each window are tentative: they are not emitted yet, the next
   window re-predicts them with more audio and cross-fades them in (the offline sampler's seam
   blend), so emitted motion lags the audio by ``fade`` frames (80 ms by default).

The waveform is normalised with the stream's running speech level (the loudest hop variance of
the last few seconds, floored at -40 dBFS) instead of per window, so pauses stay quiet and
silence is a valid input (the model's idle motion). Everything runs on the devices and dtypes of
the given models.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..a2m import (
    DEFAULT_CFG_SCALE,
    DEFAULT_TEMPERATURE,
    AudioFeatures,
    StylePrompt,
    continue_motion,
    extract_f0,
)
from ..a2m.hubert import NORM_EPS
from ..a2m.pitch import _import_parselmouth, resolve_pitch_tracker
from ..errors import InputError
from ..utils import count, logger

SAMPLES_PER_FRAME = 640  # 16 kHz audio per 25 fps motion frame
LEVEL_FLOOR = 1e-4  # variance floor of the running level (-40 dBFS rms)
LEVEL_MEMORY_S = 5.0  # the running level is the loudest hop of the last 5 s
PITCH_CHOICES = ("auto", "praat", "pyin", "off")
DEFAULT_STREAM_STEPS = 6  # ODE grid points per window (live default; offline upstream uses 20)


@dataclass(frozen=True)
class StreamSettings:
    """How :class:`MotionStream` windows the stream (all counts are 25 fps motion frames)."""

    hop: int = 5  # frames emitted per step (200 ms)
    context: int = 25  # frames of generated motion (and their audio) shown to each window
    audio_context: int = 10  # frames of past audio HuBERT sees before each hop
    fade: int = 2  # tentative frames re-predicted and cross-faded by the next window
    steps: int = DEFAULT_STREAM_STEPS
    cfg_scale: float = DEFAULT_CFG_SCALE
    temperature: float = DEFAULT_TEMPERATURE
    method: str = "euler"
    mouth_amp: float = 1.0

    def __post_init__(self):
        if not (1 <= self.hop and 0 <= self.fade <= self.context and self.audio_context >= 0
                and self.fade < self.hop + self.context):
            raise InputError(
                f"stream settings need hop >= 1, 0 <= fade <= context and audio_context >= 0; got hop={self.hop}, "
                f"context={self.context}, fade={self.fade}, audio_context={self.audio_context}"
            )


class MotionStream:
    """Feed 16 kHz mono audio hop by hop with :meth:`push`; get the emitted motion frames back.

    ``pitch``: the f0 tracker for checkpoints with auxiliary features: 'auto' (Praat when
    praat-parselmouth is installed, else none), 'praat', 'pyin' (about 0.3 s per hop on one CPU
    core: too slow for live use on a CPU) or 'off' (f0 = 0, as unvoiced audio). ``generator``
    seeds the sampling noise; ``initial`` [D] is the expression before the first window."""

    def __init__(
        self,
        a2m: torch.nn.Module,
        hubert: torch.nn.Module,
        style: Optional[StylePrompt] = None,
        settings: StreamSettings = StreamSettings(),
        *,
        pitch: str = "auto",
        generator: Optional[torch.Generator] = None,
        initial: Optional[torch.Tensor] = None,
    ):
        self.a2m, self.hubert, self.style, self.s = a2m, hubert, style, settings
        if pitch not in PITCH_CHOICES:
            raise InputError(f"pitch must be one of {PITCH_CHOICES}, got {pitch!r}")
        if pitch == "auto":
            pitch = "praat" if _import_parselmouth() is not None else "off"
            if pitch == "off" and a2m.cfg.use_aux_features:
                logger.info("live motion without pitch (f0 = 0): install praat-parselmouth for live pitch tracking")
        elif pitch == "praat":
            resolve_pitch_tracker("praat")  # DependencyMissingError with the install hint
        self.pitch_tracker = pitch if a2m.cfg.use_aux_features else "off"
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        d, c = a2m.cfg.motion_dim, settings.context
        start = torch.zeros(d) if initial is None else initial.detach().float().cpu().reshape(d)
        # per motion frame: its motion, its two HuBERT frames, its two f0 values
        self._motion = start.expand(c, d).clone()  # generated motion of the last `context` frames
        self._hubert = torch.zeros(2 * c, hubert.hidden_size)
        self._f0 = torch.zeros(2 * c)
        self._audio = np.zeros(settings.audio_context * SAMPLES_PER_FRAME, dtype=np.float32)
        self._levels: deque[float] = deque(maxlen=max(1, round(LEVEL_MEMORY_S * 25 / settings.hop)))
        self.frames_in = 0  # motion frames of audio consumed
        self.frames_out = 0  # motion frames emitted (frames_in - fade once started)

    @property
    def latency_frames(self) -> int:
        """Frames an audio frame waits before its motion is emitted (the tentative tail)."""
        return self.s.fade

    def _normalise(self, wav: np.ndarray) -> np.ndarray:
        if not getattr(self.hubert, "do_normalize", True):
            return wav
        self._levels.append(float(wav.var()))
        level = max(LEVEL_FLOOR, max(self._levels))
        return (wav - wav.mean()) / np.sqrt(level + NORM_EPS)

    def _features(self, audio: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """HuBERT [2n, H] and f0 [2n] of the last n frames of `audio` (which holds left context)."""
        x = self._normalise(audio)
        hub = self.hubert(x, normalized=True)  # [(len - 80) // 320, H]: one short of 2 per frame
        need = len(audio) // (SAMPLES_PER_FRAME // 2)
        if hub.shape[0] < need:  # the last frame's second half: repeat the last HuBERT frame
            hub = torch.cat([hub, hub[-1:].expand(need - hub.shape[0], -1)])
        f0 = torch.zeros(need)
        if self.pitch_tracker != "off" and float(np.abs(audio).max()) > 0:
            f0 = extract_f0(audio, need, tracker=self.pitch_tracker)
        return hub[-2 * n:], f0[-2 * n:]

    def push(self, wav: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Consume audio of a whole number of frames (len a multiple of 640 samples, 16 kHz mono,
        float in [-1, 1]); return the motion frames emitted [k, D] (fp32, CPU), k = frames pushed
        (minus ``fade`` on the very first push). NaN / infinite samples are treated as silence."""
        wav = np.asarray(wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else wav, dtype=np.float32).reshape(-1)
        if len(wav) == 0 or len(wav) % SAMPLES_PER_FRAME:
            raise InputError(f"MotionStream.push: expected a multiple of {SAMPLES_PER_FRAME} samples (25 fps frames at 16 kHz), got {len(wav)}")
        wav = np.nan_to_num(wav, nan=0.0, posinf=0.0, neginf=0.0).clip(-1, 1)
        n, s = len(wav) // SAMPLES_PER_FRAME, self.s
        if n < s.fade:
            raise InputError(f"MotionStream.push: push at least fade={count(s.fade, 'frame')} at a time, got {n}")
        audio = np.concatenate([self._audio, wav])
        hub, f0 = self._features(audio, n)
        keep = s.audio_context * SAMPLES_PER_FRAME
        self._audio = audio[len(audio) - keep:] if keep else audio[:0]
        features = AudioFeatures(
            hubert=torch.cat([self._hubert, hub]), f0=torch.cat([self._f0, f0]),
            num_samples=(s.context + n) * SAMPLES_PER_FRAME,
        )
        fade = s.fade if self.frames_in else 0  # nothing tentative before the first window
        new = continue_motion(
            self.a2m, features, self.style, self._motion, fade=fade, steps=s.steps, cfg_scale=s.cfg_scale,
            temperature=s.temperature, method=s.method, generator=self.generator, mouth_amp=s.mouth_amp,
        )  # frames [context - fade, context + n)
        motion = torch.cat([self._motion[: s.context - fade], new])  # [context + n, D]
        self._motion = motion[len(motion) - s.context:]  # (not [-context:]: context may be 0)
        keep = features.num_frames - 2 * s.context
        self._hubert, self._f0 = features.hubert[keep:], features.f0[keep:]
        self.frames_in += n
        emit = new[: len(new) - s.fade]  # the last `fade` frames stay tentative
        self.frames_out += len(emit)
        return emit


def border_jumps(motion: torch.Tensor, hop: int, fade: int, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-to-frame motion changes |m[i+1] - m[i]| of a stream's output [T, D], split into
    those at window borders (from the last frame of one emitted block through the `fade`
    cross-faded frames of the next; blocks start at `first`, then every `hop` frames) and those
    inside windows. The seam measure of docs/live.md."""
    jumps = (motion[1:] - motion[:-1]).norm(dim=-1)
    border = torch.zeros(len(jumps), dtype=torch.bool)
    for start in range(first, len(motion), hop):
        border[max(0, start - 1): min(len(jumps), start + fade)] = True
    return jumps[border], jumps[~border]
