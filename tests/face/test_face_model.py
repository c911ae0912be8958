"""Face-model loading (both file layouts), the missing-file checker, mesh and landmark maths."""

import copy
import math
import shutil

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from mimictalk_lib.errors import CheckpointError, FaceModelMissingError
from mimictalk_lib.face import HeadPose, check_face_model_files, euler_to_rotation, load_face_model, project, to_camera
from mimictalk_lib.face.assets import eye_faces_from_landmarks, ncc_from_mean_shape
from mimictalk_lib.face.convert import build_front_model
from mimictalk_lib.face.files import BASEL_SOURCES, FRONT_MODEL, MP468_INDEX
from tests.fixtures.synthetic_bfm import write_synthetic_basel_sources, write_synthetic_face_model


@pytest.fixture(scope="module")
def bfm_dir(tmp_path_factory):
    return write_synthetic_face_model(tmp_path_factory.mktemp("bfm"))


@pytest.fixture(scope="module")
def face_model(bfm_dir):
    return load_face_model(bfm_dir, need_mp468=True)


def test_front_model_fields_and_index_conventions(bfm_dir, face_model):
    mat = loadmat(bfm_dir / FRONT_MODEL)
    mean = mat["meanshape"].reshape(-1, 3)
    assert face_model.n_vertices == mean.shape[0]
    torch.testing.assert_close(face_model.mean_shape, torch.from_numpy(mean - mean.mean(0)).float())
    assert torch.equal(face_model.tri, torch.from_numpy(mat["tri"].astype(np.int64) - 1))
    kp = mat["keypoints"].astype(np.int64).ravel()
    assert torch.equal(face_model.lm68, torch.from_numpy(kp - 1))
    assert torch.equal(face_model.lm68_upstream, torch.from_numpy(kp))  # Face3DHelper quirk
    mp = np.load(bfm_dir / MP468_INDEX)
    assert torch.equal(face_model.mp468_matched, torch.from_numpy(mp >= 0))
    assert torch.equal(face_model.mp468, torch.from_numpy(np.where(mp < 0, 0, mp)))


def test_derived_files_are_used_when_present(bfm_dir, face_model):
    ncc = np.load(bfm_dir / "ncc_code.npy")
    assert torch.equal(face_model.ncc, torch.from_numpy(ncc.T))
    left, right = np.load(bfm_dir / "bfm_left_eye_faces.npy"), np.load(bfm_dir / "bfm_right_eye_faces.npy")
    assert sorted(face_model.eye_faces.tolist()) == sorted((np.concatenate([left, right]) - 1).tolist())
    assert face_model.secc_tri.shape[0] == face_model.tri.shape[0] - len(left) - len(right)
    kept = set(map(tuple, face_model.secc_tri.tolist()))
    assert not kept & set(map(tuple, face_model.tri[face_model.eye_faces].tolist()))


def test_derived_assets_computed_when_absent(tmp_path, face_model):
    folder = write_synthetic_face_model(tmp_path, derived=False)
    m = load_face_model(folder)
    # NCC: per-axis min-max, the rule the shipped file satisfies (min 0, max 1 per row)
    assert torch.allclose(m.ncc, face_model.ncc, atol=1e-6)
    assert torch.equal(m.ncc.min(0).values, torch.zeros(3)) and torch.equal(m.ncc.max(0).values, torch.ones(3))
    # eye holes from the 68-point contours overlap the fixture's eye ellipses
    got, want = set(m.eye_faces.tolist()), set(face_model.eye_faces.tolist())
    assert len(got & want) / len(got | want) > 0.5
    assert len(got) > 10


def test_shape_and_points_match_a_direct_computation(bfm_dir, face_model):
    mat = loadmat(bfm_dir / FRONT_MODEL)
    g = torch.Generator().manual_seed(0)
    id, exp = torch.randn(2, 3, 80, generator=g), torch.randn(2, 3, 64, generator=g)
    mean = mat["meanshape"].reshape(-1, 3).astype(np.float64)
    want = (mean - mean.mean(0)).reshape(1, -1) + id.reshape(6, 80).double().numpy() @ mat["idBase"].T
    want = want + exp.reshape(6, 64).double().numpy() @ mat["exBase"].T
    verts = face_model.shape(id, exp)
    assert verts.shape == (2, 3, face_model.n_vertices, 3)
    np.testing.assert_allclose(verts.reshape(6, -1).numpy(), want, atol=1e-5)
    idx = torch.tensor([5, 0, 17, 300])
    torch.testing.assert_close(face_model.points(id, exp, idx), verts[..., idx, :])
    torch.testing.assert_close(face_model.landmarks(id, exp, "lm68"), verts[..., face_model.lm68, :])


def test_dtype_follows_the_model(face_model):
    g = torch.Generator().manual_seed(1)
    id, exp = torch.randn(2, 80, generator=g), torch.randn(2, 64, generator=g)
    m64 = copy.deepcopy(face_model).to(torch.float64)  # nn.Module.to moves in place
    v64 = m64.shape(id, exp)  # float32 coefficients are cast to the model's dtype
    assert v64.dtype == torch.float64 and m64.tri.dtype == torch.long and m64.mp468.dtype == torch.long
    torch.testing.assert_close(v64.float(), face_model.shape(id, exp), atol=1e-5, rtol=0)


def test_basel_sources_convert_to_the_encoded_front_model(tmp_path):
    folder, front = write_synthetic_basel_sources(tmp_path)
    out = build_front_model(folder)
    for key in ("meanshape", "idBase", "exBase", "texBase", "meantex"):
        np.testing.assert_allclose(out[key], front[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for key in ("tri", "keypoints", "point_buf"):
        np.testing.assert_array_equal(out[key], front[key])
    # the loader converts, saves BFM_model_front.mat, and reads that file the second time
    m1 = load_face_model(folder)
    assert (folder / FRONT_MODEL).is_file()
    for name in BASEL_SOURCES:
        (folder / name).unlink()
    m2 = load_face_model(folder)
    for name in ("mean_shape", "id_base", "exp_base", "tri", "lm68"):
        torch.testing.assert_close(getattr(m1, name), getattr(m2, name))


def test_checker_names_each_missing_file(tmp_path):
    with pytest.raises(FaceModelMissingError) as e:
        check_face_model_files(tmp_path)
    msg = str(e.value)
    for name in (FRONT_MODEL, *BASEL_SOURCES):
        assert name in msg
    assert str(tmp_path) in msg and "faces.dmi.unibas.ch" in msg and "licence" in msg
    assert isinstance(e.value, FileNotFoundError)

    src, _ = write_synthetic_basel_sources(tmp_path / "src")
    check_face_model_files(src)  # complete source set: no error, conversion needed
    assert check_face_model_files(src).needs_conversion
    for name in BASEL_SOURCES:
        one = tmp_path / f"without_{name}"
        shutil.copytree(src, one)
        (one / name).unlink()
        with pytest.raises(FaceModelMissingError) as e:
            check_face_model_files(one)
        listed = {n for n in BASEL_SOURCES if f"- {n}:" in str(e.value)}
        assert listed == {name}, (name, listed)
        assert f"- {FRONT_MODEL}:" in str(e.value)


def test_checker_front_model_alone_and_mp468(tmp_path):
    folder = write_synthetic_face_model(tmp_path, mp468=False, derived=False)
    files = check_face_model_files(folder)
    assert files.front_model is not None and files.ncc_code is None and files.mp468_index is None
    with pytest.raises(FaceModelMissingError) as e:
        check_face_model_files(folder, need_mp468=True)
    assert f"- {MP468_INDEX}:" in str(e.value) and f"- {FRONT_MODEL}:" not in str(e.value)
    m = load_face_model(folder)
    with pytest.raises(FaceModelMissingError, match=MP468_INDEX):
        m.landmarks(torch.zeros(80), torch.zeros(64), "mp468")


def test_corrupt_front_model_is_a_checkpoint_error(tmp_path):
    savemat(str(tmp_path / FRONT_MODEL), {"meanshape": np.zeros((1, 9)), "idBase": np.zeros((9, 80))})
    with pytest.raises(CheckpointError, match="exBase"):
        load_face_model(tmp_path)


def test_euler_rotation_hand_values():
    torch.testing.assert_close(euler_to_rotation(torch.zeros(3)), torch.eye(3))
    yaw = euler_to_rotation(torch.tensor([0.0, math.pi / 2, 0.0]))
    # points @ R: the +x axis turns to -z under a +90 degree rotation about y
    torch.testing.assert_close(torch.tensor([1.0, 0, 0]) @ yaw, torch.tensor([0.0, 0, -1]), atol=1e-6, rtol=0)
    a, b, c = 0.3, -0.2, 0.1
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    torch.testing.assert_close(euler_to_rotation(torch.tensor([a, b, c])), (rz @ ry @ rx).T)


def test_projection_hand_values():
    pts = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0, 0.5, 1.0]]])
    cam = to_camera(pts, HeadPose(torch.zeros(1, 3), torch.zeros(1, 3)))
    torch.testing.assert_close(cam[0, :, 2], torch.tensor([10.0, 10.0, 9.0]))
    uv = project(cam)
    torch.testing.assert_close(uv[0, 0], torch.tensor([112.0, 112.0]))
    torch.testing.assert_close(uv[0, 1], torch.tensor([112.0 + 101.5, 112.0]))
    torch.testing.assert_close(uv[0, 2], torch.tensor([112.0, 112.0 + 1015 * 0.5 / 9]))
    # pure translation moves the camera-space point; z translation moves it closer to the camera
    cam_t = to_camera(pts, HeadPose(torch.zeros(1, 3), torch.tensor([[0.1, 0.0, 1.0]])))
    torch.testing.assert_close(cam_t[0, 0], torch.tensor([0.1, 0.0, 9.0]))


def test_computed_helpers_directly():
    mean = torch.tensor([[0.0, 0, 0], [2.0, 1, 4], [1.0, 0.5, 2]])
    torch.testing.assert_close(ncc_from_mean_shape(mean)[2], torch.tensor([0.5, 0.5, 0.5]))
    # a square "eye" contour around the origin selects the triangle whose centroid is inside
    verts = torch.tensor([[-0.1, -0.1, 0], [0.1, -0.1, 0], [0, 0.1, 0], [2, 2, 0], [3, 2, 0], [2, 3, 0]])
    lm = torch.zeros(68, dtype=torch.long)
    square = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [-1, 0, 0], [-1, -0.5, 0]])
    verts = torch.cat([verts, square])
    lm[36:42] = torch.arange(6, 12)
    lm[42:48] = torch.arange(6, 12)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]])
    assert eye_faces_from_landmarks(verts, tri, lm).tolist() == [0]
