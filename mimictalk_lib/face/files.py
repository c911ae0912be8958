"""The face-model folder: which files it needs, what each is for, where it comes from.

The Basel Face Model 2009 (BFM) is registration-only and may not be redistributed, so it is never
downloaded or shipped by this pack: the user puts the files into one folder by hand. Upstream
(MimicTalk / Real3D-Portrait ``deep_3drecon/BFM``) reads ``BFM_model_front.mat`` (the Deep3DFaceRecon
"front" model, 35 709 vertices) and builds it from the original Basel release plus the Guo et al.
expression basis when it is absent; we accept the same two layouts.

``check_face_model_files`` resolves the folder and raises ``FaceModelMissingError`` listing every
missing file with its purpose, origin and licence, and the folder it belongs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import FaceModelMissingError

FRONT_MODEL = "BFM_model_front.mat"
"""The converted front model (Deep3DFaceRecon layout): meanshape, idBase, exBase, tri, keypoints, ..."""

MP468_INDEX = "index_mp468_from_mesh35709.npy"
"""MediaPipe-468 -> BFM-front vertex map used by the landmark fitting (negative = unmatched)."""

NCC_CODE = "ncc_code.npy"
LEFT_EYE_FACES = "bfm_left_eye_faces.npy"
RIGHT_EYE_FACES = "bfm_right_eye_faces.npy"

BASEL_URL = "https://faces.dmi.unibas.ch/bfm/main.php?nav=1-2&id=downloads"
D3DFR_URL = "https://github.com/sicxu/Deep3DFaceRecon_pytorch (folder BFM/)"
GUO_URL = "https://github.com/Juyong/3DFace (the 'CoarseData' archive Coarse_Dataset.zip)"
UPSTREAM_BFM_URL = (
    "the MimicTalk / Real3D-Portrait authors' BFM folder (README: Google Drive folder "
    "1o4t5YIw7w4cMUN4bgU9nPf6IyWVG1bEk, BaiduYun password m9q5)"
)
UPSTREAM_REPO_URL = "https://github.com/yerfor/MimicTalk (folder deep_3drecon/, MIT)"

FILE_INFO: dict[str, tuple[str, str]] = {
    # name: (what it is for, where it comes from + licence)
    FRONT_MODEL: (
        "the BFM-2009 front face model (mean shape, 80 identity + 64 expression bases, triangles, "
        "68 landmark indices); built automatically from the six Basel/Deep3DFaceRecon files below "
        "when absent",
        f"{UPSTREAM_BFM_URL}, or converted from the files below (Basel non-commercial licence)",
    ),
    "01_MorphableModel.mat": (
        "Basel Face Model 2009 shape basis (the identity model)",
        f"register at {BASEL_URL} and accept the BFM licence (non-commercial research only; "
        "redistribution not allowed)",
    ),
    "Exp_Pca.bin": (
        "expression PCA basis on the BFM topology (FaceWarehouse-derived, Guo et al.)",
        f"{GUO_URL}; research-only FaceWarehouse terms",
    ),
    "std_exp.txt": ("standard deviations of the expression basis", D3DFR_URL),
    "BFM_front_idx.mat": ("vertex indices of the front face region", D3DFR_URL),
    "BFM_exp_idx.mat": ("vertex indices of the expression basis in BFM-2009", D3DFR_URL),
    "facemodel_info.mat": ("triangles, 68 landmark indices and masks of the front model", D3DFR_URL),
    MP468_INDEX: (
        "MediaPipe-468 landmark -> BFM vertex map, needed to fit 3DMM coefficients to a video or image",
        UPSTREAM_BFM_URL,
    ),
}

BASEL_SOURCES = (
    "01_MorphableModel.mat",
    "Exp_Pca.bin",
    "std_exp.txt",
    "BFM_front_idx.mat",
    "BFM_exp_idx.mat",
    "facemodel_info.mat",
)
"""What ``convert.build_front_model`` reads when ``BFM_model_front.mat`` is absent."""


@dataclass(frozen=True)
class FaceModelFiles:
    """The resolved contents of a face-model folder (paths are None when absent)."""

    folder: Path
    front_model: Optional[Path]  # BFM_model_front.mat, or None when it must be built
    mp468_index: Optional[Path]
    ncc_code: Optional[Path]  # exact upstream derived assets (MIT), preferred when present
    left_eye_faces: Optional[Path]
    right_eye_faces: Optional[Path]

    @property
    def needs_conversion(self) -> bool:
        return self.front_model is None


def _present(folder: Path, name: str) -> Optional[Path]:
    p = folder / name
    return p if p.is_file() else None


def missing_face_model_message(folder: Path, missing: list[str]) -> str:
    """The user-facing text naming each missing file, its use, its origin and the target folder."""
    lines = [
        f"MimicTalk: the Basel Face Model files are missing from {folder}. They cannot be "
        "downloaded automatically (the BFM licence forbids redistribution); get them manually "
        f"and put them into {folder}:"
    ]
    for name in missing:
        purpose, source = FILE_INFO[name]
        lines.append(f"  - {name}: {purpose}. Source: {source}.")
    if FRONT_MODEL in missing:
        lines.append(
            f"  ({FRONT_MODEL} alone is enough instead of the six source files; with the source "
            f"files present it is built once and saved as {FRONT_MODEL}.)"
        )
    return "\n".join(lines)


def check_face_model_files(folder: str | Path, *, need_mp468: bool = False) -> FaceModelFiles:
    """Resolve a face-model folder; raise ``FaceModelMissingError`` naming every missing file.

    The model is usable when ``BFM_model_front.mat`` is present, or when all six source files
    (``BASEL_SOURCES``) are. ``need_mp468`` adds the MediaPipe-468 map that 3DMM fitting needs
    (SECC rendering, keypoints and cameras do not need it). The derived files ``ncc_code.npy`` and
    ``bfm_{left,right}_eye_faces.npy`` are optional: they are computed when absent.
    """
    folder = Path(folder).expanduser()
    front = _present(folder, FRONT_MODEL)
    missing: list[str] = []
    if front is None:
        missing_src = [n for n in BASEL_SOURCES if _present(folder, n) is None]
        if missing_src:
            missing.append(FRONT_MODEL)
            missing.extend(missing_src)
    mp468 = _present(folder, MP468_INDEX)
    if need_mp468 and mp468 is None:
        missing.append(MP468_INDEX)
    if missing:
        raise FaceModelMissingError(missing_face_model_message(folder, missing))
    return FaceModelFiles(
        folder=folder,
        front_model=front,
        mp468_index=mp468,
        ncc_code=_present(folder, NCC_CODE),
        left_eye_faces=_present(folder, LEFT_EYE_FACES),
        right_eye_faces=_present(folder, RIGHT_EYE_FACES),
    )
