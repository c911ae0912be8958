"""Render: renderer + who (identity and/or personalised renderer) + motion -> frames
(``mimictalk_lib.pipeline.render_talking_head``)."""

from __future__ import annotations

import torch

from ..mimictalk_lib.pipeline import BLINK_MODES, POSE_MODES
from . import host
from .types import FaceModel, Identity, Motion, Renderer

io = host.io

MAX_CHUNK = 64
MAX_FRAME = 2**31 - 1
RAY_TOOLTIP = ("Empty (default): render here. Otherwise render on a Ray cluster, one worker per GPU (per CPU without "
               "GPUs), so this ComfyUI offloads long renders: 'auto' (the cluster this machine joined with ray start), "
               "'ray://head:10001' (a remote cluster), or 'local' (a new Ray on this machine). With deterministic on "
               "the frames equal a render here. Needs pip install ray on every machine (docs/scale.md).")
RAY_OFF = " (or leave ray_address empty to render in this ComfyUI)"


def part_and_ray_inputs(start_tooltip: str, count_tooltip: str) -> list:
    """The optional start_frame / frame_count / ray_address widgets Render and Dub Video end with."""
    return [io.Int.Input("start_frame", default=0, min=0, max=MAX_FRAME, optional=True, tooltip=start_tooltip),
            io.Int.Input("frame_count", default=0, min=0, max=MAX_FRAME, optional=True, tooltip=count_tooltip),
            io.String.Input("ray_address", default="", optional=True, tooltip=RAY_TOOLTIP)]


class Render(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MimicTalkRender",
            display_name="MimicTalk Render",
            category="MimicTalk/render",
            description=("Renders the talking head: a personalised renderer (Apply Adapter) needs no identity for a "
                         "static pose; a base renderer animates the identity's first frame one-shot. Frames are "
                         "rendered chunk by chunk (progress per chunk; Cancel stops between chunks)."),
            inputs=[
                Renderer.Input("renderer", tooltip="A personalised renderer, or a base renderer for one-shot rendering."),
                FaceModel.Input("face_model", tooltip="The BFM face model (turns motion into SECC maps)."),
                Motion.Input("motion", tooltip="Expression motion from Audio to Motion."),
                io.Int.Input("chunk_size", default=4, min=1, max=MAX_CHUNK,
                             tooltip="Frames rendered at once: more is faster and needs more GPU memory."),
                io.Combo.Input("pose", options=list(POSE_MODES), default="static",
                               tooltip="Head pose: static (the source frame's) or identity (the identity clip's head "
                                       "motion, played forwards and backwards to cover the speech)."),
                io.Boolean.Input("map_to_init_pose", default=True,
                                 tooltip="Shift the driving poses so the first frame matches the source pose."),
                io.Combo.Input("blink", options=list(BLINK_MODES), default="period",
                               tooltip="period: natural eye blinks every few seconds; none: no blinks."),
                io.Boolean.Input("deterministic", default=True,
                                 tooltip="Deterministic ray sampling (the same frames for any chunk size); off draws "
                                         "jittered samples from the seed like upstream."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seed of the blink timing and (deterministic off) the ray jitter."),
                Identity.Input("identity", optional=True,
                               tooltip="Who to animate (one-shot), and the head poses for pose=identity."),
                io.Image.Input("background", optional=True,
                               tooltip="Replaces the background plate (centre-cropped to a square)."),
                *part_and_ray_inputs(
                    "First frame to render (0 = the start). With deterministic on, a part equals the same frames of a "
                    "full render (blinks, pose and smoothing are computed for the whole motion), so several ComfyUI "
                    "instances can each render a part of a long clip (docs/scale.md).",
                    "How many frames to render from start_frame (0 = to the end of the motion)."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The rendered frames."),
                io.Mask.Output(display_name="masks", tooltip="Head opacity per frame (1 = head)."),
                io.Float.Output(display_name="fps", tooltip="Frame rate of the frames (25)."),
            ],
        )

    @classmethod
    def execute(cls, renderer, face_model, motion, chunk_size, pose, map_to_init_pose, blink, deterministic, seed,
                identity=None, background=None, start_frame=None, frame_count=None, ray_address=None):
        from ..mimictalk_lib.distributed.ranges import check_range, render_frame_range
        from ..mimictalk_lib.pipeline import FPS

        start, stop = check_range(motion.shape[-2], start_frame or 0, frame_count or 0, "MimicTalk Render start_frame / frame_count")
        out = host.intermediate_device()
        if (ray_address or "").strip():  # the frame ranges render on a Ray cluster (docs/scale.md)
            from ..mimictalk_lib.distributed.offload import render_on_ray

            head = render_on_ray(
                renderer.renderer, face_model, identity, motion, address=ray_address.strip(), start=start,
                count=stop - start, chunk_size=chunk_size, deterministic=deterministic, seed=seed, pose=pose,
                map_to_init_pose=map_to_init_pose, blink=blink, background=background,
                on_step=host.progress(stop - start), who="MimicTalk Render ray_address", off=RAY_OFF,
            )
            return io.NodeOutput(head.images.to(out), head.masks.to(out), float(FPS))
        model = renderer.module()  # onto the compute device (ComfyUI may have offloaded it)
        head = render_frame_range(
            renderer.renderer, face_model, identity, motion, start, stop - start, chunk_size=chunk_size,
            deterministic=deterministic, generator=torch.Generator(device=model.device).manual_seed(seed),
            on_step=host.progress(stop - start), pose=pose, map_to_init_pose=map_to_init_pose, blink=blink,
            blink_seed=seed, background=background,
        )
        return io.NodeOutput(head.images.to(out), head.masks.to(out), float(FPS))


NODES = [Render]
