"""Audio loading (files, ComfyUI AUDIO dicts, waveforms) and its input errors."""

import math

import numpy as np
import pytest
import soundfile
import torch

from mimictalk_lib.a2m import load_audio
from mimictalk_lib.errors import InputError
from tests.fixtures.tiny_a2m import speech_like


def stereo(seconds=0.5, rate=44_100):
    left = speech_like(seconds, rate, seed=0)
    return torch.stack([left, 0.5 * left.roll(7)])  # [2, T]


def test_wav_file_matches_librosa_load(tmp_path):
    import librosa

    path = tmp_path / "s.wav"
    soundfile.write(path, stereo().T.numpy(), 44_100, subtype="PCM_16")
    wav = load_audio(path)
    ref, sr = librosa.load(path, sr=16_000, mono=True)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert np.array_equal(wav.numpy(), ref)


def test_comfy_audio_dict_and_waveform_agree():
    wave = stereo(rate=48_000)
    a = load_audio({"waveform": wave[None], "sample_rate": 48_000})
    b = load_audio(wave, sample_rate=48_000)
    c = load_audio(wave.mean(0).numpy(), sample_rate=48_000)
    assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6)
    assert abs(a.shape[0] - wave.shape[1] / 3) <= 1
    same_rate = load_audio(wave[0], sample_rate=16_000)
    assert torch.equal(same_rate, wave[0])  # no resampling at 16 kHz


def test_container_audio_through_pyav(tmp_path):
    """m4a/mp4 (AAC) is not a libsndfile format: decoded with PyAV."""
    import av

    path = tmp_path / "s.m4a"
    rate, tone = 16_000, speech_like(0.6, 16_000)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        frame = av.AudioFrame.from_ndarray(tone[None].numpy(), format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    wav = load_audio(path)
    assert abs(wav.shape[0] - tone.shape[0]) < 2048  # AAC priming/padding
    assert 0.1 < wav.abs().max() < 1.0


def test_shared_talking_video(shared_data):
    path = shared_data / "German_20s.mp4"
    if not path.is_file():
        pytest.skip("German_20s.mp4 absent")
    wav = load_audio(path)
    assert abs(wav.shape[0] / 16_000 - 20) < 0.5


@pytest.mark.parametrize("rate", [0, -16_000, 12.5, 10**7, True, "16000", None])
def test_bad_sample_rates(rate):
    with pytest.raises(InputError, match="sample rate|sample_rate"):
        load_audio({"waveform": torch.ones(1, 1, 8000) * 0.1, "sample_rate": rate})


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio" * 10)
    with pytest.raises(InputError, match="cannot open"):
        load_audio(junk)


def test_empty_silent_and_too_short_audio():
    with pytest.raises(InputError, match="empty"):
        load_audio(torch.zeros(0), sample_rate=16_000)
    with pytest.raises(InputError, match="silent"):
        load_audio(torch.zeros(16_000), sample_rate=16_000)
    with pytest.raises(InputError, match="silent"):
        load_audio(torch.full((16_000,), 5e-5), sample_rate=16_000)  # below -80 dBFS
    with pytest.raises(InputError, match="shorter than one audio-feature frame"):
        load_audio(torch.ones(399) * 0.5, sample_rate=16_000)
    with pytest.raises(InputError, match="shorter than one audio-feature frame"):
        load_audio(torch.ones(1000) * 0.5, sample_rate=44_100)  # 363 samples at 16 kHz
    assert load_audio(torch.ones(400) * 0.5, sample_rate=16_000).shape == (400,)


def test_malformed_inputs():
    with pytest.raises(InputError, match="NaN"):
        load_audio(torch.full((8000,), math.nan), sample_rate=16_000)
    with pytest.raises(InputError, match="batch of 2"):
        load_audio({"waveform": torch.ones(2, 1, 8000), "sample_rate": 16_000})
    with pytest.raises(InputError, match="sample_rate"):
        load_audio(torch.ones(8000))
    with pytest.raises(InputError):
        load_audio(None)
    with pytest.raises(InputError, match="waveform"):
        load_audio({"wave": torch.ones(1, 1, 10)})
