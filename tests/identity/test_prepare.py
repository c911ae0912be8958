"""prepare_identity / prepare_photo_identity on synthetic clips: framing, saved identity, preview,
and every bad-input path (no face, several faces, cut-off or tiny face, short clip, missing
models) with nothing written on failure."""

import logging

import pytest
import torch

from mimictalk_lib.errors import AssetMissingError, DependencyMissingError, FaceModelMissingError, InputError
from mimictalk_lib.identity import (
    FORMAT_VERSION,
    FitSchedule,
    Identity,
    contact_sheet,
    lip_rects,
    PrepareBackends,
    PrepareOptions,
    prepare_identity,
    prepare_photo_identity,
)
from mimictalk_lib.identity.clip import load_clip, track
from mimictalk_lib.identity.frames import FACE_CENTRE_Y_FRACTION, FACE_HEIGHT_FRACTION
from tests.fixtures.synthetic_identity import BlobLandmarker, LandmarkSegmenter, draw_clip, observable_face_model

FAST = FitSchedule(pose_iters=5, joint_iters=5, fine_iters=2)


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    return observable_face_model(tmp_path_factory.mktemp("bfm"))


def run(frames, face_model, **kw):
    kw.setdefault("fps", 25)
    return prepare_identity(frames, landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(),
                            face_model=face_model, schedule=FAST, **kw)


def test_clip_identity_end_to_end(face_model, tmp_path):
    frames = draw_clip(36).float() / 255  # 30 fps, 1.2 s -> 30 frames at 25 fps
    steps = []
    out = tmp_path / "me.safetensors"
    ident = run(frames, face_model, fps=30, output=out, on_step=lambda d, t, **k: steps.append((d, t, k["stage"])))
    assert ident.num_frames == 30 and ident.frames.shape == (30, 512, 512, 3) and ident.frames.dtype == torch.uint8
    # the face box lands where the upstream examples have it
    pts = ident.landmarks[:, :468, :2]
    height = (pts[..., 1].amax(1) - pts[..., 1].amin(1)) / 512
    centre_y = (pts[..., 1].amax(1) + pts[..., 1].amin(1)) / 2 / 512
    assert height.median() == pytest.approx(FACE_HEIGHT_FRACTION, abs=0.03)
    assert centre_y.median() == pytest.approx(FACE_CENTRE_Y_FRACTION, abs=0.03)
    # progress: one monotone bar through every stage, ending at its total
    done = [d for d, _, _ in steps]
    assert done == sorted(done) and steps[-1][:2] == (1000, 1000)
    assert [s for s in ("frames", "landmarks", "segmentation", "fit", "plate") if any(k == s for *_, k in steps)] == [
        "frames", "landmarks", "segmentation", "fit", "plate"]
    # saved atomically, loads back identical (the frames near-lossless: tests/identity/test_storage.py)
    loaded = Identity.load(out)
    assert loaded.meta["format_version"] == FORMAT_VERSION and loaded.meta["kind"] == "clip"
    assert loaded.meta["frames_codec"]["psnr_db"] > 40 and (loaded.frames.int() - ident.frames.int()).abs().float().mean() < 1
    for name in ("segmaps", "exp", "cameras", "keypoints", "lip_rects", "plate", "torso_ref", "torso_ref_mask"):
        assert torch.equal(getattr(loaded, name), getattr(ident, name)), name
    assert not list(tmp_path.glob(".*tmp"))
    assert ident.cameras.shape == (30, 25) and ident.keypoints.shape == (30, 68, 3)
    assert ident.com_images([0, 1]).shape == (2, 512, 512, 3)
    sheet = contact_sheet(ident)
    assert sheet.shape == (1, 512 + 25, 1024, 3) and 0 <= float(sheet.min()) and float(sheet.max()) <= 1


def test_photo_identity(face_model, tmp_path):
    img = draw_clip(1, 400, 300, centre=(150.0, 160.0), radius=50)[0]
    ident = prepare_photo_identity(img, landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(),
                                   face_model=face_model, schedule=FAST, output=tmp_path / "p.safetensors")
    assert ident.is_photo and ident.num_frames == 1 and ident.id.shape == (1, 80)
    assert Identity.load(tmp_path / "p.safetensors").is_photo
    with pytest.raises(InputError, match="one image"):
        prepare_photo_identity(torch.zeros(2, 64, 64, 3), landmarker=BlobLandmarker(),
                               segmenter=LandmarkSegmenter(), face_model=face_model)


def test_clip_identity_under_inference_mode(face_model):
    """As a ComfyUI node calls it (inference mode on, input frames inference tensors): the same
    identity as outside inference mode."""
    frames = draw_clip(25).float() / 255  # the shortest clip accepted: 1 s
    want = run(frames, face_model)
    with torch.inference_mode():
        got = run(frames.clone(), face_model)
    for name in ("frames", "segmaps", "id", "exp", "euler", "trans", "cameras", "keypoints", "plate", "torso_ref"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def tracked(frames, missing="drop", **kw):
    """The frame and landmark stages only (no segmentation, fit or plate)."""
    lm = BlobLandmarker()
    return track(load_clip(frames, landmarker=lm, fps=25, **kw), lm, missing=missing)


def test_few_faceless_frames_are_dropped_and_named(caplog):
    with caplog.at_level(logging.WARNING, logger="MimicTalk"):
        clip = tracked(draw_clip(30, blank=(3, 17)))
    assert clip.frames.shape[0] == 28 and clip.meta()["dropped_frames"] == [3, 17]
    assert clip.positions.tolist() == [k for k in range(30) if k not in (3, 17)]
    assert "frames 3, 17" in caplog.text


def test_faceless_frames_can_be_interpolated():
    clip = tracked(draw_clip(30, blank=(3,)), missing="interpolate")
    assert clip.frames.shape[0] == 30 and clip.meta()["interpolated_frames"] == [3]
    torch.testing.assert_close(clip.landmarks[3], (clip.landmarks[2] + clip.landmarks[4]) / 2)


def test_mostly_faceless_clip_fails_and_writes_nothing(face_model, tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(InputError, match=r"12 of 30 frames .*no face found: frames 0, 1, 2"):
        run(draw_clip(30, blank=tuple(range(12))), face_model, output=out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_several_faces_take_the_largest(caplog):
    with caplog.at_level(logging.WARNING, logger="MimicTalk"):
        clip = tracked(draw_clip(26, second_face=True))
    assert caplog.text.count("more than one face") == 1  # warned once
    width = clip.landmarks[0, :, 0].amax() - clip.landmarks[0, :, 0].amin()
    assert width > 200  # the large face, framed


def test_cut_off_face_is_reported(face_model):
    # the face leaves the frame through the top edge for most frames
    with pytest.raises(InputError, match="cut off by the frame edge"):
        run(draw_clip(30, centre=(320.0, 20.0), radius=60), face_model)


def test_tiny_face_and_short_clip(face_model):
    with pytest.raises(InputError, match="px tall"):
        run(draw_clip(30, radius=12), face_model)
    with pytest.raises(InputError, match=r"0\.80 s"):
        run(draw_clip(20), face_model)


def test_grayscale_and_uncropped_square_input():
    clip = load_clip(draw_clip(26, 256, 256, centre=(128.0, 130.0), radius=60), landmarker=BlobLandmarker(),
                     fps=25, crop="none")
    assert clip.meta()["crop"] == [0, 0, 256] and clip.frames.shape == (26, 512, 512, 3)
    with pytest.raises(InputError, match="not square"):
        load_clip(draw_clip(26), landmarker=BlobLandmarker(), fps=25, crop="none")
    gray = draw_clip(26).float().mean(-1, keepdim=True) / 255  # accepted, but no face colour is left
    with pytest.raises(InputError, match="no face found"):
        load_clip(gray, landmarker=BlobLandmarker(), fps=25)


def test_missing_models(tmp_path, face_model, monkeypatch):
    frames = draw_clip(26)
    with pytest.raises(FaceModelMissingError):
        prepare_identity(frames, fps=25, landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(),
                         face_model=tmp_path / "no_bfm")
    with pytest.raises(AssetMissingError, match="face_landmarker.task"):
        prepare_identity(frames, fps=25, landmarker=tmp_path / "face_landmarker.task",
                         segmenter=LandmarkSegmenter(), face_model=face_model)
    with pytest.raises(AssetMissingError, match="selfie_multiclass"):
        prepare_identity(frames, fps=25, landmarker=BlobLandmarker(),
                         segmenter=tmp_path / "selfie_multiclass_256x256.tflite", face_model=face_model)
    import builtins

    real_import = builtins.__import__

    def no_mediapipe(name, *args, **kwargs):
        if name.startswith("mediapipe"):
            raise ImportError("No module named 'mediapipe'")
        return real_import(name, *args, **kwargs)

    model = tmp_path / "face_landmarker.task"
    model.write_bytes(b"x")
    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    with pytest.raises(DependencyMissingError, match="pip install mediapipe"):
        prepare_identity(frames, fps=25, landmarker=model, segmenter=LandmarkSegmenter(), face_model=face_model)


def test_lip_rects_follow_upstream_rule():
    lm = torch.zeros(2, 68, 2)
    lm[:, 48:60] = torch.tensor([[100.0, 200.0], [140.0, 220.0]]).repeat(6, 1)  # lips span 100..140 x 200..220
    lm[1, 48:60] += torch.tensor([390.0, 0.0])  # near the right edge: shifted inside
    r = lip_rects(lm, 512)
    # centre (120, 210), half = int(20 * 1.2) = 24 -> x 96..144, y 186..234
    assert r[0].tolist() == [96, 144, 186, 234]
    assert r[1].tolist() == [512 - 48, 512, 186, 234]


def test_cancel_leaves_nothing_on_disk(face_model, tmp_path):
    out = tmp_path / "cancelled.safetensors"

    def cancel(done, total, stage=None, **info):
        if stage == "fit":
            raise KeyboardInterrupt("cancelled by the user")

    with pytest.raises(KeyboardInterrupt):
        run(draw_clip(26), face_model, output=out, on_step=cancel)
    assert not list(tmp_path.iterdir())


def test_given_face_model_is_not_moved(face_model):
    import copy

    from mimictalk_lib.identity.prepare import as_face_model

    assert as_face_model(face_model, "cpu") is face_model  # already right: used as is
    f64 = copy.deepcopy(face_model).double()
    got = as_face_model(f64, "cpu")
    assert got.mean_shape.dtype == torch.float32 and f64.mean_shape.dtype == torch.float64  # caller's untouched


def test_backends_and_options_equal_the_keyword_form(face_model):
    """The dataclass form and the documented keyword form are one code path: equal results (the same
    deterministic computation). Keywords override the dataclasses; unknown or missing ones are refused."""
    frames = draw_clip(26)
    backends = PrepareBackends(landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(), face_model=face_model)
    a = prepare_identity(frames, backends, PrepareOptions(schedule=FAST, missing="interpolate"), fps=25)
    b = run(frames, face_model, missing="interpolate")
    c = prepare_identity(frames, backends, PrepareOptions(schedule=FAST, crop="none"), fps=25, crop="auto",
                         missing="interpolate")  # the keyword wins over the option
    for other in (b, c):
        for name in ("id", "exp", "euler", "trans", "cameras", "keypoints", "lip_rects", "plate"):
            assert torch.equal(getattr(a, name), getattr(other, name)), name
    assert a.coefficients.exp is a.exp and a.coefficients.pose.trans is a.trans
    with pytest.raises(TypeError, match=r"prepare_identity\(\) got unexpected keyword arguments \['crop_mode'\]"):
        prepare_identity(frames, backends, fps=25, crop_mode="auto")
    with pytest.raises(TypeError, match=r"needs backends=PrepareBackends\(\.\.\.\) or the keyword arguments "
                                        r"\['segmenter'\]"):
        prepare_photo_identity(frames[:1], landmarker=BlobLandmarker(), face_model=face_model)
