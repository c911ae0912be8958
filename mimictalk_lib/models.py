"""The pack's models in model folders: which manifest assets each loader offers, the converted
model folders found beside them, and loading the models that need more than one file (the BFM
face model with its optional helper files, the MediaPipe task files, LPIPS).

Shared by the ComfyUI loader nodes (over ComfyUI's ``mimictalk`` folders) and the command line
(over ``--models-dir`` / ``$MIMICTALK_MODELS_DIR``); which folders to search is the caller's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from . import download
from .errors import AssetMissingError, DownloadError
from .manifest import load_manifest
from .utils import ProgressFn, logger

RENDERER_ASSETS = ("mimictalk_base_renderer", "real3dportrait_renderer")
A2M_ASSETS = ("ics_a2m",)
HUBERT_ASSETS = ("hubert_large",)
BFM_ASSET, BFM_DERIVED_ASSET = "bfm2009", "bfm_derived_upstream"
LANDMARKER_ASSET, SEGMENTER_ASSET = "mediapipe_face_landmarker", "mediapipe_selfie_multiclass"
LPIPS_ASSET = "lpips_alex"

Folders = Optional[Sequence[Path]]  # None: download.default_model_dirs()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_renderer(cfg: dict) -> bool:
    return cfg.get("kind") == "renderer"


def is_a2m(cfg: dict) -> bool:
    return cfg.get("kind") == "ics_a2m"


def is_hubert(cfg: dict) -> bool:
    return cfg.get("model_type") == "hubert"


def converted_models(folders: Folders, is_kind: Callable[[dict], bool]) -> list[str]:
    """Folders (relative to a model folder) holding ``model.safetensors`` and a ``config.json``
    that ``is_kind`` accepts, over every model folder in ``folders``."""
    found = set()
    for root in folders:
        if root.is_dir():
            for cfg in root.rglob("config.json"):
                if (cfg.parent / "model.safetensors").is_file() and is_kind(_read_json(cfg)):
                    found.add(cfg.parent.relative_to(root).as_posix())
    return sorted(found)


def asset_file(asset_id: str, folders: Folders, *, allow_download: bool, on_step: Optional[ProgressFn] = None) -> Path:
    """The one file of a single-file manifest asset (verified; downloaded when missing and allowed)."""
    folder = download.ensure_asset(asset_id, folders, allow_download=allow_download, on_step=on_step)
    (spec,) = load_manifest().get(asset_id).files
    return folder / spec.name


def load_face_model_from(folders: Folders, *, allow_download: bool, need_mp468: bool = False):
    """The BFM face model from the ``bfm2009`` folder of ``folders``. Its licence-restricted files
    are checked first (the message says how to get them); the small upstream helper files
    (``bfm_derived_upstream``) are fetched when allowed and computed when unavailable.
    ``need_mp468``: also require the MediaPipe-to-BFM map that 3DMM fitting needs."""
    from .face import check_face_model_files, load_face_model

    folder = download.asset_dir(BFM_ASSET, folders)
    check_face_model_files(folder, need_mp468=need_mp468)
    if allow_download:
        try:
            download.ensure_asset(BFM_DERIVED_ASSET, folders, allow_download=True)
        except (DownloadError, AssetMissingError) as e:  # optional files: computed when absent
            logger.warning("MimicTalk: upstream face helper files unavailable (%s); computing them instead",
                           str(e).splitlines()[0])
    return load_face_model(folder, need_mp468=need_mp468)


def mediapipe_files(folders: Folders, *, allow_download: bool) -> dict[str, Path]:
    """``landmarker`` / ``segmenter`` model files for identity preparation (keyword arguments of
    ``prepare_identity`` / ``prepare_photo_identity``)."""
    return dict(landmarker=asset_file(LANDMARKER_ASSET, folders, allow_download=allow_download),
                segmenter=asset_file(SEGMENTER_ASSET, folders, allow_download=allow_download))


def load_lpips_from(folders: Folders, device: torch.device, *, allow_download: bool,
                    on_step: Optional[ProgressFn] = None):
    """The LPIPS network from the ``lpips_alex`` asset (AlexNet features + linear heads)."""
    from .adapt.lpips import load_lpips

    folder = download.ensure_asset(LPIPS_ASSET, folders, allow_download=allow_download, on_step=on_step)
    names = [f.name for f in load_manifest().get(LPIPS_ASSET).files]
    alexnet = [n for n in names if n.startswith("alexnet")]  # torchvision's file name
    heads = [n for n in names if n.startswith("lpips_")]  # the LPIPS linear heads
    if len(alexnet) != 1 or len(heads) != 1:
        raise AssetMissingError(f"the models manifest's '{LPIPS_ASSET}' entry should list one alexnet-*.pth and one "
                                f"lpips_*.pth file, it lists {names}; reinstall the pack")
    return load_lpips(folder / alexnet[0], folder / heads[0], device)


__all__ = [
    "A2M_ASSETS", "BFM_ASSET", "BFM_DERIVED_ASSET", "HUBERT_ASSETS", "LANDMARKER_ASSET", "LPIPS_ASSET",
    "RENDERER_ASSETS", "SEGMENTER_ASSET", "asset_file", "converted_models", "is_a2m", "is_hubert", "is_renderer",
    "load_face_model_from", "load_lpips_from", "mediapipe_files",
]
