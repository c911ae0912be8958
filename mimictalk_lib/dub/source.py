"""Source frames for a dub, read by index in the order the output needs them.

:class:`TensorFrames` serves an in-memory batch (a ComfyUI IMAGE batch, a photo).
:class:`VideoFileFrames` decodes a file with PyAV and keeps only a bounded window of decoded
frames (``window_bytes``): forward reads decode on, a jump back (a loop restart, or the
backwards half of a ping-pong) seeks to the nearest keyframe before the block that ends at the
wanted frame and decodes that block again. Memory stays flat in the video's length; a backwards
pass costs about one extra GOP of decoding per block.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch

from ..errors import InputError
from ..identity.frames import to_uint8_frames
from ..utils import count
from ..video import _import_av, _open, _video_stream, probe

WINDOW_BYTES = 256 * 2**20
"""Decoded frames kept for backwards reads (about 43 frames of 1080p)."""


class TensorFrames:
    """Frames already in memory: uint8 ``[N, H, W, 3]`` (or anything ``to_uint8_frames`` takes)."""

    def __init__(self, frames, fps: float, name: str = "source frames"):
        self.frames = to_uint8_frames(frames, name)
        self.fps = float(fps)
        self.num_frames = int(self.frames.shape[0])
        self.height, self.width = int(self.frames.shape[1]), int(self.frames.shape[2])
        self.name = name

    def read(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if idx.numel() and int(idx.max()) >= self.num_frames:
            raise InputError(f"{self.name}: frame {int(idx.max())} requested, the batch has {self.num_frames}")
        return self.frames[idx]

    def close(self) -> None:
        pass


class VideoFileFrames:
    """Random access by frame index into a video file with a bounded decode window."""

    def __init__(self, path, window_bytes: int = WINDOW_BYTES):
        info = probe(path)
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        self.fps = float(info.fps)
        self.width, self.height = int(info.width), int(info.height)
        self.reported_frames = int(info.num_frames)
        frame_bytes = max(1, self.width * self.height * 3)
        self.block = int(np.clip(window_bytes // frame_bytes, 4, 240))
        self._buf: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pts: dict[int, int] = {}  # index -> pts, learned while decoding forwards
        self._index_of: dict[int, int] = {}
        self._container = None
        self._iter = None
        self._next = 0  # index of the frame the decoder yields next
        self.seeks = 0
        self.end: Optional[int] = None  # number of frames, once the end was reached

    # -- decoding

    def _open_at(self, start: int) -> None:
        """(Re)position the decoder at the keyframe at or before frame ``start``; from the start of
        the file when ``start`` is 0 or was never decoded."""
        if start > 0 and start in self._pts and self._container is not None:
            self._container.seek(self._pts[start], stream=self._stream, backward=True, any_frame=False)
            self.seeks += 1
            self._next = None  # known from the next frame's pts
        else:
            if self._container is not None:
                self._container.close()
            self._container = _open(self.path)
            self._stream = _video_stream(self._container, self.path)
            self._stream.thread_type = "AUTO"
            self._next = 0
        self._iter = self._container.decode(self._stream)

    def _decode_one(self) -> Optional[tuple[int, np.ndarray]]:
        try:
            frame = next(self._iter)
        except StopIteration:
            return None
        if self._next is None:  # after a seek: recover the index from the pts
            if frame.pts is None or frame.pts not in self._index_of:
                self._open_at(0)  # cannot place it: decode from the start
                return self._decode_one()
            self._next = self._index_of[frame.pts]
        i = self._next
        if frame.pts is not None and i not in self._pts:
            self._pts[i], self._index_of[frame.pts] = frame.pts, i
        self._next = i + 1
        return i, frame.to_ndarray(format="rgb24")

    def _keep(self, i: int, img: np.ndarray) -> None:
        self._buf[i] = img
        self._buf.move_to_end(i)
        while len(self._buf) > self.block:
            self._buf.popitem(last=False)

    def _get(self, i: int) -> np.ndarray:
        if i in self._buf:
            return self._buf[i]
        if self._iter is None or self._next is None or i < self._next:
            self._open_at(max(0, i - self.block + 1) if i > 0 else 0)
        while True:
            got = self._decode_one()
            if got is None:
                self.end = self._next
                raise InputError(
                    f"{self.name}: frame {i} was requested but the video ends after {count(self._next, 'frame')} "
                    "(the identity was prepared from a longer video?)"
                )
            j, img = got
            if j >= i - self.block + 1:
                self._keep(j, img)
            if j == i:
                return img

    def read(self, indices) -> torch.Tensor:
        """uint8 ``[n, H, W, 3]`` for source frame ``indices``."""
        frames = [self._get(int(i)) for i in np.asarray(indices).reshape(-1)]
        if not frames:
            return torch.empty(0, self.height, self.width, 3, dtype=torch.uint8)
        return torch.from_numpy(np.stack(frames))

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container, self._iter = None, None
        self._buf.clear()


def open_source(source, fps: Optional[float] = None):
    """A frame source from a path (video or image file) or frames (IMAGE batch; ``fps`` needed
    for more than one frame, 25 assumed for a single image)."""
    if isinstance(source, (str, os.PathLike)):
        _import_av()
        return VideoFileFrames(source)
    frames = to_uint8_frames(source, "source video frames")
    if fps is None:
        if frames.shape[0] > 1:
            raise InputError("source video frames: pass the frame rate (fps) of the IMAGE batch")
        fps = 25.0
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"source video frames: fps must be a positive number, got {fps}")
    return TensorFrames(frames, fps)
