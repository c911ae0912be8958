"""mimictalk_lib.video: mp4 round trips checked by reading the files back with PyAV."""

from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.video import (
    Audio,
    VideoWriter,
    as_audio,
    fit_audio_length,
    read_audio,
    read_video,
    write_video,
)

AAC_FRAME = 1024  # samples per AAC frame: the tolerance on decoded audio length


def gradient_frames(n: int, h: int = 48, w: int = 64) -> torch.Tensor:
    """uint8 [n, h, w, 3]: a per-frame brightness ramp with a horizontal gradient."""
    x = torch.linspace(0, 1, w)[None, None, :, None]
    level = torch.arange(n, dtype=torch.float32)[:, None, None, None] / max(n - 1, 1)
    img = (0.2 + 0.6 * (0.5 * x + 0.5 * level)).expand(n, h, w, 3)
    return (img * 255).round().to(torch.uint8)


def tone(seconds: float, rate: int, channels: int = 1) -> torch.Tensor:
    t = torch.arange(int(round(seconds * rate))) / rate
    return torch.stack([0.3 * torch.sin(2 * math.pi * (220 + 110 * c) * t) for c in range(channels)])


def probe(path):
    """(video frames, fps, duration s, audio samples decoded, audio rate, audio channels, metadata)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        n_video = sum(1 for _ in c.decode(vs))
        fps = float(vs.average_rate)
        meta = dict(c.metadata)
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return n_video, fps, meta, 0, 0, 0
        a = c.streams.audio[0]
        n_audio = sum(f.samples for f in c.decode(a))
        return n_video, fps, meta, n_audio, a.rate, a.codec_context.channels


def test_round_trip_frames_fps_audio_metadata(tmp_path):
    frames = gradient_frames(30)
    wave = tone(1.5, 16_000)  # longer than the 1.2 s video: trimmed in 'fit' mode
    meta = {"prompt": {"1": {"class_type": "X"}}, "comment": "hello"}
    out = write_video(tmp_path / "a.mp4", frames, 25, audio=wave, sample_rate=16_000, metadata=meta, crf=10)
    assert out.num_frames == 30 and out.fps == 25 and out.audio_rate == 16_000
    n_video, fps, got_meta, n_audio, rate, ch = probe(out.path)
    assert n_video == 30 and fps == 25
    assert rate == 16_000 and ch == 1
    assert abs(n_audio - 1.2 * 16_000) <= AAC_FRAME
    assert json.loads(got_meta["prompt"]) == meta["prompt"] and got_meta["comment"] == "hello"

    clip = read_video(out.path)
    assert clip.frames.shape == (30, 48, 64, 3) and clip.frames.dtype == torch.uint8
    assert clip.fps == 25
    assert torch.allclose(clip.timestamps, torch.arange(30, dtype=torch.float64) / 25, atol=1e-6)
    err = (clip.frames.float() - frames.float()).abs().mean()
    assert err < 3, err  # crf 10: near-lossless
    assert clip.audio.sample_rate == 16_000 and abs(clip.audio.num_samples - 1.2 * 16_000) <= AAC_FRAME
    # the decoded tone correlates with the original (AAC delay is under one frame)
    a = clip.audio.waveform[0, 2048:12_000]
    best = max(float(torch.nn.functional.cosine_similarity(a, wave[0, 2048 - d: 12_000 - d], dim=0)) for d in range(0, AAC_FRAME + 1, 1))
    assert best > 0.9


def test_streamed_chunks_equal_one_shot_and_float_frames(tmp_path):
    frames = gradient_frames(20)
    whole = write_video(tmp_path / "whole.mp4", frames, 25, crf=0, preset="ultrafast")
    chunks = (frames[i: i + 7].float() / 255 for i in range(0, 20, 7))  # float 0..1 chunks, lazily
    streamed = write_video(tmp_path / "stream.mp4", chunks, 25, crf=0, preset="ultrafast")
    a, b = read_video(whole.path).frames, read_video(streamed.path).frames
    assert a.shape == b.shape == (20, 48, 64, 3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode, expect", [("fit", 1.0), ("trim", 1.0), ("pad", 1.6), ("keep", 1.6)])
def test_longer_audio_modes(tmp_path, mode, expect):
    out = write_video(tmp_path / f"{mode}.mp4", gradient_frames(25), 25, audio=tone(1.6, 22_050, 2),
                      sample_rate=22_050, audio_mode=mode)
    _, _, _, n_audio, rate, ch = probe(out.path)
    assert rate == 22_050 and ch == 2
    assert abs(n_audio - expect * 22_050) <= AAC_FRAME


@pytest.mark.parametrize("mode, expect", [("fit", 2.0), ("pad", 2.0), ("trim", 0.5), ("keep", 0.5)])
def test_shorter_audio_modes(tmp_path, mode, expect):
    out = write_video(tmp_path / f"{mode}.mp4", gradient_frames(50), 25, audio=tone(0.5, 16_000),
                      sample_rate=16_000, audio_mode=mode)
    _, _, _, n_audio, _, _ = probe(out.path)
    assert abs(n_audio - expect * 16_000) <= AAC_FRAME


def test_comfy_audio_dict_unsupported_rate_and_none(tmp_path):
    # 17 kHz is not an AAC rate: the stream uses the nearest one (16 kHz) and the duration holds
    audio = {"waveform": tone(1.0, 17_000)[None], "sample_rate": 17_000}
    out = write_video(tmp_path / "r.mp4", gradient_frames(25), 25, audio=audio)
    _, _, _, n_audio, rate, _ = probe(out.path)
    assert rate == 16_000 and abs(n_audio - 16_000) <= AAC_FRAME
    silent = write_video(tmp_path / "n.mp4", gradient_frames(5), 25, audio=None)
    assert read_audio(silent.path) is None and read_video(silent.path).audio is None
    assert read_audio(out.path).sample_rate == 16_000


def test_fractional_fps(tmp_path):
    out = write_video(tmp_path / "ntsc.mp4", gradient_frames(12), 29.97)
    clip = read_video(out.path)
    assert clip.frames.shape[0] == 12 and abs(clip.fps - 29.97) < 1e-3


def test_odd_size_padded_or_refused(tmp_path):
    frames = gradient_frames(4, h=33, w=45)
    out = write_video(tmp_path / "odd.mp4", frames, 25)
    assert (out.width, out.height) == (46, 34)
    assert read_video(out.path).frames.shape == (4, 34, 46, 3)
    with pytest.raises(InputError, match="even"):
        write_video(tmp_path / "odd2.mp4", frames, 25, odd_size="error")
    assert not (tmp_path / "odd2.mp4").exists()  # no partial file left behind


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="fps"):
        write_video(tmp_path / "x.mp4", gradient_frames(2), 0)
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "x.mp4", torch.zeros(2, 8, 8), 25)
    with pytest.raises(InputError, match="sample_rate"):
        write_video(tmp_path / "x.mp4", gradient_frames(2), 25, audio=torch.zeros(100))
    with pytest.raises(InputError, match="audio_mode"):
        write_video(tmp_path / "x.mp4", gradient_frames(2), 25, audio_mode="longest")
    with pytest.raises(InputError, match="at least one frame"):
        write_video(tmp_path / "empty.mp4", iter([]), 25)
    assert not (tmp_path / "empty.mp4").exists()
    with pytest.raises(InputError, match="changed size"):
        write_video(tmp_path / "sz.mp4", iter([gradient_frames(2), gradient_frames(2, h=32)]), 25)
    assert not (tmp_path / "sz.mp4").exists()
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "missing.mp4")


def test_interrupt_removes_partial_file(tmp_path):
    def chunks():
        yield gradient_frames(3)
        raise KeyboardInterrupt  # e.g. ComfyUI's cancel raised from a progress callback

    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "cut.mp4", chunks(), 25)
    assert not (tmp_path / "cut.mp4").exists()


def test_writer_context_and_audio_helpers(tmp_path):
    with VideoWriter(tmp_path / "w.mp4", 25, audio=Audio(tone(0.2, 8_000), 8_000)) as w:
        for i in range(10):
            w.write(gradient_frames(10)[i])  # single [H, W, 3] frames
    assert w.result.num_frames == 10
    assert abs(read_audio(w.result.path).num_samples - 0.4 * 8_000) <= AAC_FRAME

    a = as_audio({"waveform": torch.zeros(1, 2, 10), "sample_rate": 48_000})
    assert a.channels == 2 and a.to_comfy()["waveform"].shape == (1, 2, 10)
    assert fit_audio_length(a, 4).num_samples == 4 and fit_audio_length(a, 16, "trim").num_samples == 10
    with pytest.raises(InputError, match="batch"):
        as_audio({"waveform": torch.zeros(2, 1, 10), "sample_rate": 16_000})
    with pytest.raises(InputError, match="NaN"):
        as_audio(torch.full((1, 4), float("nan")), 16_000)
    assert np.isclose(a.duration, 10 / 48_000)


SHARED = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "German_20s.mp4").exists(), reason="real media absent (../shared/data)")
def test_real_clip_and_wav_round_trip(tmp_path):
    clip = read_video(SHARED / "German_20s.mp4", max_frames=12)
    assert clip.frames.shape == (12, 512, 512, 3) and clip.fps == 25
    assert clip.audio is not None and abs(clip.audio.duration - 20) < 0.2
    speech = read_audio(SHARED / "80_vs_60_10s.wav")
    assert speech.sample_rate == 48_000 and abs(speech.duration - 10) < 1e-3
    out = write_video(tmp_path / "real.mp4", clip.frames, clip.fps, audio=speech)  # trimmed to 0.48 s
    back = read_video(out.path)
    assert back.frames.shape == clip.frames.shape
    assert (back.frames.float() - clip.frames.float()).abs().mean() < 4
    assert abs(back.audio.num_samples - 0.48 * 48_000) <= AAC_FRAME and back.audio.channels == 2
