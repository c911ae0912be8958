"""The fake host's V3 node API: a stand-in for the part of ComfyUI's ``comfy_api.latest`` the
pack's nodes use, so the real node classes run in tests without ComfyUI.

It follows the public signatures and behaviour of ComfyUI 0.3.64's V3 API as documented in
``comfyui_conventions.md`` §1.3 (keyword names, ``Schema.validate`` / ``finalize``,
``NodeOutput``, ``ui.PreviewVideo`` dicts); it is written from that description, not from
ComfyUI's code, and covers only what the tests need. The real-ComfyUI end-to-end test
(``tests/e2e``) is the authority on the node layer.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from types import SimpleNamespace
from typing import Any, Optional

# ---------------------------------------------------------------- io


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class Input:
    """A node input (socket). ``Parent`` is the socket type it belongs to."""

    Parent: Any = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class WidgetInput(Input):
    """An input with a widget (a constant value in the prompt unless linked)."""

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input


class Output:
    Parent: Any = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


def _socket(io_type: str, input_cls: type = Input, name: Optional[str] = None) -> type:
    """A socket type class with nested ``Input`` / ``Output`` classes bound to ``io_type``."""
    cls = type(name or io_type.title(), (), {"io_type": io_type})
    cls.Input = type("Input", (input_cls,), {"Parent": cls})
    cls.Output = type("Output", (Output,), {"Parent": cls})
    return cls


class _Boolean(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: bool = None, label_on: str = None, label_off: str = None, socketless: bool = None,
                 force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.label_on, self.label_off = label_on, label_off


class _Int(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: int = None, min: int = None, max: int = None, step: int = None,
                 control_after_generate: bool = None, display_mode=None, socketless: bool = None,
                 force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.display_mode = min, max, step, display_mode
        self.control_after_generate = control_after_generate


class _Float(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: float = None, min: float = None, max: float = None, step: float = None, round: float = None,
                 display_mode=None, socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode


class _String(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 multiline=False, placeholder: str = None, default: str = None, dynamic_prompts: bool = None,
                 socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts


class _Combo(WidgetInput):
    def __init__(self, id: str, options: list = None, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, default: Any = None, control_after_generate: bool = None,
                 upload: UploadType = None, image_folder: FolderType = None, remote=None, socketless: bool = None):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [v.value for v in options]
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options, self.control_after_generate, self.upload = options, control_after_generate, upload
        self.image_folder, self.remote = image_folder, remote


Boolean = _socket("BOOLEAN", _Boolean, "Boolean")
Int = _socket("INT", _Int, "Int")
Float = _socket("FLOAT", _Float, "Float")
String = _socket("STRING", _String, "String")
Combo = _socket("COMBO", _Combo, "Combo")
Image = _socket("IMAGE", name="Image")
Mask = _socket("MASK", name="Mask")
Audio = _socket("AUDIO", name="Audio")
Video = _socket("VIDEO", name="Video")


def Custom(io_type: str) -> type:  # noqa: N802 - the real API's name
    """A socket type for a custom ``io_type`` string."""
    return _socket(io_type)


@dataclass
class Schema:
    """Definition of a V3 node (the fields the pack uses, with ComfyUI's defaults)."""

    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        """Input ids unique, output ids unique, and no id shared between inputs and outputs."""
        ins = [i.id for i in self.inputs or []]
        outs = [o.id for o in self.outputs or [] if o.id is not None]
        issues = [f"{what} ids must be unique, but {[k for k, n in Counter(ids).items() if n > 1]} are not."
                  for what, ids in (("Input", ins), ("Output", outs)) if len(set(ids)) != len(ids)]
        if set(ins) & set(outs):
            issues.append(f"Ids must be unique between inputs and outputs, but {set(ins) & set(outs)} are not.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self) -> None:
        """Output nodes receive the prompt and extra_pnginfo; outputs get default ids."""
        if self.is_output_node:
            self.hidden = list(self.hidden or [])
            self.hidden += [h for h in (Hidden.prompt, Hidden.extra_pnginfo) if h not in self.hidden]
        for i, out in enumerate(self.outputs or []):
            if out.id is None:
                out.id = f"_{i}_{out.io_type}_"


class HiddenHolder(SimpleNamespace):
    """``cls.hidden``: the hidden values a node asked for (missing ones read as None)."""

    def __getattr__(self, key: str) -> Any:
        return None


class ComfyNode:
    """Base class of V3 nodes: classmethods only, no instance state."""

    hidden: HiddenHolder = HiddenHolder()

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index) -> Any:
        return self.args[index]


io = SimpleNamespace(
    FolderType=FolderType, UploadType=UploadType, Hidden=Hidden, Input=Input, WidgetInput=WidgetInput, Output=Output,
    Boolean=Boolean, Int=Int, Float=Float, String=String, Combo=Combo, Image=Image, Mask=Mask, Audio=Audio,
    Video=Video, Custom=Custom, Schema=Schema, HiddenHolder=HiddenHolder, ComfyNode=ComfyNode, NodeOutput=NodeOutput,
)
"""The ``comfy_api.latest.io`` stand-in."""


# ---------------------------------------------------------------- ui


class SavedResult(dict):
    """A file the UI can show: ``{"filename", "subfolder", "type"}``."""

    def __init__(self, filename: str, subfolder: str, type: FolderType):
        super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)


class PreviewVideo:
    def __init__(self, values: list, **kwargs):
        self.values = values

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (True,)}


class PreviewImage:
    """Standalone previews are not saved anywhere (there is no UI to show them)."""

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs):
        self.values, self.animated = [], animated

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (self.animated,)}


ui = SimpleNamespace(SavedResult=SavedResult, PreviewVideo=PreviewVideo, PreviewImage=PreviewImage)
"""The ``comfy_api.latest.ui`` stand-in."""


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list:
        """The node classes this extension provides."""


# ---------------------------------------------------------------- VIDEO


class VideoFromFile:
    """A core-style ``VIDEO`` value for a file on disk (``InputImpl.VideoFromFile``):
    ``get_stream_source()`` gives the path, ``get_components()`` decodes it with PyAV into
    ComfyUI's conventions (IMAGE frames 0..1, AUDIO dict or None, frame rate)."""

    def __init__(self, file: str | os.PathLike):
        self._file = os.fspath(file)

    def get_stream_source(self) -> str:
        return self._file

    def get_components(self) -> SimpleNamespace:
        from mimictalk_lib.video import read_video

        clip = read_video(self._file)
        return SimpleNamespace(images=clip.frames.float() / 255, frame_rate=Fraction(clip.fps).limit_denominator(1000),
                               audio=clip.audio.to_comfy() if clip.audio is not None else None, metadata=clip.metadata)

    def get_dimensions(self) -> tuple[int, int]:
        from mimictalk_lib.video import read_video

        frames = read_video(self._file, with_audio=False, max_frames=1).frames
        return int(frames.shape[2]), int(frames.shape[1])
