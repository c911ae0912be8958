"""Dub a video: the user's own video, at its own size and frame rate, with the face saying new speech.

Inputs: the source (a video file, or an IMAGE batch + fps, or one photo), the new speech, a
renderer (personalised adapter, or a base renderer used one-shot from the identity), the identity
prepared from that same source (its crop, per-frame head poses, face segmentation and which
frames had no face), and either ready 25 fps motion or ICS-A2M + HuBERT (the source clip and its
soundtrack are the style prompt).

Per output frame ``k`` (at the source's fps, as many as the audio lasts): the source frame
``timeline.source_indices`` picks (loop / ping-pong / trim), the head pose fitted on that frame,
the expression of the 25 fps motion at time ``k / fps`` (linear), rendered in chunks and pasted
back into the full-resolution source frame (``pasteback``). Frames whose source frame has no face
are written untouched and counted. The output is written progressively (PyAV) or, without a path,
collected as a uint8 batch; only one chunk of full-resolution frames and a bounded window of
decoded source frames are in memory at a time, so memory does not grow with the length.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..errors import InputError
from ..utils import ProgressFn, count, logger, report
from .pasteback import COLOUR_MODES, DEFAULT_FEATHER, CropTransform, blend_mask, paste_back
from .source import open_source
from .timeline import LENGTH_MODES, SourceTrack, output_frames, resample_motion, source_indices, track_from_identity

POSE_MODES = ("source", "static")
"""Head pose of the rendered face: 'source' follows the source frame's fitted pose (the render lines
up with the head it replaces); 'static' keeps the first frame's pose (ICS-A2M predicts expression
only, so there is no pose from the motion model)."""


@dataclass
class DubReport:
    """What a dub did."""

    frames: int  # output frames
    fps: float  # output frame rate (= the source's)
    width: int
    height: int
    audio_seconds: float
    source_frames: int  # source frames the dub draws from
    no_face_frames: int  # output frames kept untouched because their source frame has no face
    length_mode: str
    passes: float  # how many times the source was played (output frames / source frames)
    variable_frame_rate: bool = False
    path: Optional[str] = None
    warnings: list = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    def summary(self) -> str:
        text = (f"dubbed {count(self.frames, 'frame')} ({self.duration:.2f} s) at {self.fps:g} fps, {self.width}x{self.height}; "
                f"source {count(self.source_frames, 'frame')} played {self.passes:.2f}x ({self.length_mode}); "
                f"{count(self.no_face_frames, 'frame')} without a face kept untouched")
        return text + "".join(f"; {w}" for w in self.warnings)

    def as_dict(self) -> dict:
        return asdict(self) | {"duration": self.duration}


@dataclass
class DubResult:
    report: DubReport
    frames: Optional[torch.Tensor] = None  # uint8 [T, H, W, 3] when no output path was given
    audio: Any = None  # the speech (an Audio; 16 kHz mono when read from a file for an output path)


def _as_audio(audio, stream: bool = False):
    """The speech as an Audio; ``stream``: a file is read as the models read it (16 kHz mono, 3-6x
    less than its own rate), its own samples being muxed from the file by the writer."""
    from ..video import Audio, as_audio, read_audio

    if isinstance(audio, (str, os.PathLike)):
        if stream:
            from ..a2m.audio import load_audio

            return Audio(load_audio(audio)[None], 16000)
        got = read_audio(audio)
        if got is None:
            raise InputError(f"audio: '{os.fspath(audio)}' has no audio track")
        return got
    got = as_audio(audio)
    if not isinstance(got, Audio):
        raise InputError("audio: the speech to dub is missing")
    return got


STYLE_SECONDS = 20.0
"""Longest stretch of the source (its start) used as ICS-A2M's style prompt: every sampling window
attends to the whole prompt, so a longer one costs memory and time in proportion to the source's
length without changing the style (5-20 s is what the style needs)."""


def _style_audio(source, style_audio, seconds: Optional[float] = None):
    """The first ``seconds`` (default ``STYLE_SECONDS``) of the source's soundtrack (ICS-A2M's style
    prompt pairs it with the clip's expressions); only that much is decoded."""
    from ..video import Audio, as_audio, open_audio

    seconds = STYLE_SECONDS if seconds is None else seconds
    if style_audio is not None:
        got = as_audio(style_audio)
        return Audio(got.waveform[..., : int(round(seconds * got.sample_rate))], got.sample_rate) if got else None
    if not isinstance(source, (str, os.PathLike)):
        return None
    src = open_audio(source)
    if src is None:
        return None
    need, parts, n = int(round(seconds * src.rate)), [], 0
    chunks = src.chunks()
    for chunk in chunks:
        parts.append(chunk[:, : need - n])
        n += parts[-1].shape[1]
        if n >= need:
            chunks.close()  # stop decoding; closes the file
            break
    return Audio(torch.from_numpy(np.concatenate(parts, 1)) if parts else torch.zeros(src.channels, 0), src.rate)


def _motion(motion, a2m, hubert, audio, identity, source, style_audio, generator, motion_options) -> torch.Tensor:
    if motion is not None:
        motion = torch.as_tensor(motion).detach().float().cpu()
        return motion[0] if motion.dim() == 3 and motion.shape[0] == 1 else motion
    if a2m is None or hubert is None:
        raise InputError("dub_video: give either motion (25 fps expressions [T, 64]) or the a2m and hubert models")
    from ..a2m import extract_audio_features
    from ..identity.style import style_prompt_from_identity
    from ..pipeline import audio_to_motion

    style: Any = identity
    s_audio = _style_audio(source, style_audio)
    if not identity.is_photo and (s_audio is None or s_audio.num_samples == 0):
        logger.info("the source has no soundtrack for the ICS-A2M style prompt; using its first expression as the prompt")
        style = identity.exp[0]
    elif not identity.is_photo:  # the start of the clip, at most STYLE_SECONDS (see there)
        features = extract_audio_features(s_audio, hubert, with_f0=bool(a2m.cfg.use_aux_features))
        style = style_prompt_from_identity(identity, features, max_frames=int(STYLE_SECONDS * 25))
    return audio_to_motion(a2m, hubert, audio.to_comfy(), style=style, generator=generator, **motion_options)


def _check_source_matches(identity, src) -> None:
    hw = identity.meta.get("source_size")
    if hw is not None and (int(hw[0]), int(hw[1])) != (src.height, src.width):
        raise InputError(
            f"the identity was prepared from a {hw[1]}x{hw[0]} source but this video is {src.width}x{src.height}; "
            "prepare the identity from the video being dubbed."
        )


def _masks(identity, frames: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [n, R, R] face skin and head (hair, face, accessories) of identity frames ``frames``,
    at the render side."""
    from ..identity.segmentation import FACE_SKIN, HEAD_CLASSES, class_mask

    seg = identity.segmaps[frames]
    if seg.shape[-1] != size:
        seg = torch.nn.functional.interpolate(seg[:, None].float(), size=(size, size), mode="nearest")[:, 0].to(seg.dtype)
    return seg == FACE_SKIN, class_mask(seg, HEAD_CLASSES)


def dub_video(
    source: Any,
    audio: Any,
    *,
    renderer: Any,
    face_model: Any,
    identity: Any = None,
    motion: Optional[torch.Tensor] = None,
    a2m: Any = None,
    hubert: Any = None,
    fps: Optional[float] = None,
    output: Optional[Union[str, os.PathLike]] = None,
    length: str = "pingpong",
    pose: str = "source",
    colour: str = "mean_std",
    feather: float = DEFAULT_FEATHER,
    blink: str = "none",
    chunk_size: int = 4,
    seed: int = 0,
    style_audio: Any = None,
    crf: float = 19,
    metadata: Optional[dict] = None,
    motion_options: Optional[dict] = None,
    landmarker: Any = None,
    segmenter: Any = None,
    prepare_options: Optional[dict] = None,
    on_step: Optional[ProgressFn] = None,
    render_chunks: Optional[Any] = None,
    start_frame: int = 0,
    frame_count: Optional[int] = None,
) -> DubResult:
    """Dub ``source`` with ``audio``; see the module docstring.

    ``source``: a video/image file path, or frames (IMAGE batch ``[N, H, W, C]``) with ``fps``.
    ``identity``: prepared from this source (``prepare_identity`` / ``prepare_photo_identity``, or
    the light ``dub.prepare_dub_identity``); None: the light identity is prepared here, streaming
    the source (needs ``landmarker`` and ``segmenter``, objects or MediaPipe model paths;
    ``prepare_options`` go to ``prepare_dub_identity``), so memory stays flat in the length.
    ``renderer``: a personalised renderer (adapter applied) or a base renderer (one-shot from the
    identity's first frame). ``length``: 'pingpong' | 'loop' | 'trim' when the audio outlasts the
    source. ``pose``: 'source' | 'static'. ``colour``: 'mean_std' | 'none'. ``blink``: 'none'
    (the eyes follow the motion) | 'period'. ``output``: an mp4 path written progressively (the
    speech muxed in; an existing file there is replaced only once the new one is complete);
    without it the frames are returned (short clips only). ``motion_options`` go to
    ``pipeline.audio_to_motion`` (``steps``, ``cfg_scale``, ``temperature``...).
    ``on_step(done, total)`` after every chunk may raise to cancel. ``render_chunks(identity,
    motion, session_options, chunk_size, start, stop)``: renders the face frames elsewhere (a Ray
    cluster: ``mimictalk_lib.distributed.offload.RayChunks``), yielding the chunks a render here
    would. ``start_frame`` / ``frame_count`` (None or 0: to the end): only output frames
    ``[start, start + count)`` (with their stretch of the speech), equal to the same frames of
    the whole dub (motion, blinks and poses are planned for the whole dub)."""
    from ..pipeline import build_session, iter_talking_head, renderer_model

    for name, value, modes in (("length", length, LENGTH_MODES), ("pose", pose, POSE_MODES), ("colour", colour, COLOUR_MODES)):
        if value not in modes:
            raise InputError(f"dub_video: {name} must be one of {modes}, got {value!r}")
    if identity is None and (landmarker is None or segmenter is None):
        raise InputError("dub_video: give the identity prepared from the source, or the landmarker and segmenter "
                         "to prepare one while streaming it")
    if identity is not None and (not hasattr(identity, "meta") or not hasattr(identity, "segmaps")):
        raise InputError("dub_video: identity must be a prepared identity of the source (prepare_identity)")
    from_file = output is not None and isinstance(audio, (str, os.PathLike))  # the writer streams the file's audio
    speech = _as_audio(audio, stream=from_file)
    src = open_source(source, fps)
    try:
        model = renderer_model(renderer)
        if identity is None:
            options = {"size": int(model.cfg.image_resolution), **(prepare_options or {})}
            identity = _prepare(source, src, face_model, landmarker, segmenter, options, on_step)
        _check_source_matches(identity, src)
        vfr = bool(identity.meta.get("variable_frame_rate"))
        warnings = []
        if vfr:
            warnings.append(f"variable frame rate source: written at a constant {src.fps:g} fps, frames in decode order")
            logger.warning("%s: %s", src.name, warnings[-1])
        n_src = getattr(src, "num_frames", None)
        track = track_from_identity(identity, src.fps, n_src)
        if n_src is not None and track.num_frames > n_src:
            raise InputError(f"the identity covers {track.num_frames} source frames but the batch has {n_src}")
        n_out = output_frames(speech.duration, src.fps)
        idx = source_indices(n_out, track.num_frames, length)
        n_out = len(idx)
        from ..distributed.ranges import check_range

        span = check_range(n_out, start_frame, frame_count, "dub_video start_frame / frame_count") if n_out else (0, 0)
        generator = torch.Generator().manual_seed(int(seed))
        motion25 = _motion(motion, a2m, hubert, speech, identity, source, style_audio, generator, motion_options or {})
        motion_out = resample_motion(motion25, n_out, src.fps)  # [n_out, 64] at the source rate
        has_face = track.has_face[torch.from_numpy(idx)]
        face_out = torch.nonzero(has_face).flatten()  # output frames that are rendered
        report_ = DubReport(
            frames=n_out, fps=src.fps, width=src.width, height=src.height, audio_seconds=speech.duration,
            source_frames=track.num_frames, no_face_frames=int((~has_face).sum()), length_mode=length,
            passes=n_out / track.num_frames, variable_frame_rate=vfr, warnings=warnings,
        )
        logger.info("dub plan: %s", report_.summary())
        frames_iter = _dub_frames(
            src, identity, track, idx, face_out, motion_out, renderer, face_model, model, pose, colour, feather, blink,
            chunk_size, generator, on_step, build_session, iter_talking_head, render_chunks, span,
        )
        if span != (0, n_out):  # a part: its frames, its stretch of the speech
            report_.warnings.append(f"part: frames {span[0]}-{span[1] - 1} of {n_out}")
            report_.frames = span[1] - span[0]
            a, b = (round(f / src.fps * speech.sample_rate) for f in span)
            speech, length = type(speech)(speech.waveform[..., a:b], speech.sample_rate), "fit"
        if output is None:
            frames = torch.cat(list(frames_iter)) if report_.frames else torch.empty(0, src.height, src.width, 3, dtype=torch.uint8)
            return DubResult(report_, frames=frames, audio=speech)
        whole_file = from_file and span == (0, n_out)  # a part muxes its stretch of the speech as read (16 kHz)
        report_.path = str(_write(output, frames_iter, src.fps, audio if whole_file else speech, length, crf, source,
                                  metadata))
        return DubResult(report_, audio=speech)
    finally:
        src.close()


def _prepare(source, src, face_model, landmarker, segmenter, options: dict, on_step):
    """The light identity of the opened source (frames already in memory are not copied again);
    one frame: a photo identity."""
    from ..identity import prepare_photo_identity
    from .identity import prepare_dub_identity

    frames = getattr(src, "frames", None)
    kw = dict(landmarker=landmarker, segmenter=segmenter, face_model=face_model, on_step=on_step, **options)
    if frames is not None and frames.shape[0] == 1:
        kw = {k: v for k, v in kw.items() if k not in ("keep_frames", "chunk_frames", "max_seconds")}
        return prepare_photo_identity(frames, **kw)
    return prepare_dub_identity(source if frames is None else frames, fps=src.fps, **kw)


def _write(output, frames_iter, fps: float, speech, length: str, crf: float, source, metadata=None) -> Path:
    """Write to a temporary name next to ``output`` and move it into place when complete."""
    from ..video import VideoWriter

    out = Path(output)
    if isinstance(source, (str, os.PathLike)) and out.exists() and os.path.samefile(out, source):
        raise InputError(f"dub_video: the output '{out}' is the source video; choose another output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix or '.mp4'}")
    with VideoWriter(tmp, fps, audio=speech, audio_mode="trim" if length == "trim" else "fit", crf=crf,
                     metadata=metadata) as writer:
        for chunk in frames_iter:
            writer.write(chunk)
    os.replace(tmp, out)
    return out


def _dub_frames(src, identity, track: SourceTrack, idx, face_out, motion_out, renderer, face_model, model, pose, colour,
                feather, blink, chunk_size, generator, on_step, build_session, iter_talking_head, render_chunks=None,
                span=None):
    """Yield uint8 [n, H, W, 3] output chunks of output frames ``span`` (default all) in order."""
    from ..distributed.ranges import iter_frame_range

    n_out = len(idx)
    first, stop = span or (0, n_out)
    idx_t = torch.from_numpy(np.asarray(idx)).long()
    size = None
    step = max(1, int(chunk_size))
    next_out = first

    def untouched(until: int):
        nonlocal next_out
        while next_out < until:  # frames without a face: the source as it is, in chunk-sized pieces
            part = idx_t[next_out: min(until, next_out + step)]
            yield src.read(part.numpy())
            next_out += part.numel()
            report(on_step, next_out - first, stop - first)

    lo, hi = (int(v) for v in torch.searchsorted(face_out, torch.tensor([first, stop])))  # face frames in the span
    if hi > lo:
        src_of = idx_t[face_out]
        if pose == "source":
            euler, trans = track.euler[src_of], track.trans[src_of]
        else:
            euler, trans = track.euler[src_of[:1]].expand(len(src_of), 3), track.trans[src_of[:1]].expand(len(src_of), 3)
        options = dict(pose=(euler, trans), map_to_init_pose=False, blink=blink,
                       blink_seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        source = getattr(identity, "subset", identity)
        if render_chunks is not None:  # e.g. on a Ray cluster (mimictalk_lib.distributed.offload.RayChunks)
            chunks = render_chunks(source, motion_out[face_out], options, step, lo, hi)
        else:
            session = build_session(renderer, face_model, source, motion_out[face_out], **options)
            chunks = iter_frame_range(session, lo, hi - lo, chunk_size=step, output_dtype=torch.float32)
        for chunk in chunks:
            n = chunk.images.shape[0]
            outs = face_out[chunk.start: chunk.start + n]
            size = chunk.images.shape[1]
            id_frames = track.identity_frame[idx_t[outs]]
            face, head = _masks(identity, id_frames, size)
            masks = blend_mask(chunk.masks, face, limit=head, feather=feather)
            tfs = [CropTransform.from_meta(identity.meta, size, int(f)) for f in id_frames]
            yield from untouched(int(outs[0]))
            pasted = paste_back(src.read(idx_t[outs].numpy()), chunk.images.permute(0, 3, 1, 2), masks, tfs, colour=colour)
            # runs of consecutive output frames; the no-face frames between runs go out untouched
            breaks = (torch.nonzero(outs.diff() > 1).flatten() + 1).tolist()
            for a, b in zip([0] + breaks, breaks + [n]):
                yield from untouched(int(outs[a]))
                yield pasted[a:b]
                next_out = int(outs[b - 1]) + 1
            report(on_step, next_out - first, stop - first)
    yield from untouched(stop)
