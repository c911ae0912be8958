"""The Evaluate node: images + reference -> table, plot, JSON (ui shows the table); a missing
reference is explained in the node's terms."""

import json

import pytest
import torch

from tests.nodes.harness import lib, pack, submodule, tiny  # noqa: F401  (pytest fixtures)


def _evaluate(pack):
    return submodule(pack, "nodes.evaluate").Evaluate


def test_images_against_reference(pack):
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 32, 32, 3, generator=g)
    with torch.inference_mode():
        out = _evaluate(pack).execute(frames="all", perceptual=False, landmarks=False, auto_download=False,
                                      images=frames, reference=frames.clone())
    table, plot, metrics_json = out.args
    data = json.loads(metrics_json)
    assert data["metrics"]["psnr"] == "inf" and data["info"]["frames"] == 3
    assert out.ui["text"] == (table,) and "landmark metrics: off (the landmarks widget)." in table
    assert plot.shape[0] == 1 and plot.shape[-1] == 3


def test_missing_reference_is_explained(pack):
    with pytest.raises(lib(pack, "errors").InputError, match="connect an identity"):
        _evaluate(pack).execute(frames="all", perceptual=False, landmarks=False, auto_download=False,
                                images=torch.zeros(1, 32, 32, 3))


def test_audio_and_the_optional_models_reach_the_table(pack, monkeypatch, tmp_path):
    """Without weights: notes (what to connect or fetch); with them: the LSE and CSIM rows."""
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(7, 48, 48, 3, generator=g)
    speech = {"waveform": torch.randn(1, 1, 7 * 640, generator=g) * 0.1, "sample_rate": 16000}
    kwargs = dict(frames="all", perceptual=False, landmarks=False, auto_download=False, images=frames,
                  reference=frames.clone())
    with torch.inference_mode():
        table = _evaluate(pack).execute(**kwargs).args[0]
    assert "LSE-C / LSE-D (audio-visual sync, SyncNet): not measured; connect the audio input." in table
    assert "fetch face_embedding" in table
    with torch.inference_mode():
        table = _evaluate(pack).execute(audio=speech, **kwargs).args[0]
    assert "fetch syncnet" in table and "| lse_d |" not in table

    syncnet, embedding = lib(pack, "evaluate.syncnet"), lib(pack, "evaluate.face_embedding")
    seen = {}

    def tiny_models(model_dirs, *, sync, allow_download, device, identity=True, on_step=None):
        seen.update(sync=sync, allow_download=allow_download)
        torch.manual_seed(0)
        return syncnet.SyncNet(), embedding.FaceEmbedder(), []

    monkeypatch.setattr(lib(pack, "evaluate"), "load_metric_models", tiny_models)
    with torch.inference_mode():
        _, _, metrics_json = _evaluate(pack).execute(audio=speech, **kwargs).args
    data = json.loads(metrics_json)
    assert seen == {"sync": True, "allow_download": False}
    assert data["metrics"]["csim"] == pytest.approx(1.0, abs=1e-5) and data["info"]["sync_windows"] == 2
    assert data["metrics"]["lse_d"] is not None and data["metrics"]["lse_c"] is not None
