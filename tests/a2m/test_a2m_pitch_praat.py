"""Pitch tracker choice: "auto" / "praat" (optional praat-parselmouth, upstream's exact f0) /
"pyin", and its plumbing through extract_audio_features.

parselmouth is GPL-3 and never installed by the pack, so the Praat value tests skip unless the
user installed it; the fallback and error paths are tested by making the import fail."""

import logging
import math
import sys

import pytest
import torch

from mimictalk_lib.a2m import extract_audio_features, extract_f0, f0_to_coarse
from mimictalk_lib.a2m import pitch
from mimictalk_lib.a2m.hubert import num_hubert_frames
from mimictalk_lib.errors import DependencyMissingError, InputError

RATE = 16_000


def tone(freq=200.0, seconds=0.6, start=0.0):
    t = torch.arange(int(seconds * RATE)) / RATE
    return torch.where(t >= start, 0.4 * torch.sin(2 * math.pi * freq * t), torch.zeros_like(t))


@pytest.fixture
def no_parselmouth(monkeypatch):
    """Make `import parselmouth` fail (as on a machine without it) and re-arm the one-time hint."""
    monkeypatch.setitem(sys.modules, "parselmouth", None)
    monkeypatch.setattr(pitch, "_pyin_hint_logged", False)


class FakeHubert:
    """Stands in for HubertEncoder: unpadded [floor((T - 80) / 320), 4] features."""

    def __init__(self):
        self.calls = 0

    def __call__(self, wav, on_step=None):
        self.calls += 1
        return torch.ones(num_hubert_frames(len(wav)), 4)


def test_auto_falls_back_to_pyin_and_logs_the_hint_once(no_parselmouth, caplog):
    wav = tone(seconds=0.6)
    with caplog.at_level(logging.INFO, logger="MimicTalk"):
        auto = extract_f0(wav, 32)
        again = extract_f0(wav, 32, tracker="auto")
    assert torch.equal(auto, extract_f0(wav, 32, tracker="pyin")) and torch.equal(auto, again)
    hints = [r for r in caplog.records if "praat-parselmouth" in r.getMessage()]
    assert len(hints) == 1 and hints[0].levelno == logging.INFO
    message = hints[0].getMessage()
    assert "pYIN" in message and "pip install praat-parselmouth" in message


def test_praat_without_parselmouth_says_how_to_install(no_parselmouth):
    with pytest.raises(DependencyMissingError, match="pip install praat-parselmouth"):
        extract_f0(tone(), 32, tracker="praat")
    hubert = FakeHubert()
    with pytest.raises(DependencyMissingError, match="pip install praat-parselmouth"):
        extract_audio_features(tone(), hubert, sample_rate=RATE, pitch_tracker="praat")
    assert hubert.calls == 0  # refused before the (slow) HuBERT pass
    # without f0 the tracker is never needed
    feats = extract_audio_features(
        tone(), hubert, sample_rate=RATE, with_f0=False, pitch_tracker="praat"
    )
    assert feats.f0.abs().sum() == 0


def test_unknown_tracker_is_refused():
    with pytest.raises(InputError, match="'crepe'.*auto, praat, pyin"):
        extract_f0(tone(), 32, tracker="crepe")


def test_features_use_the_chosen_tracker(no_parselmouth):
    wav = tone(seconds=0.6)
    steps = []
    feats = extract_audio_features(
        wav, FakeHubert(), sample_rate=RATE, pitch_tracker="pyin",
        on_step=lambda done, total, **info: steps.append((done, total, info.get("stage"))),
    )
    assert torch.equal(feats.f0, extract_f0(wav, feats.num_frames, tracker="pyin"))
    assert steps[-1] == (steps[-1][1], steps[-1][1], "f0")  # progress ends at its total


def test_num_f0_steps(no_parselmouth):
    n = 30 * RATE + 512  # 1501 f0 frames
    assert pitch.num_f0_steps(n, "pyin") == 2
    assert pitch.num_f0_steps(n, "pyin", chunk_frames=500) == 4
    assert pitch.num_f0_steps(400, "pyin") == 0


# --- with praat-parselmouth installed (skipped otherwise) ----------------------------------------


@pytest.fixture
def parselmouth():
    return pytest.importorskip("parselmouth")


def test_praat_f0_of_a_tone(parselmouth):
    wav = tone(200.0, seconds=1.8, start=0.5)  # silence, then 200 Hz from 0.5 s
    n = (len(wav) - 512) // 320 + 1  # upstream's mel length: 89
    f0 = extract_f0(wav, 96, tracker="praat")
    pyin = extract_f0(wav, 96, tracker="pyin")
    assert f0.shape == pyin.shape == (96,) and f0.dtype == pyin.dtype == torch.float32
    assert f0[n:].abs().sum() == 0 and pyin[n:].abs().sum() == 0  # same zero-padded tail
    assert ((f0[28:n - 2] - 200).abs() < 2).all()  # frame i centred on 20 ms * (i + 1)
    assert (f0[:20] == 0).all()
    assert (f0_to_coarse(f0[28:n - 2]) == f0_to_coarse(torch.tensor(200.0))).all()
    assert torch.equal(extract_f0(wav, 96), f0)  # "auto" picks praat when installed
    assert torch.equal(extract_f0(wav, 96, tracker="praat", chunk_frames=10), f0)  # one pass
    assert torch.equal(extract_f0(wav, 40, tracker="praat"), f0[:40])  # cropped to HuBERT length
    assert pitch.num_f0_steps(len(wav), "praat") == 1


def test_features_with_praat(parselmouth):
    wav = tone(200.0, seconds=0.6)
    feats = extract_audio_features(wav, FakeHubert(), sample_rate=RATE, pitch_tracker="praat")
    assert torch.equal(feats.f0, extract_f0(wav, feats.num_frames, tracker="praat"))
    assert feats.f0.shape == extract_audio_features(
        wav, FakeHubert(), sample_rate=RATE, pitch_tracker="pyin").f0.shape
