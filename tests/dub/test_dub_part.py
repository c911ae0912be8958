"""A part of a dub (start_frame, frame_count) is the same frames as the whole dub (issue 17): the
motion, blink schedule and poses are planned for the whole speech and the part's face frames render
in the whole dub's chunks; an mp4 part carries its stretch of the speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimictalk_lib.dub import dub_video
from mimictalk_lib.errors import InputError
from tests.dub.conftest import identity_for, motion, source_frames
from tests.dub.test_dub import FPS, speech


@pytest.fixture(scope="module")
def clip(face_model):
    frames = source_frames(12)
    return frames, identity_for(face_model, frames, FPS, dropped=(4,))  # source frame 5 has no face


@pytest.mark.parametrize("start, count", [(5, 8), (0, 4), (7, 0), (17, 1)])
def test_a_part_equals_the_same_frames_of_the_whole_dub(clip, renderer, face_model, start, count):
    frames, ident = clip
    kw = dict(fps=FPS, renderer=renderer, face_model=face_model, identity=ident, motion=motion(15), chunk_size=3,
              blink="period")
    whole = dub_video(frames, speech(0.6), **kw)
    steps = []
    part = dub_video(frames, speech(0.6), start_frame=start, frame_count=count, on_step=lambda d, t: steps.append((d, t)), **kw)
    stop = 18 if count == 0 else start + count
    assert whole.frames.shape[0] == 18 and part.frames.shape[0] == stop - start
    assert torch.equal(part.frames, whole.frames[start:stop])
    assert part.report.frames == stop - start and f"part: frames {start}-{stop - 1} of 18" in part.report.summary()
    assert steps[-1] == (stop - start, stop - start)


def test_a_part_past_the_end_is_refused(clip, renderer, face_model):
    frames, ident = clip
    with pytest.raises(InputError, match="start_frame / frame_count: start frame 18 is past the end"):
        dub_video(frames, speech(0.6), fps=FPS, renderer=renderer, face_model=face_model, identity=ident,
                  motion=motion(15), start_frame=18)


@pytest.mark.parametrize("from_file", [False, True])
def test_an_mp4_part_has_its_frames_and_its_stretch_of_the_speech(tmp_path, clip, renderer, face_model, from_file):
    import av

    from tests.nodes.tiny_assets import write_wav

    frames, ident = clip
    audio = speech(0.6)
    audio.waveform[:, : audio.sample_rate // 5] = 0  # silent until 0.2 s = frame 6, where the part starts
    if from_file:  # a file is muxed from the file for a whole dub: a part must not take all of it
        write_wav(tmp_path / "speech.wav", audio.waveform[0], audio.sample_rate)
        audio = str(tmp_path / "speech.wav")
    res = dub_video(frames, audio, fps=FPS, renderer=renderer, face_model=face_model, identity=ident,
                    motion=motion(15), output=tmp_path / "part.mp4", start_frame=6, frame_count=9)
    with av.open(str(res.report.path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9
    with av.open(str(res.report.path)) as c:
        a = c.streams.audio[0]
        wave = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(a)])
        seconds = wave.size / a.channels / a.codec_context.sample_rate
    assert abs(seconds - 9 / FPS) < 0.05
    assert np.sqrt(np.mean(wave[: wave.size // 2] ** 2)) > 0.1  # the tone from 0.2 s on, not the silence before
