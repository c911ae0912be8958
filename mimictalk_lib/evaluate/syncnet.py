"""Audio-visual lip sync: LSE-D and LSE-C with the original SyncNet (Chung & Zisserman 2016).

LSE-D / LSE-C are the numbers Wav2Lip (Prajwal et al. 2020) and later talking-head papers report:
SyncNet embeds 5-frame windows of 224x224 face crops (25 fps) and the matching 0.2 s of audio
(13 MFCCs x 20 steps at 100 Hz, 16 kHz mono); for every audio shift of -15..+15 frames the
distance between each video window and the shifted audio window is averaged over the clip, giving
one mean distance per shift. LSE-D is the smallest of those means, LSE-C the median minus that
smallest (how clearly the best shift stands out), and the shift at the minimum is the audio-video
offset in frames. Audio windows shifted past either end are compared with zero vectors, as in the
reference implementation.

The network here is the pack's own, written from the checkpoint's layer shapes (the ``syncnet``
asset: ``syncnet_v2.model``; keys ``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``, ``netfclip.*``).
Inputs follow the reference: face crops as BGR values 0..255, MFCCs of 16-bit sample values from
``python_speech_features`` (the exact features SyncNet was trained on; an optional package).
Face crops are squares around a face box (here from MediaPipe landmarks or head masks, not the
reference's S3FD detector), extended by the reference's crop scale 0.4 and padded with grey 110.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, DependencyMissingError, InputError
from ..utils import count

SYNCNET_ASSET = "syncnet"
SAMPLE_RATE = 16000
FPS = 25.0
WINDOW = 5
"""Video frames per SyncNet window (0.2 s)."""
MFCC_PER_FRAME = 4
"""MFCC steps (100 Hz) per video frame (25 fps)."""
MFCC_WINDOW = WINDOW * MFCC_PER_FRAME
NUM_MFCC = 13
SAMPLES_PER_FRAME = SAMPLE_RATE // int(FPS)
CROP_SIZE = 224
CROP_SCALE = 0.4
"""Extension of the face box, as the reference pipeline's ``crop_scale``."""
PAD_VALUE = 110.0
"""Grey level (0..255) of the padding around frames, as the reference pipeline."""
VSHIFT = 15
"""Audio shifts tried: -VSHIFT..+VSHIFT frames."""
EMBED_DIM = 1024
MAX_FILE_BYTES = 256 << 20
"""A SyncNet checkpoint is 55 MB; larger files are refused before reading them."""

# (out channels, kernel, stride, padding) of the convolutions, None = BatchNorm + ReLU after the
# previous convolution, ("pool", kernel, stride, padding). Indices in nn.Sequential = state-dict keys.
_AUDIO_LAYERS = (
    ("conv", 64, (3, 3), (1, 1), (1, 1)), ("pool", (1, 1), (1, 1), (0, 0)),
    ("conv", 192, (3, 3), (1, 1), (1, 1)), ("pool", (3, 3), (1, 2), (0, 0)),
    ("conv", 384, (3, 3), (1, 1), (1, 1)),
    ("conv", 256, (3, 3), (1, 1), (1, 1)),
    ("conv", 256, (3, 3), (1, 1), (1, 1)), ("pool", (3, 3), (2, 2), (0, 0)),
    ("conv", 512, (5, 4), (1, 1), (0, 0)),
)
_LIP_LAYERS = (
    ("conv", 96, (5, 7, 7), (1, 2, 2), (0, 0, 0)), ("pool", (1, 3, 3), (1, 2, 2), (0, 0, 0)),
    ("conv", 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), (0, 0, 0)),
    ("conv", 512, (1, 6, 6), (1, 1, 1), (0, 0, 0)),
)


def _trunk(layers, in_ch: int, dims: int) -> nn.Sequential:
    conv, bn, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)
    mods: list[nn.Module] = []
    for kind, *args in layers:
        if kind == "conv":
            out, k, s, p = args
            mods += [conv(in_ch, out, k, s, p), bn(out), nn.ReLU()]
            in_ch = out
        else:
            k, s, p = args
            mods.append(pool(k, s, p))
    return nn.Sequential(*mods)


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNet(nn.Module):
    """The two SyncNet streams: ``audio(mfcc [B, 1, 13, 20]) -> [B, 1024]`` and
    ``lips(crops [B, 3, 5, 224, 224], BGR 0..255) -> [B, 1024]``. Inference only (eval mode)."""

    def __init__(self, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.netcnnaud = _trunk(_AUDIO_LAYERS, 1, 2)
        self.netfcaud = _head(embed_dim)
        self.netcnnlip = _trunk(_LIP_LAYERS, 3, 3)
        self.netfclip = _head(embed_dim)
        self.eval()

    def audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        if mfcc.dim() != 4 or tuple(mfcc.shape[1:]) != (1, NUM_MFCC, MFCC_WINDOW):
            raise InputError(f"SyncNet: audio windows must be [B, 1, {NUM_MFCC}, {MFCC_WINDOW}], got {list(mfcc.shape)}")
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def lips(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.dim() != 5 or tuple(crops.shape[1:]) != (3, WINDOW, CROP_SIZE, CROP_SIZE):
            raise InputError(f"SyncNet: video windows must be [B, 3, {WINDOW}, {CROP_SIZE}, {CROP_SIZE}], "
                             f"got {list(crops.shape)}")
        return self.netfclip(self.netcnnlip(crops).flatten(1))


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes a checkpoint must have (BatchNorm's batch counters excluded:
    checkpoints from before PyTorch 0.4 have none)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def read_state_dict(path, model: nn.Module, what: str, max_bytes: int, ignore: Sequence[str] = ()) -> dict:
    """A checkpoint's state dict for ``model``: the file size is checked before reading, the file
    is read with ``torch.load(weights_only=True)`` (tensors and containers only), and every key
    and shape is checked against ``model``; keys starting with one of ``ignore`` are dropped."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CheckpointError(f"{what}: cannot read {path}: {e}") from e
    if size > max_bytes:
        raise CheckpointError(f"{what}: {path} is {size:,} bytes, far more than this model's weights; "
                              "it is not the right file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler refuses anything but tensors and containers
        raise CheckpointError(f"{what}: {path} is not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{what}: {path} does not hold a state dict of named tensors")
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") and not k.startswith(tuple(ignore))}
    want = expected_shapes(model)
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    wrong = [f"{k} {list(sd[k].shape)} (expected {list(want[k])})" for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or extra or wrong:
        raise CheckpointError(f"{what}: {path} does not match the network: "
                              + "; ".join(part for part in (
                                  f"missing {', '.join(missing[:4])}" if missing else "",
                                  f"unexpected {', '.join(extra[:4])}" if extra else "",
                                  f"wrong shapes {', '.join(wrong[:4])}" if wrong else "") if part))
    return sd


def load_syncnet(path, device: torch.device | str = "cpu") -> SyncNet:
    """SyncNet from ``syncnet_v2.model`` (or any file with the same keys and shapes)."""
    net = SyncNet()
    net.load_state_dict(read_state_dict(path, net, "SyncNet", MAX_FILE_BYTES), strict=False)
    return net.to(device).eval()


# --- inputs -------------------------------------------------------------------------------------------


def mfcc(audio_16k: torch.Tensor) -> torch.Tensor:
    """Mono 16 kHz audio [T] (float, about -1..1) -> MFCCs [13, steps] at 100 Hz, from the audio
    as 16-bit sample values (as SyncNet's reference reads a 16-bit WAV)."""
    try:
        from python_speech_features import mfcc as psf_mfcc
    except ImportError as e:
        raise DependencyMissingError("LSE-C / LSE-D need the python_speech_features package (SyncNet's audio "
                                     "features): pip install python_speech_features") from e
    pcm = (audio_16k.detach().float().cpu().clamp(-1, 1) * 32767).round().double().numpy()
    return torch.from_numpy(psf_mfcc(pcm, SAMPLE_RATE)).float().T.contiguous()


def face_crops(frames: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Frames float [n, 3, H, W] RGB 0..1 and face boxes [n, 4] (x0, y0, x1, y1, pixels) ->
    SyncNet crops [n, 3, 224, 224], BGR 0..255. With s = half the box's longer side and (mx, my)
    its centre, the crop spans columns mx ± 1.4 s and rows my - s .. my + 1.8 s (the reference
    pipeline's crop with crop scale 0.4: a square reaching below the chin), grey outside the frame."""
    if frames.dim() != 4 or frames.shape[1] != 3 or boxes.shape != (frames.shape[0], 4):
        raise InputError(f"SyncNet crops: expected frames [n, 3, H, W] and boxes [n, 4], got "
                         f"{list(frames.shape)} and {list(boxes.shape)}")
    out = []
    for img, (x0, y0, x1, y1) in zip(frames.float(), boxes.tolist()):
        s = max(x1 - x0, y1 - y0) / 2
        if not s > 0:
            raise InputError("SyncNet crops: a face box is empty")
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        out.append(crop_resize(img[[2, 1, 0]] * 255, (mx - s * (1 + CROP_SCALE), my - s,
                                                      mx + s * (1 + CROP_SCALE), my + s * (1 + 2 * CROP_SCALE)),
                               CROP_SIZE, PAD_VALUE))
    return torch.stack(out)


def crop_resize(img: torch.Tensor, box: Sequence[float], size: int, fill: float) -> torch.Tensor:
    """img [C, H, W] -> the region box (x0, y0, x1, y1; may extend past the image, filled with
    ``fill``) resized to [C, size, size] (bilinear)."""
    _, h, w = img.shape
    x0, y0, x1, y1 = (int(math.floor(box[0])), int(math.floor(box[1])), int(math.ceil(box[2])), int(math.ceil(box[3])))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    region = img.new_full((img.shape[0], y1 - y0, x1 - x0), fill)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        region[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[:, sy0:sy1, sx0:sx1]
    return F.interpolate(region[None], size=(size, size), mode="bilinear", align_corners=False)[0]


# --- the metric ---------------------------------------------------------------------------------------


@dataclass
class SyncResult:
    lse_d: float
    lse_c: float
    offset: int
    """Audio-video offset in frames at the minimum distance (positive: the audio lags)."""
    windows: int
    mean_distance: list[float]
    """Mean distance per audio shift, -VSHIFT..+VSHIFT."""


def lse(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
    """LSE-D / LSE-C of per-window embeddings ``video`` and ``audio`` [N, D] (window i of both
    covers the same 0.2 s): distance of video window i to audio window i+k for k in -vshift..vshift
    (zero vectors past the ends), averaged over i; LSE-D = min over k, LSE-C = median - min."""
    if video.dim() != 2 or video.shape != audio.shape or video.shape[0] < 1:
        raise InputError(f"LSE: expected two [N, D] embeddings of the same shape, got {list(video.shape)} and {list(audio.shape)}")
    n, width = video.shape[0], 2 * vshift + 1
    padded = F.pad(audio.float(), (0, 0, vshift, vshift))
    shifted = padded.unfold(0, width, 1).permute(0, 2, 1)  # [n, width, D]: audio windows i-vshift..i+vshift
    dists = F.pairwise_distance(video.float()[:, None].expand(n, width, -1).reshape(n * width, -1),
                                shifted.reshape(n * width, -1)).view(n, width)
    mean = dists.mean(0)
    best, at = mean.min(0)
    return SyncResult(lse_d=float(best), lse_c=float(mean.median() - best), offset=vshift - int(at), windows=n,
                      mean_distance=mean.tolist())


class SyncScorer:
    """Streams face crops through SyncNet's video stream (5-frame windows, the last 4 crops kept
    across chunks), then scores them against the audio with :func:`lse`."""

    def __init__(self, net: SyncNet, batch: int = 8):
        self.net, self.batch = net, batch
        self.device = next(net.parameters()).device
        self.tail: Optional[torch.Tensor] = None
        self.video: list[torch.Tensor] = []
        self.frames = 0

    @torch.no_grad()
    def add(self, crops: torch.Tensor) -> None:
        """crops [n, 3, 224, 224] (:func:`face_crops`) of the next n frames."""
        self.frames += crops.shape[0]
        seq = crops if self.tail is None else torch.cat([self.tail, crops])
        starts = list(range(0, seq.shape[0] - WINDOW + 1))
        for s in range(0, len(starts), self.batch):
            idx = starts[s:s + self.batch]
            win = torch.stack([seq[i:i + WINDOW] for i in idx]).permute(0, 2, 1, 3, 4)  # [B, 3, 5, 224, 224]
            self.video.append(self.net.lips(win.to(self.device)).float().cpu())
        self.tail = seq[-(WINDOW - 1):]

    @torch.no_grad()
    def result(self, audio_16k: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
        """Score against mono 16 kHz audio [T] starting at the first frame. As the reference, the
        clip's length is min(frames, whole 40 ms audio frames) and it has that length - 5 windows."""
        length = min(self.frames, audio_16k.shape[-1] // SAMPLES_PER_FRAME)
        windows = length - WINDOW
        if windows < 1:
            raise InputError(f"LSE: {count(self.frames, 'frame')} and {audio_16k.shape[-1] / SAMPLE_RATE:.2f} s of audio are too "
                             f"short; SyncNet needs at least {WINDOW + 1} frames (0.24 s) of both")
        video = torch.cat(self.video)[:windows]
        feats = mfcc(audio_16k)
        steps = [feats[:, MFCC_PER_FRAME * i: MFCC_PER_FRAME * i + MFCC_WINDOW] for i in range(windows)]
        audio = []
        for s in range(0, windows, 64):
            batch = torch.stack(steps[s:s + 64])[:, None]
            audio.append(self.net.audio(batch.to(self.device)).float().cpu())
        return lse(video, torch.cat(audio), vshift)


__all__ = ["SYNCNET_ASSET", "SyncNet", "SyncResult", "SyncScorer", "face_crops", "lse", "load_syncnet", "mfcc",
           "read_state_dict"]
