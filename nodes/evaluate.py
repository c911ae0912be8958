"""Evaluate: quality metrics of rendered frames against a reference (``mimictalk_lib.evaluate``)."""

from __future__ import annotations

from ..mimictalk_lib.errors import InputError
from . import host
from .types import FaceModel, Identity, Renderer

io = host.io

FRAMES = ("held_out", "all")


class Evaluate(io.ComfyNode):
    """Rendered frames (or a renderer re-rendering an identity) against reference frames -> a
    metrics table, a plot and JSON."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MimicTalkEvaluate",
            display_name="MimicTalk Evaluate",
            category="MimicTalk/evaluation",
            description=("Measures rendered frames against reference frames: PSNR, SSIM and LPIPS over the full frame "
                         "and the head region, landmark distance (mouth and face), blink rate and head-pose jitter. "
                         "With a renderer, face model and identity (and no images) it re-renders the identity's own "
                         "motion: frames 'held_out' are the last 10% (at least 1 s) that Train Adapter never trains "
                         "on. With audio connected: lip sync (LSE-D / LSE-C, SyncNet); identity similarity (CSIM, face "
                         "embedding). Metrics whose model is missing are listed as notes."),
            is_output_node=True,
            inputs=[
                io.Combo.Input("frames", options=list(FRAMES), default="held_out",
                               tooltip="Identity frames to compare: 'held_out' (the validation slice Train Adapter "
                                       "leaves out; clips of 2 s or more) or 'all'."),
                io.Boolean.Input("perceptual", default=True,
                                 tooltip="LPIPS (needs the lpips_alex weights, 250 MB)."),
                io.Boolean.Input("landmarks", default=True,
                                 tooltip="Landmark distance, blink rate and pose jitter (need the optional mediapipe "
                                         "package and the face landmarker model)."),
                io.Boolean.Input("auto_download", default=True, tooltip="Download missing LPIPS, landmarker, SyncNet and face-embedding weights."),
                Identity.Input("identity", optional=True,
                               tooltip="The reference: a prepared clip (its frames, head masks and landmarks)."),
                io.Image.Input("images", optional=True, tooltip="Rendered frames to measure (e.g. from Render)."),
                io.Image.Input("reference", optional=True,
                               tooltip="Reference frames, when there is no identity (e.g. from Load Video)."),
                Renderer.Input("renderer", optional=True,
                               tooltip="Without images: this renderer re-renders the identity's own motion."),
                FaceModel.Input("face_model", optional=True, tooltip="The BFM face model (needed with renderer)."),
                io.Audio.Input("audio", optional=True,
                               tooltip="The speech the frames were rendered from, starting at the first frame (with "
                                       "an identity: the clip's own audio, from its first frame; re-rendering an identity without it uses the "
                                       "clip's audio when its video file is still there). Gives the lip-sync "
                                       "rows LSE-D / LSE-C (needs the SyncNet weights, 55 MB, and 25 fps frames)."),
            ],
            outputs=[
                io.String.Output(display_name="table", tooltip="The metrics as a markdown table, with notes."),
                io.Image.Output(display_name="plot", tooltip="Per-frame curves and sample frames (real above rendered)."),
                io.String.Output(display_name="json", tooltip="Every metric, per frame too, as JSON."),
            ],
        )

    @classmethod
    def execute(cls, frames, perceptual, landmarks, auto_download, identity=None, images=None, reference=None,
                renderer=None, face_model=None, audio=None):
        from ..mimictalk_lib.evaluate import (
            evaluate, evaluate_identity, identity_audio, load_metric_models, load_optional_models,
        )

        if identity is None and (images is None or reference is None):
            raise InputError("Evaluate: connect an identity (with images, or with renderer and face_model), "
                             "or both images and reference")
        if identity is not None and images is None and (renderer is None or face_model is None):
            raise InputError("Evaluate: with an identity, connect images (rendered frames) or renderer and face_model "
                             "(to re-render the identity)")
        lpips, landmarker, notes = load_optional_models(host.model_dirs(), perceptual=perceptual, landmarks=landmarks,
                                                        allow_download=auto_download, device=host.torch_device())
        note = "landmark metrics: off (the landmarks widget)." if not landmarks else ("" if landmarker is None else None)
        if audio is None and identity is not None and images is None:
            audio = identity_audio(identity)  # re-rendering the clip: its own speech
        syncnet, embedder, model_notes = load_metric_models(host.model_dirs(), sync=audio is not None,
                                                            allow_download=auto_download, device=host.torch_device())
        if audio is None:
            model_notes[0] = "LSE-C / LSE-D (audio-visual sync, SyncNet): not measured; connect the audio input."
        notes += model_notes
        models = dict(audio=audio, syncnet=syncnet, face_embedder=embedder, model_notes=False)
        if identity is not None:
            if images is None:
                renderer.module()  # onto the compute device
            result = evaluate_identity(renderer.renderer if renderer is not None else None, face_model, identity,
                                       rendered=images, frames=frames, lpips=lpips, landmarker=landmarker,
                                       landmark_note=note, on_step=host.progress(100), **models)
        else:
            result = evaluate(images, reference, lpips=lpips, landmarker=landmarker, landmark_note=note,
                              on_step=host.progress(images.shape[0]), **models)
        result.notes[:0] = notes
        table = result.table()
        return io.NodeOutput(table, result.plot().to(host.intermediate_device()), result.to_json(), ui={"text": (table,)})


NODES = [Evaluate]
