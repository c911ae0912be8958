"""Frames: 25 fps resampling by timestamps, colour normalisation, crop choice and cropping, decoding."""

import numpy as np
import pytest
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.identity.frames import (
    FACE_CENTRE_Y_FRACTION,
    FACE_HEIGHT_FRACTION,
    CropBox,
    choose_crop,
    crop_frames,
    is_variable_rate,
    iter_video,
    probe_video,
    resample_indices,
    resize_square,
    timestamps_from,
    to_uint8_frames,
    whole_frame_crop,
)
from mimictalk_lib.video import to_uint8_array
from tests.fixtures.media import write_stamped_video


def test_resample_same_rate_is_identity():
    assert resample_indices(np.arange(50) / 25).tolist() == list(range(50))


def test_resample_50fps_takes_every_other_frame():
    assert resample_indices(np.arange(100) / 50).tolist() == list(range(0, 100, 2))


def test_resample_30fps_nearest_timestamps():
    idx = resample_indices(np.arange(30) / 30)  # 1 s -> 25 frames
    assert len(idx) == 25
    expected = [int(np.argmin(np.abs(np.arange(30) / 30 - k / 25))) for k in range(25)]
    assert idx.tolist() == expected
    assert idx[:6].tolist() == [0, 1, 2, 4, 5, 6]  # 0.16 s is nearest to frame 5 (0.1667)


def test_resample_slow_source_repeats_frames():
    idx = resample_indices(np.arange(10) / 10)  # 1 s at 10 fps -> 25 frames
    assert len(idx) == 25 and idx.tolist() == sorted(idx.tolist())
    assert np.bincount(idx).min() >= 2


def test_variable_frame_rate_by_timestamps():
    # 0.5 s at 50 fps then 0.5 s at 10 fps, starting at t = 3 s (offsets are removed)
    ts = np.concatenate([np.arange(25) / 50, 0.5 + np.arange(5) / 10]) + 3.0
    assert is_variable_rate(ts) and not is_variable_rate(np.arange(20) / 30)
    idx = resample_indices(ts)
    t_rel = ts - ts[0]
    for k, i in enumerate(idx):
        assert abs(t_rel[i] - k / 25) == pytest.approx(np.abs(t_rel - k / 25).min())


def test_resample_rejects_unordered_timestamps():
    with pytest.raises(InputError, match="increasing"):
        resample_indices([0.0, 0.04, 0.02])


def test_timestamps_need_fps_or_list():
    assert timestamps_from(3, 30.0, None).tolist() == pytest.approx([0, 1 / 30, 2 / 30])
    with pytest.raises(InputError, match="frame rate"):
        timestamps_from(3, None, None)
    with pytest.raises(InputError, match="3 frames but 2 timestamps"):
        timestamps_from(3, None, [0.0, 1.0])


def test_to_uint8_converts_float_gray_alpha():
    f = torch.full((2, 20, 20, 3), 0.5)
    assert to_uint8_frames(f).dtype == torch.uint8 and int(to_uint8_frames(f)[0, 0, 0, 0]) == 128
    gray = torch.rand(2, 20, 20, 1)
    out = to_uint8_frames(gray)
    assert out.shape == (2, 20, 20, 3) and torch.equal(out[..., 0], out[..., 2])
    rgba = torch.zeros(1, 20, 20, 4, dtype=torch.uint8)
    rgba[..., 3] = 255
    assert to_uint8_frames(rgba).shape == (1, 20, 20, 3) and int(to_uint8_frames(rgba).max()) == 0
    with pytest.raises(InputError, match="0..1"):
        to_uint8_frames(torch.full((1, 20, 20, 3), 2.0))
    with pytest.raises(InputError, match="B, H, W, C"):
        to_uint8_frames(torch.zeros(1, 20, 20, 5))
    with pytest.raises(InputError, match="int32"):
        to_uint8_frames(torch.zeros(1, 20, 20, 3, dtype=torch.int32))


def test_to_uint8_frames_rounds_like_the_video_writer():
    f = torch.rand(3, 20, 24, 3)
    f[0, 0, 0] = torch.tensor([0.0, 1.0, 1.0005])  # the edges and the tolerated overshoot
    out = to_uint8_frames(f)
    assert isinstance(out, torch.Tensor) and torch.equal(out, torch.from_numpy(to_uint8_array(f)))
    u8 = torch.randint(0, 256, (2, 20, 20, 3), dtype=torch.uint8)
    assert torch.equal(to_uint8_frames(u8), u8) and to_uint8_frames(u8[0]).shape == (1, 20, 20, 3)


def test_choose_crop_reproduces_portrait_framing():
    box = torch.tensor([[400.0, 300.0, 500.0, 430.0]])  # 100 x 130 face box
    crop = choose_crop(box)
    side = 130 / FACE_HEIGHT_FRACTION
    assert crop.side == round(side)
    assert crop.x0 == round(450 - crop.side / 2)
    assert crop.y0 == round(365 - FACE_CENTRE_Y_FRACTION * crop.side)
    # the face box lands at the measured position of the 512² frame
    scale = 512 / crop.side
    assert (430 - 300) * scale / 512 == pytest.approx(FACE_HEIGHT_FRACTION, abs=0.01)
    assert (365 - crop.y0) * scale / 512 == pytest.approx(FACE_CENTRE_Y_FRACTION, abs=0.01)


def test_choose_crop_widens_for_a_moving_head():
    boxes = torch.tensor([[100.0, 100, 200, 230], [100, 100, 200, 230], [400, 100, 500, 230]])
    crop = choose_crop(boxes)
    assert crop.side > 130 / FACE_HEIGHT_FRACTION
    for x0, y0, x1, y1 in boxes.tolist():  # every face box inside the crop
        assert crop.x0 <= x0 and x1 <= crop.x0 + crop.side and crop.y0 <= y0 and y1 <= crop.y0 + crop.side


def test_crop_frames_padding_and_resize():
    img = torch.arange(4 * 4, dtype=torch.uint8).reshape(1, 4, 4, 1).expand(1, 4, 4, 3).contiguous() * 10
    out = crop_frames(img, CropBox(-2, -2, 4), size=4, pad="edge")  # top-left quarter outside
    assert out[0, :, :, 0].tolist() == [[0, 0, 0, 10], [0, 0, 0, 10], [0, 0, 0, 10], [40, 40, 40, 50]]
    out = crop_frames(img, CropBox(-2, -2, 4), size=4, pad="black")
    assert out[0, :, :, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 10], [0, 0, 40, 50]]
    big = torch.full((2, 64, 48, 3), 200, dtype=torch.uint8)
    out = crop_frames(big, CropBox(0, 0, 48), size=16)
    assert out.shape == (2, 16, 16, 3) and int(out.min()) == 200 == int(out.max())


def test_resize_square_refuses_non_square():
    with pytest.raises(InputError, match="not square"):
        resize_square(torch.zeros(1, 30, 40, 3, dtype=torch.uint8))
    with pytest.raises(InputError, match="photo: crop='none' keeps frames as given, but they are 40x30"):
        whole_frame_crop(30, 40, "photo")
    assert whole_frame_crop(30, 30) == CropBox(0, 0, 30)
    assert resize_square(torch.zeros(1, 30, 30, 3, dtype=torch.uint8), size=64).shape == (1, 64, 64, 3)


def test_decode_probe_and_resample_a_file(tmp_path):
    path = tmp_path / "counter.mkv"
    write_stamped_video(path, [k / 30 for k in range(36)], fps=30, size=(48, 64), exact=True)  # 1.2 s at 30 fps
    info = probe_video(path, max_samples=5)
    assert len(info.timestamps) == 36 and (info.height, info.width) == (48, 64)
    assert info.timestamps[1] - info.timestamps[0] == pytest.approx(1 / 30, abs=1e-3)
    assert 1 <= len(info.samples) <= 6
    idx = resample_indices(info.timestamps)
    assert len(idx) == 30
    levels = [int(img[0, 0, 0]) // 5 for img, _ in iter_video(path)]
    assert levels == list(range(36))


def test_missing_video_file(tmp_path):  # the decoder's other file errors: tests/video/test_decode.py
    with pytest.raises(InputError, match="video file not found"):
        probe_video(tmp_path / "nope.mp4")


def test_face_size_check_refuses_tiny_faces_and_warns_with_the_upscale(caplog):
    import logging

    from mimictalk_lib.identity.checks import MIN_FACE_PX, SMALL_FACE_PX, check_face_size
    from mimictalk_lib.identity.frames import FACE_HEIGHT_FRACTION, FRAME_SIZE

    with pytest.raises(InputError, match=f"only {MIN_FACE_PX - 10} px tall"):
        check_face_size(torch.full((5,), MIN_FACE_PX - 10.0), "clip")
    with caplog.at_level(logging.WARNING):
        check_face_size(torch.full((5,), 100.0), "clip")
    assert f"{FRAME_SIZE}x{FRAME_SIZE} portrait is upscaled {FRAME_SIZE * FACE_HEIGHT_FRACTION / 100:.1f}x" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_face_size(torch.full((5,), float(SMALL_FACE_PX)), "clip")
    assert "upscaled" not in caplog.text
