"""mimictalk_lib.video decoding: the one decoder (iter_video / iter_frames / probe) that the
identity preparation shares, its timestamps, and its file errors; frame conversion for writing."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.video import iter_frames, iter_video, probe, read_audio, require_file, to_uint8_array, write_video


def ramp_frames(n: int, h: int = 32, w: int = 48) -> torch.Tensor:
    """uint8 [n, h, w, 3]: frame k is flat grey 20 + 10 k (far apart after lossy coding)."""
    return (20 + 10 * torch.arange(n, dtype=torch.uint8))[:, None, None, None].expand(n, h, w, 3).contiguous()


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("decode") / "ramp.mp4"
    write_video(path, ramp_frames(10), 25, metadata={"comment": "ramp"}, crf=0)
    return path


def test_iter_video_frames_and_timestamps(clip_path):
    decoded = list(iter_video(clip_path))
    assert len(decoded) == 10
    for k, (img, t) in enumerate(decoded):
        assert img.dtype == np.uint8 and img.shape == (32, 48, 3)
        assert abs(float(img.mean()) - (20 + 10 * k)) < 2  # the frames come back in order
        assert isinstance(t, float) and t == pytest.approx(k / 25, abs=1e-3)


def test_chunks_are_the_per_frame_decode(clip_path):
    chunks = list(iter_frames(clip_path, chunk_size=4))
    assert [c.shape[0] for c, _ in chunks] == [4, 4, 2]
    frames, times = torch.cat([c for c, _ in chunks]), torch.cat([t for _, t in chunks])
    one = list(iter_video(clip_path))
    assert torch.equal(frames, torch.from_numpy(np.stack([img for img, _ in one])))
    assert times.dtype == torch.float64 and times.tolist() == [t for _, t in one]


def test_probe_reads_the_container_without_decoding(clip_path):
    info = probe(clip_path)
    assert info.fps == 25 and info.num_frames == 10 and (info.width, info.height) == (48, 32)
    assert info.metadata.get("comment") == "ramp"


def test_file_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="video file not found: '.*nope.mp4'"):
        next(iter_video(tmp_path / "nope.mp4"))
    with pytest.raises(InputError, match="audio file not found"):
        require_file(tmp_path / "nope.wav", "audio")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match="cannot open"):
        probe(garbage)
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, np.zeros(1600, np.float32), 16_000)
    with pytest.raises(InputError, match="no video stream"):
        next(iter_video(wav))
    with pytest.raises(InputError, match="no video stream"):
        probe(wav)
    assert read_audio(wav).num_samples == 1600  # the same file is fine as audio


def test_to_uint8_array_clamps_render_overshoot():
    f = torch.tensor([-0.2, 0.0, 0.5, 1.0, 1.3]).reshape(1, 1, 5, 1).expand(1, 1, 5, 3)
    out = to_uint8_array(f)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (1, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert np.array_equal(to_uint8_array(f.numpy()[0]), out)  # numpy float and a single [H, W, 3]
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        to_uint8_array(torch.zeros(1, 4, 4, 4))
    with pytest.raises(InputError, match="int32"):
        to_uint8_array(np.zeros((1, 4, 4, 3), np.int32))
