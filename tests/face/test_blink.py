"""Blink schedule and the eye-closing edit of SECC maps."""

import numpy as np
import pytest
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.face import load_face_model
from mimictalk_lib.face.blink import apply_blink, blink_schedule, quantize_secc
from mimictalk_lib.face.secc import render_secc
from tests.fixtures.synthetic_bfm import write_synthetic_face_model


def test_schedule_period_and_none():
    g = torch.Generator().manual_seed(0)
    p = blink_schedule(300, "period", generator=g)
    assert p.shape == (300,) and (blink_schedule(300, "none") == 0).all()
    for start in (0, 125, 250):
        seg = p[start : start + 13]
        dur = int((seg[1:] > 0).sum()) + 1  # p(0) = 0, then T - 1 closing frames
        assert 8 <= dur <= 12
        t = torch.arange(dur, dtype=torch.float64)
        torch.testing.assert_close(seg[:dur], 4 * t / dur - 4 * t**2 / dur**2)
        assert (seg[dur:] == 0).all()
    assert (p[13:125] == 0).all() and float(p.max()) <= 1.0
    again = blink_schedule(300, "period", generator=torch.Generator().manual_seed(0))
    assert torch.equal(p, again)  # seeded
    short = blink_schedule(6, "period", generator=torch.Generator().manual_seed(0))
    assert short[-1] == 0  # upstream never blinks the last frame
    with pytest.raises(InputError, match="period"):
        blink_schedule(10, "sometimes")


def eye_box_holes(img: torch.Tensor) -> int:
    """Background pixels in the upper-middle boxes where the eye holes are."""
    h, w = img.shape[-2:]
    return int((img[..., h // 4 : h // 2, w // 4 : w // 4 * 3] == -1).all(-3).sum())


@pytest.fixture(scope="module")
def secc(tmp_path_factory):
    fm = load_face_model(write_synthetic_face_model(tmp_path_factory.mktemp("bfm")))
    g = torch.Generator().manual_seed(0)
    return render_secc(fm, torch.zeros(80), torch.randn(4, 64, generator=g) * 0.5, size=128)


def test_closing_fills_the_eye_holes_progressively(secc):
    # the 5-pixel ring around a hole counts as eye too, so at 128 px small closures only repaint
    # the ring; the hole itself shrinks from p ~ 0.5 on
    closure = torch.tensor([0.0, 0.6, 0.8, 1.0], dtype=torch.float64)
    out = apply_blink(secc, closure)
    assert torch.equal(out[0], secc[0])  # p = 0: untouched
    holes = [eye_box_holes(out[i]) for i in range(4)]
    assert holes[1] < eye_box_holes(secc[1]) and holes[2] < holes[1] and holes[3] == 0
    # processed frames are on upstream's 8-bit grid, and unchanged outside the eye region
    levels = (out[1:] + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    h, w = secc.shape[-2:]
    torch.testing.assert_close(out[1:, :, h // 2 + 8 :], quantize_secc(secc[1:, :, h // 2 + 8 :]) / 127.5 - 1)
    # batched == per frame, exactly by construction: the painting works on integer levels (masks,
    # integer row sums and counts, squared integer distances in float, exact below 2^24) with a few
    # elementwise float64 ops per column (correctly rounded on every CPU), and copies levels
    for i in range(1, 4):
        assert torch.equal(apply_blink(secc[i : i + 1], closure[i : i + 1])[0], out[i])


def reference_blink(img: np.ndarray, p: float) -> np.ndarray:
    """Straightforward per-pixel version of upstream's algorithm on one quantised map [3, H, W]:
    brute-force distances, ties by (distance, column, row)."""
    h, w = img.shape[1:]
    face = (img != 0).all(0)
    rr, cc = np.mgrid[0:h, 0:w]
    boxes = [(rr >= h // 4) & (rr < h // 2) & (cc >= lo) & (cc < hi) for lo, hi in ((w // 4, w // 2), (w // 2, w // 4 * 3))]
    holes = [~face & b for b in boxes]
    hole = holes[0] | holes[1]
    r0, r1 = rr[hole].min(), rr[hole].max()
    region = np.zeros((h, w), bool)
    for hm in holes:
        c0, c1 = cc[hm].min(), cc[hm].max()
        region[r0 - 4 : r1 + 4, c0 - 4 : c1 + 4] = True
    hy, hx = np.nonzero(hole)
    src = face & region
    for y, x in zip(*np.nonzero(src)):
        if ((hy - y) ** 2 + (hx - x) ** 2).min() <= 25:
            src[y, x] = False
    eye = region & ~src
    closed = np.zeros((h, w), bool)
    for x in range(w):
        ys = np.nonzero(eye[:, x])[0]
        if len(ys):
            mean = ys.sum() / len(ys)
            up, down = p * mean + (1 - p) * ys.min(), p * mean + (1 - p) * ys.max()
            closed[ys[(ys <= up) | (ys >= down)], x] = True
    sy, sx = np.nonzero(src)
    out = img.copy()
    for y, x in zip(*np.nonzero(closed)):
        d = (sy - y) ** 2 + (sx - x) ** 2
        k = np.lexsort((sy, sx, d))[0]  # smallest distance, then column, then row
        out[:, y, x] = img[:, sy[k], sx[k]]
    return out


@pytest.mark.parametrize("p", [0.55, 0.85, 1.0])
def test_matches_a_per_pixel_reference(secc, p):
    out = apply_blink(secc[2:3], torch.tensor([p], dtype=torch.float64))[0]
    q = quantize_secc(secc[2]).numpy()
    want = reference_blink(q, p) / 127.5 - 1
    # exact: both sides copy the same integer levels (see above); level / 127.5 - 1 is one division
    # and one subtraction, correctly rounded in IEEE arithmetic on any CPU
    np.testing.assert_array_equal(out.numpy(), want.astype(np.float32))


def test_input_checks(secc):
    with pytest.raises(InputError, match="closure"):
        apply_blink(secc, torch.zeros(3))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        apply_blink(secc, torch.full((4,), 1.5))
