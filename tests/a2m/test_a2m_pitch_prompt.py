"""pYIN f0 tracking at the HuBERT rate (with Praat's silence rule); style prompts (clip crop, usable frames, image prompt)."""

import math

import pytest
import torch

from mimictalk_lib.a2m import AudioFeatures, StylePrompt, extract_f0
from mimictalk_lib.errors import InputError


def tone_then_silence(freq=220.0, start=0.5, stop=1.3, total=1.8, rate=16_000):
    t = torch.arange(int(total * rate)) / rate
    on = (t >= start) & (t < stop)
    return torch.where(on, 0.4 * torch.sin(2 * math.pi * freq * t), torch.zeros_like(t))


@pytest.fixture(scope="module")
def tone_f0():
    wav = tone_then_silence()
    return wav, extract_f0(wav, num_frames=96, tracker="pyin")  # 89 frames of audio, zero-padded to 96


def test_f0_of_a_tone_and_of_silence(tone_f0):
    wav, f0 = tone_f0
    n = (len(wav) - 512) // 320 + 1  # upstream's mel length: 89
    assert f0.shape == (96,) and f0.dtype == torch.float32
    assert f0[n:].abs().sum() == 0  # padding to the HuBERT length stays zero
    # frame i is centred on 20 ms * (i + 1): the tone spans 0.5-1.3 s -> frames 24..64
    inside = f0[28:60]
    assert ((inside - 220).abs() < 220 * 0.02).all()
    assert (f0[:20] == 0).all() and (f0[69:n] == 0).all()
    voiced = (f0 > 0).nonzero().flatten()
    assert abs(int(voiced[0]) - 24) <= 2 and abs(int(voiced[-1]) - 64) <= 2


def test_chunked_tracking_matches_one_pass(tone_f0):
    wav, f0 = tone_f0
    chunked = extract_f0(wav, num_frames=96, tracker="pyin", chunk_frames=30)
    same = (chunked > 0) == (f0 > 0)
    assert same.float().mean() > 0.95
    both = (chunked > 0) & (f0 > 0)
    assert ((chunked[both] - f0[both]).abs() <= f0[both] * 0.01).all()


def loud_then_quiet(quiet_ratio, freq=150.0, loud_until=0.5, total=3.0, rate=16_000):
    """A 0.4-amplitude tone for loud_until seconds, then the same tone at quiet_ratio of it."""
    t = torch.arange(int(total * rate)) / rate
    amp = torch.where(t < loud_until, 0.4, 0.4 * quiet_ratio)
    return amp * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize("quiet_ratio, quiet_voiced", [(0.02, False), (0.045, True)])
def test_pyin_applies_praats_silence_threshold(quiet_ratio, quiet_voiced):
    # Praat calls a frame silent when its local peak is below 0.03 of the global peak; pYIN
    # alone is scale-invariant and would call the quiet tone voiced at any level.
    wav = loud_then_quiet(quiet_ratio)
    f0 = extract_f0(wav, num_frames=149, tracker="pyin")  # frame i centred on 20 ms * (i + 1)
    assert ((f0[:22] - 150).abs() < 3).all()  # loud part (frames centred before 0.5 s)
    quiet = f0[28:]
    if quiet_voiced:
        assert ((quiet - 150).abs() < 3).all()
    else:
        assert (quiet == 0).all()


def test_silence_rule_uses_the_global_peak_in_every_chunk():
    # with 40-frame chunks (+ 1 s margins) the chunks from frame 80 on see only the quiet tone;
    # a per-chunk peak would call it voiced there
    wav = loud_then_quiet(0.02)
    whole = extract_f0(wav, num_frames=149, tracker="pyin")
    chunked = extract_f0(wav, num_frames=149, tracker="pyin", chunk_frames=40)
    # Chunks decode other FFT lengths, so values agree only to fp32 noise; the voicing decision is
    # compared where it is clear-cut: the loud tone (frames centred before 0.5 s) and the quiet one
    # (after 0.56 s), not the transition frames between them, whose voicing probability may sit on
    # pYIN's threshold. A per-chunk peak would voice every frame from 80 on.
    assert (chunked[:22] > 0).all() and (whole[:22] > 0).all()
    assert (chunked[28:] == 0).all() and (whole[28:] == 0).all()
    assert ((chunked[:22] - whole[:22]).abs() <= whole[:22] * 0.01).all()


def clip_features(num_frames=64, num_samples=None):
    g = torch.Generator().manual_seed(0)
    hub = torch.randn(num_frames, 32, generator=g)
    f0 = 100 + torch.arange(num_frames, dtype=torch.float32)
    return AudioFeatures(hub, f0, num_samples if num_samples is not None else num_frames * 320 + 80)


def test_clip_prompt_crops_to_the_common_length():
    feats = clip_features(64)  # 32 motion frames of audio; f0 length (T-512)//320+1 = 63 -> 31
    exp = torch.randn(40, 8)
    p = StylePrompt.from_clip(feats, exp)
    assert p.num_frames == 31
    assert torch.equal(p.motion, exp[:31]) and torch.equal(p.hubert, feats.hubert[:62]) and torch.equal(p.f0, feats.f0[:62])
    short = StylePrompt.from_clip(feats, exp[:10])
    assert short.num_frames == 10 and short.hubert.shape == (20, 32)
    assert StylePrompt.from_clip(feats, exp, max_frames=5).num_frames == 5


def test_clip_prompt_keeps_the_longest_usable_run():
    feats = clip_features(64)
    exp = torch.randn(30, 8)
    valid = torch.ones(30, dtype=torch.bool)
    valid[5] = False
    exp[20] = math.nan  # a failed fit
    p = StylePrompt.from_clip(feats, exp, valid=valid)
    assert p.num_frames == 14  # frames 6..19
    assert torch.equal(p.motion, exp[6:20]) and torch.equal(p.hubert, feats.hubert[12:40])


def test_clip_prompt_without_usable_frames():
    feats = clip_features(64)
    with pytest.raises(InputError, match="no usable frames"):
        StylePrompt.from_clip(feats, torch.randn(30, 8), valid=torch.zeros(30, dtype=torch.bool))
    with pytest.raises(InputError, match="no usable frames"):
        StylePrompt.from_clip(feats, torch.full((30, 8), math.nan))
    with pytest.raises(InputError, match="no usable frames"):
        StylePrompt.from_clip(feats, torch.zeros(0, 8))
    with pytest.raises(InputError, match="no usable frames"):  # audio too short for any frame
        StylePrompt.from_clip(clip_features(8, num_samples=600), torch.randn(30, 8))


def test_image_prompt():
    exp = torch.randn(64)
    p = StylePrompt.from_expression(exp)
    assert p.num_frames == 100 and torch.equal(p.motion, exp.expand(100, 64))
    assert p.hubert.shape == (200, 1024) and p.hubert.abs().sum() == 0 and p.f0.abs().sum() == 0
    with pytest.raises(InputError, match="NaN"):
        StylePrompt.from_expression(torch.full((64,), math.nan))
