"""Rendering through the pipeline: chunking, outputs, background, interruption, personalised path,
and an end-to-end audio -> motion -> frames -> mp4 run on tiny models."""

from __future__ import annotations

import dataclasses
import math

import av
import pytest
import torch

from mimictalk_lib.a2m import A2MConfig, InContextAudio2MotionModel
from mimictalk_lib.errors import InputError
from mimictalk_lib.pipeline import (
    TalkingSession,
    audio_to_motion,
    build_session,
    iter_talking_head,
    motion_frames_for,
    one_shot_source,
    render_talking_head,
    render_to_video,
)
from mimictalk_lib.renderer import RendererConfig, RenderSource, load_renderer
from tests.fixtures.tiny_a2m import randomize_, speech_like, tiny_hubert
from tests.fixtures.tiny_renderer import tiny_checkpoint
from tests.pipeline.conftest import make_identity, motion

AAC_FRAME = 1024


@pytest.fixture(scope="module")
def session(renderer, face_model, identity):
    return build_session(renderer, face_model, one_shot_source(renderer, identity), motion(4), pose="identity")


def test_chunked_stream_equals_the_renderers_own_batch(renderer, session):
    chunks = list(iter_talking_head(session, chunk_size=3))
    assert [c.start for c in chunks] == [0, 3] and [c.images.shape[0] for c in chunks] == [3, 1]
    images = torch.cat([c.images for c in chunks])
    masks = torch.cat([c.masks for c in chunks])
    assert images.shape == (4, 64, 64, 3) and images.dtype == torch.float32 and masks.shape == (4, 64, 64)
    assert images.min() >= 0 and images.max() <= 1 and masks.min() >= 0 and masks.max() <= 1
    assert images.std() > 0.01 and not torch.equal(images[1:], images[:-1])  # frames differ

    # one 4-frame batch through Renderer.render_frames with every input materialised
    src = session.source
    source = RenderSource(src.cano_planes, session.cano_secc, session.src_secc, src.src_kp, src.torso_ref, src.bg, src.segmap)
    ref = renderer.render_frames(source, session.drv_secc(slice(0, 4)), session.camera, session.kp_d, chunk_size=4)
    want = ((ref.image + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert (images - want).abs().max() <= 1e-5
    want_mask = torch.nn.functional.interpolate(ref.alpha, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert (masks - want_mask).abs().max() <= 1e-5

    as_u8 = next(iter_talking_head(session, chunk_size=1, output_dtype=torch.uint8)).images
    # a suspended stream leaves inference mode off, and hands out ordinary tensors
    assert not torch.is_inference_mode_enabled() and not as_u8.is_inference() and not images.is_inference()
    assert as_u8.dtype == torch.uint8 and (as_u8.float() - images[:1] * 255).abs().max() <= 0.5 + 1e-3


def test_background_override_reaches_the_frames(session):
    red = torch.zeros(1, 64, 64, 3)
    red[..., 0] = 1
    base = next(iter_talking_head(session, chunk_size=1))
    other = dataclasses.replace(session, source=session.source.with_background(red))
    got = next(iter_talking_head(other, chunk_size=1))
    outside = base.masks[0] < 0.5  # where the head does not cover the background
    assert outside.sum() > 0
    shift = got.images[0][outside] - base.images[0][outside]  # [N, 3]
    assert shift[:, 0].mean() > 0.02 and shift[:, 0].mean() > shift[:, 1:].mean() + 0.02
    torch.testing.assert_close(got.masks, base.masks)  # the head is unchanged


def test_interrupt_between_chunks(monkeypatch, renderer, face_model, identity):
    parts = []
    original = TalkingSession.drv_secc
    monkeypatch.setattr(TalkingSession, "drv_secc", lambda self, part: parts.append(part) or original(self, part))
    calls = []

    def cancel(done, total, **info):
        calls.append((done, total))
        raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        render_talking_head(renderer, face_model, identity, motion(3), chunk_size=1, on_step=cancel)
    assert calls == [(1, 3)]  # stopped after the first chunk
    assert parts == [slice(0, 1)]  # driving SECC maps are made per chunk, never for the clip


def test_personalised_checkpoint_renders_with_identity_fallback(face_model, identity):
    loaded = load_renderer(tiny_checkpoint("personalised", seed=2), base_config=RendererConfig.tiny())
    assert loaded.cano_planes is not None
    out = render_talking_head(loaded, face_model, identity, motion(1), blink="none", chunk_size=1)
    assert out.images.shape == (1, 64, 64, 3) and out.fps == 25 and torch.isfinite(out.images).all()
    # the learned tri-grid is used, not planes from the identity's head image
    one_shot = render_talking_head(loaded.model, face_model, identity, motion(1), blink="none", chunk_size=1)
    assert (out.images - one_shot.images).abs().max() > 1e-3


def test_stochastic_mode_is_seeded(session):
    def first(seed):
        gen = torch.Generator().manual_seed(seed)
        return next(iter_talking_head(session, chunk_size=1, deterministic=False, generator=gen)).images

    a, b = first(0), first(0)
    assert torch.equal(a, b)
    assert not torch.equal(a, first(1))


# --- audio -> motion -> video ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def a2m():
    torch.manual_seed(0)
    cfg = dataclasses.replace(A2MConfig.tiny(True), motion_dim=64)  # tiny widths, real motion size
    return randomize_(InContextAudio2MotionModel(cfg), seed=0).eval()


def test_motion_trim_rules():
    assert motion_frames_for(16_000, 28, "audio") == 25  # 1 s of audio = 25 frames
    assert motion_frames_for(16_000, 28, "upstream") == 24  # upstream drops the last 4
    assert motion_frames_for(16_000, 28, "none") == 28
    assert motion_frames_for(400, 4, "upstream") == 1
    with pytest.raises(InputError, match="trim"):
        motion_frames_for(16_000, 28, "longest")


def test_end_to_end_tiny_run_writes_an_mp4(tmp_path, a2m, renderer, face_model, identity):
    hubert = tiny_hubert()
    seconds, rate = 0.16, 22_050
    wave = speech_like(seconds, rate)
    audio = {"waveform": wave[None, None], "sample_rate": rate}  # ComfyUI AUDIO
    steps = []
    m = audio_to_motion(a2m, hubert, audio, steps=3, generator=torch.Generator().manual_seed(0),
                        on_step=lambda d, t, **kw: steps.append((d, t, kw.get("stage"))))
    n = round(seconds * 25)
    assert m.shape == (n, 64) and torch.isfinite(m).all()
    assert steps[-1][:2] == (100, 100) and {s for _, _, s in steps} == {"audio features", "motion sampling"}
    assert all(a <= b for (a, _, _), (b, _, _) in zip(steps, steps[1:]))  # one monotone progress bar
    again = audio_to_motion(a2m, hubert, audio, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again)

    photo = make_identity(face_model, frames=1, kind="photo")
    styled = audio_to_motion(a2m, hubert, audio, style=photo, steps=3, generator=torch.Generator().manual_seed(0))
    assert styled.shape == m.shape and not torch.equal(styled, m)  # the image prompt conditions the motion
    with pytest.raises(InputError, match="style_audio"):
        audio_to_motion(a2m, hubert, audio, style=identity, steps=3)

    session = build_session(renderer, face_model, identity, m, pose="identity")
    out = render_to_video(session, tmp_path / "talk.mp4", audio=audio, chunk_size=3, metadata={"prompt": {"k": 1}})
    assert out.num_frames == n
    with av.open(str(out.path)) as c:
        vs = c.streams.video[0]
        assert sum(1 for _ in c.decode(vs)) == n and float(vs.average_rate) == 25
        assert c.metadata["prompt"] == '{"k": 1}'
    with av.open(str(out.path)) as c:
        samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
        assert abs(samples - n / 25 * rate) <= AAC_FRAME and math.isclose(n / 25, seconds, abs_tol=0.02)
