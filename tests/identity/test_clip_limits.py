"""Hostile clips (issue 21 item 4): a clip's length and its gaps between frames are checked before
any frame buffer is allocated.

The crafted file is the one from the report: two frames, the second stamped 10 hours in. Before
the fix ``load_clip`` asked for a 900001-frame buffer (707 GB at 512²). The memory check runs in a
child process under a 3 GB address-space limit (``tests/fixtures/limits.py``; importing torch and
the pack takes ~0.75 GB of it), as the issue's "done when" asks: the pack's own InputError, not an allocator error.
"""

from __future__ import annotations

import pytest
import torch

from mimictalk_lib.errors import InputError
from mimictalk_lib.identity.clip import load_clip
from mimictalk_lib.identity.frames import MAX_CLIP_SECONDS_ENV, probe_video
from tests.fixtures.limits import run_limited
from tests.fixtures.media import write_stamped_video
from tests.fixtures.synthetic_identity import BlobLandmarker

def test_frame_stamped_ten_hours_in_is_refused_under_3gb(tmp_path):
    path = tmp_path / "ten_hours.mp4"
    write_stamped_video(path, [0.0, 36000.0])
    proc = run_limited(f"""
        from mimictalk_lib.errors import InputError
        from mimictalk_lib.identity.clip import load_clip
        from tests.fixtures.synthetic_identity import BlobLandmarker
        try:
            load_clip({str(path)!r}, landmarker=BlobLandmarker(), crop="none")
        except InputError as e:
            print("INPUT_ERROR", e)
        else:
            print("LOADED")
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "INPUT_ERROR" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "36000 s" in proc.stdout and "600 s" in proc.stdout and MAX_CLIP_SECONDS_ENV in proc.stdout


def test_gap_of_minutes_between_frames_is_a_broken_file(tmp_path):
    path = tmp_path / "gap.mp4"
    write_stamped_video(path, [k / 25 for k in range(30)] + [150.0, 150.04])  # 2.5 min pause, under the limit
    with pytest.raises(InputError, match=r"frames 29 and 30 are 149 s apart.*timestamps are broken"):
        load_clip(path, landmarker=BlobLandmarker(), crop="none")
    frames = torch.zeros(3, 32, 32, 3, dtype=torch.uint8)
    with pytest.raises(InputError, match=r"frames 0 and 1 are 100 s apart"):  # a frame rate that means the same
        load_clip(frames, landmarker=BlobLandmarker(), fps=0.01, crop="none")


def test_clip_limit_is_checked_before_decoding_and_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "two_seconds.mp4"
    write_stamped_video(path, [k / 25 for k in range(50)])
    monkeypatch.setenv(MAX_CLIP_SECONDS_ENV, "1.5")
    with pytest.raises(InputError, match=r"limited to 1.5 s .*MIMICTALK_MAX_CLIP_SECONDS"):
        load_clip(path, landmarker=BlobLandmarker(), crop="none")
    clip = load_clip(path, landmarker=BlobLandmarker(), crop="none", max_seconds=3)  # the argument wins
    assert clip.frames.shape[0] == 50
    monkeypatch.setenv(MAX_CLIP_SECONDS_ENV, "ten minutes")
    with pytest.raises(InputError, match="MIMICTALK_MAX_CLIP_SECONDS must be a positive number"):
        probe_video(path)
    monkeypatch.delenv(MAX_CLIP_SECONDS_ENV)
    assert probe_video(path).timestamps.size == 50


def test_in_memory_frames_with_a_long_timeline_are_refused_before_allocating(monkeypatch):
    frames = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
    stamps = [0.0, 8.0, 16.0, 24.0]  # 24 s of timeline from four frames
    monkeypatch.setenv(MAX_CLIP_SECONDS_ENV, "20")
    with pytest.raises(InputError, match="at least 24 s long; identity and style clips are limited to 20 s"):
        load_clip(frames, landmarker=BlobLandmarker(), timestamps=stamps, crop="none", size=16)
    clip = load_clip(frames, landmarker=BlobLandmarker(), timestamps=stamps, crop="none", size=16, max_seconds=40)
    assert clip.frames.shape == (800, 16, 16, 3)  # 32 s at 25 fps (the last frame lasts one 8 s interval)
