"""Tri-plane / tri-grid volume rendering of Real3D-Portrait and MimicTalk (EG3D family).

Mirrors upstream's ``RaySampler``, ``ImportanceRenderer`` (``ray_start = ray_end = 'auto'``),
``OSGDecoder`` and ``MipRayMarcher2`` (``modules/eg3ds/volumetric_rendering``,
``modules/img2plane/triplane.py``); reference ``mimictalk_architecture.md`` §1.7 and §2.8.

Per frame, for an ``R x R`` neural image (R = 128):

    camera [25] (c2w 4x4 + normalised K 3x3)  -> R² rays through pixel centres (i + 0.5) / R
    ray / box [-b/2, b/2]³ intersection        -> near, far per ray (b = box_warp)
    48 stratified depths in [near, far]        -> coarse samples -> decoder -> sigma, features
    coarse weights -> inverse-CDF sampling     -> 48 importance depths -> decoder
    merge + sort the 96 samples                -> midpoint alpha compositing (softplus(sigma - 1))
                                               -> features [R², 32] (x2 - 1), depth, alpha

Two sampling modes:

* **stochastic** (upstream inference): stratified jitter ~ U(0, 1) per sample and importance
  ``u ~ U(0, 1)``, both drawn from a caller-supplied ``torch.Generator``;
* **deterministic**: the jitter replaced by its mean 0.5 (``linspace(near, far, N)`` plus half a
  stratum) and ``u = linspace(0, 1, N_importance)``, which is upstream ``sample_pdf``'s own
  ``det=True`` path. Same inputs give bit-identical frames; this is what parity is tested in.

Everything here runs in fp32 whatever the network dtype (ray maths, plane sampling, the tiny
decoder MLP and the compositing accumulation); callers cast the feature image afterwards.
Work is split into ray chunks so peak memory stays bounded for any batch size; the chunking
does not change any value (all per-frame statistics are taken before it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .stylegan import FullyConnectedLayer

CAMERA_DIM = 25
"""Camera vector: cam-to-world 4x4 (16 values, row-major) followed by normalised K 3x3 (9)."""

PLANE_AXES = ((0, 1, 2), (0, 2, 1), (2, 0, 1))
"""For plane k, which world axes (x=0, y=1, z=2) feed ``grid_sample``'s (W, H, D) coordinates.

Upstream projects points with the inverse of its ``generate_planes()`` axis matrices; those are
permutations, so the projection is an exact reindexing: plane 0 samples (x, y) with depth z,
plane 1 (x, z) with depth y, plane 2 (z, x) with depth y."""

RGB_PAD = 0.001
"""MipNeRF sigmoid clamping in the decoder: features = sigmoid(h) * (1 + 2 * pad) - pad."""

DENSITY_SHIFT = 1.0
"""Ray marcher activation: sigma' = softplus(sigma - 1) ("clamp_mode: softplus")."""

TRANSMITTANCE_EPS = 1e-10
"""Added to (1 - alpha) inside the transmittance product (upstream MipRayMarcher2)."""

WEIGHT_FLOOR = 0.01
"""Added to the smoothed coarse weights before importance sampling (EG3D)."""

PDF_EPS = 1e-5
"""``sample_pdf`` eps: added to the weights, and the minimum CDF step treated as non-empty."""

DEFAULT_MAX_RAYS = 1 << 15
"""Rays (summed over the batch) marched at once; about 1 GB of fp32 working memory with 48 + 48
samples and 32 features. Only memory and speed depend on it, never the values."""


# --------------------------------------------------------------------------------------------
# Rays.
# --------------------------------------------------------------------------------------------


def camera_rays(camera: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through the pixel centres of an ``resolution²`` image (EG3D RaySampler).

    camera: [B, 25] -> origins [B, R², 3], unit directions [B, R², 3]; ray m = i * R + j looks
    through pixel row i, column j at normalised image coordinates ((j + 0.5) / R, (i + 0.5) / R).
    The OpenCV-style pinhole model includes the skew term K[0, 1] as upstream does.
    """
    camera = camera.float()
    batch, device = camera.shape[0], camera.device
    c2w = camera[:, :16].reshape(batch, 4, 4)
    k = camera[:, 16:CAMERA_DIM].reshape(batch, 3, 3)
    fx, fy, cx, cy, skew = (v.unsqueeze(-1) for v in (k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2], k[:, 0, 1]))

    # Pixel centres, computed as upstream (index * (1/R) + 0.5/R) so rays agree bit for bit.
    idx = torch.arange(resolution, dtype=torch.float32, device=device) * (1.0 / resolution) + (0.5 / resolution)
    v, u = torch.meshgrid(idx, idx, indexing="ij")  # v: row (y), u: column (x), each [R, R]
    u = u.reshape(1, -1)  # [1, R²]
    v = v.reshape(1, -1)

    x_cam = (u - cx + cy * skew / fy - skew * v / fy) / fx  # [B, R²], at depth z = 1
    y_cam = (v - cy) / fy
    ones = torch.ones_like(x_cam)
    points_cam = torch.stack([x_cam, y_cam, ones, ones], dim=1)  # [B, 4, R²] homogeneous
    points_world = torch.bmm(c2w, points_cam).transpose(1, 2)[..., :3]  # [B, R², 3]

    eye = c2w[:, :3, 3]  # [B, 3]
    directions = F.normalize(points_world - eye[:, None, :], dim=2)
    origins = eye[:, None, :].expand_as(directions)
    return origins, directions


def ray_box_limits(origins: torch.Tensor, directions: torch.Tensor, box_warp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of each ray in the cube [-box_warp/2, box_warp/2]³ (slab method,
    upstream ``get_ray_limits_box``). Rays that miss get near = -1, far = -2.

    origins, directions: [..., 3] -> near, far: [..., 1].
    """
    half = box_warp / 2
    inv_dir = 1 / directions
    # The slab face a ray meets first is -half for a positive direction component, +half else.
    first_face = torch.where(inv_dir < 0, half, -half)
    t_first = (first_face - origins) * inv_dir  # [..., 3], per-axis entry distance
    t_last = (-first_face - origins) * inv_dir  # per-axis exit distance

    near, far = t_first[..., 0], t_last[..., 0]
    hit = torch.ones_like(near, dtype=torch.bool)
    for axis in (1, 2):  # fold in the y then the z slab, in upstream's order
        a_near, a_far = t_first[..., axis], t_last[..., axis]
        hit &= ~((near > a_far) | (a_near > far))
        near = torch.maximum(near, a_near)
        far = torch.minimum(far, a_far)
    near = torch.where(hit, near, torch.full_like(near, -1.0))
    far = torch.where(hit, far, torch.full_like(far, -2.0))
    return near.unsqueeze(-1), far.unsqueeze(-1)


def fill_missed_rays(near: torch.Tensor, far: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Give rays that miss the box the range of the frame's hitting rays, as upstream: near =
    the smallest hitting near, far = the **largest hitting near** (upstream's choice, kept).

    near, far: [B, M, 1] -> (near, far, hit [B, M]). Statistics are per frame (upstream renders
    one frame per batch), so batched and per-frame rendering agree. Frames where no ray hits
    keep the (-1, -2) markers, as upstream.
    """
    hit = (far > near).squeeze(-1)  # [B, M]
    inf = torch.tensor(float("inf"), device=near.device)
    near_flat = near.squeeze(-1)
    min_near = torch.where(hit, near_flat, inf).amin(dim=1, keepdim=True)  # [B, 1]
    max_near = torch.where(hit, near_flat, -inf).amax(dim=1, keepdim=True)
    fill = ~hit & hit.any(dim=1, keepdim=True)
    near = torch.where(fill, min_near, near_flat).unsqueeze(-1)
    far = torch.where(fill, max_near, far.squeeze(-1)).unsqueeze(-1)
    return near, far, hit


# --------------------------------------------------------------------------------------------
# Sampling along rays.
# --------------------------------------------------------------------------------------------


def _uniform(shape: tuple[int, ...], device: torch.device, deterministic: bool,
             generator: Optional[torch.Generator]) -> torch.Tensor:
    """U(0, 1) samples from ``generator``, or their mean 0.5 in deterministic mode."""
    if deterministic:
        return torch.full(shape, 0.5, device=device)
    return torch.rand(shape, generator=generator, device=device)


def stratified_depths(near: torch.Tensor, far: torch.Tensor, num: int, *, deterministic: bool,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``num`` depths per ray: ``linspace(near, far, num)`` plus a jitter of up to one stratum
    (``(far - near) / (num - 1)``), the jitter being U(0, 1) or, deterministic, 0.5.

    near, far: [B, M, 1] -> [B, M, num, 1].
    """
    steps = torch.arange(num, dtype=torch.float32, device=near.device) / (num - 1)  # [num]
    span = far - near  # [B, M, 1]
    depths = (near + steps * span).unsqueeze(-1)  # [B, M, num, 1]
    stratum = span / (num - 1)
    jitter = _uniform(tuple(depths.shape), near.device, deterministic, generator)
    return depths + jitter * stratum.unsqueeze(-1)


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of the piecewise-constant density ``weights`` over ``bins``.

    bins: [R, S + 2] bin edges (only the first S + 1 are reachable, as upstream),
    weights: [R, S], u: [R, N] in [0, 1] -> depths [R, N].
    """
    weights = weights + PDF_EPS
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # [R, S + 1]
    n_bins = weights.shape[1]
    idx = torch.searchsorted(cdf, u.contiguous(), right=True)  # [R, N]
    below = (idx - 1).clamp_min(0)
    above = idx.clamp_max(n_bins)
    cdf_lo, cdf_hi = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    bin_lo, bin_hi = torch.gather(bins, 1, below), torch.gather(bins, 1, above)
    step = cdf_hi - cdf_lo
    step = torch.where(step < PDF_EPS, torch.ones_like(step), step)  # empty bins: any value works
    return bin_lo + (u - cdf_lo) / step * (bin_hi - bin_lo)


def importance_depths(coarse_depths: torch.Tensor, coarse_weights: torch.Tensor, num: int, *,
                      deterministic: bool, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """EG3D importance sampling: smooth the coarse weights (max-pool 2 then average-pool 2),
    add a floor, and draw ``num`` depths from the resulting PDF over the coarse midpoints.

    coarse_depths: [B, M, S, 1], coarse_weights: [B, M, S - 1, 1] -> [B, M, num, 1].
    """
    batch, rays, samples, _ = coarse_depths.shape
    z = coarse_depths.detach().reshape(batch * rays, samples)  # sample positions carry no gradient
    w = coarse_weights.detach().reshape(batch * rays, 1, samples - 1)
    w = F.max_pool1d(w, 2, 1, padding=1)  # [R, 1, S]
    w = F.avg_pool1d(w, 2, 1).squeeze(1) + WEIGHT_FLOOR  # [R, S - 1]
    z_mid = 0.5 * (z[:, :-1] + z[:, 1:])  # [R, S - 1]
    if deterministic:
        u = torch.linspace(0, 1, num, device=z.device).expand(batch * rays, num)
    else:
        u = torch.rand(batch * rays, num, generator=generator, device=z.device)
    return sample_pdf(z_mid, w[:, 1:-1], u).reshape(batch, rays, num, 1)


# --------------------------------------------------------------------------------------------
# Features: tri-plane / tri-grid lookup and the decoder MLP.
# --------------------------------------------------------------------------------------------


def sample_planes(planes: torch.Tensor, points: torch.Tensor, *, depth: int, box_warp: float) -> torch.Tensor:
    """Mean of the three planes' features at ``points`` (upstream ``sample_from_planes`` for
    ``depth == 1``, ``sample_from_trigrids`` otherwise).

    planes: [B, 3, C * D, H, W] with channels laid out (c d); points: [B, P, 3] in world units
    -> [B, P, C]. Points are scaled by 2 / box_warp into grid_sample's [-1, 1]
    (``align_corners=False``, zero padding, bilinear / trilinear).
    """
    return PlaneLookup(planes, depth)(points, box_warp)


class PlaneLookup:
    """The planes of :func:`sample_planes` laid out once for many lookups (a frame's coarse and
    fine passes over all ray chunks).

    Two layout choices, both leaving every value bit-identical to one plain ``grid_sample``:

    * **channels-last** (``[N, C, D, H, W]`` stored as N, D, H, W, C): each sample reads the C
      features of its 4 or 8 cells from adjacent memory instead of C places a plane apart.
      PyTorch's CPU 3-D ``grid_sample`` (a scalar loop) is ~2.3x faster so, the 2-D one ~4x.
    * **split across threads**: PyTorch's CPU ``grid_sample`` parallelises over the batch only,
      so one frame's 3 planes on 2 threads would leave one thread idle a third of the time (on
      16 threads, 13 idle). On the CPU each plane is stored ``k`` times and the points are cut
      into ``k`` parts, ``k * 3B = lcm(3B, threads)`` entries. Every point is sampled on its own.

    Both are CPU measures: on a GPU the planes are used as they are (a view, no copy).
    """

    def __init__(self, planes: torch.Tensor, depth: int):
        batch, n_planes, cd, height, width = planes.shape
        n = batch * n_planes
        threads = torch.get_num_threads() if planes.device.type == "cpu" else 1
        self.batch, self.depth, self.splits = batch, depth, threads // math.gcd(n, threads)
        inner = (cd // depth, depth, height, width) if depth > 1 else (cd, height, width)
        if planes.device.type != "cpu":
            self.features = planes.reshape(n, *inner)
            return
        layout = torch.channels_last_3d if depth > 1 else torch.channels_last
        self.features = torch.empty((n * self.splits, *inner), dtype=planes.dtype, device=planes.device,
                                    memory_format=layout)
        self.features.unflatten(0, (n, self.splits)).copy_(planes.reshape(n, 1, *inner).expand(n, self.splits, *inner))

    def __call__(self, points: torch.Tensor, box_warp: float) -> torch.Tensor:
        """points [B, P, 3] in world units -> mean plane features [B, P, C]."""
        n_planes = len(PLANE_AXES)
        points = (2 / box_warp) * points
        grid = torch.stack([points[..., list(axes)] for axes in PLANE_AXES], dim=1)  # [B, 3, P, 3]
        total = grid.shape[2]
        feats, k = self.features, self.splits
        if total % k:  # points do not split evenly: one entry per plane
            feats, k = feats[::k], 1
        grid = grid.reshape(self.batch * n_planes * k, 1, total // k, 3)  # [B*3*k, 1, P/k, 3]
        if self.depth == 1:
            grid = grid[..., :2]
        else:
            grid = grid.unsqueeze(1)  # [B*3*k, 1, 1, P/k, 3]
        out = F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out.reshape(self.batch, n_planes, k, -1, total // k).mean(1)  # [B, k, C, P/k]
        return out.transpose(2, 3).reshape(self.batch, total, -1)  # [B, P, C]


class OSGDecoder(nn.Module):
    """EG3D's "OSG" decoder (upstream ``OSGDecoder``): FC -> Softplus -> FC on the averaged
    plane features, with StyleGAN equalized-lr layers (``decoder.net.0`` / ``decoder.net.2``).

    forward(features [B, P, C]) -> (sigma [B, P, 1], features [B, P, out]) where
    features = sigmoid(h) * (1 + 2 * 0.001) - 0.001 (MipNeRF clamping).
    """

    def __init__(self, in_features: int = 32, hidden: int = 64, out_features: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            FullyConnectedLayer(in_features, hidden, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnectedLayer(hidden, 1 + out_features, lr_multiplier=lr_multiplier),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(features)  # [B, P, 1 + out]
        sigma = h[..., :1]
        rgb = torch.sigmoid(h[..., 1:]) * (1 + 2 * RGB_PAD) - RGB_PAD
        return sigma, rgb


def _query(planes: "torch.Tensor | PlaneLookup", decoder: OSGDecoder, origins: torch.Tensor, directions: torch.Tensor,
           depths: torch.Tensor, depth: int, box_warp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the samples at ``depths`` [B, M, S, 1] along the rays -> (colors [B, M, S, C],
    densities [B, M, S, 1]); ``planes`` as :func:`sample_planes` takes them or laid out once."""
    batch, rays, samples, _ = depths.shape
    points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(batch, -1, 3)
    lookup = planes if isinstance(planes, PlaneLookup) else PlaneLookup(planes, depth)
    sigma, rgb = decoder(lookup(points, box_warp).float())
    return rgb.float().reshape(batch, rays, samples, -1), sigma.float().reshape(batch, rays, samples, 1)


# --------------------------------------------------------------------------------------------
# Compositing.
# --------------------------------------------------------------------------------------------


def march_rays(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor,
               depth_range: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MipRayMarcher2: alpha-composite the S - 1 midpoints between consecutive samples.

    colors [B, M, S, C], densities [B, M, S, 1], depths [B, M, S, 1] (sorted) ->
    (features [B, M, C] scaled to [-1, 1] by x2 - 1 with no white background,
    depth [B, M, 1], weights [B, M, S - 1, 1]). Depths of rays with zero total weight become
    +inf and are clamped to ``depth_range`` ([B] min and max of the frame's sample depths;
    computed from ``depths`` when not given).
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - DENSITY_SHIFT)
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2

    alpha = 1 - torch.exp(-densities_mid * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + TRANSMITTANCE_EPS], -2), -2)
    weights = alpha * transmittance[:, :, :-1]  # [B, M, S - 1, 1]

    features = torch.sum(weights * colors_mid, -2)
    depth = torch.sum(weights * depths_mid, -2) / weights.sum(2)
    depth = torch.nan_to_num(depth, float("inf"))
    if depth_range is None:
        depth_range = (depths.amin(dim=(1, 2, 3)), depths.amax(dim=(1, 2, 3)))
    lo, hi = (t.reshape(-1, 1, 1) for t in depth_range)
    depth = torch.maximum(torch.minimum(depth, hi), lo)
    return features * 2 - 1, depth, weights


# --------------------------------------------------------------------------------------------
# The whole volume pass.
# --------------------------------------------------------------------------------------------


@dataclass
class VolumeOutput:
    """Per-ray results of :func:`render_volume` (M = R² rays, row-major pixels)."""

    features: torch.Tensor  # [B, M, C] composited decoder features in [-1, 1]; first 3 = RGB
    depth: torch.Tensor  # [B, M, 1] expected depth
    alpha: torch.Tensor  # [B, M, 1] accumulated opacity (sum of the weights)
    hit: torch.Tensor  # [B, M] whether the ray meets the box


def render_volume(
    planes: torch.Tensor,
    decoder: OSGDecoder,
    camera: torch.Tensor,
    *,
    resolution: int,
    grid_depth: int,
    box_warp: float,
    num_coarse: int,
    num_fine: int,
    deterministic: bool = True,
    generator: Optional[torch.Generator] = None,
    max_rays: int = DEFAULT_MAX_RAYS,
) -> VolumeOutput:
    """Volume-render ``planes`` [B, 3, C * D, H, W] seen by ``camera`` [B, 25] into
    ``resolution²`` rays (upstream ``ImportanceRenderer.forward`` with automatic near/far).

    Computed in fp32. In stochastic mode all randomness comes from ``generator``.
    """
    lookup = PlaneLookup(planes.float(), grid_depth)
    origins, directions = camera_rays(camera, resolution)
    near, far = ray_box_limits(origins, directions, box_warp)
    near, far, hit = fill_missed_rays(near, far)
    coarse = stratified_depths(near, far, num_coarse, deterministic=deterministic, generator=generator)
    # Importance samples fall between coarse midpoints, so the coarse depths bound every sample.
    depth_range = (coarse.amin(dim=(1, 2, 3)), coarse.amax(dim=(1, 2, 3)))

    batch, rays = origins.shape[:2]
    step = max(1, max_rays // batch)
    outs = []
    for start in range(0, rays, step):
        part = slice(start, start + step)
        outs.append(_march_chunk(lookup, decoder, origins[:, part], directions[:, part], coarse[:, part],
                                 depth_range, grid_depth, box_warp, num_fine, deterministic, generator))
    features, depth, alpha = (torch.cat(t, dim=1) for t in zip(*outs))
    return VolumeOutput(features=features, depth=depth, alpha=alpha, hit=hit)


def _march_chunk(lookup, decoder, origins, directions, coarse, depth_range, grid_depth, box_warp,
                 num_fine, deterministic, generator):
    """Coarse pass, importance pass and compositing for a slice of rays."""
    colors, densities = _query(lookup, decoder, origins, directions, coarse, grid_depth, box_warp)
    if num_fine <= 0:
        features, depth, weights = march_rays(colors, densities, coarse, depth_range)
        return features, depth, weights.sum(2)
    _, _, coarse_weights = march_rays(colors, densities, coarse, depth_range)
    fine = importance_depths(coarse, coarse_weights, num_fine, deterministic=deterministic, generator=generator)
    fine_colors, fine_densities = _query(lookup, decoder, origins, directions, fine, grid_depth, box_warp)

    # Merge the two sample sets and sort them along each ray.
    depths = torch.cat([coarse, fine], dim=-2)
    order = torch.sort(depths, dim=-2).indices  # [B, m, S, 1]
    depths = torch.gather(depths, -2, order)
    colors = torch.gather(torch.cat([colors, fine_colors], dim=-2), -2, order.expand(-1, -1, -1, colors.shape[-1]))
    densities = torch.gather(torch.cat([densities, fine_densities], dim=-2), -2, order)
    features, depth, weights = march_rays(colors, densities, depths, depth_range)
    return features, depth, weights.sum(2)
