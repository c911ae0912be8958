"""The fake host's prompt executor: runs API-format graphs in-process with the real node
classes, for the node and workflow tests (``tests.fakehost.executor``; import it after the fake
host is on ``sys.path``, e.g. through ``tests.nodes.harness.executor()``).

It does what ComfyUI's prompt executor does for the graphs the pack ships (comfyui_conventions.md
§1.2, §4.2): validates every node (types exist, required inputs present, link types match, INT /
FLOAT ranges and combo values unless the node's ``validate_inputs`` takes them over, then
``validate_inputs`` itself), runs the output nodes and their ancestors in dependency order under
``torch.inference_mode()`` with the hidden values (prompt, extra_pnginfo, unique_id), checks for
Cancel between nodes, and collects each node's ``ui`` output. No caching, lists or lazy inputs.

The few core nodes the shipped workflows use (``LoadImage``, ``LoadVideo``, ``PreviewImage``) run
as the minimal equivalents below; ``tests/e2e`` checks their ids and widget order against core's.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import InputImpl, io, ui

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


class PromptError(ValueError):
    """The graph is invalid (what ComfyUI answers with HTTP 400); ``node_errors`` per node id."""

    def __init__(self, message: str, node_errors: Optional[dict] = None):
        super().__init__(message)
        self.node_errors = node_errors or {}


# ---------------------------------------------------------------- core node equivalents


def _input_files(content_types: list[str]) -> list[str]:
    folder = Path(folder_paths.get_input_directory())
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return folder_paths.filter_files_content_types(names, content_types)


def _input_path(name: str) -> Path:
    return Path(folder_paths.get_annotated_filepath(name))


class LoadImage(io.ComfyNode):
    """Core LoadImage (same id and inputs): one image file -> IMAGE [1, H, W, 3] and an empty MASK."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LoadImage", display_name="Load Image", category="image",
                         inputs=[io.Combo.Input("image", options=_input_files(["image"]), upload=io.UploadType.image)],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def validate_inputs(cls, image):
        return True if _input_path(image).is_file() else f"Invalid image file: {image}"

    @classmethod
    def execute(cls, image):
        from mimictalk_lib.video import read_video

        frames = read_video(_input_path(image), with_audio=False, max_frames=1).frames  # uint8 [1, H, W, 3]
        return io.NodeOutput(frames.float() / 255, torch.zeros(1, 64, 64))  # core: empty 64x64 mask without alpha


class LoadVideo(io.ComfyNode):
    """Core LoadVideo (same id and inputs): a video file from the input folder -> VIDEO."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LoadVideo", display_name="Load Video", category="image/video",
                         inputs=[io.Combo.Input("file", options=_input_files(["video"]), upload=io.UploadType.video)],
                         outputs=[io.Video.Output()])

    @classmethod
    def validate_inputs(cls, file):
        return True if _input_path(file).is_file() else f"Invalid video file: {file}"

    @classmethod
    def execute(cls, file):
        return io.NodeOutput(InputImpl.VideoFromFile(str(_input_path(file))))


class PreviewImage(io.ComfyNode):
    """Core PreviewImage: an output node showing images (standalone: nothing to show)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PreviewImage", display_name="Preview Image", category="image",
                         inputs=[io.Image.Input("images")], outputs=[], is_output_node=True)

    @classmethod
    def execute(cls, images):
        return io.NodeOutput(ui=ui.PreviewImage(images, cls=cls))


CORE_NODES = [LoadImage, LoadVideo, PreviewImage]
"""The core nodes the shipped workflows use, with core's ids, input names and widget order."""


# ---------------------------------------------------------------- schemas


def schemas(classes: Iterable[type]) -> dict[str, tuple[type, Any]]:
    """{node_id: (class, finalized schema)}; a duplicate id is an error."""
    out: dict[str, tuple[type, Any]] = {}
    for cls in classes:
        schema = cls.define_schema()
        schema.validate()
        schema.finalize()
        if schema.node_id in out:
            raise ValueError(f"two node classes use the id {schema.node_id!r}")
        out[schema.node_id] = (cls, schema)
    return out


def is_widget(inp: Any) -> bool:
    return inp.io_type in WIDGET_TYPES


def _overrides(cls: type, name: str) -> bool:
    """Whether ``cls`` defines ``name`` itself (not the base class's NotImplemented stub)."""
    return getattr(cls, name).__func__ is not getattr(io.ComfyNode, name).__func__


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


# ---------------------------------------------------------------- validation


def _check_constant(inp: Any, value: Any) -> Optional[str]:
    t = inp.io_type
    if t == "COMBO":
        return None if value in (inp.options or []) else f"{inp.id}: '{value}' not in {inp.options}"
    kinds = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}
    if isinstance(value, bool) and t in ("INT", "FLOAT") or not isinstance(value, kinds[t]):
        return f"{inp.id}: expected {t}, got {value!r}"
    if t in ("INT", "FLOAT"):
        if inp.min is not None and value < inp.min:
            return f"{inp.id}: value {value} smaller than min of {inp.min}"
        if inp.max is not None and value > inp.max:
            return f"{inp.id}: value {value} bigger than max of {inp.max}"
    return None


def validate_node(node_id: str, node: dict, prompt: dict, nodes: dict) -> list[str]:
    """Error messages for one API-format node (empty when valid)."""
    cls, schema = nodes[node["class_type"]]
    given = node.get("inputs", {})
    custom = list(inspect.signature(cls.validate_inputs).parameters) if _overrides(cls, "validate_inputs") else []
    errors = []
    for inp in schema.inputs or []:
        if inp.id not in given:
            if not inp.optional:
                errors.append(f"Required input is missing: {inp.id}")
            continue
        value = given[inp.id]
        if is_link(value):
            src = prompt.get(value[0])
            if src is None:
                errors.append(f"{inp.id}: linked to missing node {value[0]}")
                continue
            outs = nodes[src["class_type"]][1].outputs or []
            if value[1] >= len(outs):
                errors.append(f"{inp.id}: node {value[0]} has no output {value[1]}")
            elif outs[value[1]].io_type != inp.io_type:
                errors.append(f"{inp.id}: return type mismatch between linked nodes, {outs[value[1]].io_type} != {inp.io_type}")
        elif not is_widget(inp):
            errors.append(f"{inp.id}: a {inp.io_type} input must be linked, got the constant {value!r}")
        elif inp.id not in custom and (problem := _check_constant(inp, value)):
            errors.append(problem)
    if custom and not errors:
        args = {k: (None if is_link(given[k]) else given[k]) for k in custom if k in given}
        result = cls.validate_inputs(**args)
        if result is not True:
            errors.append(f"{', '.join(args)} - {result}")
    return errors


def validate_prompt(prompt: dict, nodes: dict) -> list[str]:
    """Check the whole graph; return the output node ids to run (raise PromptError otherwise)."""
    unknown = {k: v.get("class_type") for k, v in prompt.items() if v.get("class_type") not in nodes}
    if unknown:
        raise PromptError(f"Cannot execute because node types do not exist: {unknown}")
    errors = {k: e for k, v in prompt.items() if (e := validate_node(k, v, prompt, nodes))}
    if errors:
        details = "; ".join(f"node {k} ({prompt[k]['class_type']}): {' | '.join(e)}" for k, e in errors.items())
        raise PromptError(f"Prompt outputs failed validation: {details}", errors)
    outputs = [k for k, v in prompt.items() if nodes[v["class_type"]][1].is_output_node]
    if not outputs:
        raise PromptError("Prompt has no outputs")
    return outputs


def execution_order(prompt: dict, targets: list[str]) -> list[str]:
    """The targets and everything they depend on, dependencies first (depth-first, stable)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == "done":
            return
        if state.get(node_id) == "active":
            raise PromptError(f"the graph has a cycle through node {node_id}")
        state[node_id] = "active"
        for value in prompt[node_id].get("inputs", {}).values():
            if is_link(value):
                visit(value[0])
        state[node_id] = "done"
        order.append(node_id)

    for target in targets:
        visit(target)
    return order


# ---------------------------------------------------------------- running


@dataclass
class RunResult:
    outputs: dict[str, tuple] = field(default_factory=dict)  # node id -> output values
    ui: dict[str, dict] = field(default_factory=dict)  # node id -> ui dict (files saved, previews)
    order: list[str] = field(default_factory=list)


def run_prompt(prompt: dict, classes: Iterable[type], *, extra_data: Optional[dict] = None) -> RunResult:
    """Validate and run an API-format ``prompt`` with the node ``classes`` (plus the core
    equivalents for ids they do not define)."""
    nodes = schemas(classes)
    for cls, schema in schemas(CORE_NODES).items():
        nodes.setdefault(cls, schema)
    order = execution_order(prompt, validate_prompt(prompt, nodes))
    result = RunResult(order=order)
    extra_pnginfo = (extra_data or {}).get("extra_pnginfo")
    for node_id in order:
        comfy.model_management.throw_exception_if_processing_interrupted()
        node = prompt[node_id]
        cls, schema = nodes[node["class_type"]]
        kwargs = {k: (result.outputs[v[0]][v[1]] if is_link(v) else v) for k, v in node.get("inputs", {}).items()}
        hidden = io.HiddenHolder(unique_id=node_id, prompt=prompt, extra_pnginfo=extra_pnginfo)
        clone = type(cls.__name__, (cls,), {"hidden": hidden})  # per-run class clone, as ComfyUI does
        with torch.inference_mode():
            out = clone.execute(**kwargs)
        if isinstance(out, tuple):
            out = io.NodeOutput(*out)
        if not isinstance(out, io.NodeOutput):
            raise TypeError(f"node {node_id} ({node['class_type']}) returned {type(out).__name__}, not a NodeOutput")
        values = tuple(out.args)
        if len(values) != len(schema.outputs or []):
            raise TypeError(f"node {node_id} ({node['class_type']}) returned {len(values)} values for "
                             f"{len(schema.outputs or [])} outputs")
        result.outputs[node_id] = values
        if out.ui is not None:
            result.ui[node_id] = out.ui.as_dict() if hasattr(out.ui, "as_dict") else dict(out.ui)
    return result
