"""Loader nodes: the renderer (MimicTalk base / Real3D-Portrait), the BFM face model, and
ICS-A2M with its HuBERT encoder.

Weights come from ComfyUI's ``models/mimictalk`` folders (every folder registered under the
``mimictalk`` key, extra_model_paths.yaml included). A loader's ``weights`` list offers the
manifest entries (downloaded when missing if the manifest allows it and ``auto_download`` is on;
manual assets say where to get them) plus every converted model folder found there
(``python -m mimictalk_lib.convert`` output: ``model.safetensors`` + ``config.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ..mimictalk_lib import download
from ..mimictalk_lib.errors import AssetMissingError
from ..mimictalk_lib.utils import cpu_bf16_native
from ..mimictalk_lib.models import (A2M_ASSETS, BFM_ASSET, HUBERT_ASSETS, RENDERER_ASSETS, converted_models, is_a2m,
                                    is_hubert, is_renderer, load_face_model_from)
from . import host
from .types import A2MHandle, Audio2Motion, FaceModel, Renderer, RendererHandle

io = host.io

PRECISIONS = ("auto", *host.PRECISIONS)

PRECISION_TOOLTIP = ("Compute precision. auto follows ComfyUI (bf16/fp16 on GPUs that support them, fp32 "
                     "otherwise or with --force-fp32); bf16/fp16 are refused on the CPU.")
A2M_PRECISION_TOOLTIP = ("Compute precision. auto follows ComfyUI (bf16/fp16 on GPUs that support them, fp32 "
                         "otherwise or with --force-fp32). On the CPU fp16 is refused and bf16 is an opt-in for CPUs with "
                         "native bf16 (AVX512-BF16 / AMX): motion sampling 1.7-2x faster, not exact (within about 2% "
                         "of the motion's spread of fp32; HuBERT stays fp32). auto stays fp32 on the CPU.")
RENDERER_PRECISION_TOOLTIP = ("Compute precision. auto follows ComfyUI (bf16/fp16 on GPUs that support them, fp32 "
                              "otherwise or with --force-fp32). On the CPU fp16 is refused and bf16 is an opt-in for "
                              "CPUs with native bf16 (AVX512-BF16 / AMX): rendering about 2x faster, not exact (37-61 dB "
                              "PSNR against fp32 with random weights, depending on them). auto stays fp32 on the CPU.")
AUTO_DOWNLOAD_TOOLTIP = ("Download missing files listed in the pack's models manifest (pinned, checksummed) into "
                         "models/mimictalk. Off, or offline (HF_HUB_OFFLINE=1 / MIMICTALK_NO_DOWNLOAD=1): only files "
                         "already on disk are used.")


# ---------------------------------------------------------------- finding weights


def locate(name: str) -> Optional[Path]:
    """A converted model (file or folder) named ``name`` inside a registered model folder
    (confined: :func:`host.find_inside`)."""
    return host.find_inside(name, host.model_dirs(), folder_ok=True)


def check_choice(name: str, assets: Sequence[str], what: str) -> bool | str:
    """validate_inputs helper: a manifest id, or a file/folder present in a model folder."""
    if name in assets or locate(name) is not None:
        return True
    return (host.outside_message(what, name, host.model_dirs())
            + f" The choices are {', '.join(assets)} or a converted model folder there.")


def resolve(name: str, assets: Sequence[str], auto_download: bool) -> Path:
    """The weights for a loader choice: a manifest asset's folder (verified, downloaded if
    allowed) or the converted model found on disk."""
    if name in assets:
        return host.ensure_asset(name, allow_download=auto_download, on_step=host.progress(1))
    path = locate(name)
    if path is None:
        raise AssetMissingError(check_choice(name, assets, "weights"))
    return path


def fingerprint(name: str, assets: Sequence[str]) -> tuple:
    """Cache key of a loader choice: names, sizes and modification times of its files."""
    path = download.asset_dir(name, host.model_dirs()) if name in assets else locate(name)
    if path is None or not path.exists():
        return (name, "missing")
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return (name,) + tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def precision_and_download(tooltip: str = PRECISION_TOOLTIP) -> list:
    """The ``precision`` and ``auto_download`` widgets every model loader ends with."""
    return [io.Combo.Input("precision", options=list(PRECISIONS), default="auto", tooltip=tooltip),
            io.Boolean.Input("auto_download", default=True, tooltip=AUTO_DOWNLOAD_TOOLTIP)]


def check_precision(precision: str, cpu_bf16: bool = False) -> bool | str:
    """``cpu_bf16``: the loader allows bf16 on CPUs with native bf16 (see check_device_dtype)."""
    if precision not in PRECISIONS:
        return f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
    device = host.torch_device()
    if cpu_bf16 and precision == "bf16" and device.type == "cpu":
        if cpu_bf16_native():
            return True
        return ("precision bf16 was requested on the CPU, but this CPU has no native bf16 arithmetic (AVX512-BF16 or "
                "AMX), where it would be slower than fp32; use auto or fp32")
    if precision in ("bf16", "fp16") and device.type == "cpu":
        return (f"precision {precision} was requested but ComfyUI runs on the CPU, where half precision is not "
                "supported; use auto or fp32")
    return True


# ---------------------------------------------------------------- nodes


class LoadRenderer(io.ComfyNode):
    """Base renderer: MimicTalk (the model SD-Hybrid adaptation personalises) or Real3D-Portrait."""

    @classmethod
    def define_schema(cls):
        choices = list(RENDERER_ASSETS) + converted_models(host.model_dirs(), is_renderer)
        return io.Schema(
            node_id="MimicTalkLoadRenderer",
            display_name="MimicTalk Load Renderer",
            category="MimicTalk/loaders",
            description=("Loads the person-agnostic tri-plane NeRF renderer: the MimicTalk base model (personalise "
                         "it with Train Adapter, or render a photo one-shot) or the Real3D-Portrait one-shot model. "
                         "The model joins ComfyUI's memory management (offloaded when other models need the GPU)."),
            inputs=[
                io.Combo.Input("weights", options=choices, default=choices[0],
                               tooltip="mimictalk_base_renderer / real3dportrait_renderer: the official checkpoints "
                                       "in models/mimictalk (downloaded from the authors' Google Drive when auto_download is on; "
                                       "by hand otherwise, see README); or a converted model folder."),
                *precision_and_download(RENDERER_PRECISION_TOOLTIP),
            ],
            outputs=[Renderer.Output(display_name="renderer", tooltip="The loaded renderer.")],
        )

    @classmethod
    def validate_inputs(cls, weights, precision):
        ok = check_choice(weights, RENDERER_ASSETS, "renderer weights")
        return check_precision(precision, cpu_bf16=True) if ok is True else ok

    @classmethod
    def fingerprint_inputs(cls, weights, precision, auto_download):
        return fingerprint(weights, RENDERER_ASSETS) + (precision,)

    @classmethod
    def execute(cls, weights, precision, auto_download):
        from ..mimictalk_lib.renderer import load_renderer

        device = host.torch_device()
        loaded = load_renderer(resolve(weights, RENDERER_ASSETS, auto_download), device=device,
                               dtype=host.resolve_dtype(precision, device, cpu_bf16=True))
        return io.NodeOutput(RendererHandle(loaded, host.manage_model(loaded.model), weights, {"layout": loaded.layout}))


class LoadFaceModel(io.ComfyNode):
    """The Basel Face Model (BFM 2009 front model) used for SECC maps, keypoints and 3DMM fitting."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MimicTalkLoadFaceModel",
            display_name="MimicTalk Load Face Model",
            category="MimicTalk/loaders",
            description=("Loads the BFM 3D face model from models/mimictalk/bfm. Its licence forbids redistribution, "
                         "so it is never downloaded: a missing file stops with instructions naming each file."),
            inputs=[
                io.Boolean.Input("auto_download", default=True,
                                 tooltip="Fetch the small upstream helper files (SECC colour code, eye-hole "
                                         "triangles) for exact parity; without them they are computed."),
            ],
            outputs=[FaceModel.Output(display_name="face_model", tooltip="The BFM face model (CPU).")],
        )

    @classmethod
    def fingerprint_inputs(cls, auto_download):
        return fingerprint(BFM_ASSET, (BFM_ASSET,)) + (auto_download,)

    @classmethod
    def execute(cls, auto_download):
        return io.NodeOutput(load_face_model_from(host.model_dirs(), allow_download=auto_download))


class LoadAudio2Motion(io.ComfyNode):
    """ICS-A2M (in-context audio-to-motion flow model) with the HuBERT speech encoder it needs."""

    @classmethod
    def define_schema(cls):
        a2m = list(A2M_ASSETS) + converted_models(host.model_dirs(), is_a2m)
        hubert = list(HUBERT_ASSETS) + converted_models(host.model_dirs(), is_hubert)
        return io.Schema(
            node_id="MimicTalkLoadAudio2Motion",
            display_name="MimicTalk Load Audio-to-Motion",
            category="MimicTalk/loaders",
            description="Loads MimicTalk's ICS-A2M motion generator and the HuBERT-large audio encoder it listens with.",
            inputs=[
                io.Combo.Input("a2m", options=a2m, default=a2m[0],
                               tooltip="ics_a2m: the official checkpoint folder in models/mimictalk (downloaded from the "
                                       "authors' Google Drive when auto_download is on; by hand otherwise, see README); "
                                       "or a converted model folder."),
                io.Combo.Input("hubert", options=hubert, default=hubert[0],
                               tooltip="hubert_large: facebook/hubert-large-ls960-ft (downloaded automatically); or "
                                       "a folder holding a Hugging Face HuBERT (config.json + weights)."),
                *precision_and_download(A2M_PRECISION_TOOLTIP),
            ],
            outputs=[Audio2Motion.Output(display_name="a2m", tooltip="The motion model and its audio encoder.")],
        )

    @classmethod
    def validate_inputs(cls, a2m, hubert, precision):
        for name, assets, what in ((a2m, A2M_ASSETS, "audio-to-motion weights"), (hubert, HUBERT_ASSETS, "HuBERT")):
            ok = check_choice(name, assets, what)
            if ok is not True:
                return ok
        return check_precision(precision, cpu_bf16=True)

    @classmethod
    def fingerprint_inputs(cls, a2m, hubert, precision, auto_download):
        return fingerprint(a2m, A2M_ASSETS) + fingerprint(hubert, HUBERT_ASSETS) + (precision,)

    @classmethod
    def execute(cls, a2m, hubert, precision, auto_download):
        from ..mimictalk_lib.a2m import load_a2m, load_hubert

        device = host.torch_device()
        dtype = host.resolve_dtype(precision, device, cpu_bf16=True)
        net = load_a2m(resolve(a2m, A2M_ASSETS, auto_download), device, dtype)
        # bf16 on the CPU is the motion sampler's opt-in only (measured there); HuBERT stays fp32
        hubert_dtype = torch.float32 if device.type == "cpu" else dtype
        encoder = load_hubert(resolve(hubert, HUBERT_ASSETS, auto_download), device, hubert_dtype)
        both = nn.ModuleDict({"a2m": net, "hubert": encoder})
        return io.NodeOutput(A2MHandle(host.manage_model(both), a2m))


NODES = [LoadRenderer, LoadFaceModel, LoadAudio2Motion]
