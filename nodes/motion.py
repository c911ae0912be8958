"""Audio to Motion: speech -> 25 fps BFM expression motion with ICS-A2M, optionally imitating a
talking style (``mimictalk_lib.pipeline.audio_to_motion``)."""

from __future__ import annotations

import torch

from ..mimictalk_lib.a2m.ode import SOLVERS
from ..mimictalk_lib.pipeline import TRIM_MODES
from . import host
from .types import Audio2Motion, Identity, Motion

io = host.io


class AudioToMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..mimictalk_lib.a2m import DEFAULT_CFG_SCALE, DEFAULT_STEPS, DEFAULT_TEMPERATURE

        return io.Schema(
            node_id="MimicTalkAudioToMotion",
            display_name="MimicTalk Audio to Motion",
            category="MimicTalk/motion",
            description=("Generates lip-synced facial expression motion (25 fps) from speech with ICS-A2M's "
                         "flow-matching sampler. A style identity makes it imitate that person's talking style: a "
                         "photo identity, or a clip identity together with the clip's audio (style_audio)."),
            inputs=[
                Audio2Motion.Input("a2m", tooltip="The motion model from Load Audio-to-Motion."),
                io.Audio.Input("audio", tooltip="The speech to lip-sync (any sample rate; resampled to 16 kHz)."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=2, max=200,
                             tooltip="ODE grid points (upstream: 20, i.e. 19 solver steps)."),
                io.Combo.Input("solver", options=list(SOLVERS), default="midpoint",
                               tooltip="ODE solver: midpoint (upstream), euler (fastest) or rk4 (most accurate)."),
                io.Float.Input("cfg_scale", default=DEFAULT_CFG_SCALE, min=0.0, max=10.0, step=0.05,
                               tooltip="Classifier-free guidance on the audio (upstream: 1.5)."),
                io.Float.Input("temperature", default=DEFAULT_TEMPERATURE, min=0.0, max=2.0, step=0.01,
                               tooltip="Scale of the initial noise: lower is calmer, higher more varied (upstream: 0.3)."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seed of the sampler's noise (the same seed gives the same motion)."),
                io.Float.Input("mouth_amp", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Mouth-opening amplitude; only checkpoints with auxiliary features use it."),
                io.Combo.Input("trim", options=list(TRIM_MODES), default="audio",
                               tooltip="Motion length: audio (its duration at 25 fps), upstream (drops the last 4 "
                                       "frames as upstream does) or none (all sampled frames)."),
                Identity.Input("style", optional=True,
                               tooltip="Talking-style prompt: a prepared photo, or a prepared clip (also connect its audio)."),
                io.Audio.Input("style_audio", optional=True, tooltip="The soundtrack of the style clip (needed for a clip style)."),
            ],
            outputs=[Motion.Output(display_name="motion", tooltip="Expression motion [frames, 64] at 25 fps.")],
        )

    @classmethod
    def execute(cls, a2m, audio, steps, solver, cfg_scale, temperature, seed, mouth_amp, trim, style=None,
                style_audio=None):
        from ..mimictalk_lib.pipeline import audio_to_motion

        net, hubert = a2m.modules()
        motion = audio_to_motion(
            net, hubert, audio, style=style, style_audio=style_audio, steps=steps, cfg_scale=cfg_scale,
            temperature=temperature, method=solver, generator=torch.Generator().manual_seed(seed), mouth_amp=mouth_amp,
            trim=trim, on_step=host.progress(100),
        )
        return io.NodeOutput(motion)


NODES = [AudioToMotion]
