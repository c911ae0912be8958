"""Background plate ("knn" rule) and its jump-flooding nearest-seed search."""

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from mimictalk_lib.identity.background import (
    SURE_BACKGROUND_DISTANCE,
    background_plate,
    nearest_seed,
    sample_stride,
)
from mimictalk_lib.identity.segmentation import com_images, head_images
from tests.fixtures.synthetic_identity import FACE_SKIN, HAIR, person_segmap


def blobs(n, h, w, seed=0, density=0.8):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, 1, h // 16, w // 16, generator=g) > density
    return torch.nn.functional.interpolate(m.float(), size=(h, w), mode="bilinear")[:, 0] > 0.5


def test_nearest_seed_matches_exact_distance_transform():
    seeds = blobs(3, 128, 96)
    seeds[2] = False
    seeds[2, 5, 90] = True  # a single far seed
    coords, dist = nearest_seed(seeds)
    exact = np.stack([distance_transform_edt(~s) for s in seeds.numpy()])
    assert np.abs(dist.numpy() - exact).max() < 1e-3
    # the returned coordinates are seeds at that distance
    n, _, h, w = coords.shape
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for i in range(n):
        cy, cx = coords[i, 0].numpy(), coords[i, 1].numpy()
        assert seeds[i].numpy()[cy, cx].all()
        assert np.allclose(np.hypot(cy - yy, cx - xx), exact[i], atol=1e-3)


def test_nearest_seed_without_seeds():
    coords, dist = nearest_seed(torch.zeros(1, 8, 8, dtype=torch.bool))
    assert torch.isinf(dist).all() and (coords == -1).all()


def test_sample_stride_is_upstreams():
    assert [sample_stride(n) for n in (10, 99, 100, 9999, 20000)] == [5, 5, 20, 20, 40]


def scene(t=40, h=96, w=128):
    """A known background (colour gradient) with a person moving from left to right."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    bg = torch.stack([xx * 2, yy * 2, (xx + yy) % 256], -1).to(torch.uint8)
    frames, segs = [], []
    for k in range(t):
        cx = 25 + 78 * k / (t - 1)
        seg = person_segmap(h, w, head_centre=(cx, 40), head_axes=(14, 18), neck_width=12, shoulder_y=75)
        seg[75:] = 0  # no clothes: the person is head + neck, so all background gets uncovered
        seg[(seg > 0) & (torch.arange(h)[:, None] >= 75)] = 0
        person = torch.tensor([200, 30, 30], dtype=torch.uint8)
        frames.append(torch.where((seg > 0)[..., None], person, bg))
        segs.append(seg)
    return torch.stack(frames), torch.stack(segs), bg


def test_plate_recovers_background_behind_a_moving_person():
    frames, segs, bg = scene()
    plate, sure = background_plate(frames, segs)
    # sure pixels hold the true background colour
    assert sure.float().mean() > 0.9
    assert torch.equal(plate[sure], bg[sure])
    # "sure" is exactly "more than 10 px from the person in some sampled frame"
    idx = torch.arange(0, frames.shape[0], sample_stride(frames.shape[0]))
    exact = np.stack([distance_transform_edt(s.numpy() == 0) for s in segs[idx]]).max(0)
    assert torch.equal(sure, torch.from_numpy(exact > SURE_BACKGROUND_DISTANCE))
    # the rest copies the nearest sure pixel
    coords, _ = nearest_seed(sure[None])
    hole = ~sure
    assert torch.equal(plate[hole], plate[coords[0, 0][hole], coords[0, 1][hole]])


def test_plate_takes_the_frame_where_the_pixel_is_farthest_from_the_person():
    h, w = 40, 60
    frames = torch.zeros(10, h, w, 3, dtype=torch.uint8)
    frames[5:] = 100  # the second sampled frame is brighter
    segs = torch.zeros(10, h, w, dtype=torch.uint8)
    segs[0, :, :20] = FACE_SKIN  # person on the left in sample 0 (frame 0)
    segs[5, :, 40:] = HAIR  # person on the right in sample 1 (frame 5)
    plate, sure = background_plate(frames, segs)
    assert int(plate[20, 55, 0]) == 0  # right side is farthest from the person in frame 0
    assert int(plate[20, 2, 0]) == 100  # left side in frame 5


def test_plate_when_the_person_fills_the_frame():
    frames = torch.full((3, 20, 20, 3), 7, dtype=torch.uint8)
    segs = torch.full((3, 20, 20), FACE_SKIN, dtype=torch.uint8)
    segs[:, 0, 0] = 0
    frames[:, 0, 0] = 50
    plate, sure = background_plate(frames, segs)
    assert not sure.any() and int(plate[10, 10, 0]) == 50


def test_head_and_com_images():
    frames, segs, bg = scene(t=6)
    plate, _ = background_plate(frames, segs)
    head = head_images(frames, segs)
    is_head = (segs == HAIR) | (segs == FACE_SKIN)
    assert torch.equal(head[is_head], frames[is_head]) and int(head[~is_head].max()) == 0
    com = com_images(frames, segs, plate)
    bgmask = segs == 0
    assert torch.equal(com[~bgmask], frames[~bgmask])
    assert torch.equal(com[bgmask], plate.expand_as(frames)[bgmask])


@pytest.mark.parametrize("t", [1, 6])
def test_plate_of_few_frames(t):
    frames, segs, bg = scene(t=max(t, 2))
    plate, sure = background_plate(frames[:t], segs[:t])
    assert plate.shape == bg.shape and plate.dtype == torch.uint8
    assert torch.equal(plate[sure], bg[sure])
