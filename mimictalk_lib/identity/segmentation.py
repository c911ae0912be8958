"""Person segmentation: the ``Segmenter`` protocol, the MediaPipe selfie-multiclass backend, and
the masked images training uses (head images, frames with the background replaced).

Upstream (MimicTalk ``data_gen/utils/mp_feature_extractors/mp_segmenter.py`` and
``process_video/extract_segment_imgs.py``): MediaPipe ImageSegmenter with
``selfie_multiclass_256x256.tflite`` in IMAGE mode, category mask with 6 classes. Head images
keep hair, face skin and accessories (classes 1, 3, 5) and blacken the rest; "com" images are
the frames with background pixels (class 0) replaced by the extracted background plate.
"""

from __future__ import annotations

import os
from typing import Optional, Protocol, runtime_checkable

import numpy as np
import torch

from ..utils import ProgressFn, report
from .landmarks import check_model_file, import_mediapipe

# selfie_multiclass_256x256 classes
BACKGROUND, HAIR, BODY_SKIN, FACE_SKIN, CLOTHES, ACCESSORIES = range(6)
NUM_CLASSES = 6
HEAD_CLASSES = (HAIR, FACE_SKIN, ACCESSORIES)
"""Classes forming the head (glasses, hats count as head) - upstream ``mode='head'``."""


@runtime_checkable
class Segmenter(Protocol):
    """Per-pixel class ids (the 6 selfie-multiclass classes) for a batch of frames."""

    def segment(
        self,
        frames: torch.Tensor,
        *,
        landmarks: Optional[torch.Tensor] = None,
        on_step: Optional[ProgressFn] = None,
    ) -> torch.Tensor:
        """``frames``: uint8 ``[N, H, W, 3]``; ``landmarks``: optional ``[N, 478, 2+]`` pixel
        landmarks of the same frames (a hint; MediaPipe ignores it). Returns uint8 ``[N, H, W]``."""
        ...


class MediaPipeSegmenter:
    """MediaPipe ImageSegmenter (``selfie_multiclass_256x256.tflite``), IMAGE mode as upstream."""

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = check_model_file(
            model_path, "MediaPipe selfie-multiclass segmenter", "mediapipe_selfie_multiclass"
        )
        self._mp, self._python, self._vision = import_mediapipe()

    def segment(
        self,
        frames: torch.Tensor,
        *,
        landmarks: Optional[torch.Tensor] = None,
        on_step: Optional[ProgressFn] = None,
    ) -> torch.Tensor:
        v = self._vision
        options = v.ImageSegmenterOptions(
            base_options=self._python.BaseOptions(model_asset_path=self.model_path),
            running_mode=v.RunningMode.IMAGE,
            output_category_mask=True,
            output_confidence_masks=False,
        )
        n, h, w, _ = frames.shape
        out = torch.zeros(n, h, w, dtype=torch.uint8)
        with v.ImageSegmenter.create_from_options(options) as seg:
            for i in range(n):
                image = self._mp.Image(
                    image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(frames[i].numpy())
                )
                mask = seg.segment(image).category_mask.numpy_view()
                out[i] = torch.from_numpy(np.array(mask, dtype=np.uint8).reshape(h, w))
                report(on_step, i + 1, n, stage="segmentation")
        return out


def class_mask(segmaps: torch.Tensor, classes) -> torch.Tensor:
    """bool mask of pixels whose class is in ``classes`` (``[..., H, W]``)."""
    mask = torch.zeros_like(segmaps, dtype=torch.bool)
    for c in classes:
        mask |= segmaps == c
    return mask


def one_hot_segmaps(segmaps: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W]`` class ids -> float ``[N, 6, H, W]`` one-hot (upstream ``segmaps``)."""
    return torch.nn.functional.one_hot(segmaps.long(), NUM_CLASSES).permute(0, 3, 1, 2).float()


def head_images(frames: torch.Tensor, segmaps: torch.Tensor) -> torch.Tensor:
    """Frames with everything but the head (classes 1, 3, 5) black. uint8 ``[N, H, W, 3]``."""
    return frames * class_mask(segmaps, HEAD_CLASSES)[..., None].to(frames.dtype)


def com_images(frames: torch.Tensor, segmaps: torch.Tensor, plate: torch.Tensor) -> torch.Tensor:
    """Frames with background pixels (class 0) replaced by ``plate`` ``[H, W, 3]``."""
    bg = (segmaps == BACKGROUND)[..., None]
    return torch.where(bg, plate.to(frames.dtype)[None], frames)
