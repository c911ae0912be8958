"""BFM-2009 front face model: loading, mesh from 3DMM coefficients, 3-D/2-D landmarks.

Mirrors upstream ``deep_3drecon/deep_3drecon_models/bfm.py`` (``ParametricFaceModel``) and
``data_util/face3d_helper.py`` (``Face3DHelper``):

* shape = re-centred mean + idBase @ id (80) + exBase @ exp (64), in decimetres, [B, N=35709, 3];
* pose: points @ R + trans with R = (Rz Ry Rx)^T from euler (x, y, z) in radians;
* camera: z -> 10 - z (camera distance 10), pinhole focal 1015, centre 112 on a 224 image,
  v axis pointing up ("y direction is opposite to v direction").

Index conventions (the .mat files are 1-based MATLAB indices): ``tri`` and ``keypoints`` minus 1.
Upstream's ``Face3DHelper`` (68-point mode, used for the torso keypoints and the lip crop)
forgets the minus 1 and reads ``keypoints`` as 0-based, i.e. one vertex further along; the
renderer was trained with those keypoints, so ``lm68_upstream`` keeps that index set beside the
correct ``lm68``. The MediaPipe map is 0-based with negative "unmatched" entries that upstream
replaces by vertex 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, FaceModelMissingError, InputError
from ..utils import logger
from . import assets
from .coeffs import Coefficients, HeadPose
from .convert import convert_and_save, load_mat
from .files import MP468_INDEX, check_face_model_files

CAMERA_DISTANCE = 10.0  # bfm.py ParametricFaceModel(camera_distance=10.)
FOCAL = 1015.0  # fit_3dmm_landmark.py: focal=1015
CENTER = 112.0  # principal point of the 224 x 224 fitting image
IMAGE_SIZE = 2 * CENTER  # 224
N_ID, N_EXP = 80, 64
N_LM68, N_MP468 = 68, 468


class FaceModel(nn.Module):
    """The BFM front model as non-persistent buffers (``.to(device, dtype)`` moves them all).

    Buffers: ``mean_shape`` [N, 3] (re-centred), ``id_base`` [3N, 80], ``exp_base`` [3N, 64],
    ``tri`` [F, 3] (0-based), ``lm68`` / ``lm68_upstream`` [68], ``mp468`` [468] (unmatched -> 0)
    with ``mp468_matched`` [468] bool (or None when the map file is absent), ``ncc`` [N, 3] in
    [0, 1], ``eye_faces`` [E] (indices into ``tri``) and ``secc_tri`` [F - E, 3].

    Outputs take the buffers' dtype (coefficients are cast to it). Keep the model in float32 or
    float64: meshes, landmarks and cameras are geometry, not network activations, and SECC
    rendering expects full-precision vertices.
    """

    def __init__(
        self,
        mean_shape: torch.Tensor,
        id_base: torch.Tensor,
        exp_base: torch.Tensor,
        tri: torch.Tensor,
        lm68: torch.Tensor,
        ncc: torch.Tensor,
        eye_faces: torch.Tensor,
        mp468: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        n = mean_shape.shape[0]
        mean_shape = mean_shape - mean_shape.mean(dim=0, keepdim=True)  # re-centre (both upstream helpers do)
        self.register_buffer("mean_shape", mean_shape, persistent=False)
        self.register_buffer("id_base", id_base[:, :N_ID], persistent=False)
        self.register_buffer("exp_base", exp_base[:, :N_EXP], persistent=False)
        self.register_buffer("tri", tri.long(), persistent=False)
        self.register_buffer("lm68", lm68.long(), persistent=False)
        # Face3DHelper(keypoint_mode='lm68') reads the 1-based indices as 0-based (upstream quirk)
        self.register_buffer("lm68_upstream", (lm68.long() + 1).clamp(max=n - 1), persistent=False)
        self.register_buffer("ncc", ncc, persistent=False)
        self.register_buffer("eye_faces", eye_faces.long(), persistent=False)
        keep = torch.ones(tri.shape[0], dtype=torch.bool)
        keep[eye_faces.long()] = False
        self.register_buffer("secc_tri", tri.long()[keep], persistent=False)  # order kept (upstream loop)
        if mp468 is not None:
            self.register_buffer("mp468", mp468.long().clamp(min=0), persistent=False)
            self.register_buffer("mp468_matched", mp468 >= 0, persistent=False)
        else:
            self.register_buffer("mp468", None, persistent=False)
            self.register_buffer("mp468_matched", None, persistent=False)

    @property
    def n_vertices(self) -> int:
        return self.mean_shape.shape[0]

    def extra_repr(self) -> str:
        return (
            f"vertices={self.n_vertices}, faces={self.tri.shape[0]}, secc_faces={self.secc_tri.shape[0]}, "
            f"mp468={'yes' if self.mp468 is not None else 'no'}"
        )

    def _coeffs(self, id: torch.Tensor, exp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        if id.shape[-1] != N_ID or exp.shape[-1] != N_EXP or id.shape[:-1] != exp.shape[:-1]:
            raise InputError(
                f"3DMM coefficients: expected id [..., {N_ID}] and exp [..., {N_EXP}] with the same "
                f"leading shape, got id {list(id.shape)} and exp {list(exp.shape)}"
            )
        lead = id.shape[:-1]
        ref = self.mean_shape
        return id.reshape(-1, N_ID).to(ref), exp.reshape(-1, N_EXP).to(ref), lead

    def shape(self, id: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        """Canonical (unposed) mesh: [..., 80], [..., 64] -> [..., N, 3]."""
        id, exp, lead = self._coeffs(id, exp)
        offset = id @ self.id_base.T + exp @ self.exp_base.T  # [B, 3N]
        verts = self.mean_shape + offset.view(-1, self.n_vertices, 3)
        return verts.reshape(*lead, self.n_vertices, 3)

    def points(self, id: torch.Tensor, exp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Canonical positions of the vertices ``index`` [K] only: -> [..., K, 3] (cheap for landmarks)."""
        id, exp, lead = self._coeffs(id, exp)
        k = index.shape[0]
        id_b = self.id_base.view(-1, 3, N_ID)[index].reshape(3 * k, N_ID)
        exp_b = self.exp_base.view(-1, 3, N_EXP)[index].reshape(3 * k, N_EXP)
        pts = self.mean_shape[index] + (id @ id_b.T + exp @ exp_b.T).view(-1, k, 3)
        return pts.reshape(*lead, k, 3)

    def landmark_index(self, which: str) -> torch.Tensor:
        """``'lm68'`` (correct 0-based), ``'lm68_upstream'`` (the index set upstream's Face3DHelper
        uses for torso keypoints and lip crops) or ``'mp468'`` (needs the MediaPipe map file)."""
        if which == "mp468":
            if self.mp468 is None:
                raise FaceModelMissingError(
                    f"MimicTalk: {MP468_INDEX} is missing from the face-model folder; it is needed to "
                    "fit 3DMM coefficients from MediaPipe landmarks (see check_face_model_files)."
                )
            return self.mp468
        if which in ("lm68", "lm68_upstream"):
            return getattr(self, which)
        raise InputError(f"landmark set: expected 'lm68', 'lm68_upstream' or 'mp468', got {which!r}")

    def landmarks(self, id: torch.Tensor, exp: torch.Tensor, which: str = "lm68_upstream") -> torch.Tensor:
        """Canonical 3-D landmarks [..., K, 3] (K = 68 or 468)."""
        return self.points(id, exp, self.landmark_index(which))

    def project_landmarks(self, coeffs: Coefficients, which: str = "lm68_upstream") -> torch.Tensor:
        """Landmarks in the 224-pixel fitting image, v up (upstream ``compute_for_landmark_fit``):
        ``coeffs`` with ``id`` per frame (see ``Coefficients.per_frame``) -> [..., K, 2]."""
        return project(to_camera(self.landmarks(coeffs.id, coeffs.exp, which), coeffs.pose))


def euler_to_rotation(euler: torch.Tensor) -> torch.Tensor:
    """BFM Euler angles (x, y, z) in radians -> R [..., 3, 3] with R = (Rz Ry Rx)^T, applied to
    row vectors as ``points @ R`` (bfm.py ``compute_rotation``)."""
    x, y, z = euler.unbind(-1)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1)
    shape = (*euler.shape[:-1], 3, 3)
    rot = rz.view(shape) @ ry.view(shape) @ rx.view(shape)
    return rot.transpose(-1, -2)


def to_camera(points: torch.Tensor, pose: HeadPose, camera_distance: float = CAMERA_DISTANCE) -> torch.Tensor:
    """Pose canonical points [..., K, 3] with ``pose`` (euler/trans [..., 3]) and move them in front
    of the camera: p @ R + t, then z -> camera_distance - z (bfm.py ``transform`` + ``to_camera``)."""
    rot = euler_to_rotation(pose.euler.to(points))
    posed = points @ rot + pose.trans.to(points).unsqueeze(-2)
    return torch.cat([posed[..., :2], camera_distance - posed[..., 2:]], dim=-1)


def project(points_cam: torch.Tensor, focal: float = FOCAL, center: float = CENTER) -> torch.Tensor:
    """Pinhole projection of camera-space points [..., K, 3] -> pixel coordinates [..., K, 2] of
    the 224 image with the v axis up (bfm.py ``to_image``): u = f x / z + c, v = f y / z + c."""
    return focal * points_cam[..., :2] / points_cam[..., 2:] + center


def _front_fields(files) -> dict:
    if files.front_model is None:
        return convert_and_save(files.folder)
    return load_mat(files.front_model, ("meanshape", "idBase", "exBase", "tri", "keypoints"))


def load_face_model(folder: str | Path, *, need_mp468: bool = False) -> FaceModel:
    """Load the face model from ``folder`` (CPU, float32; move it with ``.to(device, dtype)``).

    Reads ``BFM_model_front.mat`` or builds it from the Basel source files; takes the derived
    assets from ``ncc_code.npy`` / ``bfm_{left,right}_eye_faces.npy`` when present (exact upstream
    values) and computes them otherwise (see ``assets``). Raises ``FaceModelMissingError``
    naming what is missing, ``CheckpointError`` when a file does not have the expected layout.
    """
    files = check_face_model_files(folder, need_mp468=need_mp468)
    m = _front_fields(files)
    mean = np.asarray(m["meanshape"]).astype(np.float32).reshape(-1, 3)
    n = mean.shape[0]
    id_base = np.asarray(m["idBase"]).astype(np.float32)
    exp_base = np.asarray(m["exBase"]).astype(np.float32)
    tri = np.asarray(m["tri"]).astype(np.int64) - 1
    lm68 = np.asarray(m["keypoints"]).astype(np.int64).ravel() - 1
    problems = []
    if id_base.shape[0] != 3 * n or id_base.shape[1] < N_ID:
        problems.append(f"idBase has shape {id_base.shape}, expected ({3 * n}, >={N_ID})")
    if exp_base.shape[0] != 3 * n or exp_base.shape[1] < N_EXP:
        problems.append(f"exBase has shape {exp_base.shape}, expected ({3 * n}, >={N_EXP})")
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.min() < 0 or tri.max() >= n:
        problems.append(f"tri must be [F, 3] 1-based indices into {n} vertices (got shape {tri.shape})")
    if lm68.shape != (N_LM68,) or lm68.min() < 0 or lm68.max() >= n:
        problems.append(f"keypoints must hold 68 1-based vertex indices (got {lm68.shape[0]} values)")
    if problems:
        raise CheckpointError(f"{files.front_model or files.folder}: " + "; ".join(problems))

    mean_t = torch.from_numpy(mean)
    tri_t = torch.from_numpy(tri)
    lm68_t = torch.from_numpy(lm68)
    ncc = assets.load_or_compute_ncc(files.ncc_code, mean_t)
    eye_faces = assets.load_or_compute_eye_faces(files.left_eye_faces, files.right_eye_faces, mean_t, tri_t, lm68_t)
    mp468 = None
    if files.mp468_index is not None:
        mp468 = torch.from_numpy(assets.load_index_file(files.mp468_index, N_MP468, n))
    model = FaceModel(
        mean_t, torch.from_numpy(id_base), torch.from_numpy(exp_base), tri_t, lm68_t, ncc, eye_faces, mp468
    )
    logger.info("Loaded face model from %s (%s)", files.folder, model.extra_repr())
    return model
