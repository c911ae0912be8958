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
