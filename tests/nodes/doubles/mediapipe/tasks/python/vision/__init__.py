"""Test double of ``mediapipe.tasks.python.vision``: FaceLandmarker and ImageSegmenter over the
synthetic clips' flat-coloured faces (``BlobLandmarker`` / ``LandmarkSegmenter``)."""

import os
from types import SimpleNamespace

import numpy as np
import torch

try:
    from tests.fixtures.synthetic_identity import BlobLandmarker, LandmarkSegmenter
except ModuleNotFoundError:  # another project's ``tests`` package shadows ours (ComfyUI's, in the e2e server)
    import tests

    tests.__path__.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 7, "tests"))
    from tests.fixtures.synthetic_identity import BlobLandmarker, LandmarkSegmenter


class RunningMode:
    IMAGE, VIDEO = "IMAGE", "VIDEO"


def FaceLandmarkerOptions(**kwargs):  # noqa: N802 - mediapipe's name
    return SimpleNamespace(**kwargs)


def ImageSegmenterOptions(**kwargs):  # noqa: N802
    return SimpleNamespace(**kwargs)


def _landmarks(image):
    """(points [478, 3] in pixels or None) of the largest drawn face in a mediapipe Image."""
    frame = torch.from_numpy(np.ascontiguousarray(image.numpy_view()))[None]
    res = BlobLandmarker().detect(frame, video=False)
    return res.points[0] if bool(res.detected[0]) else None


class _Task:
    def __init__(self, options):
        self.options = options

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        pass


class FaceLandmarker(_Task):
    @classmethod
    def create_from_options(cls, options):
        return cls(options)

    def detect(self, image):
        pts = _landmarks(image)
        h, w = image.numpy_view().shape[:2]
        faces = [] if pts is None else [[SimpleNamespace(x=float(x) / w, y=float(y) / h, z=float(z) / w) for x, y, z in pts.tolist()]]
        return SimpleNamespace(face_landmarks=faces)

    def detect_for_video(self, image, timestamp_ms):
        return self.detect(image)


class ImageSegmenter(_Task):
    @classmethod
    def create_from_options(cls, options):
        return cls(options)

    def segment(self, image):
        frame = torch.from_numpy(np.ascontiguousarray(image.numpy_view()))[None]
        pts = _landmarks(image)
        marks = torch.zeros(1, 478, 3) if pts is None else pts[None]
        mask = LandmarkSegmenter().segment(frame, landmarks=marks)[0].numpy()
        return SimpleNamespace(category_mask=SimpleNamespace(numpy_view=lambda: mask))
