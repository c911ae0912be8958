"""Who is rendered: a :class:`TalkingSource` holds what every frame of a clip shares. One-shot
(Real3D-Portrait): planes from the source frame's head image through the renderer's canonical
backbone. Personalised (MimicTalk): the learned tri-grid and the adapter's person data."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..face.coeffs import HeadPose
from ..face.model import N_ID
from ..identity.frames import to_uint8_frames
from ..identity.torso import inpaint_torso
from ..renderer.loading import LoadedRenderer, PersonalisedRenderer
from ..renderer.model import RenderSource
from ..renderer.superres import SRReference
from ..utils import count, logger

MIN_FACE_AREA = 0.2  # real3d_infer --min_face_area_percent: face box / image area for one-shot sources

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
    src_pose: Optional[HeadPose] = None  # the source frame's head pose (euler, trans [1, 3])
    poses: Optional[HeadPose] = None  # the identity clip's head poses [T', 3]
    kind: str = "one-shot"  # or 'personalised'
    # Per-renderer cache of the encoded SR reference (torso volume, background features): made once
    # per identity, reused by every clip, live chunk and frame range (sr_reference). Not copied by
    # dataclasses.replace, so a copy with another plate encodes its own.
    _references: weakref.WeakKeyDictionary = field(init=False, repr=False, compare=False,
                                                   default_factory=weakref.WeakKeyDictionary)

    def __getstate__(self) -> dict:  # the cache holds weak references: not copied by pickle
        return {k: v for k, v in self.__dict__.items() if k != "_references"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _references=weakref.WeakKeyDictionary())

    def render_source(self, cano_secc: torch.Tensor, src_secc: torch.Tensor) -> RenderSource:
        """The renderer's per-identity inputs with a session's canonical and source SECC maps."""
        return RenderSource(self.cano_planes, cano_secc, src_secc, self.src_kp, self.torso_ref, self.bg, self.segmap)

    def sr_reference(self, model: nn.Module) -> SRReference:
        """``model.prepare_reference`` of this source's torso, plate and segmentation, computed once
        per renderer and reused (cached per device and dtype; weights changed in place since, e.g.
        a LoRA merged into the same module, make a new one)."""
        sr = model.superresolution
        # (weights made under inference mode, as a ComfyUI host loads them, carry no version counter)
        key = (model.device, model.dtype, sum(0 if p.is_inference() else p._version for p in sr.parameters()))
        cached = self._references.get(model)
        if cached is None or cached[0] != key:
            with torch.inference_mode():
                reference = model.prepare_reference(self.torso_ref.to(model.device), self.bg.to(model.device),
                                                    self.segmap.to(model.device))
            self._references[model] = cached = (key, reference)
        return cached[1]

    def with_background(self, background: Any) -> "TalkingSource":
        """A copy whose plate is ``background`` (IMAGE [1, H, W, 3] / [H, W, 3], 0..1 or uint8),
        centre-cropped to a square (upstream resizes without cropping)."""
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


def as_personalised(renderer: Any) -> Optional[PersonalisedRenderer]:
    """The :class:`~mimictalk_lib.renderer.PersonalisedRenderer` ``renderer`` is or holds (an
    official personalised checkpoint's :class:`~mimictalk_lib.renderer.LoadedRenderer`), or None
    for a base renderer."""
    if isinstance(renderer, PersonalisedRenderer):
        return renderer
    return renderer.personalised if isinstance(renderer, LoadedRenderer) else None


def renderer_model(renderer: Any) -> nn.Module:
    """The :class:`~mimictalk_lib.renderer.Renderer` of a ``Renderer``, ``LoadedRenderer`` or
    ``PersonalisedRenderer``."""
    model = renderer.model if isinstance(renderer, (LoadedRenderer, PersonalisedRenderer)) else renderer
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
        raise InputError(f"source frame {frame} is outside the identity's {count(identity.num_frames, 'frame')}")
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
        torso = inpaint_torso(identity.frames[frame: frame + 1], identity.segmaps[frame: frame + 1])[0]
    return TalkingSource(
        cano_planes=planes.clone(), id=identity.id.float(), src_kp=identity.keypoints[frame: frame + 1].clamp(-1, 1),
        torso_ref=_signed(torso), bg=_signed(identity.plate[None]),
        segmap=identity.segmaps_one_hot([frame]), src_exp=identity.exp[frame: frame + 1],
        src_pose=identity.coefficients.pose[frame], poses=identity.coefficients.pose, kind="one-shot",
    )


def personalised_source(renderer: Any, identity=None) -> TalkingSource:
    """MimicTalk personalised source: the learned tri-grid and the person data of ``renderer``
    (a :class:`~mimictalk_lib.renderer.PersonalisedRenderer`: an adapter applied with
    ``personalise``, or an official personalised checkpoint's :class:`~mimictalk_lib.renderer.LoadedRenderer`).

    What the adapter lacks (an official checkpoint has only id, source frame and keypoints) comes
    from ``identity``, the identity prepared from the same person (for an official checkpoint:
    from its source frame): torso reference, plate, segmentation, source pose and expression,
    clip poses. The adapter's own id and keypoints always win, as upstream."""
    personalised = as_personalised(renderer)
    if personalised is None or personalised.identity is None:
        raise InputError("this renderer is not personalised (no learned tri-grid); pass an identity for one-shot rendering")
    planes, person = personalised.cano_planes, personalised.identity

    def value(name: str) -> Optional[torch.Tensor]:
        v = getattr(person, name)
        return v.detach().float().cpu() if v is not None else None

    pid, src_kp = value("id"), value("src_kp")
    if pid is None or src_kp is None:
        raise InputError("the personalised renderer carries no identity coefficients / source keypoints (person data)")
    kp = src_kp.reshape(1, 68, 3).clone()
    kp[..., 2] = 0  # upstream keeps x, y of person_ds['src_kp'] and appends z = 0
    ident = identity
    euler, trans = value("src_euler"), value("src_trans")
    vals = dict(
        torso_ref=value("torso_ref"), bg=value("bg"), segmap=value("segmap"), src_exp=value("src_exp"),
        src_pose=HeadPose(euler, trans) if euler is not None and trans is not None else None,
    )
    if ident is not None:
        fallback = dict(
            torso_ref=_signed(ident.torso_ref[None]), bg=_signed(ident.plate[None]), segmap=ident.segmaps_one_hot([0]),
            src_exp=ident.exp[:1], src_pose=ident.coefficients.pose[:1],
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
        poses=ident.coefficients.pose if ident is not None else None, **vals,
    )


def make_source(renderer: Any, identity=None, *, frame: int = 0) -> TalkingSource:
    """Personalised source when ``renderer`` carries a learned tri-grid, else one-shot from
    ``identity`` (required then)."""
    if as_personalised(renderer) is not None:
        return personalised_source(renderer, identity)
    if identity is None:
        raise InputError("a base (not personalised) renderer needs an identity (a prepared photo or clip) to render")
    return one_shot_source(renderer, identity, frame=frame)
