"""Build the BFM-2009 "front" model from the original Basel release (Deep3DFaceRecon conversion).

Upstream (``deep_3drecon/util/load_mats.py``, ``transferBFM09``) converts ``01_MorphableModel.mat``
(53 490 vertices, 199 shape/texture components) plus the Guo et al. expression basis
(``Exp_Pca.bin``: 53 215 vertices, 79 components, scaled by ``std_exp.txt``) into the 35 709-vertex
front model with 80 identity, 64 expression and 80 texture components, in decimetres (the Basel
micrometre coordinates / 1e5). The front vertices are ``BFM_front_idx.mat['idx']`` (1-based, into
the expression vertices) and the expression vertices are ``BFM_exp_idx.mat['trimIndex']`` (1-based,
into the Basel vertices). Triangles, landmarks and masks are copied from ``facemodel_info.mat``.
The arithmetic follows upstream element for element, so the written ``BFM_model_front.mat``
holds the same numbers as the one upstream writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..utils import logger
from .files import FRONT_MODEL

N_ID, N_EXP, N_TEX = 80, 64, 80  # components kept (Deep3DFaceRecon)
N_SHAPE_PC, N_EXP_PC = 199, 79  # components in the source files
MICROMETRE_TO_DECIMETRE = 1e5  # "unify the scale to decimeter" (upstream comment)
INFO_KEYS = ("frontmask2_idx", "skinmask", "keypoints", "point_buf", "tri", "tri_mask2")


MAX_MAT_ELEMENTS = 400_000_000
"""Most values a face-model ``.mat`` may declare in all (01_MorphableModel.mat: ~100 million)."""


def load_mat(path: Path, keys: tuple[str, ...]) -> dict:
    """The variables of a MATLAB .mat file, after checking from its header (``whosmat``, which
    reads no data) that the declared array sizes are plausible for a face model."""
    from scipy.io import loadmat, whosmat

    try:
        declared = whosmat(str(path))
        total = sum(int(np.prod(shape, dtype=object)) for _, shape, _ in declared)
        if total > MAX_MAT_ELEMENTS:
            raise CheckpointError(f"{path}: its header declares {total:,} values (limit {MAX_MAT_ELEMENTS:,}); "
                                  "it is not a face-model file or it is damaged: re-download it.")
        mat = loadmat(str(path))
    except (ValueError, OSError, NotImplementedError, TypeError, MemoryError) as e:
        raise CheckpointError(f"{path} could not be read as a MATLAB .mat file ({e}); re-download it.") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise CheckpointError(
            f"{path} lacks the fields {missing} (it has {sorted(k for k in mat if not k.startswith('__'))}); "
            "it is not the expected file."
        )
    return mat


MAX_EXP_COMPONENTS = 1000  # Exp_Pca.bin has 79
MAX_TEXT_BYTES = 1 << 20  # std_exp.txt: 79 numbers


def read_expression_basis(folder: Path, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Read ``Exp_Pca.bin`` (int32 count, float32 mean [3V], float32 basis [count, 3V]) and
    ``std_exp.txt``. Returns the basis as [3V, count] and the standard deviations.

    Upstream hard-codes V = 53 215; we take V from ``BFM_exp_idx.mat`` and check the file size."""
    path = folder / "Exp_Pca.bin"
    limit = 4 + 4 * 3 * n_vertices * (1 + MAX_EXP_COMPONENTS)
    if path.stat().st_size > limit or (folder / "std_exp.txt").stat().st_size > MAX_TEXT_BYTES:
        raise CheckpointError(f"{path} (or std_exp.txt beside it) is far larger than an expression basis over "
                              f"{n_vertices} vertices can be; it is not the expected file: re-download it.")
    raw = path.read_bytes()
    exp_dim = int(np.frombuffer(raw, dtype=np.int32, count=1)[0])
    want = 4 + 4 * 3 * n_vertices * (1 + exp_dim)
    if exp_dim <= 0 or len(raw) < want:
        raise CheckpointError(
            f"{path}: expected {want} bytes for {exp_dim} components over {n_vertices} vertices, "
            f"found {len(raw)}; the file does not match BFM_exp_idx.mat."
        )
    offset = 4 + 4 * 3 * n_vertices  # skip the expression mean (unused upstream too)
    pcs = np.frombuffer(raw, dtype=np.float32, count=3 * exp_dim * n_vertices, offset=offset)
    exp_pc = pcs.reshape(exp_dim, -1).T  # [3V, exp_dim]
    exp_ev = np.loadtxt(folder / "std_exp.txt")
    return exp_pc, exp_ev


def build_front_model(folder: str | Path) -> dict[str, np.ndarray]:
    """Convert the six source files in ``folder`` into the ``BFM_model_front.mat`` field dict."""
    folder = Path(folder)
    basel = load_mat(folder / "01_MorphableModel.mat", ("shapePC", "shapeEV", "shapeMU", "texPC", "texEV", "texMU"))
    front_idx = load_mat(folder / "BFM_front_idx.mat", ("idx",))["idx"]
    trim_idx = load_mat(folder / "BFM_exp_idx.mat", ("trimIndex",))["trimIndex"]
    info = load_mat(folder / "facemodel_info.mat", INFO_KEYS)

    index_exp = front_idx.astype(np.int64).ravel() - 1  # 1-based -> 0-based, into expression vertices
    index_shape = trim_idx.astype(np.int64).ravel()[index_exp] - 1  # into the Basel vertices
    n_basel = basel["shapeMU"].size // 3
    if index_shape.min() < 0 or index_shape.max() >= n_basel:
        raise CheckpointError(
            f"BFM_exp_idx.mat / BFM_front_idx.mat index vertex {index_shape.max() + 1} but "
            f"01_MorphableModel.mat has {n_basel} vertices; the files do not belong together."
        )
    exp_pc, exp_ev = read_expression_basis(folder, trim_idx.size)

    def select(basis: np.ndarray, rows: np.ndarray) -> np.ndarray:
        # [3V, C] -> per-vertex rows -> [3 * len(rows), C]
        c = basis.shape[1]
        return basis.reshape(-1, 3, c)[rows].reshape(-1, c)

    # basis * eigenvalue (per column) / 1e5, first components only; same per-element arithmetic
    id_base = basel["shapePC"][:, :N_ID] * np.reshape(basel["shapeEV"], [-1, N_SHAPE_PC])[:, :N_ID]
    id_base = select(id_base / MICROMETRE_TO_DECIMETRE, index_shape)
    ex_base = exp_pc[:, :N_EXP] * np.reshape(exp_ev, [-1, N_EXP_PC])[:, :N_EXP]
    ex_base = select(ex_base / MICROMETRE_TO_DECIMETRE, index_exp)
    tex_base = basel["texPC"][:, :N_TEX] * np.reshape(basel["texEV"], [-1, N_SHAPE_PC])[:, :N_TEX]
    tex_base = select(tex_base, index_shape)
    mean_shape = (np.reshape(basel["shapeMU"], [-1, 3]) / MICROMETRE_TO_DECIMETRE)[index_shape].reshape(1, -1)
    mean_tex = np.reshape(basel["texMU"], [-1, 3])[index_shape].reshape(1, -1)

    out = {"meanshape": mean_shape, "meantex": mean_tex, "idBase": id_base, "exBase": ex_base, "texBase": tex_base}
    out.update({k: info[k] for k in INFO_KEYS})
    return out


def convert_and_save(folder: str | Path, *, write: bool = True) -> dict[str, np.ndarray]:
    """Build the front model and, when ``write``, save it as ``BFM_model_front.mat`` next to the
    sources (as upstream does), so the slow conversion runs once. A read-only folder only logs."""
    folder = Path(folder)
    logger.info("Building %s from the Basel source files in %s (once)", FRONT_MODEL, folder)
    fields = build_front_model(folder)
    if write:
        from scipy.io import savemat

        tmp = folder / (FRONT_MODEL + ".tmp")
        try:
            with open(tmp, "wb") as f:
                savemat(f, fields)
            os.replace(tmp, folder / FRONT_MODEL)
        except OSError as e:
            logger.warning("Could not save %s into %s (%s); it will be rebuilt next time.", FRONT_MODEL, folder, e)
            tmp.unlink(missing_ok=True)
    return fields
