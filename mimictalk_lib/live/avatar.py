"""What a live server loads once and shares between its sessions: the renderer (personalised
by an adapter, or a base renderer with a portrait identity for one-shot), the face model, the
motion model, HuBERT and the style prompt; and how one session is made from it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..a2m import StylePrompt, load_a2m, load_hubert
from ..errors import InputError
from ..face.model import N_EXP
from ..pipeline import TalkingSource, make_source
from ..utils import check_device_dtype, logger
from .idle import IdleMotion
from .motion import MotionStream, StreamSettings
from .render import FrameRenderer
from .session import LiveSession

PathLike = Union[str, os.PathLike]


@dataclass
class Avatar:
    """Loaded models and the source of one avatar (shared, read-only, by every session)."""

    renderer: Any  # PersonalisedRenderer / LoadedRenderer
    face_model: torch.nn.Module
    source: TalkingSource
    a2m: torch.nn.Module
    hubert: torch.nn.Module
    style: Optional[StylePrompt] = None
    settings: StreamSettings = field(default_factory=StreamSettings)
    pitch: str = "auto"
    chunk_size: Optional[int] = None  # frames per renderer call (default: one hop)
    max_lag: float = 0.5

    def __post_init__(self):
        if self.a2m.cfg.motion_dim != N_EXP:
            raise InputError(f"the motion model makes {self.a2m.cfg.motion_dim}-d motion; the renderer needs {N_EXP}-d BFM expressions")
        if self.hubert.hidden_size != self.a2m.cfg.audio_dim:
            raise InputError(f"HuBERT gives {self.hubert.hidden_size}-d features; the motion model expects {self.a2m.cfg.audio_dim}-d")

    def session(self, seed: int = 0, name: str = "live") -> LiveSession:
        """A new (not yet started) session; its idle motion and sampling noise use ``seed``."""
        initial = self.source.src_exp.reshape(-1) if self.source.src_exp is not None else None
        motion = MotionStream(self.a2m, self.hubert, self.style, self.settings, pitch=self.pitch,
                              generator=torch.Generator().manual_seed(seed), initial=initial)
        frames = FrameRenderer(self.renderer, self.face_model, self.source, chunk_size=self.chunk_size or self.settings.hop)
        return LiveSession(motion, frames, IdleMotion(seed), max_lag=self.max_lag, name=name)


def _resolve(name: Optional[PathLike], default: str, models_dir: Path) -> Path:
    """A path as given when it exists, else a name under the models folder (a manifest asset id
    resolves to its target folder)."""
    name = default if name is None else name
    p = Path(name)
    if p.exists():
        return p
    if (models_dir / p).exists():
        return models_dir / p
    try:
        from ..manifest import load_manifest

        asset = load_manifest().get(str(name))
        if (models_dir / asset.target_dir).exists():
            return models_dir / asset.target_dir
    except (KeyError, LookupError, ValueError):
        pass
    raise InputError(f"'{name}' is neither a file/folder nor a model under {models_dir}; "
                     "check the path (or download it: python -m mimictalk_lib.download status)")


def load_avatar(
    *,
    models_dir: PathLike,
    adapter: Optional[PathLike] = None,
    portrait: Optional[PathLike] = None,
    renderer: Optional[PathLike] = None,
    a2m: Optional[PathLike] = None,
    hubert: Optional[PathLike] = None,
    bfm: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> Avatar:
    """Load an avatar for live use: ``adapter`` (a personalised adapter file) or ``portrait`` (a
    photo, one-shot; needs mediapipe for its preparation). Model names resolve under
    ``models_dir`` like the talk command's. ``options`` go to :class:`Avatar`."""
    from ..adapt.adapter import load_adapter, personalise
    from ..face import load_face_model
    from ..renderer import load_renderer

    check_device_dtype(device, dtype)
    if (adapter is None) == (portrait is None):
        raise InputError("pass exactly one of adapter= (a personalised adapter) or portrait= (a photo, one-shot)")
    models = Path(models_dir)
    default_renderer = "mimictalk_base_renderer" if adapter is not None else "real3dportrait_renderer"
    base = load_renderer(_resolve(renderer, default_renderer, models), device=device, dtype=dtype)
    face_model = load_face_model(_resolve(bfm, "bfm", models)).to(device)
    identity = None
    if adapter is not None:
        who = personalise(base.model, load_adapter(_resolve(adapter, "adapters", models)))
    else:
        from ..identity.prepare import PrepareBackends, PrepareOptions, prepare_photo_identity

        who = base
        mediapipe = _resolve(None, "mediapipe", models)
        backends = PrepareBackends(landmarker=mediapipe / "face_landmarker.task",
                                   segmenter=mediapipe / "selfie_multiclass_256x256.tflite",
                                   face_model=_resolve(bfm, "bfm", models))
        identity = prepare_photo_identity(str(portrait), backends,
                                          PrepareOptions(device=device, size=base.config.image_resolution))
    source = make_source(who, identity)
    motion_model = load_a2m(_resolve(a2m, "ics_a2m", models), device=device, dtype=dtype)
    encoder = load_hubert(_resolve(hubert, "hubert_large", models), device=device, dtype=dtype)
    logger.info("live avatar loaded (%s source, %d px)", source.kind, base.config.image_resolution)
    return Avatar(renderer=who, face_model=face_model, source=source, a2m=motion_model, hubert=encoder, **options)
