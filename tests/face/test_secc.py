"""SECC maps: camera convention, agreement with ray casting, cano/src/drv, batching."""

import math

import numpy as np
import pytest
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.face import load_face_model
from mimictalk_lib.face.secc import FOV_DEG, render_secc, secc_maps
from tests.face.test_raster import reference
from tests.fixtures.synthetic_bfm import EYE_CENTRES, write_synthetic_face_model


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    return load_face_model(write_synthetic_face_model(tmp_path_factory.mktemp("bfm")))


def coeffs(n, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 80, generator=g) * scale, torch.randn(n, 64, generator=g) * scale


def test_fov_is_the_fitting_camera():
    assert math.isclose(math.tan(math.radians(FOV_DEG) / 2), 112 / 1015, rel_tol=1e-12)
    assert abs(FOV_DEG - 12.59) < 0.01


def test_matches_ray_casting_of_the_view_space_mesh(face_model):
    size = 40
    id, exp = coeffs(1, seed=3)
    got = render_secc(face_model, id, exp, size=size)[0].numpy()
    # independent camera: upstream's to_camera (z -> 10 - z) then the renderer's x negation
    v = face_model.shape(id, exp)[0].double().numpy()
    view = np.stack([-v[:, 0], v[:, 1], 10 - v[:, 2]], -1)
    tri = face_model.secc_tri.numpy()
    face, _, bary, ambiguous = reference(view, tri, size)
    colour = (bary[..., None] * face_model.ncc.double().numpy()[tri[np.maximum(face, 0)]]).sum(-2) * 2 - 1
    want = np.where((face >= 0)[..., None], colour, -1.0).transpose(2, 0, 1)
    assert (face >= 0).sum() > 0.3 * size * size
    bad = np.abs(got - want).max(0) > 1e-4
    assert bad.sum() <= 3 and not (bad & ~ambiguous).any()
    assert (got[:, face < 0] == -1).all()  # background exactly -1


def test_orientation_eye_holes_and_top(face_model):
    size = 96
    img = render_secc(face_model, torch.zeros(80), torch.zeros(1, 64), size=size)[0]
    v = face_model.shape(torch.zeros(80), torch.zeros(64))
    t = 112 / 1015
    centroid = v[face_model.tri[face_model.eye_faces]].mean(1)  # eye-hole triangles [E, 3]
    z = 10 - centroid[:, 2]
    # expected pixel: x to the right (the renderer negates x, pytorch3d's +x points left), y up
    col = ((size * (1 + centroid[:, 0] / (z * t)) - 1) / 2).round().long()
    row = ((size * (1 - centroid[:, 1] / (z * t)) - 1) / 2).round().long()
    assert ((img[0, row, col] == -1).float().mean()) > 0.9
    right_eye = centroid[:, 0] > 0  # subject's left eye (+x) lands on the image right half
    assert (col[right_eye] > size // 2).all() and (col[~right_eye] < size // 2).all()
    assert (row < size // 2).all()  # eyes in the upper half
    assert (img[:, 0, :] == -1).all() and (img[:, size // 2, size // 2] > -1).all()


def assert_same_map(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal SECC maps up to the fp32 noise floor. The vertices are matrix products of the BFM bases
    with the coefficients; their BLAS kernel (so the summation order) may change with the batch size
    on some CPUs, moving vertices by ~1e-7 of the face size. Rasterisation itself is exact
    (elementwise ops only), so the colours move by as little (1e-5 bound), except that a pixel centre
    lying within ~1e-7 of a triangle edge may change sides: a few such pixels are allowed (0.1 %;
    a wrong frame or chunk would differ on most of the face)."""
    differ = (a - b).abs().amax(dim=0) > 1e-5
    assert differ.float().mean().item() <= 1e-3, int(differ.sum())


def test_cano_src_drv_and_batching(face_model):
    id, exp = coeffs(5, seed=1)
    maps = secc_maps(face_model, id[0], exp, size=64, chunk_size=2)
    assert maps.cano.shape == (1, 3, 64, 64) and maps.src.shape == (1, 3, 64, 64) and maps.drv.shape == (5, 3, 64, 64)
    torch.testing.assert_close(maps.cano, render_secc(face_model, id[0], torch.zeros(1, 64), size=64))
    torch.testing.assert_close(maps.src, maps.drv[:1])
    for i in range(5):
        one = render_secc(face_model, id[:1], exp[i : i + 1], size=64)
        assert_same_map(one[0], maps.drv[i])  # batched and chunked == per frame
    other = secc_maps(face_model, id[0], exp, src_exp=exp[3], size=64)
    torch.testing.assert_close(other.src, maps.drv[3:4])
    assert not torch.equal(maps.drv[0], maps.drv[1])  # expression changes the map


def test_precision_and_shape_errors(face_model):
    with pytest.raises(InputError, match="half precision"):
        render_secc(face_model, torch.zeros(80), torch.zeros(1, 64), size=32, dtype=torch.bfloat16)
    with pytest.raises(InputError, match="exp"):
        render_secc(face_model, torch.zeros(80), torch.zeros(1, 63), size=32)
    progress = []
    render_secc(face_model, torch.zeros(80), torch.zeros(3, 64), size=32, chunk_size=2, on_step=lambda d, t: progress.append((d, t)))
    assert progress == [(2, 3), (3, 3)]
