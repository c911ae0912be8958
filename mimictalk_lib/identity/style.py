"""ICS-A2M style prompts from a talking clip (MimicTalk §1.4; upstream
``inference/infer_utils.py:extract_audio_motion_from_ref_video``): the clip's HuBERT features and
f0 (a2m front end) beside its fitted expression sequence, cropped to
L = min(T_exp, T_hubert / 2, T_f0 / 2). The prompt object is the a2m package's ``StylePrompt``.

Frames without a usable face keep their place on the 25 fps timeline (their landmarks are
interpolated for the fit) and are marked invalid, so the expressions stay aligned with the audio;
``StylePrompt.from_clip`` keeps the longest valid run.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from ..errors import InputError
from ..utils import ProgressFn
from .clip import load_clip, track
from .fit3dmm import FitSchedule, check_fit_quality, fit_clip, fit_quality
from .identity import Identity
from .prepare import _Progress, as_face_model, as_landmarker

if TYPE_CHECKING:  # the a2m package is imported when a prompt is built
    from ..a2m import AudioFeatures, HubertEncoder, StylePrompt

_STYLE_STAGES = {"frames": 5, "landmarks": 45, "fit": 30, "audio": 20}


def style_prompt_from_clip(
    source,
    *,
    landmarker,
    face_model,
    hubert: HubertEncoder,
    audio: Any = None,
    fps: Optional[float] = None,
    timestamps: Optional[Sequence[float]] = None,
    crop: str = "auto",
    with_f0: bool = True,
    schedule: FitSchedule = FitSchedule(),
    max_frames: Optional[int] = None,
    device: torch.device | str = "cpu",
    on_step: Optional[ProgressFn] = None,
) -> StylePrompt:
    """Style prompt of a talking clip: ``source`` is a video file (its own audio is used unless
    ``audio`` is given) or frames with ``fps``/``timestamps`` plus ``audio`` (path, ComfyUI AUDIO
    dict, ...: anything ``a2m.load_audio`` reads). ``with_f0`` must be True for checkpoints with
    auxiliary pitch features."""
    from ..a2m import StylePrompt, extract_audio_features

    if audio is None:
        if not isinstance(source, (str, os.PathLike)):
            raise InputError("style clip: frames were given without audio; pass the clip's audio too")
        audio = os.fspath(source)
    progress = _Progress(on_step, _STYLE_STAGES)
    landmarker = as_landmarker(landmarker)
    face_model = as_face_model(face_model, device)
    what = "style clip"
    clip = load_clip(source, landmarker=landmarker, fps=fps, timestamps=timestamps, crop=crop, what=what)
    progress.done("frames")
    clip = track(clip, landmarker, missing="interpolate", what=what, on_step=progress.stage("landmarks"))
    fit = fit_clip(face_model, clip.landmarks.to(device), clip.frames.shape[1], schedule=schedule,
                   on_step=progress.stage("fit"))
    check_fit_quality(fit_quality(face_model, fit, clip.landmarks.to(device), clip.frames.shape[1]), what)
    features = extract_audio_features(audio, hubert, with_f0=with_f0, on_step=progress.stage("audio"))
    return StylePrompt.from_clip(features, fit.coeffs.exp.cpu(), valid=~clip.bad, max_frames=max_frames)


def style_prompt_from_identity(
    identity: Identity, features: Optional[AudioFeatures] = None, max_frames: Optional[int] = None
) -> StylePrompt:
    """Style prompt from an already prepared identity: a clip identity with its audio features
    (dropped frames are marked invalid at their timeline positions), or a photo identity, which
    gives the image prompt (its expression repeated, zero audio) like upstream."""
    from ..a2m import StylePrompt

    if identity.is_photo:
        return StylePrompt.from_expression(identity.exp[0])
    if features is None:
        raise InputError("style from a clip identity needs the clip's audio features (extract_audio_features)")
    positions = torch.as_tensor(identity.meta.get("frame_positions", list(range(identity.num_frames))))
    length = int(positions.max()) + 1 if positions.numel() else 0
    exp = torch.zeros(length, identity.exp.shape[1])
    valid = torch.zeros(length, dtype=torch.bool)
    exp[positions] = identity.exp
    valid[positions] = True
    interpolated = torch.as_tensor(identity.meta.get("interpolated_frames", []), dtype=torch.long)
    valid[positions[interpolated]] = False  # kept frames whose landmarks were interpolated
    return StylePrompt.from_clip(features, exp, valid=valid, max_frames=max_frames)
