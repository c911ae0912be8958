"""Frame sub-ranges equal the same frames of a full render: blinks, pose ping-pong and smoothing
are computed for the whole motion, and chunks follow the full render's grid."""

from __future__ import annotations

import pytest
import torch

from mimictalk_lib.distributed import frame_ranges, iter_frame_range
from mimictalk_lib.errors import InputError
from mimictalk_lib.pipeline import build_session, iter_talking_head, one_shot_source
from tests.pipeline.conftest import make_identity, motion

T = 6


@pytest.fixture(scope="module")
def session(renderer, face_model):
    ident = make_identity(face_model, frames=4)  # 4 clip poses ping-ponged over 6 frames
    return build_session(renderer, face_model, one_shot_source(renderer, ident), motion(T), pose="identity",
                         blink="period", blink_seed=3)


@pytest.fixture(scope="module")
def full(session):
    return torch.cat([c.images for c in iter_talking_head(session, chunk_size=2)])


def _range(session, start, count, chunk_size=2):
    chunks = list(iter_frame_range(session, start, count, chunk_size=chunk_size))
    assert chunks[0].start == start and all(a.start + a.images.shape[0] == b.start for a, b in zip(chunks, chunks[1:]))
    return torch.cat([c.images for c in chunks])


def test_session_spans_frames_globally(session):
    # the fixture exercises what a per-range computation would get wrong: blinks, ping-pong, smoothing
    assert bool((session.blink > 0).any()) and not bool((session.blink > 0).all())
    assert torch.equal(session.euler[3], session.euler[4]) and torch.equal(session.euler[2], session.euler[5])  # 0123 32
    assert not torch.equal(session.euler[2], session.euler[3])


@pytest.mark.parametrize("start,count", [(3, 2), (5, None)])
def test_sub_range_equals_the_same_frames_of_a_full_render(session, full, start, count):
    got = _range(session, start, count)
    stop = T if count is None else start + count
    assert torch.equal(got, full[start:stop])  # same batches on the same machine: bit-identical


def test_ranges_concatenated_equal_the_full_render(session, full):
    ranges = frame_ranges(T, 3, chunk_size=2)
    assert ranges == [(0, 2), (2, 4), (4, 6)]
    assert torch.equal(torch.cat([_range(session, a, b - a) for a, b in ranges]), full)
    assert frame_ranges(11, 5, chunk_size=2) == [(0, 4), (4, 8), (8, 11)]


def test_bad_ranges_are_refused(session):
    with pytest.raises(InputError, match="start frame 6 is past the end"):
        list(iter_frame_range(session, 6, 1))
    with pytest.raises(InputError, match="count must be a non-negative integer"):
        list(iter_frame_range(session, 0, -1))
    assert sum(c.images.shape[0] for c in iter_frame_range(session, 5, 50)) == 1  # clipped at the end
