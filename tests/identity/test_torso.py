"""Torso inpainting: the vectorised version equals a column-by-column reference written from the
upstream description, and known pixels come out as specified."""

import numpy as np
import torch

from mimictalk_lib.identity.torso import (
    BLUR_SIGMA,
    DARKEN,
    NECK_EXTEND_ROWS,
    NECK_PUSH_DOWN,
    TORSO_EXTEND_ROWS,
    inpaint_torso,
)
from tests.fixtures.synthetic_identity import BODY_SKIN, CLOTHES, FACE_SKIN, HAIR, person_segmap


def blur_reference(img):
    """5x5 Gaussian, sigma 4, reflect-101 border (OpenCV BORDER_DEFAULT), float."""
    x = np.arange(5) - 2
    k = np.exp(-(x**2) / (2 * BLUR_SIGMA**2))
    k /= k.sum()
    pad = np.pad(img.astype(np.float64), ((2, 2), (2, 2), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    rows = sum(k[i] * pad[i : i + h] for i in range(5))
    return sum(k[j] * rows[:, j : j + w] for j in range(5))


def reference(frame, seg):
    """Column loop following the upstream steps (see mimictalk_lib/identity/torso.py)."""
    h, w, _ = frame.shape
    head = np.isin(seg, [1, 3, 5])
    neck = seg == 2
    torso = seg == 4
    img = frame.copy()
    img[head] = 0
    t_mask = np.zeros((h, w), bool)
    for c in range(w):
        rows = np.nonzero(torso[:, c])[0]
        if len(rows) and rows[0] >= 1 and head[rows[0] - 1, c]:
            for n in range(TORSO_EXTEND_ROWS):
                r = rows[0] - n
                if r >= 0:
                    img[r, c] = np.floor(frame[rows[0], c].astype(np.float64) * DARKEN**n)
                    t_mask[r, c] = True
    neck_d = neck.copy()
    for _ in range(3):  # vertical 3x1 dilation, 3 iterations
        grown = neck_d.copy()
        grown[1:] |= neck_d[:-1]
        grown[:-1] |= neck_d[1:]
        neck_d = grown
    n_mask = np.zeros((h, w), bool)
    for c in range(w):
        rows = np.nonzero(neck_d[:, c])[0]
        if len(rows) and rows[0] >= 1 and head[rows[0] - 1, c]:
            src = rows[0] + min(len(rows) - 1, NECK_PUSH_DOWN)
            for n in range(NECK_EXTEND_ROWS):
                r = src - n
                if r >= 0:
                    img[r, c] = np.floor(frame[src, c].astype(np.float64) * DARKEN**n)
                    n_mask[r, c] = True
    blurred = np.clip(np.round(blur_reference(img)), 0, 255).astype(np.uint8)
    img[n_mask] = blurred[n_mask]
    mask = neck_d | torso | n_mask | t_mask
    img[~mask] = 0
    return img, mask


def portrait(h=120, w=100, seed=0):
    g = np.random.default_rng(seed)
    seg = person_segmap(h, w, head_centre=(50, 45), head_axes=(22, 28), neck_width=18, shoulder_y=85).numpy()
    seg[40:48, 20:24] = 5  # an accessory (earring) on the head side
    frame = g.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return frame, seg


def test_inpaint_matches_column_reference():
    for seed in range(3):
        frame, seg = portrait(seed=seed)
        if seed == 2:
            seg[2:6, 40:60] = CLOTHES  # clothes touching the image top (rows clipped at 0)
            seg[0:2, 40:60] = HAIR
        out, mask = inpaint_torso(torch.from_numpy(frame)[None], torch.from_numpy(seg)[None])
        ref, ref_mask = reference(frame, seg)
        assert np.array_equal(mask[0].numpy(), ref_mask)
        diff = np.abs(out[0].numpy().astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 vs float64 rounding only


def test_known_pixels():
    h, w = 120, 100
    seg = np.zeros((h, w), np.uint8)
    seg[20:60, 30:70] = FACE_SKIN  # head
    seg[60:80, 40:60] = BODY_SKIN  # neck directly below the head
    seg[80:, 10:90] = CLOTHES
    seg[60:80, 10:40] = HAIR  # hair falling onto the shoulder left of the neck
    frame = np.zeros((h, w, 3), np.uint8)
    frame[..., 0] = 100
    frame[80:, :, 1] = 200  # clothes are green
    frame[60:80, 40:60, 2] = 150  # neck is blue
    out, mask = inpaint_torso(torch.from_numpy(frame)[None], torch.from_numpy(seg)[None])
    out, mask = out[0].numpy(), mask[0].numpy()
    # head pixels beside the neck columns are cleared and outside the mask
    for cols in (slice(30, 40), slice(60, 70)):
        assert not mask[20:50, cols].any() and out[20:50, cols].max() == 0
    # clothes columns under the hair are extended up by 9 rows with 0.98^n darkening
    col = 20
    for n in range(TORSO_EXTEND_ROWS):
        assert out[80 - n, col, 1] == int(np.floor(200 * DARKEN**n))
        assert mask[80 - n, col]
    assert not mask[80 - TORSO_EXTEND_ROWS, col]
    # clothes columns under background are not extended
    assert not mask[79, 5] and not mask[79, 95]
    # neck: the dilated top is row 57 (3 px into the head), painting reaches 57 + 4 - 52 = 9
    top = 60 - 3
    src = top + NECK_PUSH_DOWN
    assert mask[src - (NECK_EXTEND_ROWS - 1), 50] and not mask[src - NECK_EXTEND_ROWS, 50]
    # the blurred neck fill stays blue-ish and darkens upward
    assert out[40, 50, 2] < out[55, 50, 2] and out[55, 50, 2] > 100
