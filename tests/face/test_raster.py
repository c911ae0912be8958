"""The pure-PyTorch rasteriser against a slow per-pixel ray-triangle reference."""

import numpy as np
import pytest
import torch

from mimictalk_lib.face.raster import interpolate, ndc_to_screen, rasterize, render_vertex_colors

TAN = 112 / 1015  # tan(fov / 2) of the SECC camera


def random_mesh(seed: int, n_faces: int = 40, n_frames: int = 1, big: float = 0.6):
    """Random overlapping triangles in view space (X, Y, Z), Z in [6, 14], of mixed sizes."""
    g = np.random.default_rng(seed)
    z = g.uniform(6, 14, size=(n_frames, n_faces, 1, 1))
    centre = g.uniform(-1.1, 1.1, size=(n_frames, n_faces, 1, 2))
    size = np.where(g.uniform(size=(n_frames, n_faces, 1, 1)) < 0.2, big, 0.12)
    xy = (centre + g.normal(0, 1, size=(n_frames, n_faces, 3, 2)) * size) * z * TAN
    zz = z + g.normal(0, 0.8, size=(n_frames, n_faces, 3, 1))
    verts = np.concatenate([xy, zz], -1).reshape(n_frames, -1, 3)
    faces = np.arange(3 * n_faces).reshape(n_faces, 3)
    return verts, faces


def to_screen(verts_view: np.ndarray, size: int) -> torch.Tensor:
    v = torch.from_numpy(verts_view).float()
    ndc = torch.stack([v[..., 0] / (v[..., 2] * TAN), v[..., 1] / (v[..., 2] * TAN), v[..., 2]], -1)
    return ndc_to_screen(ndc, size, size)


def cross(a, b):
    return np.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1], a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], -1)


def dot(a, b):
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def reference(verts_view: np.ndarray, faces: np.ndarray, size: int):
    """Moller-Trumbore ray casting from the pinhole through every pixel centre (float64).

    Returns face index (-1 none), depth, barycentrics and the smallest |margin| of the winning hit
    (how close the pixel centre is to an edge of that triangle, in barycentric units)."""
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    xf, yf = 1 - (2 * c + 1) / size, 1 - (2 * r + 1) / size  # pytorch3d pixel centres (+x left)
    d = np.stack([xf * TAN, yf * TAN, np.ones_like(xf)], -1).reshape(-1, 1, 3)  # [P, 1, 3]
    v0, v1, v2 = (verts_view[faces[:, k]][None] for k in range(3))  # [1, F, 3]
    e1, e2 = v1 - v0, v2 - v0
    p = cross(d, e2)
    det = dot(e1, p)
    inv = 1 / np.where(det == 0, np.inf, det)
    t = -v0
    u = dot(t, p) * inv
    q = cross(t, e1)  # [1, F, 3]
    v = dot(d, q) * inv
    s = dot(e2, q) * inv
    hit = (u > 0) & (v > 0) & (u + v < 1) & (s > 0)
    depth = np.where(hit, s, np.inf)  # D_z = 1, so the ray parameter is the view depth
    best = depth.argmin(1)
    rows = np.arange(depth.shape[0])
    covered = np.isfinite(depth[rows, best])
    bary = np.stack([1 - u - v, u, v], -1)[rows, best]
    face = np.where(covered, best, -1).reshape(size, size)
    margin = np.min(np.abs(np.stack([1 - u - v, u, v], -1)), -1)  # distance to any edge, all faces
    near_edge = (np.where(np.isfinite(depth) | (margin < 1e-3), margin, 1) < 1e-3).any(1)
    # pixels whose winner is ambiguous: another hit within a tiny depth of the best
    second = np.sort(depth, 1)[:, 1] if depth.shape[1] > 1 else np.full(depth.shape[0], np.inf)
    with np.errstate(invalid="ignore"):  # inf - inf where nothing is hit
        near_tie = np.isfinite(second) & (second - depth[rows, best] < 1e-4 * depth[rows, best])
    return (
        face,
        np.where(covered, depth[rows, best], -1).reshape(size, size),
        np.where(covered[:, None], bary, 0).reshape(size, size, 3),
        (near_edge | near_tie).reshape(size, size),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_ray_casting_reference(seed):
    size = 64
    verts, faces = random_mesh(seed)
    frag = rasterize(to_screen(verts, size), torch.from_numpy(faces), size, size)
    face, depth, bary, ambiguous = reference(verts[0], faces, size)
    got = frag.pix_to_face[0].numpy()
    assert (face >= 0).sum() > 500  # the scene covers a good part of the image
    differ = got != face
    assert differ.sum() <= 3 and not (differ & ~ambiguous).any(), np.argwhere(differ)
    same = (got == face) & (face >= 0)
    np.testing.assert_allclose(frag.zbuf[0].numpy()[same], depth[same], rtol=1e-5)
    np.testing.assert_allclose(frag.bary[0].numpy()[same], bary[same], atol=2e-4)
    assert (frag.zbuf[0].numpy()[got < 0] == -1).all() and (frag.bary[0].numpy()[got < 0] == 0).all()


def test_batched_equals_per_frame_and_chunking_is_invisible():
    size = 48
    verts, faces = random_mesh(5, n_faces=30, n_frames=4)
    scr, f = to_screen(verts, size), torch.from_numpy(faces)
    full = rasterize(scr, f, size, size)
    small = rasterize(scr, f, size, size, max_candidates=7, max_faces=45)  # tiny chunks, 2 groups
    # Exact equality holds by construction: every per-pixel value is a fixed sequence of elementwise
    # IEEE operations (no reductions, no matrix products, no transcendental functions) on the same
    # inputs, and the depth test is a scatter-min of integer keys, so neither the batch size nor the
    # chunking can change a single bit on any CPU.
    for i in range(4):
        one = rasterize(scr[i : i + 1], f, size, size)
        assert torch.equal(full.pix_to_face[i], one.pix_to_face[0])
        assert torch.equal(full.bary[i], one.bary[0]) and torch.equal(full.zbuf[i], one.zbuf[0])
    assert torch.equal(full.pix_to_face, small.pix_to_face) and torch.equal(full.bary, small.bary)


def grid_mesh(n: int, lo: float, hi: float, z: float = 10.0, jitter: float = 0.0, seed: int = 0):
    """A square of 2 n^2 triangles in screen space whose grid lines pass through pixel centres."""
    g = np.random.default_rng(seed)
    xs = np.linspace(lo, hi, n + 1)
    x, y = np.meshgrid(xs, xs)
    zz = z + jitter * g.normal(size=x.shape)
    verts = np.stack([x, y, zz], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    a = (i * (n + 1) + j).ravel()
    faces = np.concatenate([np.stack([a, a + n + 1, a + 1], 1), np.stack([a + 1, a + n + 1, a + n + 2], 1)])
    return torch.from_numpy(verts).float()[None], torch.from_numpy(faces)


def test_shared_edges_are_watertight():
    # vertices on integer pixel positions: diagonals and grid lines hit pixel centres exactly
    verts, faces = grid_mesh(6, 2.0, 26.0, jitter=0.3)
    size = 30
    frag = rasterize(verts, faces, size, size)
    inside = np.zeros((size, size), bool)
    inside[3:26, 3:26] = True  # centres strictly inside the square
    assert (frag.pix_to_face[0].numpy()[inside] >= 0).all()
    # each interior pixel is claimed by exactly one triangle when they are drawn one at a time
    claims = np.zeros((size, size), int)
    for k in range(faces.shape[0]):
        claims += (rasterize(verts, faces[k : k + 1], size, size).pix_to_face[0] >= 0).numpy()
    assert (claims[inside] == 1).all()


def test_depth_order_and_ties():
    size = 16
    near = [[0, 0, 5.0], [40, 0, 5.0], [0, 40, 5.0]]
    far = [[-5, -5, 9.0], [40, -5, 9.0], [-5, 40, 9.0]]
    for order in (0, 1):  # nearer triangle wins whatever the face order
        tris = [far, near] if order == 0 else [near, far]
        v = torch.tensor(tris).view(1, 6, 3)
        frag = rasterize(v, torch.tensor([[0, 1, 2], [3, 4, 5]]), size, size)
        nearest = 1 if order == 0 else 0
        assert (frag.pix_to_face[0, 1:10, 1:10] == nearest).all()
        torch.testing.assert_close(frag.zbuf[0, 1:10, 1:10], torch.full((9, 9), 5.0))
    same = torch.tensor([near, near]).view(1, 6, 3)  # equal depth: the lower face index wins
    frag = rasterize(same, torch.tensor([[3, 4, 5], [0, 1, 2]]), size, size)
    assert (frag.pix_to_face[0, 1:10, 1:10] == 0).all()


def test_skipped_faces_and_background():
    size = 16
    degenerate = [[1, 1, 5.0], [8, 8, 5.0], [14, 14, 5.0]]
    behind = [[0, 0, -1.0], [15, 0, 5.0], [0, 15, 5.0]]
    v = torch.tensor([degenerate, behind]).view(1, 6, 3)
    frag = rasterize(v, torch.tensor([[0, 1, 2], [3, 4, 5]]), size, size)
    assert (frag.pix_to_face == -1).all() and (frag.zbuf == -1).all()


def test_interpolate_vertex_colours():
    size = 32
    verts, faces = random_mesh(7, n_faces=12)
    frag = rasterize(to_screen(verts, size), torch.from_numpy(faces), size, size)
    colours = torch.rand(verts.shape[1], 3, generator=torch.Generator().manual_seed(0))
    img = interpolate(frag, colours, torch.from_numpy(faces), background=-1.0)
    assert img.shape == (1, 3, size, size)
    mask = frag.pix_to_face[0] >= 0
    assert (img[0][:, ~mask] == -1).all()
    r, c = mask.nonzero()[0]
    corner = torch.from_numpy(faces)[frag.pix_to_face[0, r, c]]
    want = (frag.bary[0, r, c].unsqueeze(1) * colours[corner]).sum(0)
    torch.testing.assert_close(img[0, :, r, c], want)


def test_fused_colour_render_equals_rasterize_then_interpolate():
    size = 40
    verts, faces = random_mesh(9, n_faces=25, n_frames=3)
    scr, f = to_screen(verts, size), torch.from_numpy(faces)
    colours = torch.rand(verts.shape[1], 3, generator=torch.Generator().manual_seed(1))
    want = interpolate(rasterize(scr, f, size, size), colours, f, background=-1.0)
    got = render_vertex_colors(scr, f, colours, size, size, background=-1.0, max_faces=30)
    assert torch.equal(got, want)  # exact by construction: the same elementwise blend of the same winners
