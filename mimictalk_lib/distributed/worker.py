"""What one render worker does, with no Ray in it: load the models once, then compute a job's
motion or render a frame range of it. :mod:`.cluster` runs one of these per GPU as a Ray actor;
the single-process path (``python -m mimictalk_lib render`` without ``--ray``) runs one in-process,
so both make the same frames."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from ..errors import InputError
from ..pipeline import audio_to_motion, build_session
from .ranges import iter_frame_range


@dataclass(frozen=True)
class ModelFiles:
    """Where a worker loads its models from (paths on the worker's machine). ``device`` 'auto':
    the GPU Ray gave the worker (CUDA_VISIBLE_DEVICES), else the CPU."""

    renderer: str
    face_model: str
    a2m: Optional[str] = None
    hubert: Optional[str] = None
    device: str = "auto"


@dataclass(frozen=True)
class RenderJob:
    """One video: ``audio`` (speech, also the soundtrack) spoken by an adapter (personalised) and/or
    an identity (one-shot, or the adapter's fallback data), written to ``out``. ``motion``: a
    precomputed motion file (.pt [T, 64]) instead of ICS-A2M on ``audio``."""

    name: str
    audio: str
    out: str
    adapter: Optional[str] = None
    identity: Optional[str] = None
    motion: Optional[str] = None
    seed: int = 0
    steps: Optional[int] = None
    pose: str = "static"
    blink: str = "period"
    options: dict = field(default_factory=dict)  # more build_session options (map_to_init_pose, src_exp)

    def as_dict(self) -> dict:
        return asdict(self)


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    # the worker's accelerator (whatever backend torch has: CUDA, ROCm, XPU, MPS ...), else the CPU
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


class RenderWorker:
    """Models loaded once (renderer, face model, and ICS-A2M + HuBERT when given); per job the
    personalised renderer and the session (built for the whole motion) are kept for its next range."""

    def __init__(self, models: ModelFiles):
        from ..face import load_face_model
        from ..renderer import load_renderer

        self.models, self.device = models, pick_device(models.device)
        self.renderer = load_renderer(models.renderer, device=self.device)
        self.face_model = load_face_model(models.face_model).to(self.device)
        self.a2m = self.hubert = None  # loaded with the first job that needs motion from audio
        self._job: Optional[str] = None
        self._session = None

    def info(self) -> dict:
        return {"pid": os.getpid(), "device": str(self.device)}

    def motion(self, job: RenderJob) -> torch.Tensor:
        """The job's motion [T, 64] (CPU fp32): its motion file, or ICS-A2M on its audio (seeded)."""
        if job.motion:
            motion = torch.load(job.motion, map_location="cpu", weights_only=True)
            if not isinstance(motion, torch.Tensor):
                raise InputError(f"job {job.name}: {job.motion} does not hold a motion tensor [T, 64]")
            return motion.float()
        if self.a2m is None:
            if not (self.models.a2m and self.models.hubert):
                raise InputError(f"job {job.name}: no motion file and no ICS-A2M / HuBERT weights to make motion from its audio")
            from ..a2m import load_a2m, load_hubert

            self.a2m = load_a2m(self.models.a2m, device=self.device)
            self.hubert = load_hubert(self.models.hubert, device=self.device)
        options = {"steps": job.steps} if job.steps else {}
        generator = torch.Generator(device=self.device).manual_seed(job.seed)
        return audio_to_motion(self.a2m, self.hubert, job.audio, generator=generator, **options).cpu()

    def _session_for(self, job: RenderJob, motion: torch.Tensor):
        if self._job != job.name:
            renderer, identity = self.renderer, None
            if job.identity:
                from ..identity import Identity

                identity = Identity.load(job.identity)
            if job.adapter:
                from ..adapt.adapter import load_adapter, personalise

                renderer = personalise(self.renderer.model, load_adapter(job.adapter))
            self._session = None  # free the previous job's first
            self._session = build_session(renderer, self.face_model, identity, motion, pose=job.pose, blink=job.blink,
                                          blink_seed=job.seed, **job.options)
            self._job = job.name
        return self._session

    def render_range(self, job: RenderJob, motion: torch.Tensor, start: int, stop: int, chunk_size: int = 4) -> torch.Tensor:
        """Frames ``[start, stop)`` of the job as uint8 [n, R, R, 3] (CPU), equal to the same frames
        of a full render (:func:`~.ranges.iter_frame_range`)."""
        session = self._session_for(job, motion)
        chunks = iter_frame_range(session, start, stop - start, chunk_size=chunk_size, output_dtype=torch.uint8)
        return torch.cat([c.images for c in chunks])
