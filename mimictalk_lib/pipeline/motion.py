"""The motion flow: speech -> 25 fps BFM expression motion with ICS-A2M (:func:`audio_to_motion`),
optionally imitating a talking style (:func:`style_prompt`); what one Audio to Motion node calls.
Audio is the library's own :class:`~mimictalk_lib.video.Audio` (or a path / AUDIO dict), passed
through unchanged to the feature extractor."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..a2m import (DEFAULT_CFG_SCALE, DEFAULT_STEPS, DEFAULT_TEMPERATURE, AudioFeatures, StylePrompt,
                   extract_audio_features, sample_motion)
from ..errors import InputError
from ..identity.style import style_prompt_from_identity
from ..utils import ProgressFn, logger

FPS = 25  # MimicTalk motion and video rate (architecture reference §1.1)
UPSTREAM_DROPPED_FRAMES = 4  # real3d_infer.forward_audio2secc drops the last 4 motion frames
TRIM_MODES = ("audio", "upstream", "none")

def _stage(on_step: Optional[ProgressFn], lo: int, hi: int, stage: str) -> Optional[ProgressFn]:
    """Map a sub-step's (done, total) onto [lo, hi] of a 0..100 progress scale."""
    if on_step is None:
        return None
    def step(done: int, total: int, **info) -> None:
        if "stage" in info:  # the sub-step's own stage name (e.g. 'hubert', 'f0')
            info["substage"] = info.pop("stage")
        on_step(lo + (hi - lo) * done // max(total, 1), 100, stage=stage, **info)

    return step


def motion_frames_for(num_samples: int, motion_frames: int, trim: str) -> int:
    """Frames to keep of sampled motion (T_a / 2 frames, padded): 'audio' = the audio duration
    at 25 fps (round(num_samples / 16000 * 25)), 'upstream' = all but the last 4 (upstream's rule),
    'none' = all."""
    if trim not in TRIM_MODES:
        raise InputError(f"trim must be one of {TRIM_MODES}, got {trim!r}")
    if trim == "none":
        return motion_frames
    if trim == "upstream":
        return max(1, motion_frames - UPSTREAM_DROPPED_FRAMES)
    return max(1, min(motion_frames, round(num_samples * FPS / 16_000)))


def style_prompt(a2m: nn.Module, hubert: nn.Module, style: Any, style_audio: Any = None):
    """The ICS-A2M style prompt for ``style``: None (no prompt), an ``a2m.StylePrompt`` (as is), an
    ``Identity`` (a photo gives upstream's image prompt, its expression repeated; a clip needs
    ``style_audio``, its soundtrack, for the audio+motion prompt) or one expression [64]."""
    if style is None or isinstance(style, StylePrompt):
        return style
    if isinstance(style, torch.Tensor):
        return StylePrompt.from_expression(style, hubert_dim=a2m.cfg.audio_dim)
    if not hasattr(style, "is_photo"):
        raise InputError(f"style: expected an identity, a StylePrompt, an expression [64] or None, got {type(style).__name__}")
    if style.is_photo:
        return StylePrompt.from_expression(style.exp[0], hubert_dim=a2m.cfg.audio_dim)
    if style_audio is None:
        raise InputError("a clip identity as talking style needs its audio (style_audio); "
                         "or use a style clip, a photo identity, or no style")
    features = extract_audio_features(style_audio, hubert, with_f0=bool(a2m.cfg.use_aux_features))
    return style_prompt_from_identity(style, features)


def audio_to_motion(
    a2m: nn.Module,
    hubert: nn.Module,
    audio: Any,
    *,
    style: Any = None,
    style_audio: Any = None,
    steps: Optional[int] = None,
    cfg_scale: Optional[float] = None,
    temperature: Optional[float] = None,
    method: str = "midpoint",
    generator: Optional[torch.Generator] = None,
    mouth_amp: float = 1.0,
    trim: str = "audio",
    on_step: Optional[ProgressFn] = None,
) -> torch.Tensor:
    """Speech -> 25 fps BFM expressions [T, 64] (fp32, CPU) with ICS-A2M.

    ``audio``: a path, a ComfyUI AUDIO dict, an :class:`~mimictalk_lib.video.Audio` or ready
    ``a2m.AudioFeatures``. ``style``/``style_audio``: see :func:`style_prompt`.
    ``steps`` / ``cfg_scale`` / ``temperature`` default to upstream's 20 / 1.5 / 0.3; ``method``
    'euler' | 'midpoint' | 'rk4'. ``trim``: see :func:`motion_frames_for`. ``on_step(done, 100,
    stage=...)`` covers feature extraction then sampling and may raise to cancel."""
    if trim not in TRIM_MODES:
        raise InputError(f"trim must be one of {TRIM_MODES}, got {trim!r}")
    prompt = style_prompt(a2m, hubert, style, style_audio)
    if isinstance(audio, AudioFeatures):
        features = audio
    else:
        features = extract_audio_features(audio, hubert, with_f0=bool(a2m.cfg.use_aux_features),
                                          on_step=_stage(on_step, 0, 30, "audio features"))
    motion = sample_motion(
        a2m, features, prompt,
        steps=DEFAULT_STEPS if steps is None else steps,
        cfg_scale=DEFAULT_CFG_SCALE if cfg_scale is None else cfg_scale,
        temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
        method=method, generator=generator, mouth_amp=mouth_amp, on_step=_stage(on_step, 30, 100, "motion sampling"),
    )
    keep = motion_frames_for(features.num_samples, motion.shape[0], trim)
    logger.info("audio %.2f s -> %d motion frames (%d sampled, trim=%s)", features.duration, keep, motion.shape[0], trim)
    return motion[:keep]
