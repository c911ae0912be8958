"""What SD-Hybrid adaptation reads at every step (upstream ``LoRATrainer.ds``), from a prepared
:class:`~mimictalk_lib.identity.identity.Identity`.

Architecture reference §3.4 ("Training inputs per sample"): for a random frame t, the driving
SECC of (identity, exp[t], zero pose); the canonical and source SECC of frame 0; the window-7
smoothed camera of frame t; the inpainted torso and the segmentation of **frame 0** (the torso
warp source is always frame 0); the background plate; keypoints kp_s of frame 0 and kp_d of
frame t. Targets: the frame with its background replaced by the plate (``com_imgs``) and the
head-only image (``head_imgs``); the head mask of frame t (density loss) and its lip rectangle.

SECC maps are rendered on demand by a :class:`SeccSource` (the face model's SECC renderer and
eye-blink edit), so a long clip never holds T SECC maps; com / head images are made per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..identity.identity import Identity


class SeccSource(Protocol):
    """Renders SECC maps of one identity at zero pose (upstream ``SECC_Renderer``)."""

    def render(self, exp: torch.Tensor) -> torch.Tensor:
        """exp [B, 64] -> SECC [B, 3, S, S] in [-1, 1]."""
        ...

    def blink(self, secc: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
        """secc [B, 3, S, S], amount [B] in [0, 1] -> eyes closed by ``amount``
        (upstream ``blink_eye_for_secc``)."""
        ...


class FaceModelSecc:
    """:class:`SeccSource` of the face helper: BFM SECC maps (``face.secc.render_secc``) and the
    SECC blink edit (``face.blink.apply_blink``) for identity ``id`` [1, 80]."""

    def __init__(self, face_model, id: torch.Tensor, size: int) -> None:
        self.face_model, self.id, self.size = face_model, id.reshape(1, -1), size

    def render(self, exp: torch.Tensor) -> torch.Tensor:
        from ..face.secc import render_secc

        device = self.face_model.mean_shape.device
        return render_secc(self.face_model, self.id.to(device), exp.to(device), size=self.size, dtype=torch.float32)

    def blink(self, secc: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
        from ..face.blink import apply_blink

        return apply_blink(secc, amount.double())


def signed(images: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] on ``device`` (upstream ``/127.5 - 1``)."""
    return images.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


@dataclass
class AdaptationData:
    """A prepared identity plus its SECC source, as the training loop consumes it."""

    identity: Identity
    secc: SeccSource

    def __post_init__(self) -> None:
        if self.identity.num_frames < 1:
            raise InputError("the identity has no frames; prepare it from a video or a photo first")

    @classmethod
    def from_identity(cls, identity: Identity, face_model, secc_size: Optional[int] = None) -> "AdaptationData":
        """With the BFM SECC renderer of ``face_model`` (maps of ``secc_size``, default the
        identity's frame size; pass the renderer's ``cfg.secc_resolution``)."""
        return cls(identity, FaceModelSecc(face_model, identity.id, secc_size or identity.size))

    @property
    def num_frames(self) -> int:
        return self.identity.num_frames

    @property
    def resolution(self) -> int:
        return self.identity.size

    def targets(self, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(com image, head image) of frames ``idx``, each [B, 3, S, S] in [-1, 1]."""
        ident = self.identity
        return signed(ident.com_images(idx), device), signed(ident.head_images(idx), device)

    def head_mask(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        """bool [B, 1, size, size] head mask (classes 1, 3, 5) resized with nearest neighbour,
        as upstream's ``F.interpolate`` default."""
        mask = self.identity.head_masks(idx).unsqueeze(1).float()  # [B, 1, S, S]
        return F.interpolate(mask, size=(size, size), mode="nearest").bool()

    def drive_secc(self, idx: torch.Tensor) -> torch.Tensor:
        """Driving SECC of frames ``idx``: (id, exp[t], zero pose) -> [B, 3, S', S']."""
        return self.secc.render(self.identity.exp[idx].float())
