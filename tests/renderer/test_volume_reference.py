"""Volume rendering and ray sampling against small float64 reference implementations written
here from the formulas (EG3D MipRayMarcher2, RaySampler, ``get_ray_limits_box``, ``sample_pdf``),
on non-constant inputs: ramps, steps and random values.

Tolerances: the library runs in fp32 (unit roundoff 6e-8). The longest dependency chain is a
cumulative product / sum over at most 48 samples plus a handful of elementwise ops, so relative
errors stay below ~100 ulps = 6e-6; the bounds below (1e-5 relative to the quantity's scale) sit
above that floor and far below every plausible bug (a half-interval shift of depths or colours,
a flipped slab face, an off-by-one bin are all >= 1e-3 here).
"""

import math

import numpy as np
import pytest
import torch

from mimictalk_lib.renderer import volume as V

F64 = torch.float64


# --- references ---------------------------------------------------------------------------------


def ref_march(colors, densities, depths):
    """Per ray, per interval [d_i, d_i+1]: midpoint colour / density / depth, alpha = 1 - exp(-sigma
    delta), transmittance = prod_{j<i} (1 - alpha_j + 1e-10); features = 2 sum(w c) - 1, depth =
    sum(w d) / sum(w) clamped to the frame's sample range."""
    c, s, d = (np.asarray(t, dtype=np.float64) for t in (colors, densities, depths))
    batch, rays, samples, _ = c.shape
    feats = np.zeros((batch, rays, c.shape[-1]))
    depth = np.zeros((batch, rays, 1))
    weights = np.zeros((batch, rays, samples - 1, 1))
    for b in range(batch):
        lo, hi = d[b].min(), d[b].max()
        for r in range(rays):
            trans = 1.0
            for i in range(samples - 1):
                delta = d[b, r, i + 1, 0] - d[b, r, i, 0]
                x = (s[b, r, i, 0] + s[b, r, i + 1, 0]) / 2 - 1
                sigma = math.log1p(math.exp(x)) if x < 30 else x  # softplus
                alpha = 1 - math.exp(-sigma * delta)
                w = alpha * trans
                trans *= 1 - alpha + 1e-10
                weights[b, r, i, 0] = w
                feats[b, r] += w * (c[b, r, i] + c[b, r, i + 1]) / 2
                depth[b, r, 0] += w * (d[b, r, i, 0] + d[b, r, i + 1, 0]) / 2
            total = weights[b, r].sum()
            depth[b, r, 0] = min(max(depth[b, r, 0] / total if total > 0 else math.inf, lo), hi)
    return feats * 2 - 1, depth, weights


def _inputs(kind: str, seed: int = 0, batch: int = 2, rays: int = 5, samples: int = 24, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    # non-uniform sorted depths in [2, 3]
    depths = torch.sort(2 + torch.rand(batch, rays, samples, 1, generator=g), dim=2).values
    t = torch.linspace(0, 1, samples).view(1, 1, samples, 1)
    if kind == "ramp":
        densities = (-2 + 8 * t).expand(batch, rays, samples, 1)
        colors = torch.cat([t, 1 - t, (2 * t) % 1][:channels], -1).expand(batch, rays, samples, channels)
    elif kind == "step":
        step = (t > 0.4).float()
        densities = (-3 + 9 * step).expand(batch, rays, samples, 1)
        colors = torch.cat([step, 1 - step, 0.5 * step + 0.2][:channels], -1).expand(batch, rays, samples, channels)
    else:
        densities = 4 * torch.randn(batch, rays, samples, 1, generator=g)
        colors = torch.rand(batch, rays, samples, channels, generator=g)
    return colors.contiguous(), densities.contiguous(), depths


@pytest.mark.parametrize("kind", ["ramp", "step", "random"])
def test_compositing_matches_the_float64_reference(kind):
    colors, densities, depths = _inputs(kind, seed=len(kind))
    feats, depth, weights = V.march_rays(colors, densities, depths)
    want_f, want_d, want_w = ref_march(colors, densities, depths)
    assert np.abs(weights.double().numpy() - want_w).max() < 1e-6  # weights are in [0, 1]
    assert np.abs(feats.double().numpy() - want_f).max() < 1e-5  # features in [-1, 1]
    assert np.abs(depth.double().numpy() - want_d).max() < 1e-5 * 3  # depths in [2, 3]


def test_compositing_reference_discriminates_half_interval_shifts():
    """The bounds above are far below what a near-end depth or a far-end colour would cost here."""
    colors, densities, depths = _inputs("ramp")
    want_f, want_d, w = ref_march(colors, densities, depths)
    near_end = (w * depths[:, :, :-1].double().numpy()).sum(2) / w.sum(2)
    far_colour = (w * colors[:, :, 1:].double().numpy()).sum(2) * 2 - 1
    assert np.abs(near_end - want_d).min() > 1e-3 and np.abs(far_colour - want_f).max() > 1e-2


def test_alpha_is_the_sum_of_weights_and_empty_rays_take_the_far_bound():
    colors, densities, depths = _inputs("random", seed=3)
    densities[0, 0] = -80.0  # no density at all on one ray: weights 0, depth clamped to the max
    feats, depth, weights = V.march_rays(colors, densities, depths)
    assert weights[0, 0].abs().max() < 1e-30 and depth[0, 0, 0] == depths[0].max()
    assert feats[0, 0].tolist() == pytest.approx([-1.0] * 3, abs=1e-6)


# --- rays -------------------------------------------------------------------------------------


def _random_cameras(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cams = []
    for _ in range(n):
        q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64)).Q
        c2w = torch.eye(4, dtype=F64)
        c2w[:3, :3] = q * torch.sign(torch.det(q))
        c2w[:3, 3] = torch.randn(3, generator=g, dtype=F64) * 2
        k = torch.tensor([[4.2 + torch.rand(1, generator=g).item(), 0.07, 0.48], [0, 4.0, 0.53], [0, 0, 1]], dtype=F64)
        cams.append(torch.cat([c2w.flatten(), k.flatten()]))
    return torch.stack(cams)


def ref_rays(camera: np.ndarray, resolution: int):
    """Pinhole with skew (OpenCV K): pixel (i, j) -> normalised (u, v) = ((j + .5) / R, (i + .5) / R),
    camera point ((u - cx - s (v - cy) / fy) / fx, (v - cy) / fy, 1), to world by c2w, minus the eye."""
    c2w, k = camera[:16].reshape(4, 4), camera[16:].reshape(3, 3)
    fx, fy, cx, cy, s = k[0, 0], k[1, 1], k[0, 2], k[1, 2], k[0, 1]
    dirs = []
    for i in range(resolution):
        for j in range(resolution):
            u, v = (j + 0.5) / resolution, (i + 0.5) / resolution
            y = (v - cy) / fy
            x = (u - cx - s * y) / fx
            p = c2w @ np.array([x, y, 1.0, 1.0])
            d = p[:3] - c2w[:3, 3]
            dirs.append(d / np.linalg.norm(d))
    return np.broadcast_to(c2w[:3, 3], (resolution * resolution, 3)), np.array(dirs)


def test_camera_rays_match_the_float64_pinhole():
    cams = _random_cameras(3, seed=1)
    origins, dirs = V.camera_rays(cams.float(), 5)
    for b in range(3):
        o, d = ref_rays(cams[b].numpy(), 5)
        assert np.abs(origins[b].double().numpy() - o).max() < 1e-6 * 4  # |eye| <= ~4
        assert np.abs(dirs[b].double().numpy() - d).max() < 1e-5  # unit vectors; fp32 through a 4x4 product


def ref_box(o: np.ndarray, d: np.ndarray, half: float):
    """Slab method in float64: entry = max over axes of the near slab, exit = min of the far slab
    (a miss when entry > exit)."""
    t0 = (-half - o) / d
    t1 = (half - o) / d
    return np.minimum(t0, t1).max(), np.maximum(t0, t1).min()


def test_box_limits_match_the_float64_slab_method():
    g = torch.Generator().manual_seed(4)
    origins = torch.randn(1, 400, 3, generator=g) * 1.5
    dirs = torch.nn.functional.normalize(torch.randn(1, 400, 3, generator=g), dim=-1)
    near, far = V.ray_box_limits(origins, dirs, box_warp=1.2)
    hits = misses = 0
    for m in range(400):
        n, f = ref_box(origins[0, m].double().numpy(), dirs[0, m].double().numpy(), 0.6)
        if abs(f - n) < 1e-4:  # grazing rays: a 1-ulp difference may flip hit / miss
            continue
        if n < f:
            hits += 1
            assert near[0, m, 0].item() == pytest.approx(n, abs=1e-5) and far[0, m, 0].item() == pytest.approx(f, abs=1e-5)
        else:
            misses += 1
            assert near[0, m, 0] == -1 and far[0, m, 0] == -2
    assert hits > 50 and misses > 50


# --- sampling along rays ----------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [True, False])
def test_stratified_depths_match_the_float64_reference(deterministic):
    g = torch.Generator().manual_seed(2)
    near = 2 + torch.rand(2, 7, 1, generator=g)
    far = near + 0.2 + torch.rand(2, 7, 1, generator=g)
    num = 9
    out = V.stratified_depths(near, far, num, deterministic=deterministic, generator=torch.Generator().manual_seed(5))
    jitter = (np.full((2, 7, num, 1), 0.5) if deterministic
              else torch.rand((2, 7, num, 1), generator=torch.Generator().manual_seed(5)).double().numpy())
    n, f = near.double().numpy()[..., None], far.double().numpy()[..., None]  # [B, M, 1, 1]
    k = np.arange(num, dtype=np.float64).reshape(1, 1, num, 1)
    want = n + k / (num - 1) * (f - n) + jitter * (f - n) / (num - 1)
    assert np.abs(out.double().numpy() - want).max() < 1e-6 * 4


def ref_sample_pdf(bins: np.ndarray, weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse CDF of the piecewise-constant pdf (weights + 1e-5, normalised) over the bins
    [bins_k, bins_k+1]: linear inside the bin that holds u."""
    out = np.zeros_like(u)
    for r in range(u.shape[0]):
        w = weights[r] + 1e-5
        cdf = np.concatenate([[0.0], np.cumsum(w / w.sum())])
        for n, x in enumerate(u[r]):
            k = min(max(np.searchsorted(cdf, x, side="right") - 1, 0), len(w) - 1)
            out[r, n] = bins[r, k] + (x - cdf[k]) / (cdf[k + 1] - cdf[k]) * (bins[r, k + 1] - bins[r, k])
    return out


@pytest.mark.parametrize("kind", ["ramp", "step", "random"])
def test_sample_pdf_matches_the_float64_inverse_cdf(kind):
    g = torch.Generator().manual_seed(7)
    rays, s = 6, 12
    bins = torch.sort(torch.rand(rays, s + 2, generator=g) * 3, dim=1).values
    if kind == "ramp":
        weights = torch.linspace(0.0, 1.0, s).expand(rays, s).contiguous()
    elif kind == "step":
        weights = (torch.arange(s) >= s // 2).float().expand(rays, s).contiguous()
    else:
        weights = torch.rand(rays, s, generator=g) ** 3
    u = torch.rand(rays, 20, generator=g) * 0.999
    got = V.sample_pdf(bins, weights, u).double().numpy()
    want = ref_sample_pdf(bins.double().numpy(), weights.double().numpy(), u.double().numpy())
    # fp32 CDF of 12 bins: ~1e-6 absolute; an empty bin (step) divides by a 1e-5-wide CDF step, which
    # amplifies that to ~0.1 of its width: compare where the pdf is not near-empty
    w = weights.numpy() + 1e-5
    cdf = np.concatenate([np.zeros((rays, 1)), np.cumsum(w / w.sum(1, keepdims=True), 1)], 1)
    k = np.clip(np.array([np.searchsorted(cdf[r], u[r].numpy(), side="right") - 1 for r in range(rays)]), 0, s - 1)
    solid = np.take_along_axis(w / w.sum(1, keepdims=True), k, 1) > 1e-3
    assert solid.mean() > 0.4
    assert np.abs(got - want)[solid].max() < 1e-5 * 3


def test_importance_depths_match_the_float64_reference():
    """Smoothing max-pool(2, stride 1, pad 1) then avg-pool(2, stride 1), + 0.01, the interior S - 3
    weights as the pdf over the S - 1 coarse midpoints; deterministic u = linspace(0, 1, N)."""
    g = torch.Generator().manual_seed(9)
    b, m, s, n = 1, 4, 10, 7
    coarse = torch.sort(2 + torch.rand(b, m, s, 1, generator=g), dim=2).values
    cw = torch.rand(b, m, s - 1, 1, generator=g) * (torch.arange(s - 1).view(1, 1, -1, 1) % 3 == 0)
    got = V.importance_depths(coarse, cw, n, deterministic=True).double().numpy()
    z, w = coarse.double().numpy()[0, :, :, 0], cw.double().numpy()[0, :, :, 0]
    for r in range(m):
        padded = np.concatenate([[-np.inf], w[r], [-np.inf]])
        mx = np.maximum(padded[:-1], padded[1:])  # [S]
        smooth = (mx[:-1] + mx[1:]) / 2 + 0.01  # [S - 1]
        mids = (z[r, :-1] + z[r, 1:]) / 2
        want = ref_sample_pdf(mids[None], smooth[None, 1:-1], np.linspace(0, 1, n)[None])[0]
        assert np.abs(got[0, r, :, 0] - want).max() < 1e-5 * 3


# --- gaps found by mutation testing (docs/mutation.md) ------------------------------------------


def test_decoder_matches_its_float64_formula():
    """FC -> softplus -> FC; sigma = first output, features = sigmoid(rest) * 1.002 - 0.001."""
    torch.manual_seed(1)
    dec = V.OSGDecoder(4, 8, 3)
    x = torch.randn(2, 5, 4)
    sigma, rgb = dec(x)
    w0, b0 = dec.net[0].weight.double(), dec.net[0].bias.double()
    w1, b1 = dec.net[2].weight.double(), dec.net[2].bias.double()
    g0, g1 = dec.net[0].weight_gain, dec.net[2].weight_gain  # equalized learning rate scales
    h = torch.nn.functional.softplus(x.double() @ (w0 * g0).T + b0 * dec.net[0].bias_gain)
    out = h @ (w1 * g1).T + b1 * dec.net[2].bias_gain
    assert torch.allclose(sigma.double(), out[..., :1], atol=1e-5)
    assert torch.allclose(rgb.double(), torch.sigmoid(out[..., 1:]) * 1.002 - 0.001, atol=1e-6)
    default = V.OSGDecoder()  # the official sizes: 32 -> 64 -> 1 + 32
    assert default.net[0].weight.shape == (64, 32) and default.net[2].weight.shape == (33, 64)
    assert isinstance(default.net[1], torch.nn.Softplus)


def test_samples_lie_along_the_rays_in_box_units():
    """_query decodes the features at origin + depth * direction, scaled by 2 / box_warp into the
    grid: planes encoding a coordinate return it at those points (box_warp 2, not 1)."""
    side = 64
    col = (torch.arange(side) + 0.5) / side * 2 - 1
    planes = col.expand(side, side).reshape(1, 1, 1, side, side).expand(1, 3, 1, side, side).contiguous()

    class Identity(torch.nn.Module):  # sigma = rgb = the sampled feature
        def forward(self, f):
            return f[..., :1], f[..., :1]

    origins = torch.tensor([[[0.1, 0.0, 0.0]]])
    dirs = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0, 2.0]]]), dim=-1)
    depths = torch.tensor([0.2, 0.5]).view(1, 1, 2, 1)
    rgb, _ = V._query(planes, Identity(), origins, dirs, depths, 1, box_warp=2.0)
    pts = origins[0, 0] + depths[0, 0] * dirs[0, 0]  # [2, 3]
    want = (pts[:, 0] + pts[:, 0] + pts[:, 2]) / 3  # planes (x, y), (x, z), (z, x) read their column: x, x, z
    assert torch.allclose(rgb.flatten(), want, atol=1e-5)


def test_missed_rays_use_their_own_frames_range_and_frames_without_hits_keep_markers():
    near = torch.tensor([[[2.0], [-1.0]], [[0.5], [0.7]], [[-1.0], [-1.0]]])
    far = torch.tensor([[[2.5], [-2.0]], [[1.5], [1.6]], [[-2.0], [-2.0]]])
    n, f, hit = V.fill_missed_rays(near, far)
    assert n[0, 1, 0] == 2.0 and f[0, 1, 0] == 2.0  # frame 0's own hitting near, not frame 1's 0.5
    assert hit[2].tolist() == [False, False] and n[2].flatten().tolist() == [-1.0, -1.0]
    assert f[2].flatten().tolist() == [-2.0, -2.0]


def _tiny_scene(batch=2):
    torch.manual_seed(0)
    planes = torch.randn(batch, 3, 6, 16, 16)
    dec = V.OSGDecoder(2, 8, 2)
    from tests.fixtures.tiny_renderer import eg3d_camera

    cams = torch.stack([eg3d_camera(), eg3d_camera(0.3, -0.2)][:batch])
    return planes, dec, cams


def test_coarse_only_rendering_is_plain_compositing_of_the_coarse_samples():
    planes, dec, cams = _tiny_scene()
    kw = dict(resolution=4, grid_depth=3, box_warp=1.0, num_coarse=7)
    out = V.render_volume(planes, dec, cams, num_fine=0, **kw)
    o, d = V.camera_rays(cams, 4)
    near, far, _ = V.fill_missed_rays(*V.ray_box_limits(o, d, 1.0))
    coarse = V.stratified_depths(near, far, 7, deterministic=True)
    colors, densities = V._query(planes, dec, o, d, coarse, 3, 1.0)
    feats, depth, weights = V.march_rays(colors, densities, coarse)
    assert torch.allclose(out.features, feats, atol=1e-6) and torch.allclose(out.depth, depth, atol=1e-6)
    assert torch.allclose(out.alpha, weights.sum(2), atol=1e-6)
    assert not torch.allclose(out.features, V.render_volume(planes, dec, cams, num_fine=1, **kw).features, atol=1e-4)


def test_stochastic_rendering_draws_only_from_the_given_generator():
    planes, dec, cams = _tiny_scene()
    kw = dict(resolution=4, grid_depth=3, box_warp=1.0, num_coarse=6, num_fine=6, deterministic=False)
    torch.manual_seed(1)
    a = V.render_volume(planes, dec, cams, generator=torch.Generator().manual_seed(5), **kw)
    torch.manual_seed(2)  # another global stream: must not matter
    b = V.render_volume(planes, dec, cams, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a.features, b.features)  # same generator seed, same ops and shapes: bit-exact


def test_empty_rays_take_their_own_frames_far_bound():
    """A ray with no density gets the largest sample depth of its own frame (not the batch's)."""
    colors, densities, depths = _inputs("random", seed=4)
    depths[1] += 5.0  # frame 1 lies much farther away
    densities[0, 0] = -80.0
    _, depth, _ = V.march_rays(colors, densities, depths)
    assert depth[0, 0, 0] == depths[0].max() and depth[0, 0, 0] < depths[1].max() - 4


def test_decoder_learning_rate_multiplier_reaches_its_layers():
    for lr_mul in (1.0, 0.5):
        dec = V.OSGDecoder(4, 8, 3, lr_multiplier=lr_mul) if lr_mul != 1.0 else V.OSGDecoder(4, 8, 3)
        assert dec.net[0].weight_gain == pytest.approx(lr_mul / 4**0.5) and dec.net[0].bias_gain == lr_mul
        assert dec.net[2].weight_gain == pytest.approx(lr_mul / 8**0.5) and dec.net[2].bias_gain == lr_mul


@pytest.mark.parametrize("num_fine", [0, 6])
def test_empty_rays_in_a_render_take_their_frames_far_coarse_depth(num_fine):
    """No density anywhere (decoder bias -200: every weight underflows to 0): each ray's depth is
    its own frame's farthest coarse sample, whatever the batch or the chunking."""
    planes, dec, cams = _tiny_scene()
    with torch.no_grad():
        dec.net[2].bias[0] = -200.0 / dec.net[2].bias_gain
        dec.net[2].weight[0] = 0.0
    kw = dict(resolution=4, grid_depth=3, box_warp=1.0, num_coarse=6, num_fine=num_fine)
    o, d = V.camera_rays(cams, 4)
    near, far, _ = V.fill_missed_rays(*V.ray_box_limits(o, d, 1.0))
    far_coarse = V.stratified_depths(near, far, 6, deterministic=True).amax(dim=(1, 2, 3))  # [B]
    assert (far_coarse[0] - far_coarse[1]).abs() > 1e-3  # the two frames differ
    for max_rays in (1 << 15, 6):  # whole frames, and chunks of 3 rays per frame
        out = V.render_volume(planes, dec, cams, max_rays=max_rays, **kw)
        assert float(out.alpha.detach().abs().max()) == 0.0
        assert torch.equal(out.depth[..., 0], far_coarse[:, None].expand(2, 16))
