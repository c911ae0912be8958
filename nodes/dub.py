"""Dub Video: the user's own video (core VIDEO, or IMAGE batch + fps) + new speech -> that video
at its own size and frame rate with the face saying the speech (``mimictalk_lib.dub.dub_video``),
written progressively into the output folder."""

from __future__ import annotations

from ..mimictalk_lib.errors import InputError
from . import host
from .render import RAY_OFF, part_and_ray_inputs
from .types import Audio2Motion, FaceModel, Identity, Renderer

io, ui = host.io, host.ui


class DubVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..mimictalk_lib.a2m import DEFAULT_STEPS
        from ..mimictalk_lib.dub.dub import POSE_MODES
        from ..mimictalk_lib.dub.pasteback import COLOUR_MODES
        from ..mimictalk_lib.dub.timeline import LENGTH_MODES
        from ..mimictalk_lib.video import DEFAULT_CRF

        return io.Schema(
            node_id="MimicTalkDubVideo",
            display_name="MimicTalk Dub Video",
            category="MimicTalk/render",
            description=("Dubs a video: the same video (resolution, frame rate, background, body) with the face saying "
                         "the new speech. The identity must be prepared from this video (or left unconnected: the node then "
                         "prepares a light one while streaming the video, for long videos); the renderer is a "
                         "personalised one (Apply Adapter) or a base renderer used one-shot. Mouth and expression "
                         "come from the speech (ICS-A2M, the clip as style prompt), head pose from the video; frames "
                         "without a face are kept as they are. Written to the output folder while rendering."),
            inputs=[
                Renderer.Input("renderer", tooltip="A personalised renderer, or a base renderer (one-shot)."),
                FaceModel.Input("face_model", tooltip="The BFM face model."),
                Audio2Motion.Input("a2m", tooltip="The motion model from Load Audio-to-Motion."),
                io.Audio.Input("audio", tooltip="The new speech; the output is as long as it."),
                io.Combo.Input("length", options=list(LENGTH_MODES), default="pingpong",
                               tooltip="When the speech outlasts the video: pingpong (forwards then backwards), loop, "
                                       "or trim (stop at the video's end, cutting the speech)."),
                io.Combo.Input("pose", options=list(POSE_MODES), default="source",
                               tooltip="source: the head follows the video's own head; static: the first frame's pose."),
                io.Combo.Input("colour", options=list(COLOUR_MODES), default="mean_std",
                               tooltip="mean_std: match the rendered face's colours to the video; none: as rendered."),
                io.Int.Input("chunk_size", default=4, min=1, max=64, tooltip="Frames rendered at once."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=2, max=200, tooltip="ODE steps of the motion sampler."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seed of the motion sampler."),
                io.String.Input("filename_prefix", default="MimicTalk/dub",
                                tooltip="Output file name prefix; '/' makes subfolders of the output folder."),
                io.Int.Input("crf", default=DEFAULT_CRF, min=0, max=51, tooltip="H.264 quality (lower is better)."),
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.01,
                               tooltip="Frame rate of 'images' (a connected 'video' brings its own)."),
                Identity.Input("identity", optional=True,
                               tooltip="The identity prepared from this video (Prepare Identity). Leave it unconnected "
                                       "for long videos: the node then prepares a light identity itself while "
                                       "streaming the video (memory flat in its length; MediaPipe models as in "
                                       "Prepare Identity)."),
                io.Video.Input("video", optional=True, tooltip="The video to dub (e.g. from Load Video)."),
                io.Image.Input("images", optional=True, tooltip="Or its frames (with fps), or one photo."),
                io.Audio.Input("source_audio", optional=True,
                               tooltip="The soundtrack of 'images' for the talking-style prompt (a video brings its own)."),
                *part_and_ray_inputs(
                    "First output frame to write (0 = the start). A part equals the same frames of the whole dub "
                    "(motion, blinks and poses are planned for the whole speech) and carries its stretch of the "
                    "speech, so several ComfyUI instances can each dub a part (docs/scale.md).",
                    "How many output frames from start_frame (0 = to the end of the dub)."),
            ],
            outputs=[
                io.Video.Output(display_name="video", tooltip="The dubbed video (saved in the output folder)."),
                io.String.Output(display_name="report", tooltip="Frames written, frames without a face, loops."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, renderer, face_model, a2m, audio, length, pose, colour, chunk_size, steps, seed,
                filename_prefix, crf, fps, identity=None, video=None, images=None, source_audio=None, start_frame=None,
                frame_count=None, ray_address=None):
        import contextlib

        import torch

        from ..mimictalk_lib.dub import dub_video

        if (images is None) == (video is None):
            raise InputError("Dub Video: connect exactly one of 'video' or 'images' (the video to dub)")
        fps_in = float(fps)
        if video is not None:
            source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
            if not isinstance(source, str):  # an in-memory video: its frames
                parts = video.get_components()
                source, fps_in = parts.images, float(parts.frame_rate)
                source_audio = source_audio if source_audio is not None else parts.audio
        else:
            source = images
        tools = {}
        if identity is None:  # the light identity, prepared while streaming the source (dub.prepare_dub_identity)
            tools = _face_tools(face_model)
            height, width = _size_of(source)
        else:
            height, width = int(identity.meta.get("source_size", [0, 0])[0]), int(identity.meta.get("source_size", [0, 0])[1])
        folder, stem, counter, subfolder = host.save_path(filename_prefix, width, height)
        name = f"{stem}_{counter:05}_.mp4"
        metadata = None
        if host.metadata_enabled():
            metadata = dict(cls.hidden.extra_pnginfo or {})
            if cls.hidden.prompt is not None:
                metadata["prompt"] = cls.hidden.prompt
        net, hubert = a2m.modules()
        offload = contextlib.nullcontext()
        if (ray_address or "").strip():  # the face frames render on a Ray cluster, pasted back here (docs/scale.md)
            from ..mimictalk_lib.distributed.offload import RayChunks

            offload = RayChunks(renderer.renderer, face_model, address=ray_address.strip(),
                                who="MimicTalk Dub Video ray_address", off=RAY_OFF,
                                check=host.throw_if_interrupted)
        else:
            renderer.module()  # onto the compute device
        with offload as render_chunks:
            result = dub_video(
                source, audio, renderer=renderer.renderer, face_model=face_model, identity=identity, a2m=net, hubert=hubert,
                fps=fps_in, output=folder / name, length=length, pose=pose, colour=colour, chunk_size=chunk_size,
                seed=seed, style_audio=source_audio, crf=crf, metadata=metadata or None, motion_options={"steps": steps},
                on_step=host.progress(1), prepare_options={"device": host.torch_device()} if tools else None,
                render_chunks=render_chunks, start_frame=start_frame or 0, frame_count=frame_count or 0, **tools,
            )
        return io.NodeOutput(host.video_from_file(folder / name), result.report.summary(),
                             ui=ui.PreviewVideo([ui.SavedResult(name, subfolder, io.FolderType.output)]))


def _face_tools(face_model) -> dict:
    """MediaPipe landmarker / segmenter files for the light identity (as Prepare Identity gets them)."""
    from ..mimictalk_lib import download
    from ..mimictalk_lib.face import check_face_model_files
    from ..mimictalk_lib.models import BFM_ASSET, mediapipe_files

    if getattr(face_model, "mp468", None) is None:  # fitting needs the MediaPipe-to-BFM map
        check_face_model_files(download.asset_dir(BFM_ASSET, host.model_dirs()), need_mp468=True)
    return mediapipe_files(host.model_dirs(), allow_download=True)


def _size_of(source) -> tuple[int, int]:
    if isinstance(source, str):
        from ..mimictalk_lib.video import probe

        info = probe(source)
        return int(info.height), int(info.width)
    return int(source.shape[1]), int(source.shape[2])


NODES = [DubVideo]
