"""Load Face Model with auto_download on and no network (issue 12 item 6): one warning naming
every missing helper file, no download attempt, and the face model still loads (the helper files
are computed)."""

from __future__ import annotations

import logging

import torch

from tests.nodes.harness import lib, submodule


def test_offline_face_model_says_once_which_files_are_missing_and_continues(pack, caplog, monkeypatch):
    download = lib(pack, "download")
    assert download.downloads_disabled()  # the suite runs with HF_HUB_OFFLINE=1
    fetched = []
    monkeypatch.setattr(download, "_fetch", lambda *a, **k: fetched.append(a))
    loaders = submodule(pack, "nodes.loaders")
    with caplog.at_level(logging.INFO, logger="MimicTalk"), torch.inference_mode():
        (face,) = loaders.LoadFaceModel.execute(auto_download=True).args
    assert face is not None and fetched == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    about = [w for w in warnings if "ncc_code.npy" in w]
    assert len(about) == 1, warnings
    assert all(n in about[0] for n in ("ncc_code.npy", "bfm_left_eye_faces.npy", "bfm_right_eye_faces.npy"))
    assert "HF_HUB_OFFLINE" in about[0] and "computing them instead" in about[0]
