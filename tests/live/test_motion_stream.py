"""Incremental motion (issue 18): windows continue the motion already generated, no seams at
window borders, silence is idle motion, idle blinks / head sway are deterministic."""

import math

import numpy as np
import pytest
import torch

from mimictalk_lib.a2m import AudioFeatures, continue_motion
from mimictalk_lib.errors import InputError
from mimictalk_lib.face.blink import BLINK_PERIOD
from mimictalk_lib.live import IdleMotion, MotionStream, StreamSettings
from mimictalk_lib.live.motion import SAMPLES_PER_FRAME, border_jumps
from tests.fixtures.tiny_a2m import speech_like, synthetic_features, tiny_a2m, tiny_hubert

BORDER_FACTOR = 1.5  # window borders may be at most this much rougher than the inside of windows


@pytest.fixture(scope="module")
def model():
    return tiny_a2m(aux=True, seed=0)


@pytest.fixture(scope="module")
def hubert():
    return tiny_hubert(seed=0)


def _jumps(x):
    return (x[1:] - x[:-1]).norm(dim=-1)


def test_continue_motion_equals_a_sample_motion_window(model):
    """continue_motion is one window of the offline sampler: same noise, same frames."""
    feats = synthetic_features(80, seed=2)  # 40 frames
    g = torch.Generator().manual_seed(3)
    context = torch.randn(12, 8, generator=g) * 0.3
    out = continue_motion(model, feats, None, context, fade=4, steps=4, generator=torch.Generator().manual_seed(7))
    assert out.shape == (40 - 12 + 4, 8) and torch.isfinite(out).all()
    # the same window through sample_motion's machinery: context as known motion, noise drawn the same way
    noise = torch.randn(40, 8, generator=torch.Generator().manual_seed(7))
    from mimictalk_lib.a2m.sampler import Window, _place, _Run

    run = _Run(model, feats, None, noise, None, 1.0, 0.3, 1.5, torch.linspace(0, 1, 4), "midpoint",
               torch.device("cpu"), torch.float32, None, 3)
    ref = torch.zeros(40, 8)
    ref[:12] = context
    w = Window(0, 40, 8, 4)
    _place(ref, run.window(w, ref, 0), w)
    assert torch.equal(out, ref[8:])
    with pytest.raises(InputError, match="fade"):
        continue_motion(model, feats, None, context, fade=13, steps=4)


def _continuing_model(model, monkeypatch):
    """A closed-form "model": smooth motion sin(2 pi p / 40) (p = global frame) shifted so that it
    continues the last known (in-context) frame it is shown; a window shown no known frame gets a
    window-dependent offset instead, as independent samples would differ."""
    monkeypatch.setattr(model, "encode_audio", lambda hubert, *a, **k: hubert)
    monkeypatch.setattr(model.velocity_net, "embed_audio", lambda cond_audio, n: cond_audio[:, ::2])

    def velocity(x, t, audio_emb, cond, cond_mask, drop, key_mask=None):
        p = audio_emb[0, :, :1] / 2  # [n, 1] global motion frame of every position
        smooth = torch.sin(2 * math.pi * p / 40)
        known = (~cond_mask[0]).nonzero()
        if len(known):
            j = int(known.max())
            offset = cond[0, j] - smooth[j]  # continue the context
        else:
            offset = 2.0 * torch.sin(p.mean())
        return (smooth + offset).expand_as(x)  # a constant field: y(1) = v

    monkeypatch.setattr(model, "velocity", velocity)


def _stream_closed_form(model, total, hop, context, fade):
    """Drive continue_motion window by window exactly as MotionStream.push does (its motion
    bookkeeping), on features whose channel 0 is the global 50 Hz position."""
    emitted, motion = [], torch.zeros(context, 8)
    for step, t in enumerate(range(0, total, hop)):
        pos = torch.arange(2 * (t - context), 2 * (t + hop), dtype=torch.float32)
        hub = torch.zeros(len(pos), 32)
        hub[:, 0] = pos
        feats = AudioFeatures(hub, torch.zeros(len(pos)), len(pos) * 320)
        f = fade if step else 0
        new = continue_motion(model, feats, None, motion, fade=f, steps=3, cfg_scale=1.0, temperature=0.0)
        motion = torch.cat([motion[: context - f], new])[len(motion[: context - f]) + len(new) - context:]
        emitted.append(new[: len(new) - fade])
    return torch.cat(emitted)


def test_window_borders_are_seamless_with_a_closed_form_model(model, monkeypatch):
    """Windows continue the motion shown as their in-context prompt: with the prompt, borders are
    no rougher than the motion itself; without it (context 0) every border jumps. This fails if
    the context were misplaced in the window by even one frame."""
    _continuing_model(model, monkeypatch)
    own = 2 * math.pi / 40 * math.sqrt(8) * 1.01  # max |d/dframe| of the smooth motion, 8 dims
    naive = _stream_closed_form(model, 100, hop=5, context=0, fade=0)
    assert _jumps(naive).max() > 2 * own
    for context, fade in ((10, 0), (10, 2), (25, 4)):
        seamless = _stream_closed_form(model, 100, hop=5, context=context, fade=fade)
        assert len(seamless) == 100 - fade
        assert _jumps(seamless).max() <= own, (context, fade)


def test_stream_window_borders_with_the_tiny_network(model, hubert):
    """The real (random) tiny network on speech: motion at window borders is no rougher than
    BORDER_FACTOR x the motion inside windows (fixed seed)."""
    s = StreamSettings(hop=5, context=15, audio_context=5, fade=2, steps=4)
    stream = MotionStream(model, hubert, None, s, pitch="off", generator=torch.Generator().manual_seed(0))
    wav = speech_like(4.0, seed=3).numpy()
    hop = s.hop * SAMPLES_PER_FRAME
    motion = torch.cat([stream.push(wav[k: k + hop]) for k in range(0, len(wav) - hop + 1, hop)])
    assert motion.shape == (100 - s.fade, 8) and torch.isfinite(motion).all()
    border, inside = border_jumps(motion, s.hop, s.fade, first=s.hop - s.fade)
    assert border.mean() <= BORDER_FACTOR * inside.mean(), (border.mean(), inside.mean())


def test_push_sizes_silence_and_bad_samples(model, hubert):
    s = StreamSettings(hop=5, context=10, audio_context=5, fade=2, steps=3)
    stream = MotionStream(model, hubert, None, s, pitch="off")
    assert stream.push(np.zeros(5 * 640, np.float32)).shape == (3, 8)  # first push keeps `fade` tentative
    assert stream.push(np.zeros(5 * 640, np.float32)).shape == (5, 8)  # silence: idle motion, no error
    noisy = speech_like(0.4).numpy()
    noisy[100:200] = np.nan
    noisy[300] = np.inf
    out = stream.push(noisy)  # a burst of 10 frames (a worker catching up) with NaN / inf samples
    assert out.shape == (10, 8) and torch.isfinite(out).all()
    assert stream.frames_in == 20 and stream.frames_out == 18
    independent = MotionStream(model, hubert, None, StreamSettings(hop=5, context=0, fade=0, steps=3), pitch="off")
    for _ in range(3):  # no in-context motion: every window stands alone, nothing accumulates
        assert independent.push(np.zeros(5 * 640, np.float32)).shape == (5, 8)
        assert independent._motion.shape == (0, 8) and independent._hubert.shape == (0, 32)
    with pytest.raises(InputError, match="multiple of 640"):
        stream.push(np.zeros(1000, np.float32))
    with pytest.raises(InputError, match="at least fade"):
        MotionStream(model, hubert, None, StreamSettings(hop=5, context=10, fade=3), pitch="off").push(np.zeros(640 * 2))
    with pytest.raises(InputError, match="pitch"):
        MotionStream(model, hubert, None, s, pitch="loud")


def test_same_seed_same_stream(model, hubert):
    s = StreamSettings(hop=5, context=10, audio_context=5, fade=2, steps=3)
    wav = speech_like(0.8, seed=1).numpy()

    def run(seed):
        st = MotionStream(model, hubert, None, s, pitch="off", generator=torch.Generator().manual_seed(seed))
        return torch.cat([st.push(wav[k: k + 3200]) for k in range(0, len(wav), 3200)])

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_idle_blinks_and_sway():
    idle = IdleMotion(seed=4)
    closure = idle.blink(0, 3 * BLINK_PERIOD)
    for b in range(3):  # one blink per 5 s block, eyes open in between
        block = closure[b * BLINK_PERIOD: (b + 1) * BLINK_PERIOD]
        assert block.max() > 0.9 and 8 <= int((block > 0).sum()) + 1 <= 12 and block[20:].max() == 0
    assert torch.equal(idle.blink(100, 60), closure[100:160])  # any span, same values
    euler, trans = idle.pose(0, 500)
    assert euler[0].abs().max() == 0 and trans[0].abs().max() == 0  # starts at the source pose
    assert 0.005 < euler.abs().max() <= 0.03 + 1e-6 and trans.abs().max() <= 0.005 + 1e-6
    assert _jumps(euler).max() < 0.01  # smooth: well under a degree per frame
    e2, _ = idle.pose(250, 10)
    assert torch.allclose(e2, euler[250:260], atol=1e-6)
    assert not torch.equal(IdleMotion(seed=5).pose(0, 50)[0], euler[:50])
    assert IdleMotion(blinks=False).blink(0, 200).max() == 0 and IdleMotion(sway=0, shift=0).pose(0, 9)[0].abs().max() == 0
