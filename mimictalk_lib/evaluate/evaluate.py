"""Evaluate rendered talking-head frames against a reference clip: a metrics table, a plot image
and JSON (what the Evaluate node and ``python -m mimictalk_lib evaluate`` return).

* :func:`evaluate`: rendered frames + reference frames (IMAGE ``[N, H, W, 3]``, float 0..1 or
  uint8), optionally the reference's head masks (head-region metrics) and landmarks.
* :func:`evaluate_identity`: a renderer re-renders a prepared identity's own motion and head pose
  (all frames, or only the held-out validation slice adaptation never trains on) and is compared
  with the identity's frames (background replaced by the plate, as adaptation's targets), head
  masks from its segmentation and its stored landmarks.

Frames are processed in chunks (memory flat in the clip length). Metrics: :mod:`.metrics`.
Landmark metrics need a :class:`~mimictalk_lib.identity.landmarks.Landmarker` (MediaPipe, optional
package); LPIPS needs the ``lpips_alex`` weights; audio-visual sync (LSE-C / LSE-D, :mod:`.syncnet`)
needs the ``syncnet`` weights, the audio and 25 fps frames; identity similarity (CSIM,
:mod:`.face_embedding`) needs the ``face_embedding`` weights (:func:`load_metric_models`). Face boxes
for both come from the landmarks (rendered frame first, then reference), else the reference head
mask, else the whole frame. What cannot be measured is reported as a note, never an error.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..utils import ProgressFn, count, report
from . import metrics as M

CHUNK = 8  # frames measured at a time
STRIP_FRAMES = 6  # frames shown real above rendered in the plot
IDENTITY_FPS = 25.0  # prepared identities hold 25 fps frames
SYNC_WHAT = "LSE-C / LSE-D (audio-visual sync, SyncNet)"
CSIM_WHAT = "CSIM (identity similarity, face-embedding network)"
DESCRIPTIONS = {
    "psnr": ("dB", "peak signal-to-noise ratio, full frame (higher is better)"),
    "ssim": ("", "structural similarity, full frame (1 = identical)"),
    "lpips": ("", "LPIPS AlexNet distance, full frame (0 = identical)"),
    "head_psnr": ("dB", "PSNR inside the head box"),
    "head_ssim": ("", "SSIM inside the head box"),
    "head_lpips": ("", "LPIPS inside the head box"),
    "lmd_face": ("px", "landmark distance, 468 face-mesh points (lower is better)"),
    "lmd_mouth": ("px", "landmark distance, lip and mouth points"),
    "blink_rate": ("/min", "blinks per minute, rendered"),
    "blink_rate_reference": ("/min", "blinks per minute, reference"),
    "jitter_position": ("% face", "head-position jitter (RMS frame-to-frame acceleration), rendered"),
    "jitter_position_reference": ("% face", "head-position jitter, reference"),
    "jitter_scale": ("% face", "head-size jitter, rendered"),
    "jitter_scale_reference": ("% face", "head-size jitter, reference"),
    "jitter_roll": ("deg", "head-roll jitter, rendered"),
    "jitter_roll_reference": ("deg", "head-roll jitter, reference"),
    "lse_d": ("", "lip-sync distance, SyncNet (lower is better)"),
    "lse_c": ("", "lip-sync confidence, SyncNet (higher is better)"),
    "sync_offset": ("frames", "audio-video offset SyncNet finds (0 = in sync; positive: audio lags)"),
    "csim": ("", "identity similarity, cosine of face embeddings (1 = same)"),
}


@dataclass
class Evaluation:
    """Result of an evaluation: ``metrics`` (summary values, NaN = not measured), ``per_frame``
    (lists per frame of the per-frame metrics), ``notes`` (what was not measured and why),
    ``info`` (frames, fps, size, frame indices) and ``strip`` (sample frames real, rendered)."""

    metrics: dict[str, float]
    per_frame: dict[str, list[float]]
    notes: list[str]
    info: dict[str, Any]
    strip: Optional[tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False)

    def table(self) -> str:
        """A markdown table: metric, value, unit, meaning; then the notes."""
        lines = ["| metric | value | unit | meaning |", "|---|---|---|---|"]
        for name, value in self.metrics.items():
            unit, meaning = DESCRIPTIONS.get(name, ("", ""))
            lines.append(f"| {name} | {_show(value)} | {unit} | {meaning} |")
        lines.append(f"\n{count(self.info.get('frames'), 'frame')} at {self.info.get('fps')} fps, "
                     f"{self.info.get('width')}x{self.info.get('height')}.")
        lines.extend(f"- {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready: non-finite numbers become strings ("inf") or None (NaN: not measured)."""
        return {"metrics": {k: _json_num(v) for k, v in self.metrics.items()},
                "per_frame": {k: [_json_num(v) for v in vs] for k, vs in self.per_frame.items()},
                "notes": list(self.notes), "info": dict(self.info)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def plot(self) -> torch.Tensor:
        """IMAGE [1, H, 768, 3]: per-frame PSNR, SSIM, LPIPS (full frame blue, head orange) and
        landmark distance (face blue, mouth orange) when measured; sample frames real above rendered."""
        from ..adapt.report import LINE_COLOUR, PANEL_HEIGHT, PANEL_WIDTH, SECOND_COLOUR, figure, frame_strip, plot_panel

        frames = self.info.get("frame_indices") or list(range(self.info.get("frames", 0)))
        panels = []
        for a, b, title in (("psnr", "head_psnr", "PSNR dB per frame"), ("ssim", "head_ssim", "SSIM per frame"),
                            ("lpips", "head_lpips", "LPIPS per frame"), ("lmd_face", "lmd_mouth", "landmark distance px")):
            if a not in self.per_frame:
                continue
            series = [(frames, self.per_frame[a], LINE_COLOUR)]
            if b in self.per_frame:
                series.append((frames, self.per_frame[b], SECOND_COLOUR))
            panels.append(plot_panel(series, height=PANEL_HEIGHT, width=PANEL_WIDTH,
                                     title=title + (" (mouth: orange)" if a == "lmd_face" else " (head: orange)")))
        strip = frame_strip(*self.strip, PANEL_WIDTH * 2) if self.strip is not None else None
        return figure(panels, strip)


def _show(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4g}")


def _json_num(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def as_float_images(frames: torch.Tensor, name: str) -> torch.Tensor:
    """IMAGE [n, H, W, 3] (float 0..1 or uint8) -> float [n, 3, H, W] in 0..1."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise InputError(f"evaluate: {name} must be frames [N, H, W, 3] (an IMAGE batch), got {list(frames.shape)}")
    x = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
    return x.permute(0, 3, 1, 2).clamp(0, 1)


def _uint8(x: torch.Tensor) -> torch.Tensor:
    """float [n, 3, H, W] 0..1 -> uint8 [n, H, W, 3]."""
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@dataclass
class Chunk:
    """One chunk of frames to compare: float [n, 3, H, W] in 0..1 each, optional reference head
    masks [n, H, W] and landmarks [n, 478, 3] (+ detected [n])."""

    rendered: torch.Tensor
    reference: torch.Tensor
    masks: Optional[torch.Tensor] = None
    ref_points: Optional[tuple[torch.Tensor, torch.Tensor]] = None


def _face_boxes(n: int, size: tuple[int, int], found: list[tuple[torch.Tensor, torch.Tensor]],
                masks: Optional[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Face boxes [n, 4] (x0, y0, x1, y1) for the SyncNet and CSIM crops: the box of the first
    detected landmark set in ``found`` (face-mesh points), else of the head mask, else the whole
    frame; with the number of frames that fell back to the whole frame."""
    h, w = size
    boxes = torch.tensor([[0.0, 0.0, float(w), float(h)]]).repeat(n, 1)
    have = torch.zeros(n, dtype=torch.bool)
    if masks is not None:
        mb = M.head_boxes(masks).float()
        ok = (mb[:, 2] > mb[:, 0]) & (mb[:, 3] > mb[:, 1])
        boxes[ok], have = mb[ok], ok
    for points, detected in reversed(found):  # the first set wins
        xy = points[:, :M.NUM_MESH_LANDMARKS, :2].float()
        mesh = torch.cat([xy.amin(1), xy.amax(1)], 1)
        ok = detected.bool() & (mesh[:, 2] > mesh[:, 0]) & (mesh[:, 3] > mesh[:, 1])
        boxes[ok], have = mesh[ok], have | ok
    return boxes, int((~have).sum())


class _Accumulator:
    def __init__(self, total: int, lpips, landmarker, strip_at: set[int], sync=None, embedder=None):
        self.total, self.lpips, self.landmarker, self.strip_at = total, lpips, landmarker, strip_at
        self.sync, self.embedder, self.whole_frame = sync, embedder, 0
        self.per_frame: dict[str, list[torch.Tensor]] = {}
        self.points: dict[str, list[torch.Tensor]] = {"pred": [], "pred_ok": [], "ref": [], "ref_ok": []}
        self.strip_real: list[torch.Tensor] = []
        self.strip_fake: list[torch.Tensor] = []
        self.done, self.size = 0, None
        self.notes: list[str] = []

    def add(self, c: Chunk) -> None:
        if c.rendered.shape[0] != c.reference.shape[0]:
            raise InputError(f"evaluate: a chunk has {c.rendered.shape[0]} rendered and {c.reference.shape[0]} reference frames")
        ref, masks = c.reference, c.masks
        if ref.shape[-2:] != c.rendered.shape[-2:]:  # compare at the rendered size
            ref = F.interpolate(ref, size=c.rendered.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            if masks is not None:
                masks = F.interpolate(masks[:, None].float(), size=c.rendered.shape[-2:], mode="nearest")[:, 0] > 0.5
            if "reference resized" not in " ".join(self.notes):
                self.notes.append(f"reference resized from {list(c.reference.shape[-2:])} to the rendered "
                                  f"{list(c.rendered.shape[-2:])} before comparing.")
        self.size = tuple(c.rendered.shape[-2:])
        boxes = M.head_boxes(masks) if masks is not None else None
        for k, v in M.image_metrics(c.rendered, ref, boxes=boxes, lpips=self.lpips).items():
            self.per_frame.setdefault(k, []).append(v)
        faces = []
        if self.landmarker is not None:
            pred = self.landmarker.detect(_uint8(c.rendered), video=False)
            self.points["pred"].append(pred.points)
            self.points["pred_ok"].append(pred.detected)
            if c.ref_points is not None and c.reference.shape[-2:] == c.rendered.shape[-2:]:
                pts, ok = c.ref_points
            else:
                found = self.landmarker.detect(_uint8(ref), video=False)
                pts, ok = found.points, found.detected
            self.points["ref"].append(pts.float())
            self.points["ref_ok"].append(ok.bool())
            faces = [(pred.points, pred.detected), (pts, ok)]
        elif c.ref_points is not None and c.reference.shape[-2:] == c.rendered.shape[-2:]:
            faces = [c.ref_points]
        if self.sync is not None or self.embedder is not None:
            self._face_metrics(c.rendered, ref, faces, masks)
        for i in range(c.rendered.shape[0]):
            if self.done + i in self.strip_at:
                self.strip_real.append(ref[i].permute(1, 2, 0))
                self.strip_fake.append(c.rendered[i].permute(1, 2, 0))
        self.done += c.rendered.shape[0]

    def _face_metrics(self, rendered: torch.Tensor, ref: torch.Tensor, faces, masks) -> None:
        boxes, whole = _face_boxes(rendered.shape[0], tuple(rendered.shape[-2:]), faces, masks)
        self.whole_frame += whole
        if self.sync is not None:
            from .syncnet import face_crops

            self.sync.add(face_crops(rendered, boxes))
        if self.embedder is not None:
            from .face_embedding import csim

            self.per_frame.setdefault("csim", []).append(csim(self.embedder, rendered, ref, boxes))

    def result(self, fps: float, notes: list[str], info: dict, audio: Optional[torch.Tensor] = None) -> Evaluation:
        per_frame = {k: torch.cat(v) for k, v in self.per_frame.items()}
        summary: dict[str, float] = {}
        for k, v in per_frame.items():
            finite_or_inf = v[~v.isnan()]
            summary[k] = float(finite_or_inf.mean()) if finite_or_inf.numel() else math.nan
        if self.sync is not None:
            self._sync_summary(summary, notes, audio, info)
        if self.whole_frame and (self.sync is not None or self.embedder is not None):
            notes.append(f"SyncNet / CSIM face crops: no face box (landmarks or head mask) in {self.whole_frame} of "
                         f"{count(self.done, 'frame')}; the whole frame was used there (turn landmarks on for face boxes).")
        if self.landmarker is not None and self.points["pred"]:
            pred, pred_ok = torch.cat(self.points["pred"]), torch.cat(self.points["pred_ok"])
            ref, ref_ok = torch.cat(self.points["ref"]), torch.cat(self.points["ref_ok"])
            both = pred_ok & ref_ok
            lmd = M.landmark_distance(pred, ref, both)
            per_frame.update(lmd)
            for k, v in lmd.items():
                summary[k] = float(v[both].mean()) if both.any() else math.nan
            summary["blink_rate"], summary["blink_rate_reference"] = M.blink_rate(pred, pred_ok, fps), M.blink_rate(ref, ref_ok, fps)
            for k, v in M.pose_jitter(pred, pred_ok).items():
                summary[k] = v
            for k, v in M.pose_jitter(ref, ref_ok).items():
                summary[k + "_reference"] = v
            if not bool(both.all()):
                notes.append(f"landmarks: a face was found in {int(pred_ok.sum())}/{len(pred_ok)} rendered and "
                             f"{int(ref_ok.sum())}/{len(ref_ok)} reference frames; distances use frames with both.")
        if "head_psnr" not in per_frame:
            notes.append("head-region metrics: not measured (no head masks; pass an identity or head masks).")
        if math.isnan(summary.get("lpips", math.nan)):
            notes.append("LPIPS: not measured (no LPIPS network, or frames under 31 pixels).")
        strip = (torch.stack(self.strip_real), torch.stack(self.strip_fake)) if self.strip_real else None
        info = dict(info, frames=self.done, fps=fps, height=self.size[0] if self.size else None,
                    width=self.size[1] if self.size else None)
        return Evaluation(summary, {k: [float(x) for x in v] for k, v in per_frame.items()}, self.notes + notes, info, strip)


    def _sync_summary(self, summary: dict, notes: list[str], audio: Optional[torch.Tensor], info: dict) -> None:
        from ..errors import MimicTalkError

        try:
            r = self.sync.result(audio)
        except MimicTalkError as e:
            notes.append(f"{SYNC_WHAT}: not measured; {_first_line(e)}")
            return
        summary.update(lse_d=r.lse_d, lse_c=r.lse_c, sync_offset=float(r.offset))
        info["sync_windows"], info["sync_mean_distance_by_shift"] = r.windows, r.mean_distance


def _sync_scorer(syncnet, audio, fps: float, notes: list[str], blocked: Optional[str] = None):
    """A SyncScorer when SyncNet can run (model, audio, 25 fps, not ``blocked``), else None with a
    note why."""
    from .syncnet import FPS, SyncScorer

    if syncnet is None:
        return None
    why = blocked or ("no audio given (connect the audio the frames were rendered from)" if audio is None
                      else f"SyncNet needs 25 fps frames, these are {fps:g} fps" if abs(fps - FPS) > 1e-3 else None)
    if why:
        notes.append(f"{SYNC_WHAT}: not measured; {why}.")
        return None
    return SyncScorer(syncnet)


def _run(chunks: Iterable[Chunk], total: int, *, fps: float, lpips, landmarker, landmark_note: Optional[str],
         manifest, info: dict, on_step: Optional[ProgressFn], syncnet=None, embedder=None,
         audio: Optional[torch.Tensor] = None, model_notes: bool = True, sync_blocked: Optional[str] = None) -> Evaluation:
    if total < 1:
        raise InputError("evaluate: there are no frames to compare")
    strip_at = set(torch.linspace(0, total - 1, min(STRIP_FRAMES, total)).round().long().tolist())
    notes = [landmark_note] if landmark_note else []  # "": the caller reported it
    if model_notes:  # False: the caller (load_metric_models) said what is missing
        notes += [f"{what}: not measured (no {model} given; get it with: python -m mimictalk_lib.download fetch {asset})."
                  for what, model, asset, given in ((SYNC_WHAT, "SyncNet", "syncnet", syncnet),
                                                    (CSIM_WHAT, "face-embedding network", "face_embedding", embedder))
                  if given is None]
    acc = _Accumulator(total, lpips, landmarker, strip_at, _sync_scorer(syncnet, audio, fps, notes, sync_blocked), embedder)
    for chunk in chunks:
        acc.add(chunk)
        report(on_step, acc.done, total)
    return acc.result(fps, notes, info, audio)


def identity_audio(identity) -> Optional[str]:
    """The identity's source video (its ``meta['source']``) when that file still exists and has an
    audio track: the clip's own speech for LSE-D / LSE-C in :func:`evaluate_identity`; else None."""
    from ..errors import MimicTalkError
    from ..video import open_audio

    source = identity.meta.get("source")
    if not isinstance(source, str) or not os.path.isfile(source):
        return None
    try:
        return source if open_audio(source) is not None else None
    except MimicTalkError:
        return None


def audio_16k(audio: Any, start_frame: int = 0, fps: float = IDENTITY_FPS) -> tuple[Optional[torch.Tensor], Optional[str]]:
    """(mono 16 kHz audio [T] from frame ``start_frame`` on, None) from anything ``a2m.load_audio``
    reads (ComfyUI AUDIO, Audio, path); (None, why) when that audio cannot be used (silent, empty,
    unreadable: LSE is then a note, the other metrics still run); (None, None) for no audio."""
    if audio is None:
        return None, None
    from ..a2m.audio import load_audio

    try:
        wave = load_audio(audio)
    except InputError as e:
        return None, f"the audio cannot be used ({_first_line(e)})"
    return wave[int(round(start_frame / fps * 16000)):], None


def evaluate(
    rendered: torch.Tensor,
    reference: torch.Tensor,
    *,
    head_masks: Optional[torch.Tensor] = None,
    reference_landmarks: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    lpips=None,
    landmarker=None,
    landmark_note: Optional[str] = None,
    fps: float = 25.0,
    audio: Any = None,
    syncnet=None,
    face_embedder=None,
    model_notes: bool = True,
    manifest=None,
    on_step: Optional[ProgressFn] = None,
) -> Evaluation:
    """Compare ``rendered`` with ``reference`` frame by frame (IMAGE [N, H, W, 3], float 0..1 or
    uint8; the reference is resized to the rendered size when they differ; with different frame
    counts the first min(N, M) are compared, with a note). ``head_masks`` [M, H', W'] of the
    reference give the head-region metrics; ``reference_landmarks`` = (points [M, 478, 3],
    detected [M]) spare detecting them again; ``lpips``: :class:`~mimictalk_lib.adapt.lpips.LPIPS`
    (None: no LPIPS); ``landmarker``: a :class:`~mimictalk_lib.identity.landmarks.Landmarker` (None:
    no landmark metrics, ``landmark_note`` says why). ``audio`` (ComfyUI AUDIO, Audio, path; it
    starts with the first frame) and ``syncnet`` (:func:`~.syncnet.load_syncnet`) give LSE-D / LSE-C;
    ``face_embedder`` (:func:`~.face_embedding.load_face_embedder`) gives CSIM; a missing one is
    a note (``model_notes=False``: the caller noted it)."""
    n = min(rendered.shape[0], reference.shape[0])
    notes_info = {}
    if rendered.shape[0] != reference.shape[0]:
        notes_info["frame_count_note"] = (f"{rendered.shape[0]} rendered and {reference.shape[0]} reference frames: "
                                          f"the first {n} are compared")
    if landmarker is None and landmark_note is None:
        landmark_note = "landmark metrics (distance, blink rate, pose jitter): not measured (no landmarker given)."

    def chunks() -> Iterator[Chunk]:
        for s in range(0, n, CHUNK):
            e = min(s + CHUNK, n)
            yield Chunk(as_float_images(rendered[s:e], "rendered"), as_float_images(reference[s:e], "reference"),
                        head_masks[s:e] if head_masks is not None else None,
                        (reference_landmarks[0][s:e], reference_landmarks[1][s:e]) if reference_landmarks else None)

    wave, blocked = audio_16k(audio) if syncnet is not None else (None, None)
    result = _run(chunks(), n, fps=fps, lpips=lpips, landmarker=landmarker, landmark_note=landmark_note,
                  manifest=manifest, info={}, on_step=on_step, syncnet=syncnet, embedder=face_embedder,
                  audio=wave, model_notes=model_notes, sync_blocked=blocked)
    if notes_info:
        result.notes.insert(0, notes_info["frame_count_note"])
    return result


def identity_frames(identity, frames: str = "held_out", *, holdout_fraction: float = 0.1, holdout_min_frames: int = 25):
    """Frame indices of ``identity`` to evaluate: 'all', or 'held_out' (the validation slice
    adaptation leaves out, :func:`~mimictalk_lib.adapt.validation.holdout_split`)."""
    from ..adapt.validation import holdout_split

    if frames == "all":
        return torch.arange(identity.num_frames)
    if frames != "held_out":
        raise InputError(f"evaluate: frames must be 'all' or 'held_out', got {frames!r}")
    split = holdout_split(identity.num_frames, holdout_fraction, holdout_min_frames)
    if split is None:
        raise InputError(f"evaluate: the identity has {count(identity.num_frames, 'frame')}, too few for a held-out slice "
                         f"(at least {2 * holdout_min_frames}); use frames='all'")
    return torch.tensor(list(split[1]))


def evaluate_identity(
    renderer: Any,
    face_model,
    identity,
    *,
    rendered: Optional[torch.Tensor] = None,
    frames: str = "held_out",
    lpips=None,
    landmarker=None,
    landmark_note: Optional[str] = None,
    chunk_size: int = 4,
    audio: Any = None,
    syncnet=None,
    face_embedder=None,
    model_notes: bool = True,
    manifest=None,
    on_step: Optional[ProgressFn] = None,
) -> Evaluation:
    """Compare frames of ``identity`` ('all' or the 'held_out' slice) — background replaced by the
    plate, as adaptation's targets; head masks from its segmentation; its stored landmarks — with
    ``rendered`` frames (IMAGE [N, H, W, 3]; the first min(N, frames) are compared), or, when
    ``rendered`` is None, with ``renderer`` (personalised, or base = one-shot from the identity's
    first frame) re-rendering the identity's own expressions and head poses there (eye blinks
    off: the reference's own blinks are in its expressions). ``audio``: the identity clip's audio
    (from its first frame; cut to the compared frames) for LSE-D / LSE-C with ``syncnet``;
    ``face_embedder`` gives CSIM (see :func:`evaluate`)."""
    idx = identity_frames(identity, frames)
    if landmarker is None and landmark_note is None:
        landmark_note = "landmark metrics (distance, blink rate, pose jitter): not measured (no landmarker given)."
    notes = []
    if rendered is not None:
        if rendered.shape[0] != len(idx):
            notes.append(f"{rendered.shape[0]} rendered frames and {len(idx)} identity frames ({frames}): "
                         f"the first {min(rendered.shape[0], len(idx))} are compared")
        idx = idx[:rendered.shape[0]]
        parts = ((s, rendered[s:s + CHUNK]) for s in range(0, len(idx), CHUNK))
    else:
        from ..pipeline import build_session, iter_talking_head

        if renderer is None or face_model is None:
            raise InputError("evaluate_identity: pass rendered frames, or a renderer and the face model to render them")
        session = build_session(renderer, face_model, identity, identity.exp[idx].float(),
                                pose=(identity.euler[idx].float(), identity.trans[idx].float()),
                                map_to_init_pose=False, blink="none")
        parts = ((c.start, c.images) for c in iter_talking_head(session, chunk_size=chunk_size))

    def chunks() -> Iterator[Chunk]:
        for start, images in parts:
            sel = idx[start: start + images.shape[0]]
            ref = as_float_images(identity.com_images(sel), "identity frames")
            yield Chunk(as_float_images(images, "rendered"), ref, identity.head_masks(sel),
                        (identity.landmarks[sel].float(), torch.ones(len(sel), dtype=torch.bool)))

    wave, blocked = None, None
    if syncnet is not None and audio is not None:
        positions = identity.meta.get("frame_positions")  # each frame's place on the clip's 25 fps timeline
        timeline = torch.as_tensor(positions)[idx] if isinstance(positions, list) and len(positions) == identity.num_frames else idx
        if len(timeline) > 1 and not bool((timeline[1:] - timeline[:-1] == 1).all()):
            blocked = ("frames were dropped from the clip inside the compared range (no face there), so the frames "
                       "no longer follow the audio")
        else:
            wave, blocked = audio_16k(audio, int(timeline[0]))
    result = _run(chunks(), len(idx), fps=IDENTITY_FPS, lpips=lpips, landmarker=landmarker,
                  landmark_note=landmark_note, manifest=manifest,
                  info={"frame_indices": idx.tolist(), "frames_mode": frames}, on_step=on_step,
                  syncnet=syncnet, embedder=face_embedder, audio=wave, model_notes=model_notes, sync_blocked=blocked)
    result.notes[:0] = notes
    return result


# --- the optional models, found through the manifest ---------------------------------------------


def load_optional_models(model_dirs=None, *, perceptual: bool = True, landmarks: bool = True,
                         allow_download: bool = False, device: torch.device | str = "cpu",
                         on_step: Optional[ProgressFn] = None) -> tuple[Any, Any, list[str]]:
    """(LPIPS network or None, landmarker or None, notes): the ``lpips_alex`` weights and the
    MediaPipe face landmarker (``mediapipe_face_landmarker``, optional ``mediapipe`` package) from
    the model folders (default :func:`~mimictalk_lib.download.default_model_dirs`). What is
    missing becomes a note saying how to get it, not an error."""
    from ..errors import MimicTalkError
    from ..models import LANDMARKER_ASSET, asset_file, load_lpips_from

    notes, lpips, landmarker = [], None, None
    if perceptual:
        try:
            lpips = load_lpips_from(model_dirs, device, allow_download=allow_download, on_step=on_step)
        except MimicTalkError as e:
            notes.append(f"LPIPS: not measured; its weights are missing ({_first_line(e)}). "
                         "Get them with: python -m mimictalk_lib download fetch lpips_alex")
    if landmarks:
        try:
            from ..identity.landmarks import MediaPipeLandmarker

            landmarker = MediaPipeLandmarker(asset_file(LANDMARKER_ASSET, model_dirs, allow_download=allow_download,
                                                        on_step=on_step))
        except MimicTalkError as e:
            notes.append(f"landmark metrics (distance, blink rate, pose jitter): not measured; {_first_line(e)}")
    return lpips, landmarker, notes


def load_metric_models(model_dirs=None, *, sync: bool = True, identity: bool = True, allow_download: bool = False,
                       device: torch.device | str = "cpu", on_step: Optional[ProgressFn] = None) -> tuple[Any, Any, list[str]]:
    """(SyncNet or None, face-embedding network or None, notes): the manifest's ``syncnet`` and
    ``face_embedding`` weights from the model folders, downloaded when ``allow_download``. What is
    missing or off becomes a note saying how to get it, not an error."""
    from ..download import ensure_asset
    from ..errors import MimicTalkError
    from ..manifest import load_manifest
    from .face_embedding import FACE_EMBEDDING_ASSET, load_face_embedder
    from .syncnet import SYNCNET_ASSET, load_syncnet

    out, notes = [], []
    for wanted, what, asset, load in ((sync, SYNC_WHAT, SYNCNET_ASSET, load_syncnet),
                                      (identity, CSIM_WHAT, FACE_EMBEDDING_ASSET, load_face_embedder)):
        if not wanted:
            out.append(None)
            notes.append(f"{what}: off.")
            continue
        try:
            folder = ensure_asset(asset, model_dirs, allow_download=allow_download, on_step=on_step)
            out.append(load(folder / load_manifest().get(asset).files[0].name, device))
        except MimicTalkError as e:
            out.append(None)
            notes.append(f"{what}: not measured; its weights are missing or unusable ({_first_line(e).rstrip('.')}). "
                         f"Get them with: python -m mimictalk_lib.download fetch {asset}")
    return out[0], out[1], notes


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
