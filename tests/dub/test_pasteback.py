"""Paste-back geometry and blending: the inverse crop transform undoes the identity's forward cut,
the mask is feathered and vanishes at the crop border, colour matching moves the statistics."""

from __future__ import annotations

import math

import pytest
import torch

from mimictalk_lib.dub.pasteback import (
    CropTransform, blend_mask, colour_match, paste_back, to_crop, warp_to_source,
)
from mimictalk_lib.errors import InputError
from mimictalk_lib.identity.frames import CropBox, crop_frames


def textured_frame(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 [1, H, W, 3]: smooth random texture (a sum of low-frequency sinusoids), like video
    content after a codec (no pixel-level noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    img = torch.zeros(3, h, w)
    for c in range(3):
        for _ in range(6):
            fx, fy, ph = (torch.rand(3, generator=g) * torch.tensor([0.3, 0.3, 6.3])).tolist()
            img[c] += torch.sin(xx * fx + yy * fy + ph)
    img = (img - img.amin()) / (img.amax() - img.amin())
    return (img * 255).round().to(torch.uint8).permute(1, 2, 0)[None]


def tf_of(box: CropBox, size: int, hw) -> CropTransform:
    return CropTransform(box.x0, box.y0, box.side, size, hw)


def signed(u8: torch.Tensor) -> torch.Tensor:
    return u8.permute(0, 3, 1, 2).float() / 255


def test_matrix_maps_crop_corners_onto_the_box():
    tf = CropTransform(40, -10, 200, 100, (240, 320))
    m = tf.matrix(torch.float64)
    # the crop's outer pixel edges (-0.5 and R - 0.5) land on the box's edges (x0 - 0.5, x0 + side - 0.5)
    corners = torch.tensor([[-0.5, -0.5, 1.0], [99.5, 99.5, 1.0]], dtype=torch.float64)
    got = (m @ corners.T).T[:, :2]
    assert torch.allclose(got, torch.tensor([[39.5, -10.5], [239.5, 189.5]], dtype=torch.float64))
    assert tf.region() == (40, 0, 240, 190)
    assert CropTransform(400, 0, 50, 64, (240, 320)).region() is None  # entirely right of the frame


@pytest.mark.parametrize("side", [96, 64, 40])  # upscaling, 1:1, shrinking (R = 64)
def test_forward_cut_has_the_identity_croppers_geometry(side):
    """to_crop (kornia) vs identity.frames.crop_frames (torch interpolate): same geometry. A half-pixel
    offset on this texture would cost > 3 grey levels on average; interpolation differences cost < 1."""
    frame = textured_frame(120, 160)
    box = CropBox(50, 20, side)
    ours = to_crop(signed(frame), tf_of(box, 64, (120, 160)))
    ref = signed(crop_frames(frame, box, 64))
    err = (ours - ref).abs().mean().item() * 255
    assert err < 1.0, err
    shifted = to_crop(signed(frame), tf_of(CropBox(51, 20, side), 64, (120, 160)))
    assert (shifted - ref).abs().mean().item() * 255 > 3 * err + 1.0


@pytest.mark.parametrize("side,mean_tol,max_tol", [(64, 0.0, 0), (80, 1.0, 6), (56, 1.0, 6)])
def test_unchanged_crop_pasted_back_reproduces_the_source(side, mean_tol, max_tol):
    """The source crop itself in place of a render, pasted with a full mask onto a blank frame, gives
    back the source inside the box. At 1:1 it is exact (kornia's fp32 grid errors, ~2e-6, vanish in the
    uint8 rounding); a rescale loses only interpolation detail: measured 0.6 / 0.4 grey levels mean
    and 3 / 2 max for 80 / 56 px boxes (the texture's top frequency is 0.3 rad/px)."""
    hw = (120, 160)
    frame = textured_frame(*hw, seed=1)
    box = CropBox(30, 25, side)
    crop = crop_frames(frame, box, 64)  # the identity's own cut
    tf = tf_of(box, 64, hw)
    blank = torch.zeros_like(frame)
    out = paste_back(blank, crop, torch.ones(1, 1, 64, 64), tf)
    x0, y0, x1, y1 = tf.region()
    diff = (out[0, y0:y1, x0:x1].int() - frame[0, y0:y1, x0:x1].int()).abs()
    # the outermost ring samples between the crop's last pixel and the zero padding: exclude it
    inner = diff[1:-1, 1:-1]
    assert inner.float().mean().item() <= mean_tol
    assert inner.max().item() <= max_tol
    assert out[0, :y0].sum() == 0 and out[0, :, :x0].sum() == 0  # nothing written outside the box


def test_paste_back_onto_the_source_changes_nothing_outside_and_little_inside():
    hw = (90, 200)
    frame = textured_frame(*hw, seed=2)
    box = CropBox(120, -20, 100)  # leaves the frame at the top and the right
    tf = tf_of(box, 64, hw)
    crop = crop_frames(frame, box, 64)
    alpha = torch.zeros(1, 64, 64)
    alpha[:, 16:48, 16:48] = 1
    out = paste_back(frame, crop, blend_mask(alpha), tf, colour="mean_std")
    x0, y0, x1, y1 = tf.region()
    assert (x0, y0, x1, y1) == (120, 0, 200, 80)
    outside = torch.ones(hw, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(out[0][outside], frame[0][outside])  # byte for byte
    diff = (out[0, y0:y1, x0:x1].float() - frame[0, y0:y1, x0:x1].float()).abs()
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_render_replaces_the_face_and_the_seam_is_feathered():
    hw = (100, 100)
    frame = torch.full((1, *hw, 3), 40, dtype=torch.uint8)
    tf = CropTransform(20, 20, 64, 64, hw)
    render = torch.full((1, 3, 64, 64), 200 / 255)
    alpha = torch.zeros(1, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    alpha[0][((xx - 32) ** 2 + (yy - 32) ** 2) < 18**2] = 1
    mask = blend_mask(alpha)
    out = paste_back(frame, render, mask, tf)[0, :, :, 0].float()
    assert out[52, 52] > 195  # centre of the head: the render
    assert out[20, 20] == 40 and out[5, 5] == 40  # crop corner and outside: the source
    row = out[52, 20:52]  # from the crop edge to the centre: rises without a step
    steps = row.diff()
    assert (steps >= -1e-3).all() and steps.max() < 0.35 * (200 - 40)


def test_blend_mask_properties():
    alpha = torch.zeros(2, 64, 64)
    alpha[:, 10:54, 10:54] = 1
    face = torch.zeros(2, 64, 64, dtype=torch.bool)
    face[1, 50:63, 20:40] = True  # the source's chin reaches below the rendered head
    m = blend_mask(alpha, face)
    assert m.shape == (2, 1, 64, 64)
    assert m.min() >= 0 and m.max() <= 1
    assert m[:, 0, 32, 32].min() > 0.99  # inside the head
    assert m[:, 0, 0, :].max() == 0 and m[:, 0, :, -1].max() == 0  # zero on the crop border
    assert m[1, 0, 58, 30] > m[0, 0, 58, 30] + 0.3  # the union with the face covers the chin
    with pytest.raises(InputError):
        blend_mask(alpha[:, :, :32])


def test_blend_mask_keeps_the_render_inside_the_grown_source_head():
    alpha = torch.ones(1, 64, 64)  # a render whose alpha leaks everywhere (e.g. random weights)
    head = torch.zeros(1, 64, 64, dtype=torch.bool)
    head[:, 20:40, 20:40] = True
    m = blend_mask(alpha, limit=head, grow=0.05, feather=0.02)[0, 0]  # 3 px growth, 1.3 px feather
    assert m[30, 30] > 0.99 and m[30, 45] < 0.5 and m[:10, :].max() < 1e-3
    assert torch.equal(blend_mask(alpha, limit=torch.ones_like(head)), blend_mask(alpha))


def test_colour_match_moves_mean_and_spread():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 32, 32, generator=g) * 0.5 + 0.25
    render = (target - 0.5) * 0.7 + 0.45  # same pattern, other exposure
    mask = torch.ones(1, 1, 32, 32)
    got = colour_match(render, target, mask)
    assert torch.allclose(got, target, atol=1e-5)
    assert torch.equal(colour_match(render, target, torch.zeros_like(mask)), render)  # nothing to match


def test_warp_to_source_is_exact_at_unit_scale():
    img = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    tf = CropTransform(5, 7, 32, 32, (50, 50))
    got = warp_to_source(img, tf, tf.region())
    assert got.shape == (2, 4, 32, 32)
    assert torch.allclose(got, img, atol=1e-4)


def test_from_meta_reads_the_identity_crop_and_refuses_without_one():
    tf = CropTransform.from_meta({"crop": [10, 20, 300], "source_size": [720, 1280]}, 512)
    assert (tf.x0, tf.y0, tf.side, tf.source_hw) == (10, 20, 300, (720, 1280))
    assert math.isclose(tf.scale, 300 / 512)
    per_frame = CropTransform.from_meta({"crop": [0, 0, 1], "crop_boxes": [[1, 2, 3], [4, 5, 6]], "source_size": [9, 9]}, 8, 1)
    assert (per_frame.x0, per_frame.side) == (4, 6)
    with pytest.raises(InputError, match="prepare it again"):
        CropTransform.from_meta({"kind": "clip"}, 512)
    with pytest.raises(InputError, match="colour"):
        paste_back(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8),
                   CropTransform(0, 0, 8, 8, (8, 8)), colour="bogus")
