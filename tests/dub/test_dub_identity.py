"""The light identity of a dub source (mimictalk_lib.dub.identity): the same per-frame data as a
full preparation, pixels only for a bounded subset, frames analysed in bounded chunks whatever the
length; dub_video prepares it itself; bad inputs (no-face frames, tiny faces, portrait video,
variable frame rate) behave or fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimictalk_lib.dub import dub_video
from mimictalk_lib.dub import identity as light
from mimictalk_lib.dub.identity import DubIdentity, prepare_dub_identity
from mimictalk_lib.errors import InputError
from mimictalk_lib.identity import FitSchedule, prepare_identity
from mimictalk_lib.video import read_video, write_video
from tests.dub.conftest import motion
from tests.dub.test_dub import speech
from tests.fixtures.synthetic_identity import BlobLandmarker, LandmarkSegmenter, draw_clip, observable_face_model

FAST = FitSchedule(pose_iters=5, joint_iters=5, fine_iters=2)


@pytest.fixture(scope="module")
def fit_model(tmp_path_factory):
    return observable_face_model(tmp_path_factory.mktemp("bfm"))


class CountingLandmarker(BlobLandmarker):
    """Records how many frames each call analyses."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def detect(self, frames, *, video=True, on_step=None):
        if video:  # the tracking calls (IMAGE mode: the crop search on pass one's samples)
            self.batches.append(frames.shape[0])
        return super().detect(frames, video=video, on_step=on_step)


def prepare(frames, fit_model, **kw):
    kw.setdefault("fps", 25)
    kw.setdefault("landmarker", BlobLandmarker())
    return prepare_dub_identity(frames, segmenter=LandmarkSegmenter(), face_model=fit_model, schedule=FAST, **kw)


def test_light_identity_has_the_full_preparations_per_frame_data(fit_model):
    """In one chunk the fit sees the same landmarks as prepare_identity: same poses, expressions,
    segmentation, frame bookkeeping; the subset's frames are the full identity's crops."""
    frames = draw_clip(32, blank=(5, 6))  # 25 fps: positions 5 and 6 have no face
    full = prepare_identity(frames, fps=25, landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(),
                            face_model=fit_model, schedule=FAST)
    lite = prepare(frames, fit_model, keep_frames=4, chunk_frames=64)
    for key in ("frame_positions", "source_frames", "dropped_frames", "crop", "source_size"):
        assert lite.meta[key] == full.meta[key], key
    assert lite.meta["dropped_frames"] == [5, 6]
    for key in ("exp", "euler", "trans"):
        assert torch.allclose(getattr(lite, key), getattr(full, key), atol=1e-6), key  # same ops, same inputs
    assert torch.equal(lite.segmaps[torch.arange(lite.num_frames)], full.segmaps)
    rows = lite.subset.meta["frame_positions"]
    kept = [full.meta["frame_positions"].index(p) for p in rows]
    assert torch.equal(lite.subset.frames, full.frames[kept]) and rows[0] == 0
    assert lite.frames_held == 4 and lite.subset.id.shape == (1, 80)


@pytest.mark.parametrize("kind", ["frames", "file"])
def test_frames_held_do_not_grow_with_the_length(tmp_path, fit_model, monkeypatch, kind):
    """A clip three times longer: the same number of crops kept with pixels, every analysis call and
    every full-size crop batch bounded by the chunk sizes; only the per-frame rows grow."""
    crop_batches = []
    real_crop = light.crop_frames

    def counting_crop(frames, *a, **k):
        crop_batches.append(frames.shape[0])
        return real_crop(frames, *a, **k)

    monkeypatch.setattr(light, "crop_frames", counting_crop)
    held, sizes = [], []
    for n in (30, 90):
        frames = draw_clip(n, 180, 320, centre=(160.0, 80.0), radius=40)
        source = frames if kind == "frames" else write_video(tmp_path / f"{n}.mp4", frames, 25.0, crf=0).path
        lm = CountingLandmarker()
        crop_batches.clear()
        ident = prepare(source, fit_model, landmarker=lm, keep_frames=3, chunk_frames=8, size=64)
        assert ident.num_frames == n and len(ident.segmaps) == n
        assert max(lm.batches) <= 8 and sum(lm.batches) == n  # analysed in chunks, each frame once
        assert max(crop_batches) <= 8  # full-size frames are cut in batches of at most the chunk
        held.append(ident.frames_held)
        sizes.append(ident.subset.frames.shape)
        # besides the subset, only small per-frame rows: no tensor holds a frame's pixels
        tensors = [v for k, v in vars(ident).items() if torch.is_tensor(v)]
        assert tensors and all(t.shape[0] == n and t[0].numel() <= 64 for t in tensors)
    assert held == [3, 3] and sizes[0] == sizes[1]


def test_dub_prepares_the_light_identity_itself(fit_model, renderer):
    """identity=None: dub_video prepares it from the frames it dubs; frames without a face are kept
    untouched and counted, even when there are many (a dub never refuses them)."""
    frames = draw_clip(30, 120, 200, centre=(120.0, 60.0), radius=30, blank=tuple(range(10, 20)))  # a third faceless
    kw = dict(fps=25.0, renderer=renderer, face_model=fit_model, motion=motion(30))
    res = dub_video(frames, speech(1.2), landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(),
                    prepare_options={"schedule": FAST, "keep_frames": 4}, **kw)
    assert res.frames.shape == (30, 120, 200, 3)
    assert res.report.no_face_frames == 10 and "10 frames without a face" in res.report.summary()
    assert torch.equal(res.frames[10:20], frames[10:20])
    assert not torch.equal(res.frames[:10], frames[:10])
    ident = prepare(frames, fit_model, keep_frames=4, size=64)
    again = dub_video(frames, speech(1.2), identity=ident, **kw)
    assert torch.equal(again.frames, res.frames)  # the same as preparing first and passing it in


def test_light_identity_bad_inputs(fit_model):
    with pytest.raises(InputError, match="no face found in any"):
        prepare(draw_clip(30, blank=tuple(range(30))), fit_model)
    with pytest.raises(InputError, match="the face is only .* px tall"):
        prepare(draw_clip(30, 360, 640, radius=12), fit_model)
    with pytest.raises(InputError, match="landmarker and segmenter"):
        dub_video(draw_clip(5), speech(0.2), fps=25.0, renderer=None, face_model=fit_model, motion=motion(5))


def test_portrait_and_variable_rate_sources(fit_model, renderer):
    """A vertical video keeps its size; a variable-frame-rate batch (timestamps) is resampled by time,
    flagged, and the dub says it writes a constant rate."""
    frames = draw_clip(26, 200, 112, centre=(56.0, 70.0), radius=30)
    ident = prepare(frames, fit_model, size=64)
    assert ident.meta["source_size"] == [200, 112] and not ident.meta["variable_frame_rate"]
    res = dub_video(frames, speech(0.4), fps=25.0, identity=ident, renderer=renderer, face_model=fit_model, motion=motion(10))
    assert res.frames.shape == (10, 200, 112, 3)
    ts = np.cumsum([0.0] + [0.03 if k % 3 else 0.05 for k in range(25)])
    vfr = prepare(frames, fit_model, fps=None, timestamps=ts, size=64)
    assert vfr.meta["variable_frame_rate"]
    res = dub_video(frames, speech(0.4), fps=25.0, identity=vfr, renderer=renderer, face_model=fit_model, motion=motion(10))
    assert res.report.variable_frame_rate and "constant 25 fps" in res.report.summary()


def test_segmap_store_indexes_like_a_tensor():
    maps = torch.randint(0, 6, (3, 16, 16), dtype=torch.uint8)
    store = light.SegmapStore(16, light.SegmapStore.compress(maps), np.array([0, 0, 2, 1]))
    assert store.shape == (4, 16, 16) and len(store) == 4
    assert torch.equal(store[torch.tensor([3, 0, 1])], maps[[1, 0, 0]])
    assert torch.equal(store[[2]], maps[2:3])
    assert isinstance(DubIdentity, type)


def test_preparation_reports_each_chunk_and_can_be_cancelled(fit_model):
    class Cancelled(Exception):
        pass

    seen = []

    def on_step(done, total, **info):
        seen.append((done, total, info.get("stage")))
        raise Cancelled

    lm = CountingLandmarker()
    with pytest.raises(Cancelled):
        prepare(draw_clip(30), fit_model, landmarker=lm, chunk_frames=8, size=64, on_step=on_step)
    assert seen == [(8, 30, "dub identity")] and lm.batches == [8]  # stopped after the first chunk


def test_dub_of_one_photo_prepares_a_photo_identity(fit_model, renderer):
    photo = draw_clip(1, 120, 200, centre=(120.0, 60.0), radius=30)
    res = dub_video(photo, speech(0.2), renderer=renderer, face_model=fit_model, motion=motion(5),
                    landmarker=BlobLandmarker(), segmenter=LandmarkSegmenter(), prepare_options={"schedule": FAST})
    assert res.frames.shape == (5, 120, 200, 3) and res.report.no_face_frames == 0
    assert not torch.equal(res.frames[0], photo[0])
