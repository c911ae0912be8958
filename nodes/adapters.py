"""Adapter files and applying them: Save Adapter, Load Adapter (our safetensors, or an official
personalised MimicTalk ``.ckpt`` imported on the fly) and Apply Adapter (``mimictalk_lib.adapt``).

Adapters live in the ``mimictalk_adapters`` model folder (``models/mimictalk/adapters`` and any
extra_model_paths.yaml entry); new ones are saved into the first of those folders.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from ..mimictalk_lib.errors import InputError
from . import host
from .messages import node_terms
from .train import CHECKPOINTS_SUBDIR
from .types import Adapter, Renderer, RendererHandle

io = host.io

ADAPTER_EXTENSIONS = (".safetensors", ".ckpt")
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
TRAINING_STATE = "checkpoint.safetensors"  # a run's resumable optimiser state: not an adapter


def adapter_files() -> list[str]:
    """Adapters in every adapter folder (relative paths, sorted): our ``.safetensors`` files and
    official personalised checkpoints (``.ckpt``), without training-state files."""
    found = set()
    for root in host.adapter_dirs():
        if root.is_dir():
            for p in root.rglob("*"):
                if p.suffix in ADAPTER_EXTENSIONS and p.name != TRAINING_STATE and host.find_inside(
                        rel := p.relative_to(root).as_posix(), [root]) is not None:
                    found.add(rel)
    return sorted(found)


def locate_adapter(name: str) -> Optional[Path]:
    """The adapter file ``name`` inside an adapter folder (confined: :func:`host.find_inside`), or
    None (also for a file that is no adapter by its name: not listed by :func:`adapter_files`)."""
    if not isinstance(name, str) or not name.endswith(ADAPTER_EXTENSIONS) or name.rsplit("/", 1)[-1] == TRAINING_STATE:
        return None
    return host.find_inside(name, host.adapter_dirs())


class SaveAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MimicTalkSaveAdapter",
            display_name="MimicTalk Save Adapter",
            category="MimicTalk/adapters",
            description=("Saves a trained adapter (LoRA, tri-plane and the person's reference data, about 80 MB) as "
                         "<name>.safetensors in models/mimictalk/adapters, where Load Adapter finds it."),
            inputs=[
                Adapter.Input("adapter", tooltip="The adapter from Train Adapter (or Load Adapter)."),
                io.String.Input("name", default="person", tooltip="File name without extension; '/' makes subfolders."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name; off: a numbered name is used instead."),
                io.Combo.Input("triplane_precision", options=["fp32", "fp16"], default="fp32",
                               tooltip="fp16 halves the file (the tri-plane is most of it) at a tiny precision cost."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The saved file.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name):
        if not ADAPTER_NAME.fullmatch(name or "") or ".." in name:
            return f"name {name!r}: use letters, digits, '.', '_', '-' and '/' for subfolders (no '..', no absolute path)"
        return True

    @classmethod
    def execute(cls, adapter, name, overwrite, triplane_precision):
        from ..mimictalk_lib.adapt.adapter import save_adapter

        root = host.adapter_dirs()[0]
        path = root / f"{name}.safetensors"
        counter = 1
        while path.exists() and not overwrite:
            path = root / f"{name}_{counter:05d}.safetensors"
            counter += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        save_adapter(path, adapter, triplane_dtype=torch.float16 if triplane_precision == "fp16" else torch.float32)
        rel = path.relative_to(root).as_posix()
        return io.NodeOutput(str(path), ui={"text": (rel,)})


class LoadAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = adapter_files() or ["person.safetensors"]
        return io.Schema(
            node_id="MimicTalkLoadAdapter",
            display_name="MimicTalk Load Adapter",
            category="MimicTalk/adapters",
            description=("Loads a personalisation from models/mimictalk/adapters: an adapter saved by this pack, the "
                         f"latest state of a training run ({CHECKPOINTS_SUBDIR}/<run>/adapter.safetensors), or an "
                         "official MimicTalk personalised checkpoint (.ckpt, imported without its base weights)."),
            inputs=[
                io.Combo.Input("adapter", options=files, default=files[0], tooltip="The adapter or checkpoint file."),
                Renderer.Input("renderer", optional=True,
                               tooltip="Only for an official .ckpt: the base renderer it was trained on (checked)."),
            ],
            outputs=[Adapter.Output(display_name="adapter", tooltip="The loaded adapter.")],
        )

    @classmethod
    def validate_inputs(cls, adapter):
        if locate_adapter(adapter) is None:
            return host.outside_message("adapter file", adapter, host.adapter_dirs())
        return True

    @classmethod
    def fingerprint_inputs(cls, adapter, renderer=None):
        path = locate_adapter(adapter)
        return (adapter, "missing") if path is None else (str(path), path.stat().st_size, path.stat().st_mtime_ns)

    @classmethod
    @node_terms()
    def execute(cls, adapter, renderer=None):
        path = locate_adapter(adapter)
        if path is None:
            raise InputError(cls.validate_inputs(adapter))
        if path.suffix == ".ckpt":
            from ..mimictalk_lib.adapt.official_import import import_official_checkpoint

            return io.NodeOutput(import_official_checkpoint(path, renderer.module() if renderer is not None else None))
        from ..mimictalk_lib.adapt.adapter import load_adapter

        return io.NodeOutput(load_adapter(path))


class ApplyAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MimicTalkApplyAdapter",
            display_name="MimicTalk Apply Adapter",
            category="MimicTalk/adapters",
            description=("Personalises a base renderer with an adapter: returns a new renderer (LoRA merged into new "
                         "weights, the person's tri-plane); the base renderer is not changed."),
            inputs=[
                Renderer.Input("renderer", tooltip="The base MimicTalk renderer the adapter was trained on."),
                Adapter.Input("adapter", tooltip="The person's adapter."),
                io.Boolean.Input("check_base", default=True,
                                 tooltip="Refuse an adapter trained on other base weights (fingerprint check)."),
            ],
            outputs=[Renderer.Output(display_name="renderer", tooltip="The personalised renderer.")],
        )

    @classmethod
    @node_terms()
    def execute(cls, renderer, adapter, check_base):
        from ..mimictalk_lib.adapt.adapter import personalise

        if renderer.personalised:
            raise InputError("Apply Adapter needs the base renderer; this one is already personalised")
        person = personalise(renderer.module(), adapter, check_base_model=check_base)
        name = f"{renderer.name}+{adapter.identity.video_id or 'adapter'}"
        return io.NodeOutput(RendererHandle(person, host.manage_model(person.model), name, {"layout": "personalised"}))


NODES = [SaveAdapter, LoadAdapter, ApplyAdapter]
