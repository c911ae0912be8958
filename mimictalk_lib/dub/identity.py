"""A light identity for dubbing: what a dub needs from every frame of its source, without the frames.

``prepare_identity`` keeps every 25 fps crop (512²: 1.2 GB per minute) because adaptation trains
on them. A dub needs per frame only the crop transform (one box for the clip), the fitted head
pose and expression, and the segmentation (the blend mask's head and face-skin classes); pixels
only for a bounded subset: the one-shot source frame, the torso reference and the background plate.
:func:`prepare_dub_identity` streams the source in chunks of ``chunk_frames`` distinct source
frames (decode -> crop -> landmarks -> segmentation -> 3DMM fit) and keeps:

* per frame: ``exp`` [64], ``euler`` / ``trans`` [3] and the segmentation map compressed
  (:class:`SegmapStore`, bzip2, about 1 kB a frame);
* ``keep_frames`` crops spread evenly over the clip (and the first frame with a face, the one-shot
  source) as an ordinary :class:`~mimictalk_lib.identity.Identity`, ``subset``.

Memory: one chunk of crops and landmarks, pass one's 24 downscaled search frames and the subset,
whatever the length; only the per-frame rows (about 1.5 kB a distinct source frame) grow: ~10 MB for
5 minutes at 25 fps.

Differences from ``prepare_identity``: each chunk is fitted on its own (``fit_clip``; the clip's
identity coefficients are the first chunk's), source frames shown at several 25 fps positions are
analysed once, and frames without a usable face are never refused: a dub keeps them untouched and
counts them (at least one frame must show a face).
"""

from __future__ import annotations

import os
import bz2
from dataclasses import asdict, dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..face.camera import camera_sequence
from ..face.coeffs import Coefficients, HeadPose
from ..face.keypoints import landmarks_2d, torso_keypoints
from ..identity.background import background_plate
from ..identity.checks import cut_off_frames
from ..identity.clip import CROP_CHUNK, CROP_SAMPLES, find_crop
from ..identity.fit3dmm import FitSchedule, check_fit_quality, fit_clip, fit_quality
from ..identity.frames import (FRAME_SIZE, crop_frames, is_variable_rate, max_clip_seconds, probe_video,
                               resample_indices, timestamps_from, to_uint8_frames)
from ..identity.identity import Identity
from ..identity.landmarks import warn_multiple_faces
from ..identity.prepare import as_face_model, as_landmarker, as_segmenter, lip_rects
from ..identity.segmentation import NUM_CLASSES
from ..identity.torso import inpaint_torso
from ..utils import ProgressFn, count, logger, report

KEEP_FRAMES = 16
"""Crops kept with their pixels (the subset): plate, torso reference, one-shot source."""
CHUNK_FRAMES = 64
"""Distinct source frames analysed and fitted at a time."""
DUB_MAX_SECONDS = 3600.0
"""Longest source prepared by default (the frames are not held, so the identity limit of
``frames.max_clip_seconds`` does not apply unless it is higher)."""
WHAT = "dub source"


class SegmapStore:
    """Per-frame segmentation maps (uint8 class ids, ``size``²), each compressed on its own (bzip2: 0.7-1.5 kB for a 512² map); indexed
    like a tensor of shape ``[N, size, size]`` by index lists or tensors (``store[idx]`` inflates
    just those frames, always as ``[len(idx), size, size]``). Rows may
    share one map (a source frame shown at several 25 fps positions)."""

    def __init__(self, size: int, blobs: Sequence[bytes], rows: np.ndarray):
        self.size, self._blobs, self._rows = int(size), list(blobs), np.asarray(rows, dtype=np.int64)

    @staticmethod
    def compress(maps: torch.Tensor) -> list[bytes]:
        return [bz2.compress(np.ascontiguousarray(m.numpy()).tobytes(), 3) for m in maps]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self._rows), self.size, self.size)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self._blobs)

    def __getitem__(self, index) -> torch.Tensor:
        rows = self._rows[np.asarray(torch.as_tensor(index), dtype=np.int64).reshape(-1)]
        out = np.empty((len(rows), self.size, self.size), dtype=np.uint8)
        for k, r in enumerate(rows):
            out[k] = np.frombuffer(bz2.decompress(self._blobs[r]), dtype=np.uint8).reshape(self.size, self.size)
        return torch.from_numpy(out)


@dataclass
class DubIdentity:
    """What ``dub_video`` needs of the identity of its source, for any length (``T`` kept 25 fps
    frames): the per-frame rows below, ``meta`` as a prepared identity's (crop, source size,
    ``frame_positions``, ``source_frames``, ``dropped_frames``...), and ``subset``, an ordinary
    identity of at most ``keep_frames + 1`` of those frames with pixels (the renderer's source)."""

    subset: Identity
    exp: torch.Tensor  # [T, 64]
    euler: torch.Tensor  # [T, 3]
    trans: torch.Tensor  # [T, 3]
    segmaps: SegmapStore  # [T, S, S] on demand
    meta: dict

    @property
    def num_frames(self) -> int:
        return int(self.exp.shape[0])

    @property
    def size(self) -> int:
        return self.subset.size

    @property
    def id(self) -> torch.Tensor:
        return self.subset.id

    @property
    def is_photo(self) -> bool:
        return False

    @property
    def frames_held(self) -> int:
        """Frames held with their pixels (bounded by ``keep_frames + 1`` whatever the length)."""
        return self.subset.num_frames

    @property
    def nbytes(self) -> int:
        """Memory held: subset tensors, per-frame rows and the compressed maps."""
        sub = sum(t.numel() * t.element_size() for t in vars(self.subset).values() if torch.is_tensor(t))
        rows = sum(t.numel() * t.element_size() for t in (self.exp, self.euler, self.trans))
        return sub + rows + self.segmaps.nbytes

    def __repr__(self) -> str:
        return (f"DubIdentity(frames={self.num_frames}, held={self.frames_held}, size={self.size}, "
                f"source={self.meta.get('source')!r})")


def _distinct_frames(source, frames: Optional[torch.Tensor], wanted: np.ndarray) -> Iterator[torch.Tensor]:
    """uint8 [H, W, 3] source frames ``wanted`` (sorted, distinct), decoded one at a time."""
    if frames is not None:
        for i in wanted:
            yield frames[int(i)]
        return
    from ..video import iter_video

    k = 0
    for i, (img, _) in enumerate(iter_video(source)):
        if i == wanted[k]:
            yield torch.from_numpy(img)
            k += 1
            if k == len(wanted):
                return


def _crops(frames: Iterator[torch.Tensor], box, size: int, pad: str, chunk: int) -> Iterator[torch.Tensor]:
    """uint8 [n <= chunk, S, S, 3] crops; full-size frames are cut ``CROP_CHUNK`` at a time, so at
    most that many are held besides one chunk of crops."""
    step = min(CROP_CHUNK, chunk)
    pending: list[torch.Tensor] = []
    crops = torch.empty(0, size, size, 3, dtype=torch.uint8)
    for img in frames:
        pending.append(img)
        if len(pending) == step:
            crops = torch.cat([crops, crop_frames(torch.stack(pending), box, size, pad)])
            pending.clear()
            while crops.shape[0] >= chunk:
                yield crops[:chunk]
                crops = crops[chunk:]
    if pending:
        crops = torch.cat([crops, crop_frames(torch.stack(pending), box, size, pad)])
    while crops.shape[0]:
        yield crops[:chunk]
        crops = crops[chunk:]


def prepare_dub_identity(
    source,
    *,
    landmarker,
    segmenter,
    face_model,
    fps: Optional[float] = None,
    timestamps: Optional[Sequence[float]] = None,
    pad: str = "edge",
    schedule: FitSchedule = FitSchedule(),
    device: torch.device | str = "cpu",
    size: int = FRAME_SIZE,
    keep_frames: int = KEEP_FRAMES,
    chunk_frames: int = CHUNK_FRAMES,
    max_seconds: Optional[float] = None,
    on_step: Optional[ProgressFn] = None,
) -> DubIdentity:
    """The light identity of the video to dub (see the module docstring), streamed in chunks.

    ``source``: a video file path, or frames (IMAGE batch ``[N, H, W, C]``) with ``fps`` or
    ``timestamps``. ``landmarker`` / ``segmenter`` / ``face_model``: as ``prepare_identity``
    (objects or model paths). ``size``: the renderer's output side. ``keep_frames``: crops kept
    with pixels; ``chunk_frames``: distinct source frames per analysis / fit chunk. ``max_seconds``:
    the longest source (default the larger of an hour and ``MIMICTALK_MAX_CLIP_SECONDS``).
    ``on_step(done, total)`` after every chunk may raise to cancel."""
    if keep_frames < 1 or chunk_frames < 1:
        raise InputError(f"prepare_dub_identity: keep_frames and chunk_frames must be >= 1, got {keep_frames}, {chunk_frames}")
    if pad not in ("edge", "black"):
        raise InputError(f"pad must be 'edge' or 'black', got {pad!r}")
    landmarker, segmenter = as_landmarker(landmarker), as_segmenter(segmenter)
    face_model = as_face_model(face_model, device)
    limit = max_seconds if max_seconds is not None else max(DUB_MAX_SECONDS, max_clip_seconds())
    frames = None
    if isinstance(source, (str, os.PathLike)):
        info = probe_video(source, max_seconds=limit, what=WHAT)  # pass one: timestamps + 24 small frames
        ts, (h, w), name = info.timestamps, (info.height, info.width), os.path.basename(os.fspath(source))
        keys = sorted(info.samples)
        samples = torch.from_numpy(np.stack([info.samples[k] for k in keys]))
        box, several = find_crop(samples, landmarker, WHAT, source_scale=w / samples.shape[2])
        del info, samples
    else:
        frames = to_uint8_frames(source, WHAT)
        (h, w), name = frames.shape[1:3], "frames"
        ts = timestamps_from(frames.shape[0], fps, timestamps)
        pick = np.linspace(0, frames.shape[0] - 1, min(CROP_SAMPLES, frames.shape[0])).round().astype(int)
        box, several = find_crop(frames[torch.from_numpy(np.unique(pick))], landmarker, WHAT)
    idx = resample_indices(ts)  # source frame at every 25 fps position (non-decreasing)
    wanted, inv = np.unique(idx, return_inverse=True)  # distinct source frames; position -> distinct
    n = len(wanted)
    keep_set = set(np.linspace(0, n - 1, min(keep_frames, n)).round().astype(int).tolist())

    good_all, nodet_all, cut_all = [], [], []
    rows: dict[str, list[torch.Tensor]] = {"exp": [], "euler": [], "trans": []}
    blobs: list[bytes] = []
    sub: dict[str, list] = {"k": [], "frames": [], "segmaps": [], "landmarks": []}
    clip_id, errors, done = None, [], 0
    for crops in _crops(_distinct_frames(source, frames, wanted), box, size, pad, int(chunk_frames)):
        m = crops.shape[0]
        res = landmarker.detect(crops, video=True)
        several = warn_multiple_faces(res.num_faces, f"{WHAT}: frames", already=several)
        cut = cut_off_frames(res.points, res.detected, box, (h, w), size)
        good = res.detected & ~cut
        good_all.append(good)
        nodet_all.append(~res.detected)
        cut_all.append(cut)
        if bool(good.any()):
            pts = res.points[good].float()
            seg = segmenter.segment(crops[good], landmarks=pts)
            if tuple(seg.shape) != (len(pts), size, size) or int(seg.max()) >= NUM_CLASSES:
                raise InputError(f"segmenter returned shape {list(seg.shape)} with max class {int(seg.max())}; "
                                 f"expected [{len(pts)}, {size}, {size}] class ids 0..{NUM_CLASSES - 1}")
            seg = seg.to(torch.uint8).cpu()
            fit = fit_clip(face_model, pts.to(device), size, schedule=schedule)
            quality = fit_quality(face_model, fit, pts.to(device), size)
            check_fit_quality(quality, WHAT)
            errors.append(float(fit.landmark_error.mean()))
            clip_id = fit.coeffs.id[:1].detach().float().cpu() if clip_id is None else clip_id
            for key in rows:
                rows[key].append(getattr(fit.coeffs, key).detach().float().cpu())
            blobs.extend(SegmapStore.compress(seg))
            for j, k in enumerate(torch.nonzero(good).flatten().tolist()):
                if done + k in keep_set or not sub["k"]:
                    sub["k"].append(done + k)
                    sub["frames"].append(crops[k].clone())
                    sub["segmaps"].append(seg[j].clone())
                    sub["landmarks"].append(pts[j].clone())
        done += m
        report(on_step, done, n, stage="dub identity")
    if done != n:
        raise InputError(f"{WHAT}: '{name}' ended after {done} of its {count(n, 'frame')}; the file is damaged or was changed")
    good_u = torch.cat(good_all).numpy()
    if not good_u.any():
        raise InputError(f"{WHAT}: no face found in any of its {count(n, 'frame')}. The video needs one clearly visible, "
                         "roughly frontal face.")
    row_of = np.cumsum(good_u) - 1  # distinct frame -> row of the fitted ones
    keep_pos = good_u[inv]
    positions = np.nonzero(keep_pos)[0]
    fitted = {k: torch.cat(v) for k, v in rows.items()}
    sel = torch.from_numpy(row_of[inv[positions]])
    no_face = int((~keep_pos).sum())
    if no_face:
        logger.warning("%s: %d of %d frames (25 fps) show no usable face (no face found: %d source frames, cut off "
                       "by the frame edge: %d); a dub keeps them untouched", WHAT, no_face, len(idx),
                       int(torch.cat(nodet_all).sum()), int(torch.cat(cut_all).sum()))
    vfr = is_variable_rate(ts)
    meta = {
        "kind": "clip", "source": name, "source_size": [int(h), int(w)], "crop": [box.x0, box.y0, box.side],
        "fps": 25.0, "variable_frame_rate": vfr, "several_faces": several,
        "frame_positions": positions.tolist(), "source_frames": idx[positions].tolist(),
        "dropped_frames": np.nonzero(~keep_pos)[0].tolist(), "interpolated_frames": [],
        "landmark_error_px": float(np.mean(errors)), "fit_schedule": asdict(schedule),
        "light": {"keep_frames": int(keep_frames), "chunk_frames": int(chunk_frames)},
    }
    subset = _subset(sub, {k: v[torch.from_numpy(row_of[sub["k"]])] for k, v in fitted.items()}, clip_id, face_model,
                     device, meta, wanted, idx)
    ident = DubIdentity(subset=subset, exp=fitted["exp"][sel], euler=fitted["euler"][sel], trans=fitted["trans"][sel],
                        segmaps=SegmapStore(size, blobs, sel.numpy()), meta=meta)
    logger.info("prepared %r: %.1f MiB held", ident, ident.nbytes / 2**20)
    return ident


def _subset(sub: dict, fit: dict, id_: torch.Tensor, face_model, device, meta: dict, wanted: np.ndarray,
            idx: np.ndarray) -> Identity:
    """An ordinary identity of the kept crops (cameras, keypoints, lip crops, plate, torso)."""
    frames, segmaps, landmarks = (torch.stack(sub[k]) for k in ("frames", "segmaps", "landmarks"))
    t, size = frames.shape[0], frames.shape[1]
    exp, euler, trans = fit["exp"], fit["euler"], fit["trans"]
    fm = face_model
    with torch.no_grad():
        coeffs = Coefficients(id_.expand(t, -1), exp, euler, trans).to(fm.mean_shape.device)
        kps = torso_keypoints(fm, coeffs, clamp=False).cpu()
        lm68 = (landmarks_2d(fm, coeffs) * size).cpu()
    plate, _ = background_plate(frames, segmaps, device=device)
    torso, torso_mask = inpaint_torso(frames[:1], segmaps[:1])
    src = wanted[np.asarray(sub["k"])]
    sub_meta = {**{k: v for k, v in meta.items() if k not in ("dropped_frames",)},
                "frame_positions": np.searchsorted(idx, src).tolist(), "source_frames": src.tolist(),
                "dropped_frames": [], "subset": True}
    return Identity(
        frames=frames, segmaps=segmaps, landmarks=landmarks, id=id_, exp=exp, euler=euler, trans=trans,
        cameras=camera_sequence(HeadPose(euler, trans)).float(), keypoints=kps, lip_rects=lip_rects(lm68, size),
        plate=plate, torso_ref=torso[0], torso_ref_mask=torso_mask[0], meta=sub_meta,
    )
