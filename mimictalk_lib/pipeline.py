"""High-level glue: expression motion + who (identity / personalised renderer) + head pose ->
rendered talking-head frames. Each public function is what one ComfyUI node calls.

Upstream assembles the same inputs in ``inference/real3d_infer.py`` (``prepare_batch_from_inp``,
``get_driving_motion``, ``forward_secc2video``) and ``inference/mimictalk_infer.py`` (its
personalised overrides); architecture reference §1.4-§1.7, §2.7:

* **Who.** A :class:`TalkingSource` holds what every frame shares: canonical planes, identity
  coefficients, source expression/pose, source torso keypoints, inpainted torso, background plate
  and segmentation. One-shot (Real3D-Portrait): planes from the source frame's head image through
  the renderer's canonical backbone. Personalised (MimicTalk): the learned tri-grid and the
  adapter's person data (``person_ds``: id, source frame, source keypoints).
* **Pose.** 'static' (the source pose), 'identity' (the identity clip's poses) or explicit
  euler/trans; ping-pong indexed to the motion length, z-translation frozen to frame 0, and with
  ``map_to_init_pose`` shifted so frame 0 equals the source pose. Cameras: EG3D convention,
  window-7 smoothed. Torso keypoints of the driving frames: clamped to [-1, 1], width-7 smoothed.
* **Expression.** SECC maps: canonical (exp 0) and source (upstream: the first *driving*
  expression; ``src_exp='source'`` uses the source's own) once, driving maps per render chunk,
  with the 'period' eye blinks painted in. Nothing per-frame at 512² is held for the whole clip.

Rendering streams chunks (:func:`iter_talking_head`): the compute device holds one chunk, the
caller decides where frames go (a tensor, :func:`render_to_video`'s mp4 writer). Motion from
audio: :func:`audio_to_motion`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .face.blink import apply_blink, blink_schedule
from .face.camera import camera_sequence, driving_pose
from .face.keypoints import smooth_keypoints, torso_keypoints
from .face.model import N_EXP, N_ID
from .face.secc import render_secc
from .utils import ProgressFn, check_device_dtype, check_shape, logger, report

FPS = 25  # MimicTalk motion and video rate (architecture reference §1.1)
POSE_MODES = ("static", "identity")
BLINK_MODES = ("none", "period")
SRC_EXP_MODES = ("motion", "source")
MIN_FACE_AREA = 0.2  # real3d_infer --min_face_area_percent: face box / image area for one-shot sources
UPSTREAM_DROPPED_FRAMES = 4  # real3d_infer.forward_audio2secc drops the last 4 motion frames
TRIM_MODES = ("audio", "upstream", "none")

Pose = Union[str, tuple]  # a POSE_MODES name or (euler [T, 3], trans [T, 3])

__all__ = [
    "FPS", "FrameChunk", "TalkingHead", "TalkingSession", "TalkingSource", "audio_to_motion", "build_session",
    "iter_talking_head", "make_source", "motion_frames_for", "one_shot_source", "personalised_source",
    "render_talking_head", "render_to_video", "renderer_model", "style_prompt",
]


# --- who is rendered -------------------------------------------------------------------------------


@dataclass
class TalkingSource:
    """Per-clip inputs shared by every frame (CPU tensors except ``cano_planes``)."""

    cano_planes: torch.Tensor  # [1, 3, C·D, P, P] canonical tri-plane / tri-grid (fp32)
    id: torch.Tensor  # [1, 80] BFM identity
    src_kp: torch.Tensor  # [1, 68, 3] source torso keypoints in [-1, 1], z = 0
    torso_ref: torch.Tensor  # [1, 3, H, W] inpainted torso of the source frame in [-1, 1]
    bg: torch.Tensor  # [1, 3, H, W] background plate in [-1, 1]
    segmap: torch.Tensor  # [1, 6, H, W] one-hot segmentation of the source frame
    src_exp: Optional[torch.Tensor] = None  # [1, 64] fitted source expression
    src_euler: Optional[torch.Tensor] = None  # [1, 3] source head pose (radians)
    src_trans: Optional[torch.Tensor] = None  # [1, 3]
    poses: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # the identity clip's (euler, trans) [T', 3]
    kind: str = "one-shot"  # or 'personalised'

    def with_background(self, background: Any) -> "TalkingSource":
        """A copy whose plate is ``background`` (IMAGE [1, H, W, 3] / [H, W, 3], 0..1 or uint8),
        centre-cropped to a square (upstream resizes without cropping)."""
        from .identity.frames import to_uint8_frames

        img = to_uint8_frames(background, "background")
        if img.shape[0] != 1:
            raise InputError(f"background: expected one image, got a batch of {img.shape[0]}")
        h, w = img.shape[1:3]
        s = min(h, w)
        img = img[:, (h - s) // 2: (h - s) // 2 + s, (w - s) // 2: (w - s) // 2 + s]
        return replace(self, bg=_signed(img))


def _signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1] (upstream ``/ 127.5 - 1``)."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def renderer_model(renderer: Any) -> nn.Module:
    """The :class:`~mimictalk_lib.renderer.Renderer` inside a loaded / personalised renderer (or a
    handle holding one of those under ``.model``)."""
    model = renderer
    for _ in range(3):  # Renderer <- LoadedRenderer / PersonalisedRenderer <- a node's handle
        if isinstance(model, nn.Module):
            break
        model = getattr(model, "model", None)
    if not isinstance(model, nn.Module) or not hasattr(model, "render"):
        raise InputError(f"expected a MimicTalk renderer, got {type(renderer).__name__}")
    return model


def one_shot_source(renderer: Any, identity, *, frame: int = 0) -> TalkingSource:
    """Real3D-Portrait one-shot source from a prepared identity (a photo, or a clip's ``frame``):
    canonical planes from that frame's head image (``Renderer.cano_planes``, computed once), its
    fitted coefficients and clamped torso keypoints, the identity's torso reference, plate and
    segmentation, and the clip's poses for ``pose='identity'``."""
    model = renderer_model(renderer)
    if not 0 <= frame < identity.num_frames:
        raise InputError(f"source frame {frame} is outside the identity's {identity.num_frames} frames")
    pts = identity.landmarks[frame, :468, :2]  # MediaPipe face points, pixels
    area = float((pts.max(0).values - pts.min(0).values).prod()) / identity.size**2
    if area < MIN_FACE_AREA:
        logger.warning("the face covers %.0f %% of the source frame; one-shot rendering expects >= %.0f %% "
                       "(prepare the identity with crop='auto')", 100 * area, 100 * MIN_FACE_AREA)
    side = model.cfg.secc_resolution
    head = _signed(identity.head_images([frame]))  # [1, 3, S', S'] head on black (-1)
    if head.shape[-1] != side:
        head = F.interpolate(head, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        planes = model.cano_planes(head.to(model.device)).float()
    torso = identity.torso_ref[None]  # the identity stores frame 0's inpainted torso
    if frame != 0:
        from .identity.torso import inpaint_torso

        torso = inpaint_torso(identity.frames[frame: frame + 1], identity.segmaps[frame: frame + 1])[0]
    return TalkingSource(
        cano_planes=planes.clone(), id=identity.id.float(), src_kp=identity.keypoints[frame: frame + 1].clamp(-1, 1),
        torso_ref=_signed(torso), bg=_signed(identity.plate[None]),
        segmap=identity.segmaps_one_hot([frame]), src_exp=identity.exp[frame: frame + 1],
        src_euler=identity.euler[frame: frame + 1], src_trans=identity.trans[frame: frame + 1],
        poses=(identity.euler, identity.trans), kind="one-shot",
    )


def _learned_planes(renderer: Any) -> Optional[torch.Tensor]:
    """The personalised tri-grid a loaded / adapted renderer carries (None for a base model; a
    bare ``Renderer`` has a ``cano_planes`` *method* instead)."""
    planes = getattr(renderer, "cano_planes", None)
    return planes if isinstance(planes, torch.Tensor) else None


def personalised_source(renderer: Any, identity=None) -> TalkingSource:
    """MimicTalk personalised source: the learned tri-grid and the person data of ``renderer``
    (an adapted :class:`~mimictalk_lib.adapt.adapter.PersonalisedRenderer`, or a
    :class:`~mimictalk_lib.renderer.LoadedRenderer` of an official personalised checkpoint).

    What the adapter lacks (an official checkpoint has only id, source frame and keypoints) comes
    from ``identity``, the identity prepared from the same person (for an official checkpoint:
    from its source frame): torso reference, plate, segmentation, source pose and expression,
    clip poses. The adapter's own id and keypoints always win, as upstream."""
    planes = _learned_planes(renderer)
    person = getattr(renderer, "identity", None) or getattr(renderer, "person", None)
    if planes is None or person is None:
        raise InputError("this renderer is not personalised (no learned tri-grid); pass an identity for one-shot rendering")

    def value(*names):
        for n in names:
            v = getattr(person, n, None)
            if v is not None:
                return v.detach().float().cpu()
        return None

    pid, src_kp = value("id"), value("src_kp")
    if pid is None or src_kp is None:
        raise InputError("the personalised renderer carries no identity coefficients / source keypoints (person data)")
    kp = src_kp.reshape(1, 68, 3).clone()
    kp[..., 2] = 0  # upstream keeps x, y of person_ds['src_kp'] and appends z = 0
    ident = identity
    vals = dict(
        torso_ref=value("torso_ref"), bg=value("bg"), segmap=value("segmap"), src_exp=value("src_exp"),
        src_euler=value("src_euler"), src_trans=value("src_trans"),
    )
    if ident is not None:
        fallback = dict(
            torso_ref=_signed(ident.torso_ref[None]), bg=_signed(ident.plate[None]), segmap=ident.segmaps_one_hot([0]),
            src_exp=ident.exp[:1], src_euler=ident.euler[:1], src_trans=ident.trans[:1],
        )
        vals = {k: v if v is not None else fallback[k] for k, v in vals.items()}
    missing = [k for k in ("torso_ref", "bg", "segmap") if vals[k] is None]
    if missing:
        raise InputError(
            f"the personalised renderer has no {', '.join(missing)} (an imported official checkpoint stores only "
            "id, source frame and keypoints). Prepare an identity from its source frame (or the training clip) "
            "and pass it as the identity input."
        )
    return TalkingSource(
        cano_planes=planes.detach().float(), id=pid.reshape(1, N_ID), src_kp=kp, kind="personalised",
        poses=(ident.euler, ident.trans) if ident is not None else None, **vals,
    )


def make_source(renderer: Any, identity=None, *, frame: int = 0) -> TalkingSource:
    """Personalised source when ``renderer`` carries a learned tri-grid, else one-shot from
    ``identity`` (required then)."""
    if _learned_planes(renderer) is not None:
        return personalised_source(renderer, identity)
    if identity is None:
        raise InputError("a base (not personalised) renderer needs an identity (a prepared photo or clip) to render")
    return one_shot_source(renderer, identity, frame=frame)


# --- the per-clip render inputs --------------------------------------------------------------------


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


def _pose_sequence(pose: Pose, source: TalkingSource) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(pose, str):
        if pose not in POSE_MODES:
            raise InputError(f"pose must be one of {POSE_MODES} or (euler, trans), got {pose!r}")
        if pose == "identity":
            if source.poses is None:
                raise InputError("pose='identity' needs an identity clip: pass the identity (or use pose='static')")
            return source.poses
        if source.src_euler is None or source.src_trans is None:
            raise InputError("pose='static' needs the source head pose: pass the identity this adapter was made from")
        return source.src_euler, source.src_trans
    if isinstance(pose, dict):
        pose = (pose.get("euler"), pose.get("trans"))
    if not isinstance(pose, (tuple, list)) or len(pose) != 2 or not all(isinstance(p, torch.Tensor) for p in pose):
        raise InputError(f"pose: expected {POSE_MODES} or a pair (euler [T, 3], trans [T, 3]), got {type(pose).__name__}")
    return pose[0].reshape(-1, 3), pose[1].reshape(-1, 3)


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
    ``motion`` [T, 64] at 25 fps. ``pose``: 'static', 'identity' or (euler [T', 3], trans [T', 3]).
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
    euler, trans = _pose_sequence(pose, source)
    if map_to_init_pose and (source.src_euler is None or source.src_trans is None):
        raise InputError("map_to_init_pose needs the source head pose: pass the identity (or set map_to_init_pose=False)")
    euler, trans = driving_pose(euler.float().cpu(), trans.float().cpu(), t, src_euler=source.src_euler,
                                src_trans=source.src_trans, map_to_init_pose=map_to_init_pose, freeze_z=True)
    if src_exp == "source" and source.src_exp is None:
        raise InputError("src_exp='source' needs the source expression: pass the identity (or use src_exp='motion')")
    first = motion[:1] if src_exp == "motion" else source.src_exp.reshape(1, N_EXP)
    side = model.cfg.secc_resolution
    with torch.no_grad():  # (not inference mode: the session's tensors stay ordinary tensors)
        fm_device = face_model.mean_shape.device
        cano_src = render_secc(face_model, source.id.to(fm_device), torch.cat([torch.zeros_like(first), first]).to(fm_device),
                               size=side, dtype=torch.float32)
        kp_d = torso_keypoints(face_model, source.id.expand(t, N_ID).to(fm_device), motion.to(fm_device),
                               euler.to(fm_device), trans.to(fm_device), clamp=True).cpu()
        kp_d = smooth_keypoints(kp_d)
        camera = camera_sequence(euler, trans).float()
    generator = torch.Generator().manual_seed(int(blink_seed))
    return TalkingSession(
        model=model, face_model=face_model, source=source, motion=motion, camera=camera, kp_d=kp_d,
        euler=euler, trans=trans, blink=blink_schedule(t, blink, generator).float(),
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
    device, total = model.device, session.num_frames
    check_device_dtype(device, model.dtype)
    # Inference mode is entered per chunk, never across a ``yield``: it is thread-local and would
    # otherwise stay on in the caller's code while the generator is suspended.
    with torch.inference_mode():
        reference = model.prepare_reference(src.torso_ref.to(device), src.bg.to(device), src.segmap.to(device))
        planes, cano, srcs = src.cano_planes.to(device), session.cano_secc.to(device), session.src_secc.to(device)
        kp_s = src.src_kp.to(device)
    for start in range(0, total, chunk_size):
        part = slice(start, min(start + chunk_size, total))
        with torch.inference_mode():
            out = model.render(
                planes, cano, srcs, session.drv_secc(part).to(device), session.camera[part].to(device), None, None, None,
                kp_s, session.kp_d[part].to(device), deterministic=deterministic, generator=generator, reference=reference,
            )
        side = out.image.shape[-1]  # the conversions below make ordinary (not inference) CPU tensors
        mask = F.interpolate(out.alpha.float(), size=(side, side), mode="bilinear", align_corners=False)
        chunk = FrameChunk(start, _to_image(out.image, output_dtype).cpu(), mask[:, 0].clamp(0, 1).cpu())
        del out, mask
        yield chunk
        report(on_step, part.stop, total)


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
    from .video import write_video

    chunks = iter_talking_head(session, chunk_size=chunk_size, deterministic=deterministic, generator=generator,
                               output_dtype=torch.uint8, on_step=on_step)
    return write_video(path, (c.images for c in chunks), FPS, audio=audio, **video_options)


# --- audio to motion -------------------------------------------------------------------------------


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
    from .a2m import StylePrompt, extract_audio_features
    from .video import Audio

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
    from .identity.style import style_prompt_from_identity

    if isinstance(style_audio, Audio):
        style_audio = style_audio.to_comfy()
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
    from .a2m import DEFAULT_CFG_SCALE, DEFAULT_STEPS, DEFAULT_TEMPERATURE, AudioFeatures, extract_audio_features, sample_motion
    from .video import Audio

    if trim not in TRIM_MODES:
        raise InputError(f"trim must be one of {TRIM_MODES}, got {trim!r}")
    prompt = style_prompt(a2m, hubert, style, style_audio)
    if isinstance(audio, AudioFeatures):
        features = audio
    else:
        if isinstance(audio, Audio):
            audio = audio.to_comfy()
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
