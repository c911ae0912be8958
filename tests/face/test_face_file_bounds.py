"""Face-model files are checked from their headers before loading (issue 21 item 6): a ``.npy``
or ``.mat`` that declares a huge array, or a ``.npy`` of objects, ends in CheckpointError without
the array being allocated."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from mimictalk_lib.errors import CheckpointError
from mimictalk_lib.face import assets
from mimictalk_lib.face.convert import load_mat


def npy_with_header(path, shape, dtype="<i8", payload=b"\0" * 64):
    """A .npy file whose header declares ``shape`` but which holds only ``payload``."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    path.write_bytes(buf.getvalue() + payload)
    return path


def test_npy_claiming_a_huge_array_is_refused_from_its_header(tmp_path):
    path = npy_with_header(tmp_path / "bfm_left_eye_faces.npy", (10**12,))
    with pytest.raises(CheckpointError, match="header claims shape"):
        assets.load_index_file(path, None, 100)
    path = npy_with_header(tmp_path / "ncc_code.npy", (3, 10**6), "<f4")  # within the limit, but not in the file
    with pytest.raises(CheckpointError, match="the file does not hold"):
        assets.load_or_compute_ncc(path, __import__("torch").zeros(10**6, 3))


def test_npy_of_objects_is_refused(tmp_path):
    path = tmp_path / "ncc_code.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="expected plain numbers"):
        assets.load_index_file(path, None, 10)


def test_a_good_npy_still_loads(tmp_path):
    np.save(tmp_path / "idx.npy", np.arange(5, dtype=np.int64))
    assert assets.load_index_file(tmp_path / "idx.npy", 5, 10).tolist() == [0, 1, 2, 3, 4]


def test_mat_declaring_huge_arrays_is_refused_before_loading(tmp_path, monkeypatch):
    from scipy.io import savemat

    path = tmp_path / "BFM_model_front.mat"
    savemat(str(path), {"meanshape": np.zeros((2, 3))}, do_compression=False)
    raw = bytearray(path.read_bytes())
    dims = struct.pack("<ii", 2, 3)
    at = raw.index(dims)
    raw[at: at + 8] = struct.pack("<ii", 100_000, 100_000)  # 10^10 values declared, 48 bytes of data
    path.write_bytes(bytes(raw))
    import scipy.io

    monkeypatch.setattr(scipy.io, "loadmat", lambda *a, **k: pytest.fail("loadmat ran on a hostile file"))
    with pytest.raises(CheckpointError, match="declares 10,000,000,000 values"):
        load_mat(path, ("meanshape",))


def test_garbage_mat_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "BFM_model_front.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 4)
    with pytest.raises(CheckpointError):
        load_mat(path, ("meanshape",))


@pytest.mark.parametrize("edit", [{"hidden_size": 10**7}, {"num_hidden_layers": "24"}, {"conv_dim": [512] * 6 + [10**9]},
                                  {"intermediate_size": -1}])
def test_hubert_config_sizes_are_bounded_before_transformers_builds_the_model(tmp_path, monkeypatch, edit):
    """(In this file with the other header checks of issue 21 item 6.)"""
    import json

    import transformers

    from mimictalk_lib.a2m.hubert import load_hubert

    cfg = {"model_type": "hubert", "hidden_size": 1024, "num_hidden_layers": 24, "conv_dim": [512] * 7,
           "intermediate_size": 4096}
    cfg.update(edit)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(transformers.HubertModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("the model was built from a hostile config")))
    with pytest.raises(CheckpointError, match=f"{next(iter(edit))} = "):
        load_hubert(tmp_path)
