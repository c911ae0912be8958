"""Train Adapter: SD-Hybrid adaptation (tri-plane inversion + LoRA, MimicTalk §3) of the base
renderer on one prepared identity (``mimictalk_lib.adapt``)."""

from __future__ import annotations

import re

from ..mimictalk_lib.errors import InputError
from ..mimictalk_lib.models import load_lpips_from
from . import host
from .types import Adapter, FaceModel, Identity, Renderer

io = host.io

CHECKPOINTS_SUBDIR = "checkpoints"
"""Runs keep a resumable checkpoint and their latest adapter in
``models/mimictalk/adapters/checkpoints/<run_name>/`` (listed by Load Adapter)."""
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
AUTO_RUN_NAME = "auto"


class TrainAdapter(io.ComfyNode):
    """Personalise the base renderer on an identity clip; returns the adapter and its training
    report (loss and held-out validation curves)."""

    @classmethod
    def define_schema(cls):
        from ..mimictalk_lib.adapt.train import AdaptConfig
        from ..mimictalk_lib.renderer.lora_targets import LORA_MODES

        d = AdaptConfig()
        return io.Schema(
            node_id="MimicTalkTrainAdapter",
            display_name="MimicTalk Train Adapter",
            category="MimicTalk/training",
            description=("SD-Hybrid adaptation: learns the person's tri-plane and a small LoRA on the base MimicTalk "
                         "renderer from a prepared clip (about 2000 steps, ~8 GB of GPU memory at batch size 1). Other "
                         "models are unloaded first. The clip's last 10% is held out and measured every validate_every "
                         "steps (curves in the node preview and the report output). Progress shows preview renders; "
                         "Cancel keeps what was trained: "
                         "the run's checkpoint and adapter stay in models/mimictalk/adapters/checkpoints/<run_name>/, "
                         "and running again with resume on continues from there."),
            inputs=[
                Renderer.Input("renderer", tooltip="The base MimicTalk renderer (Load Renderer: mimictalk_base_renderer)."),
                Identity.Input("identity", tooltip="The person's prepared clip (Prepare Identity); a few seconds to a minute."),
                FaceModel.Input("face_model", tooltip="The BFM face model (renders the training SECC maps)."),
                io.Int.Input("steps", default=d.steps, min=1, max=100_000, tooltip="Optimisation steps (upstream README: 2000)."),
                io.Float.Input("lr", default=d.lr, min=0.0, max=1.0, step=1e-5, round=1e-6, tooltip="LoRA learning rate."),
                io.Float.Input("lr_triplane", default=d.lr_triplane, min=0.0, max=10.0, step=1e-4, round=1e-5,
                               tooltip="Tri-plane learning rate (upstream: 0.1 for a video, 0.001 for a single image)."),
                io.Int.Input("lora_rank", default=d.lora_r, min=1, max=64, tooltip="LoRA rank r (upstream: 2)."),
                io.Combo.Input("lora_mode", options=list(LORA_MODES), default=d.lora_mode,
                               tooltip="Which layers get LoRA (upstream: secc2plane_sr); none trains the tri-plane only."),
                io.Int.Input("batch_size", default=d.batch_size, min=1, max=16,
                             tooltip="Frames per step: 1 needs about 8 GB of GPU memory, 2 about 15 GB."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed of frame sampling, ray jitter and LoRA initialisation."),
                io.Boolean.Input("perceptual_loss", default=True,
                                 tooltip="LPIPS perceptual loss terms (upstream; needs the 250 MB LPIPS/AlexNet weights, "
                                         "downloaded automatically). Off is faster and lower quality."),
                io.String.Input("run_name", default=AUTO_RUN_NAME,
                                tooltip="Name of this run's checkpoint folder under models/mimictalk/adapters/checkpoints. "
                                        "'auto': named after the identity (its source and a fingerprint of its content), "
                                        "so two people never share a run."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from this run's checkpoint when one exists (after a Cancel, or to add "
                                         "steps); only a run of the same renderer, identity and settings is resumed. "
                                         "Off: start over in this run's folder (its checkpoint is replaced)."),
                io.Boolean.Input("auto_download", default=True, tooltip="Download the LPIPS weights when missing."),
                io.Float.Input("holdout_seconds", default=d.holdout_min_frames / 25, min=0.0, max=60.0, step=0.04,
                               tooltip="Held-out validation: the clip's last 10% (at least this long) is never trained "
                                       "on and is rendered every validate_every steps to measure quality. 0 = train on "
                                       "every frame, no validation. Clips shorter than twice this train without it."),
                io.Int.Input("validate_every", default=d.validate_every, min=1, max=10_000,
                             tooltip="Steps between validations (PSNR, SSIM, LPIPS on the held-out frames; the node "
                                     "preview shows the curves)."),
                io.Int.Input("early_stop_patience", default=d.early_stop_patience, min=0, max=1000,
                             tooltip="Stop when validation LPIPS has not improved for this many validations (steps "
                                     "is then a maximum); 0 = run all steps. The adapter kept is the best validated one."),
            ],
            outputs=[
                Adapter.Output(display_name="adapter",
                               tooltip="The trained personalisation, from the best validation when validating "
                                       "(save it with Save Adapter)."),
                io.Image.Output(display_name="report",
                                tooltip="Training loss and validation PSNR/SSIM/LPIPS (full frame blue, head orange) "
                                        "against steps; validation frames real above rendered."),
            ],
        )

    @classmethod
    def validate_inputs(cls, run_name):
        if not RUN_NAME.fullmatch(run_name or ""):
            return (f"run_name {run_name!r} must be 1-64 letters, digits, '.', '_' or '-' (a folder name), "
                    "starting with a letter or digit")
        return True

    @classmethod
    def execute(cls, renderer, identity, face_model, steps, lr, lr_triplane, lora_rank, lora_mode, batch_size, seed,
                perceptual_loss, run_name, resume, auto_download, holdout_seconds=1.0, validate_every=100,
                early_stop_patience=0):
        from ..mimictalk_lib.adapt.data import AdaptationData
        from ..mimictalk_lib.adapt.report import TrainingLog
        from ..mimictalk_lib.adapt.resume import ResumeMismatch, default_run_name
        from ..mimictalk_lib.adapt.train import CHECKPOINT_NAME, AdaptConfig, train_adapter

        if renderer.personalised:
            raise InputError("Train Adapter needs the base renderer; this one is already personalised (Apply Adapter)")
        if run_name == AUTO_RUN_NAME:
            run_name = default_run_name(identity)
        config = AdaptConfig(steps=steps, lr=lr, lr_triplane=lr_triplane, lora_mode=lora_mode, lora_r=lora_rank,
                             batch_size=batch_size, seed=seed, holdout_fraction=0.1 if holdout_seconds > 0 else 0.0,
                             holdout_min_frames=max(1, round(holdout_seconds * 25)), validate_every=validate_every,
                             early_stop_patience=early_stop_patience)
        host.free_memory()
        model = renderer.module()
        if model.cfg.plane2grid is None:  # the library refuses too, in its own terms
            raise InputError("Train Adapter: the renderer input is a Real3D-Portrait renderer, which adaptation does not "
                             "support; connect Load Renderer with weights = mimictalk_base_renderer")
        lpips = load_lpips_from(host.model_dirs(), model.device, allow_download=auto_download,
                                on_step=host.progress(1)) if perceptual_loss else None
        work = host.adapter_dirs()[0] / CHECKPOINTS_SUBDIR / run_name
        checkpoint = work / CHECKPOINT_NAME
        log = TrainingLog(host.progress(steps))

        data = AdaptationData.from_identity(identity, face_model, model.cfg.secc_resolution)
        try:
            adapter = train_adapter(model, data, lpips, config, device=model.device, work_dir=work,
                                    resume=checkpoint if resume and checkpoint.is_file() else None, on_step=log)
        except ResumeMismatch as e:
            raise InputError(
                f"Train Adapter: run_name '{run_name}' already holds another training run ({'; '.join(e.reasons)}), "
                f"in {work}. Set run_name to a new name (or 'auto') to keep that run, or turn resume off to start "
                "over in that folder (its checkpoint is replaced)."
            ) from e
        host.soft_empty_cache()
        history = adapter.metadata.get("validation", {}).get("history")  # the whole run's, also after a resume
        return io.NodeOutput(adapter, log.image(history).to(host.intermediate_device()))


NODES = [TrainAdapter]
