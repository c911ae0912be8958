"""The pack's only bridge to its host: the one module that imports ``folder_paths``, ``comfy.*``
and ``comfy_api`` (comfyui_conventions.md §3, §8.1).

Inside ComfyUI it hands the nodes and the library the host's V3 API (``io``, ``ui``,
``ComfyExtension``, ``InputImpl``), model folders, devices, dtype policy, memory management
(``manage_model`` / ``use_model`` over a ``ModelPatcher``), progress bar with previews, interrupt
flag, save paths and metadata switch. Outside ComfyUI (``python -m mimictalk_lib talk``, scripts,
tests) every service falls back to a standalone equivalent (the V3 API to ``nodes.v3api``), so
node classes and the library never need to know where they run. Host modules other than
``folder_paths`` and ``comfy_api.latest`` are imported lazily, when first used inside a node's
``execute``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import torch

from ..mimictalk_lib import download
from ..mimictalk_lib.utils import ProgressFn, check_device_dtype, logger

try:  # ComfyUI's model-folder registry: present whenever we run inside ComfyUI
    import folder_paths
except ImportError:
    folder_paths = None

try:  # the V3 node API (ComfyUI >= 0.3.47; we test against MIN_COMFYUI_VERSION)
    from comfy_api.latest import ComfyExtension, InputImpl, io, ui
except ImportError:
    ComfyExtension = InputImpl = io = ui = None

MIN_COMFYUI_VERSION = "0.3.64"
"""Oldest ComfyUI the pack supports (pyproject ``requires-comfyui``): V3 ``comfy_api.latest``."""

MODEL_FOLDER = "mimictalk"
"""folder_paths key of the weights folder, ``models/mimictalk`` (extra_model_paths.yaml: ``mimictalk:``)."""

ADAPTER_FOLDER = "mimictalk_adapters"
"""folder_paths key of personalised adapters, ``models/mimictalk/adapters``."""

ADAPTER_SUBDIR = "adapters"

IN_COMFYUI = folder_paths is not None
V3_AVAILABLE = ComfyExtension is not None
HOSTED = IN_COMFYUI and V3_AVAILABLE
"""Running inside a ComfyUI that can host the pack. Otherwise (no ComfyUI, or one too old to
register our nodes) every service below uses its standalone fallback."""

if not HOSTED:  # the node classes still work: a standalone subset of the V3 API runs them
    from .v3api import ComfyExtension, VideoFromFile, io, ui  # noqa: F811

    InputImpl = SimpleNamespace(VideoFromFile=VideoFromFile)


def missing_api_message() -> str:
    return (f"[MimicTalk] this ComfyUI has no V3 node API (comfy_api.latest); MimicTalk needs ComfyUI "
            f">= {MIN_COMFYUI_VERSION}. Update ComfyUI; no MimicTalk nodes were registered.")


def _comfy(module: str) -> Optional[Any]:
    """A ComfyUI module (``comfy.model_management`` ...) when running inside ComfyUI, else None.

    Inside ComfyUI an import failure propagates: silently running unmanaged would hide a broken
    host (models outside ComfyUI's memory management, no Cancel)."""
    if not HOSTED:
        return None
    return importlib.import_module(module)


# ---------------------------------------------------------------- model folders


def register_model_folders() -> bool:
    """Register ``models/mimictalk`` (+ ``adapters``) as the default folders of our keys, keeping
    folders added earlier by extra_model_paths.yaml. Called once at pack import; no disk writes."""
    if not HOSTED:
        return False
    base = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    folder_paths.add_model_folder_path(MODEL_FOLDER, base, is_default=True)
    folder_paths.add_model_folder_path(ADAPTER_FOLDER, os.path.join(base, ADAPTER_SUBDIR), is_default=True)
    return True


def _folder_list(key: str) -> list[Path]:
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(key)]
    except KeyError:  # the pack's import-time registration was skipped or undone
        register_model_folders()
        return [Path(p) for p in folder_paths.get_folder_paths(key)]


def model_dirs() -> list[Path]:
    """Every ``mimictalk`` weights folder, default first (downloads go there)."""
    if not HOSTED:
        return download.default_model_dirs()
    return _folder_list(MODEL_FOLDER)


def adapter_dirs() -> list[Path]:
    """Every folder holding personalised adapters, default first (new adapters are saved there):
    the ``mimictalk_adapters`` folders, then ``adapters/`` of every other ``mimictalk`` folder
    (so an extra_model_paths.yaml ``mimictalk:`` entry brings its adapters along)."""
    if not HOSTED:
        return [d / ADAPTER_SUBDIR for d in download.default_model_dirs()]
    dirs = _folder_list(ADAPTER_FOLDER)
    return dirs + [d for d in (m / ADAPTER_SUBDIR for m in model_dirs()) if d not in dirs]


def ensure_asset(asset_id: str, *, allow_download: bool, on_step: Optional[ProgressFn] = None,
                 include_optional: bool = False) -> Path:
    """``mimictalk_lib.download.ensure_asset`` over the host's model folders."""
    return download.ensure_asset(asset_id, model_dirs(), allow_download=allow_download, on_step=on_step,
                                 include_optional=include_optional)


_STANDALONE_DIRS: dict[str, Path] = {}


def set_standalone_directories(**dirs: os.PathLike | str) -> None:
    """Standalone only: where ``input`` / ``output`` / ``temp`` files go (default ``./input``,
    ``./output`` and the system temp folder); ComfyUI's own folders always win inside ComfyUI."""
    unknown = set(dirs) - {"input", "output", "temp"}
    if unknown:
        raise ValueError(f"unknown folder kinds {sorted(unknown)}; use input, output or temp")
    _STANDALONE_DIRS.update({k: Path(v) for k, v in dirs.items()})


def output_directory() -> Path:
    if HOSTED:
        return Path(folder_paths.get_output_directory())
    return _STANDALONE_DIRS.get("output", Path.cwd() / "output")


def temp_directory() -> Path:
    if HOSTED:
        return Path(folder_paths.get_temp_directory())
    return _STANDALONE_DIRS.get("temp", Path(tempfile.gettempdir()) / "mimictalk")


def input_directory() -> Path:
    if HOSTED:
        return Path(folder_paths.get_input_directory())
    return _STANDALONE_DIRS.get("input", Path.cwd() / "input")


MEDIA_EXTENSIONS = {
    "audio": {"wav", "mp3", "flac", "ogg", "m4a", "aac", "opus"},
    "video": {"mp4", "mov", "mkv", "webm", "avi", "m4v"},
    "image": {"png", "jpg", "jpeg", "webp", "bmp"},
}
"""Extensions of the input files the standalone host lists (ComfyUI decides by MIME type)."""


def input_files(content_types: Sequence[str]) -> list[str]:
    """Files of the input folder with one of ``content_types`` ('audio', 'video', 'image'), sorted."""
    folder = input_directory()
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if HOSTED:
        return sorted(folder_paths.filter_files_content_types(names, list(content_types)))
    wanted = set().union(*(MEDIA_EXTENSIONS[c] for c in content_types))
    return [n for n in names if n.rsplit(".", 1)[-1].lower() in wanted]


def input_path(name: str) -> Path:
    """The file an input widget names: ``name`` in the input folder (``"x.wav [output]"``
    annotations select another ComfyUI folder); an absolute path is used as it is."""
    if HOSTED:
        return Path(folder_paths.get_annotated_filepath(name))
    return input_directory() / name


# ---------------------------------------------------------------- devices and precision


def torch_device() -> torch.device:
    """Where models run: the host's choice (``--cpu``, MPS, ...) or the current accelerator."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return torch.device(mm.get_torch_device())
    accel = getattr(torch, "accelerator", None)
    current = accel.current_accelerator() if accel is not None and accel.is_available() else None
    return torch.device(current) if current is not None else torch.device("cpu")


def offload_device() -> torch.device:
    """Where idle weights wait (CPU unless the host keeps everything on the GPU)."""
    mm = _comfy("comfy.model_management")
    return torch.device(mm.unet_offload_device()) if mm is not None else torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where IMAGE / AUDIO outputs go between nodes (CPU in ComfyUI unless ``--gpu-only``)."""
    mm = _comfy("comfy.model_management")
    return torch.device(mm.intermediate_device()) if mm is not None else torch.device("cpu")


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for a node's ``precision`` widget (auto / fp32 / bf16 / fp16).

    ``auto`` follows the host (``should_use_bf16`` / ``should_use_fp16``, which honour
    ``--force-fp32``); half precision is never chosen, and refused, on the CPU."""
    device = torch.device(device)
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
        check_device_dtype(device, PRECISIONS[precision])
        return PRECISIONS[precision]
    if device.type == "cpu":
        return torch.float32
    mm = _comfy("comfy.model_management")
    if mm is not None:
        if mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float16 if mm.should_use_fp16(device) else torch.float32
    backend = torch.get_device_module(device.type)  # standalone on an accelerator: bf16 where it has it
    if getattr(backend, "is_bf16_supported", None) is not None and backend.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# ---------------------------------------------------------------- progress, interrupts, memory


def throw_if_interrupted() -> None:
    """Raise the host's interrupt exception if the user pressed Cancel (no-op standalone)."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


PREVIEW_MAX_SIZE = 512  # ComfyUI's default --preview-size


def _preview(image: Any) -> Optional[tuple]:
    """A progress-bar preview (``("JPEG", PIL image, max size)``) from an IMAGE-like tensor."""
    if not isinstance(image, torch.Tensor):
        return None
    try:
        from PIL import Image  # always present in ComfyUI (its own dependency)
    except ImportError:
        return None

    img = image[0] if image.dim() == 4 else image
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return "JPEG", Image.fromarray(arr), PREVIEW_MAX_SIZE


def progress(total: int, node_id: Optional[str] = None) -> ProgressFn:
    """An ``on_step(done, total, **info)`` callback for the library: drives ComfyUI's progress bar
    of the running node (with ``info["preview"]``, an image [H, W, 3] 0..1, shown on the node)
    and raises on Cancel. Standalone it logs every 10 %."""
    utils = _comfy("comfy.utils")
    if utils is not None:
        bar = utils.ProgressBar(max(int(total), 1), node_id=node_id)

        def on_step(done: int, total_now: int, **info) -> None:
            throw_if_interrupted()
            bar.update_absolute(int(done), max(int(total_now), 1), _preview(info.get("preview")))

        return on_step
    last = [-1]

    def log_step(done: int, total_now: int, **info) -> None:
        if total_now > 0 and (pct := int(100 * done / total_now) // 10) != last[0]:
            last[0] = pct
            logger.info("MimicTalk: %s %d/%d %s", info.get("stage", "step"), done, total_now, info.get("file", ""))

    return log_step


class MimicTalkModel(torch.nn.Module):
    """What ComfyUI's ``ModelPatcher`` manages for one of our models: the model as a child and a
    plain ``device`` attribute (the patcher assigns it when it moves the weights; our models
    expose ``device`` as a read-only property)."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model = model
        self.device = torch.device(device)


def manage_model(model: torch.nn.Module) -> Any:
    """Hand ``model`` (already on its compute device and dtype) to the host's memory management:
    a ``ModelPatcher`` over a :class:`MimicTalkModel` inside ComfyUI (it can then offload and evict
    it), the holder itself standalone. :func:`use_model` gets it back, loaded."""
    device = next(model.parameters()).device
    holder = MimicTalkModel(model, device)
    patcher = _comfy("comfy.model_patcher")
    if patcher is None:
        return holder
    return patcher.ModelPatcher(holder, load_device=torch_device(), offload_device=offload_device())


def use_model(managed: Any) -> torch.nn.Module:
    """Load a :func:`manage_model` handle onto the compute device (ComfyUI evicts other models as
    needed) and return the model inside."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.load_models_gpu([managed])
        return managed.model.model
    return managed.model


def free_memory() -> None:
    """Before training: unload every other model from the accelerator and empty its cache."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        mm.soft_empty_cache()


def soft_empty_cache() -> None:
    """Release cached accelerator memory once per node (never per loop iteration)."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()


# ---------------------------------------------------------------- saving outputs


def metadata_enabled() -> bool:
    """False when ComfyUI runs with ``--disable-metadata`` (then no prompt/workflow is embedded)."""
    cli = _comfy("comfy.cli_args")
    return not (cli is not None and getattr(cli.args, "disable_metadata", False))


def save_path(prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """(folder, file stem, counter, subfolder) for a new output file named after ``prefix``
    (``"video/MimicTalk"``): ComfyUI's ``get_save_image_path`` (``%date%``-style variables,
    refuses folders outside the output directory); standalone the next free counter."""
    out = output_directory()
    if HOSTED:
        folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(out), width, height)
        return Path(folder), stem, counter, subfolder
    subfolder, stem = os.path.split(os.path.normpath(prefix))
    folder = (out / subfolder).resolve()
    if os.path.commonpath([out.resolve(), folder]) != str(out.resolve()):
        raise ValueError(f"filename_prefix {prefix!r} points outside the output folder {out}")
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m) for p in folder.iterdir() if (m := p.name[len(stem) + 1:].split("_")[0]).isdigit()
             and p.name.startswith(stem + "_")]
    return folder, stem, max(taken, default=0) + 1, subfolder


def video_from_file(path: os.PathLike | str) -> Any:
    """A core ``VIDEO`` value for a saved file (``InputImpl.VideoFromFile``)."""
    return InputImpl.VideoFromFile(os.fspath(path))
