"""HuBERT front end: frame arithmetic, whole-signal normalisation, clip overlap, padding, loading."""

import numpy as np
import pytest
import torch

from mimictalk_lib.a2m import HubertEncoder, extract_audio_features, load_hubert, num_hubert_frames
from mimictalk_lib.a2m.hubert import normalize_waveform, pad_to_multiple
from mimictalk_lib.errors import AssetMissingError, InputError
from tests.fixtures.tiny_a2m import speech_like, tiny_hubert, tiny_hubert_config


@pytest.fixture(scope="module")
def hubert():
    return tiny_hubert(seed=0)


def frame_local(encoder: HubertEncoder) -> HubertEncoder:
    """Remove every cross-frame path (positional conv, attention mixing): the encoder becomes a
    per-frame function of the CNN front end, so clipped extraction must equal one pass exactly."""
    with torch.no_grad():
        conv = encoder.model.encoder.pos_conv_embed.conv
        for name, p in conv.named_parameters():
            if not name.endswith("original1"):  # weight norm: g = 0 gives a zero kernel (v != 0)
                p.zero_()
        for layer in encoder.model.encoder.layers:
            layer.attention.out_proj.weight.zero_()  # keeps its bias: a constant per frame
    return encoder


@pytest.mark.parametrize("n", [400, 401, 719, 720, 1039, 12_345])
def test_frame_count_is_floor_t_minus_80_over_320(hubert, n):
    wav = speech_like(n / 16_000 + 0.01)[:n]
    assert num_hubert_frames(n) == (n - 80) // 320
    assert hubert(wav).shape == ((n - 80) // 320, 32)
    assert hubert.model(torch.from_numpy(normalize_waveform(wav.numpy()))[None]).last_hidden_state.shape[1] == (n - 80) // 320


def test_normalisation_matches_the_hf_processor():
    from transformers import Wav2Vec2FeatureExtractor

    wav = speech_like(0.7).numpy() * 0.3 + 0.01
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=True)
    ref = fe(wav.astype(np.float64), sampling_rate=16_000, return_tensors="np").input_values[0]
    assert np.array_equal(normalize_waveform(wav), ref)  # bit-exact, whole signal at once


def test_clip_overlap_concatenates_exactly():
    """Clips of 7 frames read 320 * 6 + 400 samples each, starting every 7 * 320 samples: with a
    frame-local encoder the concatenation equals one pass (float32 tolerance 1e-5)."""
    enc = frame_local(tiny_hubert(seed=1))
    for n in (5_000, 7 * 320 * 3 + 80, 7 * 320 * 3 + 79, 7 * 320 * 3 + 400):
        wav = speech_like(n / 16_000 + 0.01, seed=2)[:n]
        one = enc(wav, clip_frames=10**9)
        clipped = enc(wav, clip_frames=7)
        assert clipped.shape == one.shape == ((n - 80) // 320, 32)
        assert torch.allclose(clipped, one, atol=1e-5)
        shifted = enc.model(torch.from_numpy(normalize_waveform(wav.numpy())[1:])[None]).last_hidden_state[0]
        assert (shifted[: len(one) - 1] - one[: len(one) - 1]).abs().max() > 1e-3  # misalignment would show


def test_clips_see_only_their_own_frames(hubert):
    """With the full (attending) encoder each clip equals a separate pass over its samples."""
    wav = speech_like(0.6, seed=3)
    out = hubert(wav, clip_frames=10)
    x = torch.from_numpy(normalize_waveform(wav.numpy()))
    second = hubert.model(x[3200: 3200 + 320 * 9 + 400][None]).last_hidden_state[0]
    assert torch.allclose(out[10:20], second, atol=1e-6)
    whole = hubert.model(x[None]).last_hidden_state[0]
    assert torch.allclose(hubert(wav), whole, atol=1e-6)  # shorter than one clip: one pass


def test_progress_per_clip(hubert):
    seen = []
    hubert(speech_like(0.5), clip_frames=7, on_step=lambda d, n, **kw: seen.append((d, n, kw["stage"])))
    assert seen == [(i, 4, "hubert") for i in range(1, 5)]  # 24 frames -> clips of 7, 7, 7, 3


def test_pad_to_multiple_of_eight():
    feats = torch.ones(13, 4)
    padded = pad_to_multiple(feats)
    assert padded.shape == (16, 4) and padded[13:].abs().sum() == 0 and torch.equal(padded[:13], feats)
    assert pad_to_multiple(torch.ones(16, 4)).shape == (16, 4)


def test_extract_audio_features_layout(hubert):
    wav = speech_like(1.0, seed=4)
    feats = extract_audio_features(wav, hubert, sample_rate=16_000, with_f0=False)
    n = (16_000 - 80) // 320  # 49 frames -> padded to 56
    assert feats.hubert.shape == (56, 32) and feats.f0.shape == (56,)
    assert feats.hubert[n:].abs().sum() == 0 and feats.f0.abs().sum() == 0
    assert feats.num_motion_frames == 28 and feats.num_samples == 16_000
    assert feats.num_voiced_frames == (16_000 - 512) // 320 + 1


@pytest.mark.parametrize("bad", [torch.zeros(16_000), torch.zeros(0), torch.ones(300) * 0.5])
def test_features_refuse_unusable_audio(hubert, bad):
    with pytest.raises(InputError):
        extract_audio_features(bad, hubert, sample_rate=16_000, with_f0=False)


def test_load_hubert_from_a_local_folder(tmp_path, hubert):
    from transformers import Wav2Vec2FeatureExtractor

    hubert.model.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path)
    loaded = load_hubert(tmp_path)
    wav = speech_like(0.4)
    assert torch.allclose(loaded(wav), hubert(wav), atol=1e-6)
    assert loaded.do_normalize


def test_load_hubert_errors(tmp_path):
    with pytest.raises(AssetMissingError, match="config.json"):
        load_hubert(tmp_path / "missing")
    tiny_hubert_config().save_pretrained(tmp_path)  # config without weights
    with pytest.raises(AssetMissingError, match="weights"):
        load_hubert(tmp_path)
    with pytest.raises(InputError, match="half precision"):
        load_hubert(tmp_path, device="cpu", dtype=torch.float16)
