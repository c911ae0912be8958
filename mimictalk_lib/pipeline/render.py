"""The render flow: motion + who + head pose -> frames. :func:`build_session` assembles the per-clip
render inputs (upstream ``prepare_batch_from_inp`` + ``get_driving_motion``), :func:`iter_talking_head`
renders them chunk by chunk (the compute device holds one chunk; the caller decides where frames
go: :func:`render_talking_head` collects a tensor, :func:`render_to_video` streams an mp4)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..face.blink import apply_blink, blink_schedule
from ..face.camera import camera_sequence, driving_pose
from ..face.coeffs import Coefficients, HeadPose
from ..face.keypoints import smooth_keypoints, torso_keypoints
from ..face.model import N_EXP, N_ID
from ..face.secc import render_secc
from ..utils import ProgressFn, check_device_dtype, check_shape, logger
from ..video import write_video
from .motion import FPS
from .source import TalkingSource, make_source, renderer_model

POSE_MODES = ("static", "identity")
BLINK_MODES = ("period", "none")
SRC_EXP_MODES = ("motion", "source")

Pose = Union[str, HeadPose, tuple]  # a POSE_MODES name, a HeadPose or (euler [T, 3], trans [T, 3])

@dataclass
class TalkingSession:
    """Everything the renderer needs for a clip of T frames; driving SECC maps are made per chunk
    (:meth:`drv_secc`), so memory does not grow with T at 512²."""

    model: nn.Module = field(repr=False)  # the Renderer
    face_model: nn.Module = field(repr=False)  # FaceModel: SECC maps are rasterised on its device
    source: TalkingSource
    motion: torch.Tensor  # [T, 64] driving expressions (fp32, CPU)
    camera: torch.Tensor  # [T, 25] smoothed EG3D cameras
    kp_d: torch.Tensor  # [T, 68, 3] smoothed driving torso keypoints
    euler: torch.Tensor  # [T, 3] driving pose after ping-pong / z freeze / map_to_init_pose
    trans: torch.Tensor  # [T, 3]
    blink: torch.Tensor  # [T] eye closure in [0, 1]
    cano_secc: torch.Tensor  # [1, 3, S, S]
    src_secc: torch.Tensor  # [1, 3, S, S]

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    def drv_secc(self, part: slice) -> torch.Tensor:
        """Driving SECC maps [n, 3, S, S] of frames ``part``, eye blinks painted in."""
        side, device = self.cano_secc.shape[-1], self.face_model.mean_shape.device
        secc = render_secc(self.face_model, self.source.id.to(device), self.motion[part].to(device), size=side, dtype=torch.float32)
        closure = self.blink[part]
        return apply_blink(secc, closure) if bool((closure > 0).any()) else secc


def _check_motion(motion: torch.Tensor) -> torch.Tensor:
    if not isinstance(motion, torch.Tensor):
        raise InputError(f"motion: expected a tensor [T, {N_EXP}] of expression coefficients, got {type(motion).__name__}")
    motion = motion.detach().float().cpu()
    if motion.dim() == 3 and motion.shape[0] == 1:
        motion = motion[0]
    check_shape(motion, (None, N_EXP), f"motion (BFM expressions at {FPS} fps)")
    if motion.shape[0] < 1:
        raise InputError("motion is empty (0 frames); the audio was too short")
    if not torch.isfinite(motion).all():
        raise InputError("motion contains NaN or infinite values")
    return motion


def _pose_sequence(pose: Pose, source: TalkingSource) -> HeadPose:
    if isinstance(pose, str):
        if pose not in POSE_MODES:
            raise InputError(f"pose must be one of {POSE_MODES} or (euler, trans), got {pose!r}")
        if pose == "identity":
            if source.poses is None:
                raise InputError("pose='identity' needs an identity clip: pass the identity (or use pose='static')")
            return source.poses
        if source.src_pose is None:
            raise InputError("pose='static' needs the source head pose: pass the identity this adapter was made from")
        return source.src_pose
    if isinstance(pose, HeadPose):
        pose = (pose.euler, pose.trans)
    if isinstance(pose, dict):
        pose = (pose.get("euler"), pose.get("trans"))
    if not isinstance(pose, (tuple, list)) or len(pose) != 2 or not all(isinstance(p, torch.Tensor) for p in pose):
        raise InputError(f"pose: expected {POSE_MODES} or a pair (euler [T, 3], trans [T, 3]), got {type(pose).__name__}")
    return HeadPose(pose[0].reshape(-1, 3), pose[1].reshape(-1, 3))


def _face_model_on(face_model: nn.Module, device: torch.device) -> nn.Module:
    """``face_model`` if it already lives on ``device``, else a copy there (inputs are never moved)."""
    if face_model.mean_shape.device == device:
        return face_model
    logger.info("copying the face model to %s for SECC rasterisation", device)
    return copy.deepcopy(face_model).to(device)


def build_session(
    renderer: Any,
    face_model: nn.Module,
    source: Any,
    motion: torch.Tensor,
    *,
    pose: Pose = "static",
    map_to_init_pose: bool = True,
    blink: str = "period",
    blink_seed: int = 0,
    src_exp: str = "motion",
    background: Any = None,
    device: Optional[Union[str, torch.device]] = None,
) -> TalkingSession:
    """Assemble the render inputs (upstream ``prepare_batch_from_inp`` + ``get_driving_motion``).

    ``source``: a :class:`TalkingSource`, a prepared ``Identity`` (one-shot, or the fallback data of
    a personalised renderer), or None for a personalised renderer that carries everything.
    ``motion`` [T, 64] at 25 fps. ``pose``: 'static', 'identity', a ``HeadPose`` or (euler [T', 3], trans [T', 3]).
    ``blink``: 'none' or 'period' (seeded by ``blink_seed``). ``src_exp``: 'motion' (upstream:
    the source SECC shows the first driving expression) or 'source' (the source's own fit).
    ``background``: an image replacing the plate. ``device``: where SECC maps and keypoints are
    computed (default: the renderer's; the face model is copied there if needed)."""
    model = renderer_model(renderer)
    motion = _check_motion(motion)
    face_model = _face_model_on(face_model, torch.device(device) if device is not None else model.device)
    if not isinstance(source, TalkingSource):
        source = make_source(renderer, source)
    if background is not None:
        source = source.with_background(background)
    for name, value, modes in (("blink", blink, BLINK_MODES), ("src_exp", src_exp, SRC_EXP_MODES)):
        if value not in modes:
            raise InputError(f"{name} must be one of {modes}, got {value!r}")
    t = motion.shape[0]
    sequence = _pose_sequence(pose, source).to("cpu", torch.float32)
    if map_to_init_pose and source.src_pose is None:
        raise InputError("map_to_init_pose needs the source head pose: pass the identity (or set map_to_init_pose=False)")
    drive = driving_pose(sequence, t, source=source.src_pose, map_to_init_pose=map_to_init_pose, freeze_z=True)
    if src_exp == "source" and source.src_exp is None:
        raise InputError("src_exp='source' needs the source expression: pass the identity (or use src_exp='motion')")
    first = motion[:1] if src_exp == "motion" else source.src_exp.reshape(1, N_EXP)
    side = model.cfg.secc_resolution
    with torch.no_grad():  # (not inference mode: the session's tensors stay ordinary tensors)
        fm_device = face_model.mean_shape.device
        cano_src = render_secc(face_model, source.id.to(fm_device), torch.cat([torch.zeros_like(first), first]).to(fm_device),
                               size=side, dtype=torch.float32)
        coeffs = Coefficients.of(drive, id=source.id.expand(t, N_ID), exp=motion)
        kp_d = smooth_keypoints(torso_keypoints(face_model, coeffs.to(fm_device), clamp=True).cpu())
        camera = camera_sequence(drive).float()
    generator = torch.Generator().manual_seed(int(blink_seed))
    return TalkingSession(
        model=model, face_model=face_model, source=source, motion=motion, camera=camera, kp_d=kp_d,
        euler=drive.euler, trans=drive.trans, blink=blink_schedule(t, blink, generator).float(),
        cano_secc=cano_src[:1].cpu(), src_secc=cano_src[1:].cpu(),
    )


# --- rendering -------------------------------------------------------------------------------------


@dataclass
class FrameChunk:
    """Rendered frames ``start .. start + n`` (CPU)."""

    start: int
    images: torch.Tensor  # [n, R, R, 3] ComfyUI IMAGE layout, float 0..1 (or uint8 0..255)
    masks: torch.Tensor  # [n, R, R] head opacity (the volume's accumulated alpha, upsampled), 0..1


def _to_image(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[n, 3, R, R] in [-1, 1] -> [n, R, R, 3] float 0..1 or uint8 0..255."""
    img = ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return (img * 255).round().to(torch.uint8) if dtype == torch.uint8 else img.to(dtype)


def iter_talking_head(
    session: TalkingSession,
    *,
    chunk_size: int = 4,
    deterministic: bool = True,
    generator: Optional[torch.Generator] = None,
    output_dtype: torch.dtype = torch.float32,
    on_step: Optional[ProgressFn] = None,
) -> Iterator[FrameChunk]:
    """Render the session ``chunk_size`` frames at a time under ``torch.inference_mode``, yielding
    each chunk on the CPU as soon as it is done. ``on_step(done, total)`` after every chunk may
    raise to stop between chunks. Deterministic mode gives the same frames for any chunk size;
    stochastic mode draws from ``generator`` (one stream across chunks)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if output_dtype not in (torch.float32, torch.float16, torch.uint8):
        raise InputError(f"output_dtype must be float32, float16 or uint8, got {output_dtype}")
    model, src = session.model, session.source
    check_device_dtype(model.device, model.dtype, cpu_bf16=True)  # bf16 on a CPU with native bf16: opt-in
    with torch.inference_mode():
        source = model.prepare_source(src.render_source(session.cano_secc, session.src_secc), src.sr_reference(model))
    for part, out in model.iter_chunks(source, session.drv_secc, session.camera, session.kp_d, chunk_size=chunk_size,
                                       deterministic=deterministic, generator=generator, on_step=on_step):
        side = out.image.shape[-1]  # the conversions below make ordinary (not inference) CPU tensors
        mask = F.interpolate(out.alpha.float(), size=(side, side), mode="bilinear", align_corners=False)
        chunk = FrameChunk(part.start, _to_image(out.image, output_dtype).cpu(), mask[:, 0].clamp(0, 1).cpu())
        del out, mask
        yield chunk


@dataclass
class TalkingHead:
    """A rendered clip."""

    images: torch.Tensor  # [T, R, R, 3] float 0..1 (or uint8)
    masks: torch.Tensor  # [T, R, R] head opacity 0..1
    fps: float = FPS


def render_talking_head(
    renderer: Any,
    face_model: nn.Module,
    source: Any,
    motion: torch.Tensor,
    *,
    chunk_size: int = 4,
    deterministic: bool = True,
    generator: Optional[torch.Generator] = None,
    output_dtype: torch.dtype = torch.float32,
    on_step: Optional[ProgressFn] = None,
    **session_options: Any,
) -> TalkingHead:
    """Render a talking head for ``motion`` [T, 64] (25 fps): :func:`build_session` (its keyword
    options: ``pose``, ``map_to_init_pose``, ``blink``, ``blink_seed``, ``src_exp``,
    ``background``, ``device``) + :func:`iter_talking_head` (the other arguments), collected on the
    CPU: T frames of IMAGE plus their masks. The renderer runs on its own device and dtype (load it
    with the ones wanted); ``output_dtype`` float16 / uint8 halves / quarters the memory of long
    clips."""
    session = build_session(renderer, face_model, source, motion, **session_options)
    images, masks = None, None
    for chunk in iter_talking_head(session, chunk_size=chunk_size, deterministic=deterministic, generator=generator,
                                   output_dtype=output_dtype, on_step=on_step):
        if images is None:  # allocate once: peak memory = the clip plus one chunk
            n = session.num_frames
            images = torch.empty((n,) + tuple(chunk.images.shape[1:]), dtype=chunk.images.dtype)
            masks = torch.empty((n,) + tuple(chunk.masks.shape[1:]), dtype=chunk.masks.dtype)
        stop = chunk.start + chunk.images.shape[0]
        images[chunk.start: stop], masks[chunk.start: stop] = chunk.images, chunk.masks
    return TalkingHead(images=images, masks=masks)


def render_to_video(
    session: TalkingSession,
    path: Union[str, os.PathLike],
    *,
    audio: Any = None,
    chunk_size: int = 4,
    deterministic: bool = True,
    generator: Optional[torch.Generator] = None,
    on_step: Optional[ProgressFn] = None,
    **video_options: Any,
):
    """Render ``session`` straight into an mp4 at 25 fps (frames are never all in memory);
    ``video_options`` go to :class:`~mimictalk_lib.video.VideoWriter` (``audio_mode``, ``crf``,
    ``metadata``, ...). Returns its :class:`~mimictalk_lib.video.WrittenVideo`."""
    chunks = iter_talking_head(session, chunk_size=chunk_size, deterministic=deterministic, generator=generator,
                               output_dtype=torch.uint8, on_step=on_step)
    return write_video(path, (c.images for c in chunks), FPS, audio=audio, **video_options)
