"""The prepared identity: everything adaptation (SD-Hybrid training) and rendering need from a
user's clip or photo, with a one-file save format.

What upstream keeps on disk under ``data/processed/videos/<id>/`` (``gt_imgs``, ``segmaps``,
``head_imgs``, ``com_imgs``, ``inpaint_torso_imgs``, ``bg.jpg``, ``coeff_fit_mp*.npy``) and
derives in ``LoRATrainer.load_training_data`` (cameras, keypoints, lip rectangles) lives in one
``Identity``. Head and "com" images are derived on demand from frames + segmentation + plate
(exactly what upstream writes, without the JPEG loss), so they are not stored.

File format: one safetensors file; tensors as listed in ``Identity`` (images uint8), JSON
metadata under the ``mimictalk`` key with ``format`` = ``"mimictalk-identity"`` and
``format_version``. Written atomically (temp file + ``os.replace``). Version 2 (the default) stores
the frames as an H.264 stream (``frames_video``, near-lossless, its PSNR in ``frames_codec``) and
the segmentation maps deflated (``segmaps_zlib``, exact): see ``storage``; 15 MB instead of 1.2 GB
per minute of 512² clip. Version 1 (raw ``frames`` / ``segmaps``, ``frame_codec="raw"``) is still
read and written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..checkpoint import load_safetensors, read_safetensors_metadata, save_safetensors
from ..errors import CheckpointError, InputError
from ..face.coeffs import Coefficients
from ..utils import check_shape
from .segmentation import HEAD_CLASSES, class_mask, com_images, head_images, one_hot_segmaps
from .storage import (
    DEFAULT_CRF,
    DEFAULT_FRAME_CODEC,
    FRAME_CODECS,
    check_frame_info,
    decode_frames,
    decode_segmaps,
    encode_frames,
    encode_segmaps,
)

FORMAT = "mimictalk-identity"
FORMAT_VERSION = 2
RAW_FORMAT_VERSION = 1  # frames and segmaps as plain tensors
SEGMAP_CODEC = "zlib-delta"

_TENSOR_FIELDS = (
    "frames", "segmaps", "landmarks", "id", "exp", "euler", "trans", "cameras", "keypoints",
    "lip_rects", "plate", "torso_ref", "torso_ref_mask",
)
_COMPRESSED_FIELDS = tuple(n for n in _TENSOR_FIELDS if n not in ("frames", "segmaps")) + ("frames_video", "segmaps_zlib")


@dataclass
class Identity:
    """A prepared identity (``T`` frames at 25 fps, 512² each; ``T = 1`` for a photo).

    frames          uint8 [T, 512, 512, 3]   cropped RGB frames ("gt_imgs")
    segmaps         uint8 [T, 512, 512]      selfie-multiclass ids (0 bg, 1 hair, 2 body skin,
                                             3 face skin, 4 clothes, 5 accessories)
    landmarks       float32 [T, 478, 3]      MediaPipe points, pixels of the 512² frame
    id              float32 [1, 80]          identity coefficients (one for the clip)
    exp             float32 [T, 64]          expression coefficients
    euler, trans    float32 [T, 3]           head pose (radians; BFM translation)
    cameras         float32 [T, 25]          EG3D camera (c2w 16 + normalised K 9), window-7 smoothed
                                             for clips (unsmoothed for a photo)
    keypoints       float32 [T, 68, 3]       torso-warp keypoints in [-1, 1], z = 0
    lip_rects       int64 [T, 4]             (xmin, xmax, ymin, ymax) lip crop in the 512² frame
    plate           uint8 [512, 512, 3]      background plate ("bg.jpg")
    torso_ref       uint8 [512, 512, 3]      frame 0 with the head removed, torso inpainted
    torso_ref_mask  bool [512, 512]          where ``torso_ref`` holds torso pixels
    meta            dict                     JSON-serialisable provenance (source, crop, fps,
                                             dropped frames, fit errors, ...)
    """

    frames: torch.Tensor
    segmaps: torch.Tensor
    landmarks: torch.Tensor
    id: torch.Tensor
    exp: torch.Tensor
    euler: torch.Tensor
    trans: torch.Tensor
    cameras: torch.Tensor
    keypoints: torch.Tensor
    lip_rects: torch.Tensor
    plate: torch.Tensor
    torso_ref: torch.Tensor
    torso_ref_mask: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        t = self.frames.shape[0]
        s = self.frames.shape[1]
        check_shape(self.frames, (t, s, s, 3), "identity frames")
        check_shape(self.segmaps, (t, s, s), "identity segmaps")
        check_shape(self.landmarks, (t, 478, 3), "identity landmarks")
        check_shape(self.id, (1, 80), "identity id")
        check_shape(self.exp, (t, 64), "identity exp")
        check_shape(self.euler, (t, 3), "identity euler")
        check_shape(self.trans, (t, 3), "identity trans")
        check_shape(self.cameras, (t, 25), "identity cameras")
        check_shape(self.keypoints, (t, 68, 3), "identity keypoints")
        check_shape(self.lip_rects, (t, 4), "identity lip_rects")
        check_shape(self.plate, (s, s, 3), "identity plate")
        check_shape(self.torso_ref, (s, s, 3), "identity torso_ref")
        check_shape(self.torso_ref_mask, (s, s), "identity torso_ref_mask")

    # ------------------------------------------------------------------ derived views

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> int:
        return int(self.frames.shape[1])

    @property
    def is_photo(self) -> bool:
        return self.meta.get("kind") == "photo"

    @property
    def coefficients(self) -> Coefficients:
        """The fitted ``id`` / ``exp`` / ``euler`` / ``trans`` as one value (views, not copies)."""
        return Coefficients(self.id, self.exp, self.euler, self.trans)

    def _idx(self, index) -> torch.Tensor | slice:
        return slice(None) if index is None else torch.as_tensor(index, dtype=torch.long).reshape(-1)

    def head_images(self, index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """uint8 [N, 512, 512, 3]: frames with everything but the head black ("head_imgs")."""
        i = self._idx(index)
        return head_images(self.frames[i], self.segmaps[i])

    def com_images(self, index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """uint8 [N, 512, 512, 3]: frames with the background replaced by the plate ("com_imgs"),
        the torso-mode training target."""
        i = self._idx(index)
        return com_images(self.frames[i], self.segmaps[i], self.plate)

    def head_masks(self, index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """bool [N, 512, 512]: segmap classes 1, 3, 5 (the density-loss head mask)."""
        return class_mask(self.segmaps[self._idx(index)], HEAD_CLASSES)

    def segmaps_one_hot(self, index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """float [N, 6, 512, 512] one-hot segmentation (upstream ``segmaps`` tensors)."""
        return one_hot_segmaps(self.segmaps[self._idx(index)])

    @staticmethod
    def to_signed(images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1] (upstream ``/127.5 - 1``)."""
        return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike, frame_codec: str = DEFAULT_FRAME_CODEC, crf: int = DEFAULT_CRF) -> Path:
        """Write the identity to one safetensors file, atomically. ``frame_codec``: ``"h264"``
        (near-lossless, default; ``crf`` sets the quality), ``"lossless"`` or ``"raw"`` (format
        version 1, uncompressed); see ``storage``."""
        if frame_codec not in FRAME_CODECS:
            raise InputError(f"frame_codec must be one of {FRAME_CODECS}, got {frame_codec!r}")
        tensors = {name: getattr(self, name) for name in _TENSOR_FIELDS}
        tensors["torso_ref_mask"] = tensors["torso_ref_mask"].to(torch.uint8)
        meta = {k: v for k, v in self.meta.items() if k not in ("frames_codec", "segmaps_codec")}
        if frame_codec == "raw":
            return save_safetensors(path, tensors, dict(meta, format=FORMAT, format_version=RAW_FORMAT_VERSION))
        tensors["frames_video"], info = encode_frames(tensors.pop("frames"), frame_codec, crf)
        tensors["segmaps_zlib"] = encode_segmaps(tensors.pop("segmaps"))
        meta.update(format=FORMAT, format_version=FORMAT_VERSION, frames_codec=info, segmaps_codec=SEGMAP_CODEC)
        return save_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Identity":
        """Read an identity written by ``save`` (format version 1 or 2); raises CheckpointError for
        other or damaged files. Compressed frames are checked against the other tensors and the
        clip limit before they are decoded, one at a time, into one tensor."""
        meta = read_safetensors_metadata(path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{path} is not a MimicTalk identity file (format {meta.get('format')!r}); "
                "prepare one with prepare_identity() (in ComfyUI: the Prepare Identity node)."
            )
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has identity format version {version}; this version of the pack reads up "
                f"to {FORMAT_VERSION}. Update the pack or prepare the identity again."
            )
        tensors, meta = load_safetensors(path)
        stored = _TENSOR_FIELDS if version == RAW_FORMAT_VERSION else _COMPRESSED_FIELDS
        missing = [n for n in stored if n not in tensors]
        if missing:
            raise CheckpointError(f"{path}: identity file lacks tensors {missing}; prepare it again.")
        if version != RAW_FORMAT_VERSION:
            what = f"identity file {path}"
            if tensors["exp"].dim() != 2 or tensors["plate"].dim() != 3:
                raise CheckpointError(f"{what}: exp {list(tensors['exp'].shape)} / plate {list(tensors['plate'].shape)} "
                                      "are not an identity's; the file is damaged")
            t, size = tensors["exp"].shape[0], tensors["plate"].shape[0]
            if meta.get("segmaps_codec") != SEGMAP_CODEC or tensors["frames_video"].dim() != 1 or tensors["segmaps_zlib"].dim() != 1:
                raise CheckpointError(f"{what}: unknown frame or map storage; the file is damaged or from a newer pack")
            info = check_frame_info(meta.get("frames_codec"), t, size, what)
            tensors["segmaps"] = decode_segmaps(tensors.pop("segmaps_zlib"), t, size, what)
            tensors["frames"] = decode_frames(tensors.pop("frames_video"), info, what)
        kwargs = {n: tensors[n] for n in _TENSOR_FIELDS}
        kwargs["torso_ref_mask"] = kwargs["torso_ref_mask"].bool()
        try:
            return cls(**kwargs, meta=meta)
        except InputError as e:
            raise CheckpointError(f"{path}: {e}; the identity file is damaged, prepare it again.") from e

    def __repr__(self) -> str:  # tensors are large: summarise
        kind = self.meta.get("kind", "?")
        return f"Identity({kind}, frames={self.num_frames}, size={self.size}, source={self.meta.get('source')!r})"

