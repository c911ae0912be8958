"""The pack's only bridge to its host: the one module that imports ``folder_paths``, ``comfy.*``
and ``comfy_api`` (comfyui_conventions.md §3, §8.1).

It hands the nodes the host's V3 API (``io``, ``ui``, ``ComfyExtension``, ``InputImpl``), model
folders, devices, dtype policy, memory management (``manage_model`` / ``use_model`` over a
``ModelPatcher``), progress bar with previews, interrupt flag, save paths and metadata switch.
There is one path, the real host: without ComfyUI (a script, ``python -m mimictalk_lib``) the
pack registers nothing and the library is used directly; tests run the node classes against a
small fake host (``tests/fakehost``). Host modules other than ``folder_paths`` and
``comfy_api.latest`` are imported lazily, when first used inside a node's ``execute``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional, Sequence

import torch

from ..mimictalk_lib import download
from ..mimictalk_lib.utils import ProgressFn, check_device_dtype, logger  # noqa: F401 - logger: the pack entry logs through it

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
register our nodes) the node modules are not imported and nothing below is called."""


def missing_api_message() -> str:
    return (f"[MimicTalk] this ComfyUI has no V3 node API (comfy_api.latest); MimicTalk needs ComfyUI "
            f">= {MIN_COMFYUI_VERSION}. Update ComfyUI; no MimicTalk nodes were registered.")


def _comfy(module: str) -> Any:
    """A ComfyUI module (``comfy.model_management`` ...), imported on first use. An import failure
    propagates: silently running unmanaged would hide a broken host (models outside ComfyUI's
    memory management, no Cancel)."""
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
    return _folder_list(MODEL_FOLDER)


def adapter_dirs() -> list[Path]:
    """Every folder holding personalised adapters, default first (new adapters are saved there):
    the ``mimictalk_adapters`` folders, then ``adapters/`` of every other ``mimictalk`` folder
    (so an extra_model_paths.yaml ``mimictalk:`` entry brings its adapters along)."""
    dirs = _folder_list(ADAPTER_FOLDER)
    return dirs + [d for d in (m / ADAPTER_SUBDIR for m in model_dirs()) if d not in dirs]


def find_inside(name: Any, folders: Sequence[os.PathLike | str], *, folder_ok: bool = False) -> Optional[Path]:
    """The file ``name`` (a widget value) in the first of ``folders`` holding it, confined like
    ComfyUI's ``folder_paths.get_full_path``: only a relative name (no absolute path, no drive,
    no ``..``), and the file, its symlinks resolved, must still lie inside that folder (also
    resolved). None when there is no such file. ``folder_ok``: a folder counts too (converted
    models are folders)."""
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        return None
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or PureWindowsPath(name).drive or PureWindowsPath(name).is_absolute() or ".." in rel.parts:
        return None
    for folder in folders:
        try:
            base = Path(folder).resolve()
            path = (base / rel).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable folder
            continue
        if base in path.parents and (path.is_file() or folder_ok and path.is_dir()):
            return path
    return None


def outside_message(what: str, name: Any, folders: Sequence[os.PathLike | str]) -> str:
    """The validation error for a widget value :func:`find_inside` refused: what, the value and
    the folders it must be in."""
    where = ", ".join(str(f) for f in folders) or "(none registered)"
    return (f"{what} '{name}' was not found in its folders ({where}): pick one from the list. Only names inside "
            "these folders are accepted (no absolute path, no '..', no link pointing outside them); put the file "
            "there, or add its folder to ComfyUI's extra_model_paths.yaml.")


def ensure_asset(asset_id: str, *, allow_download: bool, on_step: Optional[ProgressFn] = None,
                 include_optional: bool = False) -> Path:
    """``mimictalk_lib.download.ensure_asset`` over the host's model folders."""
    return download.ensure_asset(asset_id, model_dirs(), allow_download=allow_download, on_step=on_step,
                                 include_optional=include_optional)


def output_directory() -> Path:
    return Path(folder_paths.get_output_directory())


def input_directory() -> Path:
    return Path(folder_paths.get_input_directory())


def input_files(content_types: Sequence[str]) -> list[str]:
    """Files of the input folder with one of ``content_types`` ('audio', 'video', 'image'), sorted."""
    folder = input_directory()
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return sorted(folder_paths.filter_files_content_types(names, list(content_types)))


def annotated_folder(name: str) -> tuple[str, Path]:
    """(file name, folder) of an input widget value: the input folder, or the output / temp folder
    for a ``"x.wav [output]"`` / ``"x.wav [temp]"`` annotation (as ComfyUI's annotated paths)."""
    for kind, folder in (("input", folder_paths.get_input_directory), ("output", folder_paths.get_output_directory),
                         ("temp", folder_paths.get_temp_directory)):
        if name.endswith(f" [{kind}]"):
            return name[: -len(kind) - 3], Path(folder())
    return name, input_directory()


def input_path(name: str) -> Optional[Path]:
    """The file an input widget names, confined to its folder (:func:`annotated_folder`,
    :func:`find_inside`); None when there is no such file there."""
    if not isinstance(name, str):
        return None
    file, folder = annotated_folder(name)
    return find_inside(file, [folder])


def check_input_file(what: str, name: str) -> bool | str:
    """validate_inputs helper for an input-folder widget: True, or the message naming the folder."""
    if input_path(name) is not None:
        return True
    return outside_message(what, name, [annotated_folder(name)[1] if isinstance(name, str) else input_directory()])


# ---------------------------------------------------------------- devices and precision


def torch_device() -> torch.device:
    """Where models run: the host's choice (``--cpu``, MPS, ...)."""
    return torch.device(_comfy("comfy.model_management").get_torch_device())


def offload_device() -> torch.device:
    """Where idle weights wait (CPU unless the host keeps everything on the GPU)."""
    return torch.device(_comfy("comfy.model_management").unet_offload_device())


def intermediate_device() -> torch.device:
    """Where IMAGE / AUDIO outputs go between nodes (CPU in ComfyUI unless ``--gpu-only``)."""
    return torch.device(_comfy("comfy.model_management").intermediate_device())


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(precision: str, device: torch.device, cpu_bf16: bool = False) -> torch.dtype:
    """The compute dtype for a node's ``precision`` widget (auto / fp32 / bf16 / fp16).

    ``auto`` follows the host (``should_use_bf16`` / ``should_use_fp16``, which honour
    ``--force-fp32``); half precision is never chosen on the CPU, and refused there except bf16
    where the caller opts in (``cpu_bf16``, see ``check_device_dtype``)."""
    device = torch.device(device)
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
        check_device_dtype(device, PRECISIONS[precision], cpu_bf16=cpu_bf16)
        return PRECISIONS[precision]
    if device.type == "cpu":
        return torch.float32
    mm = _comfy("comfy.model_management")
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16 if mm.should_use_fp16(device) else torch.float32


# ---------------------------------------------------------------- progress, interrupts, memory


def throw_if_interrupted() -> None:
    """Raise the host's interrupt exception if the user pressed Cancel."""
    _comfy("comfy.model_management").throw_exception_if_processing_interrupted()


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
    and raises on Cancel."""
    bar = _comfy("comfy.utils").ProgressBar(max(int(total), 1), node_id=node_id)

    def on_step(done: int, total_now: int, **info) -> None:
        throw_if_interrupted()
        bar.update_absolute(int(done), max(int(total_now), 1), _preview(info.get("preview")))

    return on_step


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
    a ``ModelPatcher`` over a :class:`MimicTalkModel` (ComfyUI can then offload and evict it).
    :func:`use_model` gets it back, loaded."""
    holder = MimicTalkModel(model, next(model.parameters()).device)
    return _comfy("comfy.model_patcher").ModelPatcher(holder, load_device=torch_device(), offload_device=offload_device())


def use_model(managed: Any) -> torch.nn.Module:
    """Load a :func:`manage_model` handle onto the compute device (ComfyUI evicts other models as
    needed) and return the model inside."""
    _comfy("comfy.model_management").load_models_gpu([managed])
    return managed.model.model


def free_memory() -> None:
    """Before training: unload every other model from the accelerator and empty its cache."""
    mm = _comfy("comfy.model_management")
    mm.unload_all_models()
    mm.soft_empty_cache()


def soft_empty_cache() -> None:
    """Release cached accelerator memory once per node (never per loop iteration)."""
    _comfy("comfy.model_management").soft_empty_cache()


# ---------------------------------------------------------------- saving outputs


def metadata_enabled() -> bool:
    """False when ComfyUI runs with ``--disable-metadata`` (then no prompt/workflow is embedded)."""
    return not getattr(_comfy("comfy.cli_args").args, "disable_metadata", False)


def save_path(prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """(folder, file stem, counter, subfolder) for a new output file named after ``prefix``
    (``"video/MimicTalk"``): ComfyUI's ``get_save_image_path`` (``%date%``-style variables,
    refuses folders outside the output directory)."""
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(output_directory()), width, height)
    return Path(folder), stem, counter, subfolder


def video_from_file(path: os.PathLike | str) -> Any:
    """A core ``VIDEO`` value for a saved file (``InputImpl.VideoFromFile``)."""
    return InputImpl.VideoFromFile(os.fspath(path))
