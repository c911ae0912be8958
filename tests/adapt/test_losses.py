"""Every loss term of adaptation (mimictalk_lib.adapt.losses) against float64 references written
here from upstream's definitions, on random / ramp / step inputs.

Tolerances: the library computes in fp32; each term is a mean or sum of at most a few thousand
elementwise values, so the relative error is below ~1e-6 (fp32 roundoff 6e-8 times log2(n)
pairwise-summation depth plus a few elementwise ops); the bounds are 1e-5 relative, while a
flipped target, a wrong crop or a missing term changes the value by > 1 %.
"""

import math

import numpy as np
import pytest
import torch

from mimictalk_lib.adapt import losses as L

REL = 1e-5


def _alpha_and_head(kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = 12
    if kind == "ramp":
        alpha = torch.linspace(0, 1, r * r).reshape(1, 1, r, r).expand(2, 1, r, r).contiguous()
    elif kind == "step":
        alpha = (torch.arange(r).view(1, 1, 1, r) >= r // 3).float().expand(2, 1, r, r) * 0.9 + 0.05
    else:
        alpha = torch.rand(2, 1, r, r, generator=g)
    head = torch.zeros(2, 1, r, r, dtype=torch.bool)
    head[0, :, 3:9, 2:7] = True  # a head box
    head[1] = torch.rand(1, r, r, generator=g) > 0.6  # a ragged mask
    return alpha, head


def ref_density(alpha: np.ndarray, head: np.ndarray):
    """Upstream: a = clamp(alpha, 1e-5, 1 - 1e-5); L2 = mean(a^2 off the head) + mean((a - 1)^2 on
    it); entropy = mean(-a log2 a - (1 - a) log2(1 - a))."""
    a = np.clip(alpha.astype(np.float64), 1e-5, 1 - 1e-5)
    entropy = np.mean(-a * np.log2(a) - (1 - a) * np.log2(1 - a))
    terms = [np.mean(a[~head] ** 2) if (~head).any() else None, np.mean((a[head] - 1) ** 2) if head.any() else None]
    terms = [t for t in terms if t is not None]
    return (sum(terms) if terms else None), entropy


@pytest.mark.parametrize("kind", ["ramp", "step", "random"])
def test_density_losses_match_the_float64_reference(kind):
    alpha, head = _alpha_and_head(kind, seed=len(kind))
    l2, entropy = L.density_losses(alpha, head)
    want_l2, want_entropy = ref_density(alpha.numpy(), head.numpy())
    assert l2.item() == pytest.approx(want_l2, rel=REL) and entropy.item() == pytest.approx(want_entropy, rel=REL)


def test_density_target_direction():
    """alpha = 1 everywhere on the head and 0 elsewhere costs nothing; the reverse costs 2."""
    head = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    head[..., 2:6, 2:6] = True
    good, _ = L.density_losses(head.float(), head)
    bad, _ = L.density_losses((~head).float(), head)
    assert good.item() == pytest.approx(2 * 1e-10, abs=1e-8) and bad.item() == pytest.approx(2 * (1 - 1e-5) ** 2, rel=REL)


def test_density_losses_skip_an_empty_region():
    alpha = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    everywhere = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    l2, _ = L.density_losses(alpha, everywhere)
    assert l2.item() == pytest.approx(ref_density(alpha.numpy(), everywhere.numpy())[0], rel=REL)
    l2, _ = L.density_losses(alpha, ~everywhere)
    assert l2.item() == pytest.approx(ref_density(alpha.numpy(), ~everywhere.numpy())[0], rel=REL)


def test_entropy_is_in_bits_and_clamped():
    half = torch.full((1, 1, 2, 2), 0.5)
    assert L.density_losses(half, half > 0)[1].item() == pytest.approx(1.0, rel=REL)  # one bit at 0.5
    ends = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    # clamped to [1e-5, 1 - 1e-5] (not 0 * log 0), as fp32 holds those bounds: 1 - 1e-5 is 1 - 1.0014e-5
    # and 1 - a is itself rounded to fp32 (exact for a near 1, Sterbenz): take the pairs as fp32 holds them
    lo, hi = np.float32(1e-5), np.float32(1) - np.float32(1e-5)
    pairs = [(float(lo), float(np.float32(1) - lo)), (float(hi), float(np.float32(1) - hi))]
    want = sum(-x * math.log2(x) - y * math.log2(y) for x, y in pairs) / 2
    assert L.density_losses(ends, ends > 0.5)[1].item() == pytest.approx(want, rel=REL)


class FakeLpips:
    """A stand-in perceptual distance (per-sample mean squared difference) recording its calls."""

    def __init__(self):
        self.shapes = []

    def __call__(self, x, y):
        self.shapes.append(tuple(x.shape))
        return (x - y).square().mean(dim=(1, 2, 3))


def test_lip_losses_match_the_float64_reference():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.rand(6, 3, 64, 64, generator=g) * 2 - 1, torch.rand(6, 3, 64, 64, generator=g) * 2 - 1
    # (x0, x1, y0, y1): 40x40; empty in x; 25x8; empty in y; exactly 31x31 (LPIPS' minimum); 30x31
    rects = torch.tensor([[10, 50, 20, 60], [30, 30, 5, 9], [5, 30, 40, 48], [3, 40, 7, 7], [0, 31, 33, 64], [1, 31, 0, 31]])
    lp = FakeLpips()
    l1, perceptual = L.lip_losses(pred, target, rects, lp)
    p, t = pred.double().numpy(), target.double().numpy()
    crops = {i: (p[i, :, y0:y1, x0:x1], t[i, :, y0:y1, x0:x1]) for i, (x0, x1, y0, y1) in enumerate(rects.tolist())
             if x1 > x0 and y1 > y0}  # empty boxes are skipped, the others still count
    assert sorted(crops) == [0, 2, 4, 5]
    want_l1 = sum(np.abs(a - b).mean() for a, b in crops.values())  # summed over the batch (upstream)
    assert l1.item() == pytest.approx(want_l1, rel=REL)
    # LPIPS only on crops of at least 31 x 31 (AlexNet's smallest input), summed over the batch
    assert lp.shapes == [(1, 3, 40, 40), (1, 3, 31, 31)]
    want_lp = sum(((crops[i][0] - crops[i][1]) ** 2).mean() for i in (0, 4))
    assert perceptual.item() == pytest.approx(want_lp, rel=REL)


def test_lip_losses_without_usable_crops_or_lpips():
    pred = torch.zeros(1, 3, 16, 16)
    assert L.lip_losses(pred, pred, torch.tensor([[4, 4, 2, 9]]), FakeLpips()) == (None, None)
    l1, lp = L.lip_losses(pred, pred + 0.5, torch.tensor([[0, 8, 0, 8]]), None)
    assert l1.item() == pytest.approx(0.5) and lp is None


def test_blink_amounts_match_their_definition():
    p1, p2, p3 = L.blink_amounts(500, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    u1, u3 = torch.rand(500, generator=g).double(), torch.rand(500, generator=g).double()
    assert torch.allclose(p1.double(), 0.5 * u1, atol=1e-7) and torch.allclose(p3.double(), 0.5 + 0.5 * u3, atol=1e-7)
    assert torch.allclose(p2.double(), (0.5 * u1 + 0.5 + 0.5 * u3) / 2, atol=1e-7)
    assert p1.max() <= 0.5 <= p3.min() and bool((p1 <= p2).all() and (p2 <= p3).all())


def test_total_loss_weights_only_terms_with_a_gradient():
    x = torch.tensor(2.0, requires_grad=True)
    losses = {"mse_loss": x * 1.5, "lpips_loss": x * 0.25, "blink_reg_loss": x * 4.0,
              "secc_reg_loss": torch.tensor(9.0),  # no gradient path: left out (upstream rule)
              "unknown_loss": x * 100.0}  # no weight: left out
    total = L.total_loss(losses, dict(L.LOSS_WEIGHTS, unknown_loss=0.0))
    assert total.item() == pytest.approx(1.0 * 3.0 + 0.5 * 0.5 + 0.003 * 8.0, rel=REL)
    total.backward()
    assert x.grad.item() == pytest.approx(1.5 + 0.5 * 0.25 + 0.003 * 4.0, rel=REL)
    unweighted = L.total_loss({"mse_loss": x * 2.0, "not_a_weighted_loss": x * 7.0}, L.LOSS_WEIGHTS)  # absent: weight 0
    assert unweighted.item() == pytest.approx(4.0, rel=REL)
    with pytest.raises(RuntimeError) as e:
        L.total_loss({"mse_loss": torch.tensor(1.0)}, L.LOSS_WEIGHTS)
    assert str(e.value) == "no loss term has a gradient: nothing is trainable"


def test_upstream_weights_and_the_trigrid_regulariser_schedule():
    assert L.LOSS_WEIGHTS == {
        "mse_loss": 1.0, "head_mse_loss": 0.2, "lpips_loss": 0.5, "head_lpips_loss": 0.1, "lip_mse_loss": 1.0,
        "lip_lpips_loss": 1.0, "density_weight_l2_loss": 0.01, "density_weight_entropy_loss": 0.001,
        "blink_reg_loss": 0.003,
    }
    assert [L.triplane_reg_weight(n) for n in (1, 5, 6, 250, 251, 10_000)] == [1.0, 1.0, 0.1, 0.1, 0.0, 0.0]


def ref_antialias_half(img: np.ndarray) -> np.ndarray:
    """2x antialiased bilinear downscale (PyTorch / PIL convention): output pixel i averages input
    pixels with a triangle of half-width 2 centred at 2i + 1, i.e. weights (1, 3, 3, 1) / 8 on
    pixels 2i - 1 .. 2i + 2, renormalised at the border."""
    n = img.shape[-1]
    k = np.zeros((n // 2, n))
    for i in range(n // 2):
        for j, w in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1)):
            if 0 <= j < n:
                k[i, j] = w
        k[i] /= k[i].sum()
    return np.einsum("ij,...jk,lk->...il", k, img, k)


def test_head_resize_is_antialiased_bilinear():
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    img[..., 5:9, :] = 1.0  # a step edge
    got = L.resize_antialias(img, 8).double().numpy()
    assert np.abs(got - ref_antialias_half(img.double().numpy())).max() < 1e-6
