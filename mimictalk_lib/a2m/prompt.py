"""Style prompts for ICS-A2M in-context sampling (MimicTalk §ICS-A2M "in-context stylization";
upstream `inference/infer_utils.py:extract_audio_motion_from_ref_video` and
`InContextAudio2MotionModel.add_sample_to_context`).

A prompt is reference motion with its audio condition. It is prepended to the driving audio and
its motion is shown to the model as known frames (cond_mask False), so the sampled motion
imitates its talking style:

- clip: a talking video's fitted expressions [L, 64] at 25 fps with that video's HuBERT
  [2L, 1024] and f0 [2L], cropped to the common length L = min(T_exp, T_hubert / 2, T_f0 / 2);
- expression (image prompt): one expression repeated for 100 frames with zero HuBERT and f0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import InputError
from ..utils import check_shape, logger
from .features import AudioFeatures

IMAGE_PROMPT_FRAMES = 100  # upstream repeats an image prompt's expression for 100 frames
LONG_PROMPT_FRAMES = 750  # 30 s: longer prompts slow every window; we warn


@dataclass(frozen=True)
class StylePrompt:
    """Reference motion [L, D] (25 fps) with its audio condition hubert [2L, H] and f0 [2L]."""

    motion: torch.Tensor
    hubert: torch.Tensor
    f0: torch.Tensor

    def __post_init__(self):
        check_shape(self.motion, (None, None), "style motion")
        n = self.motion.shape[0]
        check_shape(self.hubert, (2 * n, None), "style hubert")
        check_shape(self.f0, (2 * n,), "style f0")
        if n == 0:
            raise InputError("style prompt: no usable frames (length 0).")

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    @classmethod
    def from_clip(
        cls,
        features: AudioFeatures,
        expressions: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
        max_frames: Optional[int] = None,
    ) -> "StylePrompt":
        """Prompt from a talking clip: its audio features and its per-frame fitted BFM
        expressions [T_exp, 64] at 25 fps (frame k of the video <-> HuBERT frames 2k, 2k + 1).

        `valid` [T_exp] bool marks frames whose fit is usable (e.g. a face was found); frames
        with non-finite coefficients are unusable too. The longest run of usable frames within
        the common length is kept (upstream keeps all L frames). `max_frames` crops the prompt.
        Raises InputError when no usable frame remains."""
        check_shape(expressions, (None, None), "style expressions")
        exp = expressions.detach().float().cpu()
        usable = torch.isfinite(exp).all(dim=-1)
        if valid is not None:
            check_shape(valid, (exp.shape[0],), "style valid mask")
            usable &= valid.detach().cpu().bool()
        # upstream: L = min(len(exp), len(hubert) // 2, len(f0) // 2), f0 unpadded (mel length)
        length = min(exp.shape[0], features.num_frames // 2, features.num_voiced_frames // 2)
        start, stop = _longest_run(usable[:length])
        if stop == start:
            raise InputError(
                f"style clip has no usable frames: {exp.shape[0]} expression frames, "
                f"{features.num_motion_frames} audio frames (25 fps), "
                f"{int(usable[:length].sum())} with a usable face fit in the common length "
                f"{length}. Use a clip where the face is visible and which has speech audio."
            )
        if max_frames is not None and stop - start > max_frames:
            stop = start + max_frames
        if stop - start > LONG_PROMPT_FRAMES:
            logger.warning(
                "style prompt is %.1f s long; every sampling window attends to it. "
                "A 5-20 s clip is usually enough (pass max_frames to crop).", (stop - start) / 25
            )
        return cls(
            motion=exp[start:stop],
            hubert=features.hubert[2 * start: 2 * stop],
            f0=features.f0[2 * start: 2 * stop],
        )

    @classmethod
    def from_expression(
        cls, expression: torch.Tensor, hubert_dim: int = 1024, num_frames: int = IMAGE_PROMPT_FRAMES
    ) -> "StylePrompt":
        """Image prompt: one expression [D] (or [1, D]) repeated `num_frames` times, with zero
        HuBERT and f0 as upstream. `hubert_dim` must equal the model's audio width (1024)."""
        exp = expression.detach().float().cpu().reshape(-1)
        if not torch.isfinite(exp).all():
            raise InputError("style expression contains NaN or infinite values (failed face fit?).")
        return cls(
            motion=exp.expand(num_frames, -1).clone(),
            hubert=torch.zeros(2 * num_frames, hubert_dim),
            f0=torch.zeros(2 * num_frames),
        )


def _longest_run(flags: torch.Tensor) -> tuple[int, int]:
    """[start, stop) of the longest run of True values (0, 0 if none)."""
    best, start = (0, 0), None
    for i, ok in enumerate(flags.tolist() + [False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best
