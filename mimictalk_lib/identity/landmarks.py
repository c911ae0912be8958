"""2-D face landmarks: the ``Landmarker`` protocol and its MediaPipe FaceLandmarker backend.

Upstream (MimicTalk ``data_gen/utils/mp_feature_extractors/face_landmarker.py``) runs the
MediaPipe Tasks FaceLandmarker (478 points: 468 mesh + 10 iris) twice over a clip, once in IMAGE
mode and once in VIDEO mode (tracking, smoother but laggy), and combines them: the video-mode
points everywhere except the mouth and eyes, which come from image mode (they move fast and
tracking smooths them away). The 3DMM fit uses the first 468 points.

Any object with a matching ``detect`` method can replace the MediaPipe backend (tests, nodes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import AssetMissingError, DependencyMissingError, InputError
from ..utils import ProgressFn, logger, report

NUM_LANDMARKS = 478
"""Points per face returned by the MediaPipe FaceLandmarker (468 mesh + 10 iris)."""
NUM_MESH_LANDMARKS = 468
"""Mesh points used by the 3DMM fit (the iris points are dropped upstream)."""

# MediaPipe face-mesh topology indices (facts from the upstream landmarker module).
EYE_INDICES = (
    33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7,  # right eye
    263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249,  # left eye
)
UPPER_EYELID_INDICES = (161, 160, 159, 158, 157, 388, 387, 386, 385, 384)
INNER_LIP_INDICES = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
OUTER_LIP_INDICES = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
WITHIN_MOUTH_INDICES = (
    76, 62, 184, 183, 74, 72, 73, 41, 72, 38, 11, 12, 302, 268, 303, 271, 304, 272, 408, 407,
    292, 306, 325, 307, 319, 320, 403, 404, 316, 315, 15, 16, 86, 85, 179, 180, 89, 90, 96, 77,
)
MOUTH_INDICES = INNER_LIP_INDICES + OUTER_LIP_INDICES + WITHIN_MOUTH_INDICES
UNMATCHED_INDICES = (93, 127, 132, 234, 323, 356, 361, 454)
"""Cheek-contour points whose BFM correspondence is unreliable; weight 0 in the fit."""

IMAGE_MODE_INDICES = tuple(sorted(set(MOUTH_INDICES + EYE_INDICES)))
"""Points taken from the IMAGE-mode result when combining with VIDEO mode."""

VIDEO_TIMESTAMP_STRETCH = 20
"""Upstream ``anti_smooth_factor``: VIDEO-mode timestamps advance 20 frame intervals per frame
(800 ms at 25 fps), which weakens MediaPipe's temporal smoothing. 20 is the value on the
MimicTalk training path (``fit_3dmm_for_a_video`` extracting landmarks itself)."""


SAME_FACE_TOLERANCE = 0.15
"""VIDEO- and IMAGE-mode results farther apart than this share of the face height (mean point
distance) belong to different faces."""


@dataclass
class LandmarkResult:
    """Landmarks of a batch of frames.

    ``points``: float32 ``[N, 478, 3]``: x, y in pixels of the analysed frames, z (relative depth)
    scaled like x. Rows of undetected frames are zero. ``detected``: bool ``[N]``. ``num_faces``:
    int ``[N]``, faces seen per frame (the largest one is kept).
    """

    points: torch.Tensor
    detected: torch.Tensor
    num_faces: torch.Tensor

    def __post_init__(self):
        n = self.points.shape[0]
        if self.points.shape[1:] != (NUM_LANDMARKS, 3) or self.detected.shape != (n,) or self.num_faces.shape != (n,):
            raise InputError(
                "LandmarkResult: expected points [N, 478, 3], detected [N], num_faces [N]; got "
                f"{list(self.points.shape)}, {list(self.detected.shape)}, {list(self.num_faces.shape)}"
            )

    def select(self, index) -> "LandmarkResult":
        return LandmarkResult(self.points[index], self.detected[index], self.num_faces[index])


@runtime_checkable
class Landmarker(Protocol):
    """Finds 478 MediaPipe-topology landmarks of the main face in each frame."""

    def detect(
        self, frames: torch.Tensor, *, video: bool = True, on_step: Optional[ProgressFn] = None
    ) -> LandmarkResult:
        """``frames``: uint8 ``[N, H, W, 3]`` RGB. ``video=True``: consecutive frames of one clip
        (a tracker may use that); False: unrelated images."""
        ...


def combine_video_image(video_pts: torch.Tensor, image_pts: torch.Tensor) -> torch.Tensor:
    """Upstream combination: VIDEO-mode points, with mouth and eyes from IMAGE mode."""
    out = video_pts.clone()
    idx = list(IMAGE_MODE_INDICES)
    out[:, idx] = image_pts[:, idx]
    return out


def warn_multiple_faces(num_faces: torch.Tensor, what: str = "frames", already: bool = False) -> bool:
    """Log one warning when several faces were seen (the largest one is used), unless
    ``already`` warned; returns whether several faces were seen (or ``already``)."""
    many = torch.nonzero(num_faces > 1).flatten()
    if many.numel() and not already:
        logger.warning(
            "%d %s show more than one face (first: index %d, %d faces); using the largest face",
            many.numel(), what, int(many[0]), int(num_faces[many[0]]),
        )
    return already or bool(many.numel())


# --------------------------------------------------------------------------- MediaPipe


def import_mediapipe():
    """Import mediapipe lazily with an actionable error."""
    try:
        import mediapipe as mp
        from mediapipe.tasks import python as mp_python
        from mediapipe.tasks.python import vision
    except ImportError as e:
        raise DependencyMissingError(
            "mediapipe is needed for face landmarks and segmentation but is not installed. Install "
            "it with `pip install mediapipe` (wheels exist for CPython 3.9-3.12 on Linux, Windows "
            "and macOS; on other Python versions use a 3.10-3.12 environment)."
        ) from e
    return mp, mp_python, vision


def check_model_file(path: str | os.PathLike, what: str, asset_id: str) -> str:
    """``path`` if it is a file; else AssetMissingError naming the manifest asset ``asset_id``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        missing = f"{what} model file not found: {path}. "
        raise AssetMissingError(
            missing + f"Download it with `python -m mimictalk_lib.download fetch {asset_id}` (or "
            f"mimictalk_lib.download.ensure_asset('{asset_id}', ...)), or place the file there by hand.",
            in_node=missing + "Turn on auto_download on Prepare Identity to download it, or place the file there by hand.",
        )
    return path


class MediaPipeLandmarker:
    """MediaPipe Tasks FaceLandmarker run in IMAGE and VIDEO mode and combined as upstream.

    ``model_path``: ``face_landmarker.task`` (manifest entry). ``max_faces``: faces MediaPipe
    may return per frame; the largest is kept (upstream asks for one).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        max_faces: int = 2,
        min_confidence: float = 0.5,
        timestamp_stretch: int = VIDEO_TIMESTAMP_STRETCH,
    ):
        self.model_path = check_model_file(model_path, "MediaPipe face landmarker", "mediapipe_face_landmarker")
        self.max_faces = int(max_faces)
        self.min_confidence = float(min_confidence)
        self.timestamp_stretch = int(timestamp_stretch)
        self._mp, self._python, self._vision = import_mediapipe()

    def _create(self, video: bool):
        v = self._vision
        options = v.FaceLandmarkerOptions(
            base_options=self._python.BaseOptions(model_asset_path=self.model_path),
            running_mode=v.RunningMode.VIDEO if video else v.RunningMode.IMAGE,
            # VIDEO mode tracks only while it has found num_faces faces; asking for more than one
            # makes it re-detect every frame (= IMAGE mode), so it follows one face as upstream.
            num_faces=1 if video else self.max_faces,
            min_face_detection_confidence=self.min_confidence,
            min_face_presence_confidence=self.min_confidence,
        )
        return v.FaceLandmarker.create_from_options(options)

    @staticmethod
    def _largest(result, w: int, h: int) -> tuple[Optional[np.ndarray], int]:
        faces = result.face_landmarks
        if not faces:
            return None, 0
        arrs = [np.array([[p.x * w, p.y * h, p.z * w] for p in f], dtype=np.float32) for f in faces]
        areas = [np.prod(a[:, :2].max(0) - a[:, :2].min(0)) for a in arrs]
        return arrs[int(np.argmax(areas))], len(arrs)

    def detect(
        self, frames: torch.Tensor, *, video: bool = True, on_step: Optional[ProgressFn] = None
    ) -> LandmarkResult:
        n, h, w, _ = frames.shape
        img_pts = torch.zeros(n, NUM_LANDMARKS, 3)
        vid_pts = torch.zeros(n, NUM_LANDMARKS, 3)
        img_ok = torch.zeros(n, dtype=torch.bool)
        vid_ok = torch.zeros(n, dtype=torch.bool)
        counts = torch.zeros(n, dtype=torch.long)
        frame_ms = 1000.0 / 25.0
        with self._create(video=False) as img_lm:
            vid_lm = self._create(video=True) if video else None
            try:
                for i in range(n):
                    image = self._mp.Image(
                        image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(frames[i].numpy())
                    )
                    pts, c = self._largest(img_lm.detect(image), w, h)
                    if pts is not None:
                        img_pts[i], img_ok[i] = torch.from_numpy(pts), True
                    counts[i] = c
                    if vid_lm is not None:
                        ts = int(frame_ms * self.timestamp_stretch * i)
                        pts, c = self._largest(vid_lm.detect_for_video(image, ts), w, h)
                        if pts is not None:
                            vid_pts[i], vid_ok[i] = torch.from_numpy(pts), True
                        counts[i] = max(int(counts[i]), c)
                    report(on_step, i + 1, n, stage="landmarks")
            finally:
                if vid_lm is not None:
                    vid_lm.close()
        if not video:
            return LandmarkResult(img_pts, img_ok, counts)
        # VIDEO mode may follow another face than the largest one: then keep IMAGE mode
        height = (img_pts[:, :, 1].amax(1) - img_pts[:, :, 1].amin(1)).clamp(min=1.0)
        same_face = (vid_pts - img_pts)[:, :, :2].norm(dim=-1).mean(1) < SAME_FACE_TOLERANCE * height
        both = img_ok & vid_ok & same_face
        points = torch.where(img_ok[:, None, None], img_pts, vid_pts)  # one mode only: use it alone
        points[both] = combine_video_image(vid_pts[both], img_pts[both])
        return LandmarkResult(points, img_ok | vid_ok, counts)
