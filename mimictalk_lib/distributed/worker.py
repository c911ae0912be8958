"""What one render worker does, with no Ray in it: load the models once, then compute a job's
motion or render a frame range of it. :mod:`.cluster` runs one of these per GPU as a Ray actor;
the single-process path (``python -m mimictalk_lib render`` without ``--ray``) runs one in-process,
so both make the same frames."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Union

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
    precomputed motion file (.pt [T, 64]), or a motion tensor, instead of ICS-A2M on ``audio``.
    ``out`` may be empty when the caller collects the frames (the nodes)."""

    name: str
    audio: str
    out: str
    adapter: Optional[str] = None
    identity: Optional[str] = None
    motion: Any = None  # a .pt path, or a tensor [T, 64]
    seed: int = 0
    steps: Optional[int] = None
    pose: str = "static"
    blink: str = "period"
    options: dict = field(default_factory=dict)  # more build_session options (map_to_init_pose, src_exp)
    start: int = 0  # render frames [start, start + count) of the motion only (count None / 0: to the end)
    count: Optional[int] = None
    output: str = "uint8"  # 'uint8': frames uint8 [n, R, R, 3] (for a video); 'float32': (images, masks) as the nodes return
    deterministic: bool = True  # off: jittered ray samples, each range from its own seeded stream (not equal to one process)

    def as_dict(self) -> dict:
        return asdict(self)

    def wire(self) -> dict:
        """The job as plain values for a Ray worker (an in-memory motion travels on its own)."""
        return {f.name: (None if f.name == "motion" and not isinstance(self.motion, str) else getattr(self, f.name))
                for f in fields(self)}


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    # the worker's accelerator (whatever backend torch has: CUDA, ROCm, XPU, MPS ...), else the CPU
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def renderer_to(renderer: Any, device: torch.device) -> Any:
    """A renderer sent from the driver (``LoadedRenderer`` / ``PersonalisedRenderer``) moved onto
    this worker's device; half precision becomes fp32 on a CPU (fp16 never runs on the CPU)."""
    from ..pipeline import renderer_model

    model = renderer_model(renderer)
    dtype = next(model.parameters()).dtype
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    model.to(device=device, dtype=dtype)
    for holder in (renderer, getattr(renderer, "personalised", None)):
        planes = getattr(holder, "cano_planes", None)
        if isinstance(planes, torch.Tensor) and not isinstance(type(holder).__dict__.get("cano_planes"), property):
            holder.cano_planes = planes.to(device)
    return renderer


class RenderWorker:
    """Models loaded once (renderer, face model, and ICS-A2M + HuBERT when given); per job the
    personalised renderer and the session (built for the whole motion) are kept for its next range."""

    def __init__(self, models: Union[ModelFiles, dict, None] = None, loaded: Optional[bytes] = None):
        """``models``: files to load (a :class:`ModelFiles` or its fields as a dict); or ``loaded``:
        the renderer and face model already in memory on the driver (:func:`.remote.pack` of
        ``{"renderer", "face_model", "device"}``), as the nodes send them."""
        if isinstance(models, dict):
            models = ModelFiles(**models)
        if loaded is not None:
            from .remote import unpack

            parts = unpack(loaded)
            self.models = ModelFiles("", "", device=parts.get("device", "auto"))
            self.device = pick_device(self.models.device)
            self.renderer = renderer_to(parts["renderer"], self.device)
            self.face_model = parts["face_model"].to(self.device)
        else:
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

    def motion(self, job: Union[RenderJob, dict]) -> torch.Tensor:
        """The job's motion [T, 64] (CPU fp32): its motion file, or ICS-A2M on its audio (seeded)."""
        if isinstance(job, dict):
            job = RenderJob(**job)
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

    def _session_for(self, job: RenderJob, motion: torch.Tensor, extra: Optional[bytes] = None):
        if self._job != job.name:
            from .remote import unpack

            extra = unpack(extra) if extra is not None else {}  # in-memory identity / session options
            renderer, identity = self.renderer, extra.get("identity")
            if identity is None and job.identity:
                from ..identity import Identity

                identity = Identity.load(job.identity)
            if job.adapter:
                from ..adapt.adapter import load_adapter, personalise

                renderer = personalise(self.renderer.model, load_adapter(job.adapter))
            self._session = None  # free the previous job's first
            options = dict(pose=job.pose, blink=job.blink, blink_seed=job.seed, **job.options)
            options.update(extra.get("options") or {})
            self._session = build_session(renderer, self.face_model, identity, motion, **options)
            self._job = job.name
        return self._session

    def render_range(self, job: Union[RenderJob, dict], motion: torch.Tensor, start: int, stop: int, chunk_size: int = 4,
                     extra: Optional[bytes] = None):
        """Frames ``[start, stop)`` of the job (CPU), equal to the same frames of a full render
        (:func:`~.ranges.iter_frame_range`): uint8 [n, R, R, 3], or for ``job.output`` 'float32'
        (images [n, R, R, 3], masks [n, R, R]) in [0, 1]. ``extra``: :func:`.remote.pack` of
        ``{"identity": ..., "options": {...}}`` (in-memory identity, more build_session options)."""
        if isinstance(job, dict):
            job = RenderJob(**job)
        session = self._session_for(job, motion, extra)
        dtype = torch.uint8 if job.output == "uint8" else torch.float32
        generator = None if job.deterministic else torch.Generator(device=self.device).manual_seed(job.seed + start)
        chunks = list(iter_frame_range(session, start, stop - start, chunk_size=chunk_size, output_dtype=dtype,
                                       deterministic=job.deterministic, generator=generator))
        images = torch.cat([c.images for c in chunks])
        return images if job.output == "uint8" else (images, torch.cat([c.masks for c in chunks]))
