"""Assets derived from the face model: NCC colour code, eye-hole triangles, index files.

Upstream ships ``deep_3drecon/ncc_code.npy`` (float32 [3, 35709]) and
``deep_3drecon/bfm_{left,right}_eye_faces.npy`` (int64, 1-based triangle indices, 569 + 565) in its
MIT repository; they are derived from BFM. When the files are in the face-model folder they are
used as they are (exact). Otherwise:

* **NCC** ("normalised canonical coordinates", the SECC/PNCC vertex colours): each axis of the
  mean shape is min-max normalised to [0, 1] over all front vertices. The shipped file has per-row
  minimum exactly 0 and maximum exactly 1, which this rule reproduces; no upstream code writes the
  file, so the rule is inferred (documented in the package docstring).
* **Eye holes**: the triangles whose centroid, in the frontal (x, y) view of the mean shape, lies
  inside the eyelid contour of the 68-point landmarks (36-41 and 42-47). This approximates the
  shipped lists (which were made by hand or by an unpublished script); prefer the shipped files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import CheckpointError
from ..utils import logger

RIGHT_EYE_LM68 = tuple(range(36, 42))  # subject's right eye contour in the 68-point scheme
LEFT_EYE_LM68 = tuple(range(42, 48))


MAX_NPY_ELEMENTS = 50_000_000
"""Largest array a face-model ``.npy`` may hold (the upstream ones have ~107 000 values)."""


def load_npy(path: Path, max_elements: int = MAX_NPY_ELEMENTS) -> np.ndarray:
    """``np.load`` of a plain numeric ``.npy`` after checking its header: a numeric dtype, at most
    ``max_elements`` values, and as many data bytes in the file as the header claims; otherwise
    CheckpointError before anything is allocated."""
    import os

    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _fortran, dtype = read_header(fh)
            data_start = fh.tell()
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable .npy array ({e}); re-download the file.") from e
    count = int(np.prod(shape, dtype=object))
    if dtype.hasobject or dtype.kind not in "biuf":
        raise CheckpointError(f"{path}: holds {dtype} values, expected plain numbers; re-download the file.")
    if count > max_elements or count * dtype.itemsize > os.path.getsize(path) - data_start:
        raise CheckpointError(f"{path}: its header claims shape {tuple(shape)} ({count:,} values), which "
                              f"{'exceeds the ' + format(max_elements, ',') + '-value limit' if count > max_elements else 'the file does not hold'}; "
                              "the file is damaged: re-download it.")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} could not be read ({e}); re-download the file.") from e


def load_index_file(path: Path, length: Optional[int], upper: int) -> np.ndarray:
    """Load a 1-D integer ``.npy`` index file, checking its length and that indices < ``upper``."""
    arr = load_npy(path)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or (length is not None and arr.shape[0] != length):
        raise CheckpointError(
            f"{path}: expected a 1-D integer array{'' if length is None else f' of length {length}'}, "
            f"got {arr.dtype} {arr.shape}; re-download the file."
        )
    if arr.size and arr.max() >= upper:
        raise CheckpointError(f"{path}: index {arr.max()} out of range for {upper} entries; wrong face model?")
    return arr.astype(np.int64)


def ncc_from_mean_shape(mean_shape: torch.Tensor) -> torch.Tensor:
    """Per-axis min-max normalisation of the mean shape [N, 3] -> NCC colours [N, 3] in [0, 1]."""
    lo = mean_shape.min(dim=0, keepdim=True).values
    hi = mean_shape.max(dim=0, keepdim=True).values
    return (mean_shape - lo) / (hi - lo)


def load_or_compute_ncc(path: Optional[Path], mean_shape: torch.Tensor) -> torch.Tensor:
    """NCC colours [N, 3]: from ``ncc_code.npy`` ([3, N]) when given, else computed."""
    if path is None:
        return ncc_from_mean_shape(mean_shape)
    arr = load_npy(path)
    n = mean_shape.shape[0]
    if arr.shape != (3, n):
        raise CheckpointError(f"{path}: expected shape (3, {n}) for this face model, got {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32).T.copy())


def _inside_polygon(points: torch.Tensor, polygon: torch.Tensor) -> torch.Tensor:
    """Even-odd rule: points [P, 2] inside the closed polygon [V, 2] -> bool [P]."""
    a = polygon  # [V, 2]
    b = polygon.roll(-1, dims=0)
    px, py = points[:, None, 0], points[:, None, 1]  # [P, 1]
    straddles = (a[:, 1] > py) != (b[:, 1] > py)  # [P, V]
    x_cross = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1]).where(straddles, torch.ones(()))
    crossings = (straddles & (px < x_cross)).sum(dim=1)
    return crossings % 2 == 1


def eye_faces_from_landmarks(mean_shape: torch.Tensor, tri: torch.Tensor, lm68: torch.Tensor) -> torch.Tensor:
    """Triangles (indices into ``tri``) whose frontal centroid lies inside either eye contour."""
    centroid = mean_shape[tri].mean(dim=1)[:, :2]  # [F, 2] frontal view = drop z
    inside = torch.zeros(tri.shape[0], dtype=torch.bool)
    for contour in (RIGHT_EYE_LM68, LEFT_EYE_LM68):
        inside |= _inside_polygon(centroid, mean_shape[lm68[list(contour)], :2])
    return inside.nonzero().squeeze(1)


def load_or_compute_eye_faces(
    left: Optional[Path], right: Optional[Path], mean_shape: torch.Tensor, tri: torch.Tensor, lm68: torch.Tensor
) -> torch.Tensor:
    """0-based indices into ``tri`` of the eye-hole triangles (removed from the SECC mesh)."""
    if left is not None and right is not None:
        n_faces = tri.shape[0] + 1  # the files hold 1-based indices
        idx = [load_index_file(p, None, n_faces) - 1 for p in (right, left)]
        return torch.from_numpy(np.concatenate(idx))
    logger.info(
        "bfm_{left,right}_eye_faces.npy not found: computing the eye-hole triangles from the 68-point "
        "eye contours (an approximation of upstream's lists; put the upstream files in the face-model "
        "folder for exact SECC maps)"
    )
    return eye_faces_from_landmarks(mean_shape, tri, lm68)
