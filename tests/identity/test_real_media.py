"""Identity preparation on real media with the real MediaPipe landmarker (skips when the media or
mediapipe is absent). The selfie-multiclass segmenter and the BFM are not available offline, so a
landmark-driven segmenter and the synthetic face model stand in for them.

The landmark check is independent of the landmarker: MediaPipe's BlazeFace detector (the
``face_detector.tflite`` inside ``face_landmarker.task``) finds the face box on every prepared
frame, and every mouth and eye landmark must lie inside it.

Marked slow: MediaPipe runs on 40 frames twice (IMAGE + VIDEO mode), ~15 s on 2 CPU cores.
"""

import zipfile

import numpy as np
import pytest
import torch

from mimictalk_lib.identity import FitSchedule, Identity, contact_sheet, prepare_identity, prepare_photo_identity
from mimictalk_lib.identity.frames import FACE_CENTRE_Y_FRACTION, FACE_HEIGHT_FRACTION, iter_video, resample_indices
from mimictalk_lib.identity.landmarks import EYE_INDICES, MOUTH_INDICES
from tests.fixtures.synthetic_bfm import write_synthetic_face_model
from tests.fixtures.synthetic_identity import LandmarkSegmenter

pytestmark = pytest.mark.slow
mp = pytest.importorskip("mediapipe")
FAST = FitSchedule(pose_iters=20, joint_iters=20, fine_iters=5)


@pytest.fixture(scope="module")
def landmarker_path(shared_data):
    path = shared_data / "face_landmarker.task"
    if not path.is_file():
        pytest.skip("face_landmarker.task is absent")
    return path


@pytest.fixture(scope="module")
def face_model_dir(tmp_path_factory):
    return write_synthetic_face_model(tmp_path_factory.mktemp("bfm"))


@pytest.fixture(scope="module")
def face_boxes_of(landmarker_path, tmp_path_factory):
    """BlazeFace boxes (x0, y0, x1, y1) of uint8 frames, from the detector inside the .task."""
    from mediapipe.tasks import python as mp_python
    from mediapipe.tasks.python import vision

    folder = tmp_path_factory.mktemp("detector")
    detector_path = zipfile.ZipFile(landmarker_path).extract("face_detector.tflite", folder)
    options = vision.FaceDetectorOptions(base_options=mp_python.BaseOptions(model_asset_path=detector_path))

    def detect(frames: torch.Tensor) -> list:
        boxes = []
        with vision.FaceDetector.create_from_options(options) as det:
            for f in frames:
                res = det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f.numpy())))
                b = max(res.detections, key=lambda d: d.bounding_box.width).bounding_box if res.detections else None
                boxes.append(None if b is None else (b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height))
        return boxes

    return detect


def assert_landmarks_on_face(identity: Identity, face_boxes_of):
    boxes = face_boxes_of(identity.frames)
    for i, box in enumerate(boxes):
        assert box is not None, f"frame {i}: the independent detector found no face"
        x0, y0, x1, y1 = box
        for name, idx in (("mouth", MOUTH_INDICES), ("eyes", EYE_INDICES)):
            p = identity.landmarks[i, list(idx), :2]
            inside = (p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)
            assert bool(inside.all()), f"frame {i}: {name} landmarks outside the detected face box {box}"


def test_talking_clip_end_to_end(shared_data, landmarker_path, face_model_dir, face_boxes_of, tmp_path):
    import av

    # 24 frames of the upstream example re-encoded at 15 fps (1.6 s): decoding + resampling path
    src = tmp_path / "german_15fps.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width = stream.height = 512
        stream.pix_fmt = "yuv420p"
        for k, (img, _) in enumerate(iter_video(shared_data / "German_20s.mp4")):
            if k == 24:
                break
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    saved = tmp_path / "german.identity.safetensors"
    ident = prepare_identity(src, landmarker=landmarker_path, segmenter=LandmarkSegmenter(),
                             face_model=face_model_dir, schedule=FAST, output=saved)
    assert ident.num_frames == 40
    assert ident.meta["source_frames"] == resample_indices(np.arange(24) / 15).tolist()
    # German_20s is already a portrait framing: the chosen crop is close to the whole frame
    x0, y0, side = ident.meta["crop"]
    assert 0.85 * 512 < side < 1.15 * 512 and abs(x0) < 60 and abs(y0) < 60
    assert_landmarks_on_face(ident, face_boxes_of)
    loaded = Identity.load(saved)
    assert torch.equal(loaded.landmarks, ident.landmarks) and loaded.meta["source"] == "german_15fps.mp4"
    assert contact_sheet(loaded).shape == (1, 512 + 25, 1024, 3)  # + the fit-quality band


def test_astronaut_photo_identity(shared_data, landmarker_path, face_model_dir, face_boxes_of):
    path = shared_data / "astronaut.png"
    if not path.is_file():
        pytest.skip("astronaut.png is absent")
    ident = prepare_photo_identity(path, landmarker=landmarker_path, segmenter=LandmarkSegmenter(),
                                   face_model=face_model_dir, schedule=FAST)
    assert ident.is_photo and ident.num_frames == 1
    # the full-body photo is cropped to the upstream portrait framing
    pts = ident.landmarks[0, :468, :2] / 512
    height = float(pts[:, 1].max() - pts[:, 1].min())
    centre = ((pts.max(0).values + pts.min(0).values) / 2).tolist()
    assert height == pytest.approx(FACE_HEIGHT_FRACTION, abs=0.05)
    assert centre[0] == pytest.approx(0.5, abs=0.05) and centre[1] == pytest.approx(FACE_CENTRE_Y_FRACTION, abs=0.05)
    assert_landmarks_on_face(ident, face_boxes_of)
