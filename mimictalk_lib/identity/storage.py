"""Compressed frames and segmentation maps inside an identity file (format version 2).

Raw uint8 frames cost 786 KB per 512² frame: 1.2 GB per minute of clip. Here they are stored as
one H.264 stream (PyAV/libx264, no system ffmpeg), the segmentation maps losslessly:

* frames ``"h264"`` (default): libx264, 4:4:4 chroma (no subsampling), ``crf`` 8, preset
  "faster". Near-lossless: on the upstream example German_20s.mp4 cropped to 512² (500 frames),
  14.4 MB per minute at 45.8 dB PSNR vs the raw frames (preset "medium": 15 MB, 47.0 dB, 2.5x
  slower); the PSNR of every saved identity is measured when it is written and recorded in its
  metadata (``frames_codec.psnr_db``).
  ``"lossless"``: libx264rgb at qp 0, bit-exact, ~166 MB per minute on the same clip. ``"raw"``:
  the uncompressed tensor of format version 1.
* segmentation maps (class ids 0..5): the difference to the previous frame (mod 256), deflated with
  zlib: exact, and mostly zeros because the person moves little from frame to frame.

Reading is bounded and streaming: the frame count and size are checked against the identity's
other tensors and the clip limit (``frames.max_clip_seconds``) before the output tensor is
allocated; frames are decoded one at a time into it, each checked for its size before conversion;
the maps are inflated with a hard output limit. A stream that decodes to another count or size
is a :class:`~mimictalk_lib.errors.CheckpointError`.
"""

from __future__ import annotations

import io
import zlib
from fractions import Fraction

import numpy as np
import torch

from ..errors import CheckpointError, InputError
from ..utils import count

FRAME_CODECS = ("h264", "lossless", "raw")
DEFAULT_FRAME_CODEC = "h264"
DEFAULT_CRF = 8
"""x264 constant-rate factor of the stored frames: 45.8 dB PSNR on a real 512² clip (with "medium":
crf 8 47.0 dB, crf 12 45.4 dB at half the size, crf 0 53 dB at 6x the size)."""
ENCODER_PRESET = "faster"
"""x264 speed preset: on 512² talking-head frames 2.5x the encoding speed of "medium" (~40 vs 15 fps
on 2 busy cores) for 1 dB less PSNR at the same size."""
MAX_FRAME_SIDE = 4096
_ENCODERS = {"h264": ("libx264", "yuv444p"), "lossless": ("libx264rgb", "rgb24")}
SEGMAP_CHUNK = 64  # frames inflated / deflated at a time


def _av():
    from ..video import _import_av

    return _import_av()


def encode_frames(frames: torch.Tensor, codec: str = DEFAULT_FRAME_CODEC, crf: int = DEFAULT_CRF) -> tuple[torch.Tensor, dict]:
    """uint8 ``[T, S, S, 3]`` -> (uint8 ``[bytes]`` Matroska/H.264 stream, its description for the
    metadata, including the PSNR of the stored frames against ``frames``)."""
    if codec not in _ENCODERS:
        raise InputError(f"frame codec must be one of {FRAME_CODECS}, got {codec!r}")
    av = _av()
    name, pix_fmt = _ENCODERS[codec]
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream(name, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = {"qp": "0"} if codec == "lossless" else {"crf": str(crf), "preset": ENCODER_PRESET}
        stream.codec_context.time_base = Fraction(1, 25)
        for k in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[k].numpy()), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    info = {"codec": codec, "encoder": name, "pix_fmt": pix_fmt, "num_frames": int(t), "height": int(h), "width": int(w)}
    if codec != "lossless":
        info["crf"] = crf
    sq_err = 0.0
    for k, img in enumerate(iter_decoded(data, info, "the identity being saved")):
        sq_err += float(((img.astype(np.float64) - frames[k].numpy()) ** 2).sum())
    mse = sq_err / max(frames.numel(), 1)
    info["psnr_db"] = None if mse == 0 else round(10 * float(np.log10(255.0**2 / mse)), 2)  # None: exact
    return data, info


def iter_decoded(data: torch.Tensor, info: dict, what: str):
    """The frames of an :func:`encode_frames` stream one by one (uint8 numpy ``[H, W, 3]``), each
    checked against ``info``'s size before conversion and the count against ``num_frames``."""
    av = _av()
    t, h, w = int(info["num_frames"]), int(info["height"]), int(info["width"])
    k = 0
    try:
        with av.open(io.BytesIO(data.numpy().tobytes()), "r", format="matroska") as container:
            if not container.streams.video:
                raise CheckpointError(f"{what}: the stored frames have no video stream; the file is damaged")
            for frame in container.decode(container.streams.video[0]):
                if (frame.height, frame.width) != (h, w) or k >= t:
                    raise CheckpointError(
                        f"{what}: the stored frames do not match the identity (frame {k} is {frame.width}x"
                        f"{frame.height}, expected {count(t, 'frame')} of {w}x{h}); the file is damaged"
                    )
                yield frame.to_ndarray(format="rgb24")
                k += 1
    except av.error.FFmpegError as e:
        raise CheckpointError(f"{what}: the stored frames cannot be decoded ({e}); the file is damaged") from e
    if k != t:
        raise CheckpointError(f"{what}: {k} stored frames decoded, the identity has {t}; the file is damaged")


def decode_frames(data: torch.Tensor, info: dict, what: str) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` from :func:`encode_frames` output, decoded straight into one tensor
    (``info`` is checked first: see :func:`check_frame_info`)."""
    out = torch.empty(int(info["num_frames"]), int(info["height"]), int(info["width"]), 3, dtype=torch.uint8)
    view = out.numpy()  # numpy copies a frame in ~0.1 ms; torch's indexed copy is far slower on a busy CPU
    for k, img in enumerate(iter_decoded(data, info, what)):
        view[k] = img
    return out


def check_frame_info(info, num_frames: int, size: int, what: str) -> dict:
    """``info`` (untrusted metadata) must describe ``num_frames`` frames of ``size``² within the clip
    limit before anything is allocated for them."""
    from .frames import TARGET_FPS, max_clip_seconds

    if not isinstance(info, dict) or info.get("codec") not in _ENCODERS:
        raise CheckpointError(f"{what}: unknown frame storage {info!r}; the file is damaged or from a newer pack")
    dims = [info.get(k) for k in ("num_frames", "height", "width")]
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims) or dims != [num_frames, size, size]:
        raise CheckpointError(f"{what}: stored frames {dims} do not match the identity ({count(num_frames, 'frame')} of "
                              f"{size}x{size}); the file is damaged")
    limit = max_clip_seconds()
    if size > MAX_FRAME_SIDE or num_frames > limit * TARGET_FPS + 1:
        raise CheckpointError(
            f"{what}: {count(num_frames, 'frame')} of {size}x{size} exceed what the pack loads ({limit:g} s at 25 fps, "
            f"{MAX_FRAME_SIDE} px); raise MIMICTALK_MAX_CLIP_SECONDS if the identity is genuine"
        )
    return info


def encode_segmaps(segmaps: torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, S, S]`` -> uint8 ``[bytes]``: zlib of each frame's difference to the previous one."""
    comp = zlib.compressobj(6)
    parts = []
    prev = torch.zeros_like(segmaps[:1])
    for s in range(0, segmaps.shape[0], SEGMAP_CHUNK):
        chunk = segmaps[s : s + SEGMAP_CHUNK]
        diff = chunk - torch.cat([prev, chunk[:-1]])  # uint8 arithmetic wraps: exact inverse by cumsum
        parts.append(comp.compress(diff.contiguous().numpy().tobytes()))
        prev = chunk[-1:]
    parts.append(comp.flush())
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)


def decode_segmaps(data: torch.Tensor, num_frames: int, size: int, what: str) -> torch.Tensor:
    """Inverse of :func:`encode_segmaps` into one preallocated tensor; inflation stops at the
    expected size, so a deflate bomb cannot grow past it."""
    out = torch.empty(num_frames, size, size, dtype=torch.uint8)
    flat = out.view(-1).numpy()
    d = zlib.decompressobj()
    tail, pos, n, step = data.numpy().tobytes(), 0, flat.size, SEGMAP_CHUNK * size * size
    try:
        while not d.eof:
            piece = d.decompress(tail, min(step, n - pos + 1))  # one byte past the end shows an overlong stream
            tail = d.unconsumed_tail
            if pos + len(piece) > n or (not piece and not tail):
                break
            flat[pos : pos + len(piece)] = np.frombuffer(piece, np.uint8)
            pos += len(piece)
    except zlib.error as e:
        raise CheckpointError(f"{what}: the stored segmentation maps cannot be inflated ({e}); the file is damaged") from e
    if pos != n or not d.eof or d.unused_data:
        raise CheckpointError(f"{what}: the stored segmentation maps do not hold {num_frames} maps of {size}x{size}; "
                              "the file is damaged")
    _undiff(out)
    return out


def _undiff(out: torch.Tensor) -> None:
    """In place: frame k += frame k-1 (uint8, wrapping), undoing the differences."""
    view = out.numpy()
    np.add.accumulate(view, axis=0, dtype=np.uint8, out=view)
