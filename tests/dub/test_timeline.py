"""Dub timeline: source frame per output frame, motion resampling, identity -> source track."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimictalk_lib.dub.timeline import output_frames, resample_motion, source_indices, track_from_identity
from mimictalk_lib.errors import InputError
from tests.dub.conftest import identity_for, source_frames


def test_source_indices_modes():
    assert source_indices(7, 4, "loop").tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert source_indices(9, 4, "pingpong").tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert source_indices(9, 4, "trim").tolist() == [0, 1, 2, 3]
    assert source_indices(3, 10, "pingpong").tolist() == [0, 1, 2]  # a longer source is cut
    assert source_indices(4, 1, "pingpong").tolist() == [0, 0, 0, 0]  # a photo
    with pytest.raises(InputError, match="length mode"):
        source_indices(3, 3, "bounce")


def test_output_frames_follow_the_audio():
    assert output_frames(2.0, 30.0) == 60
    assert output_frames(1.0, 29.97) == 30
    with pytest.raises(InputError, match="empty"):
        output_frames(0.0, 25)


def test_motion_resampled_to_the_source_rate():
    t = torch.arange(50, dtype=torch.float32)[:, None]  # 2 s at 25 fps, value = 25 fps frame index
    m = torch.cat([t, -t], 1)
    out = resample_motion(m, 60, 30.0)  # 2 s at 30 fps
    expect = (torch.arange(60, dtype=torch.float32) * 25 / 30).clamp(max=49)
    assert out.shape == (60, 2)
    assert torch.allclose(out[:, 0], expect, atol=1e-5) and torch.allclose(out[:, 1], -expect, atol=1e-5)
    assert torch.equal(resample_motion(m, 50, 25.0), m)  # same rate: unchanged


def test_track_maps_poses_and_missing_faces_onto_source_frames(face_model):
    frames = source_frames(30)
    ident = identity_for(face_model, frames, 30.0, dropped=(10, 11))
    track = track_from_identity(ident, 30.0)
    assert track.num_frames == 30
    src = np.asarray(ident.meta["source_frames"])
    # an identity frame's own source frame gets exactly its pose
    for row in (0, 5, len(src) - 1):
        assert torch.allclose(track.euler[src[row]], ident.euler[row], atol=1e-6)
    # 25 fps positions 10, 11 = 0.40-0.44 s = source frames 12, 13 at 30 fps
    assert (~track.has_face).nonzero().flatten().tolist() == [12, 13]
    with pytest.raises(InputError, match="prepare it again"):
        track_from_identity(type(ident)(**{**ident.__dict__, "meta": {"kind": "clip"}}), 30.0)
