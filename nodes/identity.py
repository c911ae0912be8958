"""Prepare Identity: a talking clip (IMAGE batch + fps, or a VIDEO) or one portrait photo ->
everything adaptation and rendering need about the person (``mimictalk_lib.identity``)."""

from __future__ import annotations

from ..mimictalk_lib.errors import InputError
from ..mimictalk_lib.models import BFM_ASSET, mediapipe_files
from . import host
from .messages import node_terms
from .types import FaceModel, Identity, Renderer

io = host.io


class PrepareIdentity(io.ComfyNode):
    """Frames -> identity (3DMM fit, segmentation, background plate, poses) with a contact sheet."""

    @classmethod
    def define_schema(cls):
        from ..mimictalk_lib.identity import FitSchedule

        return io.Schema(
            node_id="MimicTalkPrepareIdentity",
            display_name="MimicTalk Prepare Identity",
            category="MimicTalk/identity",
            description=("Analyses a short talking clip (for Train Adapter) or one portrait photo (for one-shot "
                         "rendering): face crop, MediaPipe landmarks and segmentation, BFM 3DMM fit, head poses, "
                         "background plate and torso. Connect images (a clip with its fps, or a single photo) or a "
                         "video. Needs the optional mediapipe package; its two model files download automatically."),
            inputs=[
                FaceModel.Input("face_model", tooltip="The BFM face model from Load Face Model."),
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.01,
                               tooltip="Frame rate of the images batch (a video carries its own); clips are resampled to 25 fps."),
                io.Combo.Input("crop", options=["auto", "none"], default="auto",
                               tooltip="auto: find the face and cut a square portrait around it; none: the frames "
                                       "already are square portraits."),
                io.Combo.Input("missing_faces", options=["drop", "interpolate"], default="drop",
                               tooltip="Frames where no face is found (at most 25 %): leave them out, or fill their "
                                       "landmarks in from the neighbours."),
                io.Int.Input("fit_iterations", default=FitSchedule().pose_iters, min=1, max=5000,
                             tooltip="3DMM fitting iterations per stage (upstream: 200). Fewer is faster and less accurate."),
                io.Boolean.Input("auto_download", default=True,
                                 tooltip="Download the MediaPipe face landmarker and segmenter models when missing."),
                io.Image.Input("images", optional=True,
                               tooltip="A clip's frames (a batch, with fps below) or one portrait photo (a batch of 1)."),
                io.Video.Input("video", optional=True, tooltip="A talking clip (e.g. from Load Video); used instead of images."),
                Renderer.Input("renderer", optional=True,
                               tooltip="The renderer the identity is for: frames are prepared at its output size "
                                       "(512 for the official models, the default)."),
            ],
            outputs=[
                Identity.Output(display_name="identity", tooltip="The prepared identity."),
                io.Image.Output(display_name="preview", tooltip="Contact sheet: frames with landmarks, plate, torso, head."),
            ],
        )

    @classmethod
    @node_terms()
    def execute(cls, face_model, fps, crop, missing_faces, fit_iterations, auto_download, images=None, video=None,
                renderer=None):
        from ..mimictalk_lib.identity import (FitSchedule, PrepareBackends, PrepareOptions, contact_sheet,
                                              prepare_identity, prepare_photo_identity)
        from ..mimictalk_lib.identity.frames import FRAME_SIZE
        from ..mimictalk_lib.pipeline import renderer_model

        if (images is None) == (video is None):
            raise InputError("Prepare Identity: connect exactly one of 'images' (a clip or one photo) or 'video'")
        if getattr(face_model, "mp468", None) is None:  # fitting needs the MediaPipe-to-BFM map
            from ..mimictalk_lib import download
            from ..mimictalk_lib.face import check_face_model_files

            check_face_model_files(download.asset_dir(BFM_ASSET, host.model_dirs()), need_mp468=True)
        models = mediapipe_files(host.model_dirs(), allow_download=auto_download)
        device = host.torch_device()
        schedule = FitSchedule.with_iterations(fit_iterations)
        size = renderer_model(renderer.renderer).cfg.image_resolution if renderer is not None else FRAME_SIZE
        backends = PrepareBackends(face_model=face_model, **models)
        options = PrepareOptions(crop=crop, missing=missing_faces, schedule=schedule, device=device, size=size)
        common = dict(on_step=host.progress(1000))
        if images is not None and images.shape[0] == 1:
            identity = prepare_photo_identity(images, backends, options, **common)
        elif images is not None:
            identity = prepare_identity(images, backends, options, fps=fps, **common)
        else:
            source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
            if isinstance(source, str):  # a file: decoded in two streaming passes
                identity = prepare_identity(source, backends, options, **common)
            else:
                parts = video.get_components()
                identity = prepare_identity(parts.images, backends, options, fps=float(parts.frame_rate), **common)
        return io.NodeOutput(identity, contact_sheet(identity).to(host.intermediate_device()))


NODES = [PrepareIdentity]
