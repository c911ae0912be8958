"""dub_video end to end on the tiny renderer: the output has the source's size, rate and the audio's
length, only the face box changes, frames without a face are untouched, and it streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimictalk_lib.dub import dub_video
from mimictalk_lib.dub.pasteback import CropTransform
from mimictalk_lib.dub.source import VideoFileFrames
from mimictalk_lib.dub.timeline import source_indices
from mimictalk_lib.errors import InputError
from mimictalk_lib.video import Audio, read_video, write_video
from tests.dub.conftest import BOX, RENDER, SOURCE_HW, identity_for, motion, source_frames

FPS = 30.0


def speech(seconds: float, rate: int = 16000) -> Audio:
    t = torch.arange(int(seconds * rate)) / rate
    return Audio((0.3 * torch.sin(2 * np.pi * 220 * t))[None].float(), rate)


def outside_box(hw=SOURCE_HW) -> torch.Tensor:
    x0, y0, x1, y1 = CropTransform(BOX.x0, BOX.y0, BOX.side, RENDER, hw).region()
    m = torch.ones(hw, dtype=torch.bool)
    m[y0:y1, x0:x1] = False
    return m


@pytest.fixture(scope="module")
def clip(face_model):
    frames = source_frames(12)
    return frames, identity_for(face_model, frames, FPS, dropped=(4,))


def test_dub_frames_keep_size_rate_length_and_background(clip, renderer, face_model):
    frames, ident = clip
    audio = speech(0.6)  # 18 frames at 30 fps > 12 source frames: ping-pong
    res = dub_video(frames, audio, fps=FPS, renderer=renderer, face_model=face_model, identity=ident,
                    motion=motion(15), chunk_size=3)
    out, rep = res.frames, res.report
    assert out.shape == (18, *SOURCE_HW, 3) and out.dtype == torch.uint8
    assert (rep.frames, rep.fps, rep.width, rep.height, rep.source_frames) == (18, FPS, 160, 96, 12)
    idx = source_indices(18, 12, "pingpong")
    outside = outside_box()
    assert torch.equal(out[:, outside], frames[torch.from_numpy(idx)][:, outside])  # background/body untouched
    # 25 fps position 4 was dropped: source frame 5 (0.167 s) has no face and is written as it is
    no_face = [k for k, s in enumerate(idx) if s == 5]
    assert rep.no_face_frames == len(no_face) == 2
    for k in no_face:
        assert torch.equal(out[k], frames[5])
    rendered = [k for k in range(18) if k not in no_face]
    changed = (out[rendered].int() - frames[torch.from_numpy(idx[rendered])].int()).abs().flatten(1).amax(1)
    assert (changed > 10).all()  # every other frame got a (random-weight) face pasted in
    assert "2 frames without a face" in rep.summary()


def test_dub_is_the_same_for_any_chunk_size(clip, renderer, face_model):
    frames, ident = clip
    kw = dict(fps=FPS, renderer=renderer, face_model=face_model, identity=ident, motion=motion(10))
    a = dub_video(frames, speech(0.2), chunk_size=2, **kw).frames
    b = dub_video(frames, speech(0.2), chunk_size=5, **kw).frames
    # the renderer is deterministic, but fp32 kernels round differently for other batch sizes: a few
    # pixels may land on the other side of a uint8 level (a chunking bug would misplace whole frames)
    diff = (a.int() - b.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # measured: 1 level on 4e-6 of the values


def test_trim_and_loop(clip, renderer, face_model):
    frames = source_frames(4)
    ident = identity_for(face_model, frames, FPS)
    kw = dict(fps=FPS, renderer=renderer, face_model=face_model, identity=ident, motion=motion(10), chunk_size=6)
    trimmed = dub_video(frames, speech(0.3), length="trim", **kw)
    assert trimmed.report.frames == 4
    looped = dub_video(frames, speech(0.2), length="loop", **kw)
    assert looped.report.frames == 6
    assert torch.equal(looped.frames[4][outside_box()], frames[0][outside_box()])


def test_dub_writes_an_mp4_at_the_source_rate_with_the_audio(tmp_path, clip, renderer, face_model):
    import av

    frames, ident = clip
    src_path = write_video(tmp_path / "source.mp4", frames, FPS, crf=0, preset="ultrafast").path
    out = tmp_path / "dub.mp4"
    out.write_bytes(b"an older file")  # replaced only once the new video is complete
    res = dub_video(src_path, speech(0.5), renderer=renderer, face_model=face_model, identity=ident,
                    motion=motion(13), output=out, chunk_size=4)
    assert res.frames is None and res.report.path == str(out)
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.width, v.codec_context.height) == (160, 96)
        assert float(v.average_rate) == FPS
        n = sum(1 for _ in c.decode(v))
    assert n == 15
    assert abs(a.duration * a.time_base - 0.5) < 0.05
    back = read_video(out, with_audio=False).frames
    src = read_video(src_path, with_audio=False).frames
    idx = torch.from_numpy(source_indices(15, 12, "pingpong"))
    # outside the face box the dub is the source again, up to the output's H.264 quantisation (crf 19)
    err = (back[:, outside_box()].float() - src[idx][:, outside_box()].float()).abs().mean()
    assert err < 2.0
    assert not list(tmp_path.glob(".*partial*"))


def test_file_source_reads_any_order_with_a_bounded_window(tmp_path):
    frames = source_frames(40, hw=(32, 48))
    path = write_video(tmp_path / "s.mp4", frames, 25.0, crf=0, preset="ultrafast").path
    decoded = read_video(path, with_audio=False).frames
    src = VideoFileFrames(path, window_bytes=6 * 32 * 48 * 3)  # 6 frames
    order = source_indices(130, 40, "pingpong")  # forwards, backwards, forwards, backwards
    got = torch.cat([src.read(order[i: i + 7]) for i in range(0, len(order), 7)])
    assert torch.equal(got, decoded[torch.from_numpy(order)])
    assert src.block == 6 and len(src._buf) <= 6 and src.seeks > 0
    with pytest.raises(InputError, match="ends after 40 frames"):
        src.read([45])
    src.close()


def test_photo_dub_keeps_the_photo_size_and_background(face_model, renderer):
    photo = source_frames(1)
    ident = identity_for(face_model, photo, 25.0)
    ident.meta["kind"] = "photo"
    res = dub_video(photo[0], speech(0.2), renderer=renderer, face_model=face_model, identity=ident, motion=motion(10))
    assert res.frames.shape == (5, *SOURCE_HW, 3)
    assert torch.equal(res.frames[:, outside_box()], photo[:, outside_box()].expand(5, -1, -1))


def test_bad_inputs_are_explained(clip, renderer, face_model):
    frames, ident = clip
    kw = dict(renderer=renderer, face_model=face_model, identity=ident, motion=motion(10))
    with pytest.raises(InputError, match="prepared from a 160x96 source"):
        dub_video(source_frames(12, hw=(96, 170)), speech(0.3), fps=FPS, **kw)
    with pytest.raises(InputError, match="frame rate"):
        dub_video(frames, speech(0.3), **kw)
    with pytest.raises(InputError, match="pose must be"):
        dub_video(frames, speech(0.3), fps=FPS, pose="motion", **kw)
    with pytest.raises(InputError, match="a2m and hubert"):
        dub_video(frames, speech(0.3), fps=FPS, **{**kw, "motion": None})


def test_portrait_video_with_the_crop_leaving_the_frame(face_model, renderer):
    """A vertical video whose face box runs past the right edge (the identity padded it): the output
    keeps the portrait size and only the part of the box inside the frame changes."""
    frames = source_frames(3, hw=(160, 96))  # BOX spans x 70..142, the frame ends at 96
    ident = identity_for(face_model, frames, 25.0)
    res = dub_video(frames, speech(0.12), fps=25.0, renderer=renderer, face_model=face_model, identity=ident,
                    motion=motion(3))
    assert res.frames.shape == (3, 160, 96, 3)
    outside = outside_box((160, 96))
    assert torch.equal(res.frames[:, outside], frames[:, outside])
    assert not torch.equal(res.frames[:, ~outside], frames[:, ~outside])


def test_cancel_leaves_an_existing_output_alone(tmp_path, clip, renderer, face_model):
    frames, ident = clip
    out = tmp_path / "dub.mp4"
    out.write_bytes(b"the user's earlier dub")

    class Cancelled(Exception):
        pass

    def cancel(done, total, **info):
        if done >= 4:
            raise Cancelled

    with pytest.raises(Cancelled):
        dub_video(frames, speech(0.4), fps=FPS, renderer=renderer, face_model=face_model, identity=ident,
                  motion=motion(10), output=out, chunk_size=2, on_step=cancel)
    assert out.read_bytes() == b"the user's earlier dub"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dub.mp4"]  # no partial file left


def test_variable_frame_rate_source_is_reported(clip, renderer, face_model):
    frames, ident = clip
    vfr = type(ident)(**{**ident.__dict__, "meta": {**ident.meta, "variable_frame_rate": True}})
    res = dub_video(frames, speech(0.1), fps=FPS, renderer=renderer, face_model=face_model, identity=vfr,
                    motion=motion(3))
    assert res.report.variable_frame_rate and "constant 30 fps" in res.report.summary()


def test_style_prompt_is_the_start_of_a_long_source(tmp_path, monkeypatch, clip, renderer, face_model):
    """ICS-A2M's style prompt comes from at most STYLE_SECONDS of the source (every sampling window
    attends to the whole prompt: a 5-minute prompt would grow memory and time with the source);
    only that much of the soundtrack is decoded."""
    import dataclasses

    import mimictalk_lib.pipeline as pipeline
    from mimictalk_lib.a2m import A2MConfig, InContextAudio2MotionModel, StylePrompt
    from mimictalk_lib.dub import dub as dub_module
    from tests.fixtures.tiny_a2m import randomize_, speech_like, tiny_hubert

    from tests.nodes.tiny_assets import write_wav

    frames, ident = clip
    write_wav(tmp_path / "long.wav", speech_like(3.0, 16000), 16000)  # a source file with a 3 s soundtrack
    head = dub_module._style_audio(tmp_path / "long.wav", None, seconds=1.0)
    assert abs(head.duration - 1.0) < 0.01
    assert dub_module._style_audio(frames, speech(2.0), seconds=0.5).duration == pytest.approx(0.5)
    seen = []
    monkeypatch.setattr(pipeline, "audio_to_motion", lambda *a, style=None, **k: seen.append(style) or motion(10))
    monkeypatch.setattr(dub_module, "STYLE_SECONDS", 0.2)
    a2m = randomize_(InContextAudio2MotionModel(dataclasses.replace(A2MConfig.tiny(True), motion_dim=64)), seed=0)
    dub_video(frames, speech(0.3), fps=FPS, renderer=renderer, face_model=face_model, identity=ident, a2m=a2m,
              hubert=tiny_hubert(), style_audio=speech(2.0))
    (style,) = seen
    assert isinstance(style, StylePrompt) and 1 <= style.num_frames <= 5  # 0.2 s at 25 fps


def test_speech_from_a_file_is_not_held_at_its_own_rate(tmp_path, clip, renderer, face_model):
    """With an output path, speech from a file is read at 16 kHz mono for the models (a 5-minute
    44.1 kHz stereo track held whole is 106 MB) and muxed from the file at its own rate."""
    import av

    from tests.fixtures.tiny_a2m import speech_like
    from tests.nodes.tiny_assets import write_wav

    frames, ident = clip
    write_wav(tmp_path / "speech.wav", speech_like(0.5, 44100), 44100)
    res = dub_video(frames, tmp_path / "speech.wav", fps=FPS, renderer=renderer, face_model=face_model, identity=ident,
                    motion=motion(13), output=tmp_path / "out.mp4")
    assert res.audio.sample_rate == 16000 and res.report.frames == 15
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.audio[0].codec_context.sample_rate == 44100
        assert abs(float(c.streams.audio[0].duration * c.streams.audio[0].time_base) - 0.5) < 0.05
