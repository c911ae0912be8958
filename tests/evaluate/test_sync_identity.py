"""LSE-D / LSE-C (SyncNet) and CSIM (face embedding): the metric definitions on synthetic features,
the networks on tiny random weights saved in the real checkpoints' key layout (SyncNet as a legacy
pickle without BatchNorm counters, as syncnet_v2.model; FaceNet as a zip with the unused logits),
the guarded loading, streaming across chunks, and the notes when a model is missing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mimictalk_lib.errors import CheckpointError, InputError
from mimictalk_lib.evaluate import evaluate, load_metric_models
from mimictalk_lib.evaluate import face_embedding as FE
from mimictalk_lib.evaluate import syncnet as SN


def _random_state(model: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
        elif v.dim() > 1:
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=g) / math.sqrt(fan_in)
        else:
            sd[k] = torch.randn(v.shape, generator=g) * 0.1 + (1.0 if k.endswith(".weight") else 0.0)
    return sd


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(_random_state(SN.SyncNet(), 0), path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def embedder_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("facenet") / "20180402-114759-vggface2.pt"
    sd = _random_state(FE.FaceEmbedder(), 1)
    sd["logits.weight"], sd["logits.bias"] = torch.randn(8631, 512), torch.zeros(8631)  # in the real file, unused
    torch.save(sd, path)
    return path


# --- the LSE definition on synthetic embeddings -------------------------------------------------------


def _features(n=60, d=32, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_in_sync_features_give_offset_zero_and_clear_confidence():
    a = _features()
    r = SN.lse(a.clone(), a)
    assert r.offset == 0 and r.windows == 60 and len(r.mean_distance) == 2 * SN.VSHIFT + 1
    assert r.lse_d < 1e-3  # identical embeddings: only pairwise_distance's eps remains
    assert r.lse_c > 5  # median shift ~ sqrt(2 d) = 8 away


@pytest.mark.parametrize("shift", [3, -5])
def test_shifted_audio_is_found_at_its_offset(shift):
    a = _features()
    video = torch.roll(a, -shift, 0)  # video window i shows what audio window i + shift says
    in_sync, shifted = SN.lse(a.clone(), a), SN.lse(video, a)
    assert shifted.offset == -shift
    assert shifted.mean_distance[SN.VSHIFT] > 5  # at zero shift the windows do not match
    # the best shift still matches, except the windows rolled round the ends
    assert in_sync.lse_d < shifted.lse_d < 0.2 * shifted.lse_c


def test_unrelated_audio_has_no_confidence():
    r = SN.lse(_features(seed=1), _features(seed=2))
    assert r.lse_c < 0.2 * r.lse_d and r.lse_d > 5


def test_lse_matches_the_definition_computed_by_hand():
    v, a, k = _features(12, 4, 3), _features(12, 4, 4), 2
    pad = torch.cat([torch.zeros(k, 4), a, torch.zeros(k, 4)])
    d = torch.tensor([[float((v[i] - pad[i + j]).norm()) for j in range(2 * k + 1)] for i in range(12)]).mean(0)
    r = SN.lse(v, a, vshift=k)
    assert r.lse_d == pytest.approx(float(d.min()), abs=1e-4)  # eps 1e-6 per coordinate in pairwise_distance
    assert r.lse_c == pytest.approx(float(d.median() - d.min()), abs=1e-4)
    assert r.offset == k - int(d.argmin())


def test_lse_refuses_mismatched_embeddings():
    with pytest.raises(InputError, match="same shape"):
        SN.lse(torch.zeros(4, 8), torch.zeros(5, 8))


# --- SyncNet: checkpoint, inputs, streaming -----------------------------------------------------------


def test_syncnet_loads_the_real_key_layout(syncnet_file):
    net = SN.load_syncnet(syncnet_file)
    saved = torch.load(syncnet_file, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())
    assert sorted({k.split(".")[0] for k in saved}) == ["netcnnaud", "netcnnlip", "netfcaud", "netfclip"]
    assert sum(v.numel() for v in saved.values()) * 4 < 54_573_114 < sum(v.numel() for v in saved.values()) * 4 + 200_000


def test_syncnet_refuses_wrong_files(tmp_path, syncnet_file, monkeypatch):
    sd = torch.load(syncnet_file, weights_only=True)
    sd["netfclip.3.weight"] = torch.zeros(512, 512)  # a 512-d variant is not SyncNet v2
    torch.save(sd, tmp_path / "wrong.model")
    with pytest.raises(CheckpointError, match=r"wrong shapes netfclip\.3\.weight \[512, 512\] \(expected \[1024, 512\]\)"):
        SN.load_syncnet(tmp_path / "wrong.model")
    del sd["netfclip.3.weight"]
    torch.save(sd, tmp_path / "missing.model")
    with pytest.raises(CheckpointError, match=r"missing netfclip\.3\.weight"):
        SN.load_syncnet(tmp_path / "missing.model")
    torch.save({"model": SN.SyncNet()}, tmp_path / "pickled_module.model")  # a whole pickled module: refused
    with pytest.raises(CheckpointError, match="not a readable PyTorch state dict"):
        SN.load_syncnet(tmp_path / "pickled_module.model")
    monkeypatch.setattr(SN, "MAX_FILE_BYTES", 1000)
    with pytest.raises(CheckpointError, match="far more than"):
        SN.load_syncnet(syncnet_file)


def test_mfcc_steps_and_audio_windows():
    pytest.importorskip("python_speech_features")
    wave = torch.sin(torch.arange(16000) / 16000 * 2 * math.pi * 220) * 0.3
    feats = SN.mfcc(wave)
    assert feats.shape == (SN.NUM_MFCC, 99)  # 1 + ceil((16000 - 400) / 160) steps at 100 Hz
    assert torch.isfinite(feats).all()


def test_face_crops_follow_the_reference_crop_geometry():
    frames = torch.zeros(1, 3, 100, 100)
    frames[0, 0, 40:60, 40:60] = 1.0  # a red square: BGR channel 2 of the crop
    crops = SN.face_crops(frames, torch.tensor([[40.0, 40.0, 60.0, 60.0]]))
    assert crops.shape == (1, 3, SN.CROP_SIZE, SN.CROP_SIZE)
    # columns 36..64, rows 40..68 of the frame: the square fills the left-right middle 20/28, top 20/28
    red = crops[0, 2] > 127
    rows, cols = red.any(1).nonzero().flatten(), red.any(0).nonzero().flatten()
    assert rows[0] <= 1 and abs(int(rows[-1]) - 160) <= 2 and abs(int(cols[0]) - 32) <= 2 and abs(int(cols[-1]) - 191) <= 2
    far = SN.face_crops(frames, torch.tensor([[-80.0, -80.0, -60.0, -60.0]]))  # outside: grey padding
    assert torch.allclose(far, torch.full_like(far, SN.PAD_VALUE))


def test_streaming_in_chunks_equals_one_pass(syncnet_file):
    net = SN.load_syncnet(syncnet_file)
    crops = torch.rand(9, 3, SN.CROP_SIZE, SN.CROP_SIZE, generator=torch.Generator().manual_seed(5)) * 255
    whole, parts = SN.SyncScorer(net), SN.SyncScorer(net, batch=2)
    whole.add(crops)
    for s in range(0, 9, 4):
        parts.add(crops[s:s + 4])
    a, b = torch.cat(whole.video), torch.cat(parts.video)
    assert a.shape == (5, SN.EMBED_DIM) and torch.allclose(a, b, atol=1e-4, rtol=1e-4)  # batching: fp32 reordering
    with pytest.raises(InputError, match="too short"):
        whole.result(torch.zeros(SN.SAMPLES_PER_FRAME * 5))  # 5 frames of audio: no window


# --- CSIM --------------------------------------------------------------------------------------------


def test_face_embedder_loads_and_csim_is_one_for_the_same_face(embedder_file):
    net = FE.load_face_embedder(embedder_file)
    g = torch.Generator().manual_seed(7)
    smooth = torch.linspace(0, 1, 96)[None, None, :].expand(1, 96, 96)
    a = torch.cat([smooth, smooth.transpose(1, 2), 1 - smooth])[None]  # gradients
    b = (torch.rand(1, 3, 96, 96, generator=g) > 0.5).float()  # binary noise
    boxes = torch.tensor([[20.0, 20.0, 76.0, 76.0]])
    same, other = FE.csim(net, a, a.clone(), boxes), FE.csim(net, a, b, boxes)
    assert same.shape == (1,) and float(same) == pytest.approx(1.0, abs=1e-5)
    assert float(other) < float(same) - 1e-3
    with torch.no_grad():
        emb = net(FE.face_crops(a, boxes))
    assert emb.shape == (1, FE.EMBED_DIM) and float(emb.norm()) == pytest.approx(1.0, abs=1e-5)


def test_face_embedder_refuses_a_syncnet_file(syncnet_file):
    with pytest.raises(CheckpointError, match="does not match the network: missing block8.*unexpected netcnnaud"):
        FE.load_face_embedder(syncnet_file)


# --- through evaluate() and the manifest ---------------------------------------------------------------


def test_evaluate_reports_lse_and_csim_rows(syncnet_file, embedder_file):
    pytest.importorskip("python_speech_features")
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(8, 48, 48, 3, generator=g)
    speech = torch.randn(1, 8 * SN.SAMPLES_PER_FRAME, generator=g) * 0.1
    result = evaluate(frames, frames.clone(), audio={"waveform": speech[None], "sample_rate": 16000},
                      syncnet=SN.load_syncnet(syncnet_file), face_embedder=FE.load_face_embedder(embedder_file))
    m = result.metrics
    assert m["csim"] == pytest.approx(1.0, abs=1e-5) and len(result.per_frame["csim"]) == 8
    assert math.isfinite(m["lse_d"]) and math.isfinite(m["lse_c"]) and m["lse_c"] >= 0
    assert abs(m["sync_offset"]) <= SN.VSHIFT and result.info["sync_windows"] == 3
    table = result.table()
    assert "| lse_d |" in table and "| lse_c |" in table and "| csim | 1 |" in table
    assert any("whole frame was used" in n for n in result.notes)  # no landmarks, no masks
    assert json.loads(result.to_json())["metrics"]["csim"] == pytest.approx(1.0, abs=1e-5)


def test_evaluate_without_audio_or_at_another_fps_says_why(syncnet_file):
    frames = torch.rand(6, 32, 32, 3)
    net = SN.load_syncnet(syncnet_file)
    notes = evaluate(frames, frames, syncnet=net).notes
    assert any("LSE-C / LSE-D" in n and "no audio given" in n for n in notes)
    notes = evaluate(frames, frames, syncnet=net, fps=30.0, audio={"waveform": torch.randn(1, 1, 8000) * 0.1,
                                                                  "sample_rate": 16000}).notes
    assert any("needs 25 fps frames, these are 30 fps" in n for n in notes)
    notes = evaluate(frames, frames).notes  # no models at all
    assert any(n.startswith("LSE-C / LSE-D") and "fetch syncnet" in n for n in notes)
    assert any(n.startswith("CSIM") and "fetch face_embedding" in n for n in notes)


def test_missing_or_wrong_weights_are_notes_not_errors(tmp_path, syncnet_file):
    syncnet, embedder, notes = load_metric_models([tmp_path], allow_download=False)
    assert syncnet is None and embedder is None and len(notes) == 2
    assert "fetch syncnet" in notes[0] and "fetch face_embedding" in notes[1]
    (tmp_path / "syncnet").mkdir()
    (tmp_path / "syncnet" / "syncnet_v2.model").write_bytes(syncnet_file.read_bytes())  # not the pinned file
    syncnet, _, notes = load_metric_models([tmp_path], identity=False, allow_download=False)
    assert syncnet is None and "size is" in notes[0] and notes[1] == "CSIM (identity similarity, face-embedding network): off."


# --- re-rendered identities: the clip's own audio on its 25 fps timeline -------------------------------


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    from mimictalk_lib.face import load_face_model
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model
    from tests.pipeline.conftest import make_identity

    face_model = load_face_model(write_synthetic_face_model(tmp_path_factory.mktemp("bfm")))
    return make_identity(face_model, frames=50, size=64)


def test_identity_audio_starts_at_the_held_out_frames_place_on_the_timeline(identity, syncnet_file, monkeypatch):
    pytest.importorskip("python_speech_features")
    from mimictalk_lib.evaluate import evaluate_identity

    seen = []
    original = SN.SyncScorer.result
    monkeypatch.setattr(SN.SyncScorer, "result", lambda self, audio, *a: seen.append(audio.shape[-1]) or original(self, audio, *a))
    net = SN.load_syncnet(syncnet_file)
    speech = {"waveform": torch.randn(1, 1, 60 * SN.SAMPLES_PER_FRAME) * 0.1, "sample_rate": 16000}
    rendered = identity.com_images(torch.arange(25, 33))  # 8 frames of the held-out slice (25..49)
    identity.meta["frame_positions"] = list(range(10, 60))  # the clip's first 10 frames had no face
    result = evaluate_identity(None, None, identity, rendered=rendered, audio=speech, syncnet=net, model_notes=False)
    assert seen == [(60 - 35) * SN.SAMPLES_PER_FRAME]  # held-out frame 25 is timeline frame 35
    assert math.isfinite(result.metrics["lse_d"]) and result.info["sync_windows"] == 3
    identity.meta["frame_positions"] = list(range(28)) + list(range(29, 51))  # frame 28 dropped: a gap at 27/28
    result = evaluate_identity(None, None, identity, rendered=rendered, audio=speech, syncnet=net, model_notes=False)
    assert "lse_d" not in result.metrics and any("frames were dropped" in n for n in result.notes)


def test_identity_audio_is_the_source_video_when_it_has_sound(tmp_path):
    from types import SimpleNamespace

    from mimictalk_lib.evaluate import identity_audio
    from mimictalk_lib.video import write_video

    frames = torch.zeros(5, 32, 32, 3, dtype=torch.uint8)
    write_video(tmp_path / "silent.mp4", frames, 25.0)
    write_video(tmp_path / "talk.mp4", frames, 25.0, audio=torch.randn(1, 3200) * 0.1, sample_rate=16000)
    assert identity_audio(SimpleNamespace(meta={"source": str(tmp_path / "talk.mp4")})) == str(tmp_path / "talk.mp4")
    assert identity_audio(SimpleNamespace(meta={"source": str(tmp_path / "silent.mp4")})) is None
    assert identity_audio(SimpleNamespace(meta={"source": str(tmp_path / "gone.mp4")})) is None
    assert identity_audio(SimpleNamespace(meta={"source": "synthetic"})) is None


def test_unusable_audio_is_a_note_and_the_other_metrics_still_run(syncnet_file):
    frames = torch.rand(6, 32, 32, 3)
    silent = {"waveform": torch.zeros(1, 1, 6 * SN.SAMPLES_PER_FRAME), "sample_rate": 16000}
    result = evaluate(frames, frames, syncnet=SN.load_syncnet(syncnet_file), audio=silent)
    assert result.metrics["psnr"] == math.inf and "lse_d" not in result.metrics
    assert any(n.startswith("LSE-C / LSE-D") and "the audio cannot be used" in n for n in result.notes)
