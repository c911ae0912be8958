"""3DMM coefficients from MediaPipe landmarks: the staged landmark fit, for a clip and an image.

Upstream: MimicTalk ``data_gen/utils/process_video/fit_3dmm_landmark.py``
(``fit_3dmm_for_a_video``, identity mode ``global``) and
``data_gen/utils/process_image/fit_3dmm_landmark.py`` (``fit_3dmm_for_a_image``). The BFM
(``mimictalk_lib.face.FaceModel``) is posed and projected with focal 1015, centre 112 and camera
distance 10 into a 224-pixel image with the v axis up; the 468 MediaPipe mesh points (y flipped,
scaled to 224) are the targets.

Loss = weighted mean squared landmark error + regularisers:

==================  =============================  ==========================
term                clip (video)                   image
==================  =============================  ==========================
eye points          x3                             x5
upper eyelids       x20                            (eye weight)
inner/outer lips    x5                             x2
8 cheek points      x0 (no reliable BFM match)     x0
identity  mean(id²) 0.2                            0.3
expression mean     0.6                            0.05
temporal Laplacian  1.0 x (lap(id) + lap(exp) +    --
                    0.3 lap(euler) + 0.3 lap(trans))
==================  =============================  ==========================

Schedule (Adam): 200 steps on euler/trans only (lr 0.1), 200 steps on everything (lr 0.1;
one identity for the clip), then the frames in batches of 50 (the last batch is the final 50
frames), 50 steps each at lr 0.005 with the identity frozen. The batches are independent
problems, so they are solved together here (stacked along a batch axis, losses summed): each
parameter sees exactly the gradient of its own batch's loss, like the sequential upstream loop.

Upstream quirk: the fine stage writes its result back with ``exp_para[sel_ids].data = ...``, an
assignment to a temporary copy, so upstream's output is the stage-2 result. Here the fine stage
is kept (the evident intent); ``FitSchedule(fine_iters=0)`` reproduces upstream's output.
Upstream also computes "every 40th frame" indices for stage 1 but never uses them: every frame
is fitted, as here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import InputError
from ..face.model import CAMERA_DISTANCE, CENTER, FOCAL, euler_to_rotation
from ..utils import ProgressFn, check_shape, report
from .landmarks import (
    EYE_INDICES,
    INNER_LIP_INDICES,
    NUM_MESH_LANDMARKS,
    OUTER_LIP_INDICES,
    UNMATCHED_INDICES,
    UPPER_EYELID_INDICES,
)

N_ID, N_EXP = 80, 64
FIT_IMAGE_SIZE = 224.0  # 2 x face-model centre 112


@dataclass(frozen=True)
class FitSchedule:
    """Iteration counts and learning rates of the staged fit (upstream values)."""

    pose_iters: int = 200  # stage 1: euler/trans only
    joint_iters: int = 200  # stage 2: identity, expression, euler, trans
    fine_iters: int = 50  # stage 3: per batch of frames, identity frozen (0 = upstream output)
    fine_batch: int = 50  # frames per stage-3 batch (video); images are their own batch
    lr: float = 0.1  # stages 1-2
    fine_lr: float = 0.005  # stage 3

    @property
    def total(self) -> int:
        return self.pose_iters + self.joint_iters + self.fine_iters


@dataclass(frozen=True)
class FitWeights:
    """Landmark weights and regulariser strengths (``VIDEO_WEIGHTS`` / ``IMAGE_WEIGHTS``)."""

    eye: float
    upper_eyelid: float
    lip: float
    reg_id: float
    reg_exp: float
    laplacian: float
    pose_laplacian: float = 0.3  # euler/trans Laplacian relative to id/exp


VIDEO_WEIGHTS = FitWeights(eye=3.0, upper_eyelid=20.0, lip=5.0, reg_id=0.2, reg_exp=0.6, laplacian=1.0)
IMAGE_WEIGHTS = FitWeights(eye=5.0, upper_eyelid=5.0, lip=2.0, reg_id=0.3, reg_exp=0.05, laplacian=0.0)


@dataclass
class FitResult:
    """Fitted coefficients: ``id`` ``[1, 80]`` (clip) or ``[B, 80]`` (images), ``exp`` ``[T, 64]``,
    ``euler`` ``[T, 3]`` (radians), ``trans`` ``[T, 3]``; ``landmark_error`` ``[T]``: mean distance
    (pixels of the input image) between fitted and given points, cheek points excluded."""

    id: torch.Tensor
    exp: torch.Tensor
    euler: torch.Tensor
    trans: torch.Tensor
    landmark_error: torch.Tensor


def landmark_weights(weights: FitWeights, matched: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-point weights ``[468]``. Points the face model's MediaPipe map marks unmatched are also
    weighted 0 (upstream maps them to vertex 0 and relies on the fixed cheek list)."""
    w = torch.ones(NUM_MESH_LANDMARKS)
    w[list(EYE_INDICES)] = weights.eye
    w[list(UPPER_EYELID_INDICES)] = weights.upper_eyelid
    w[list(INNER_LIP_INDICES)] = weights.lip
    w[list(OUTER_LIP_INDICES)] = weights.lip
    w[list(UNMATCHED_INDICES)] = 0.0
    if matched is not None:
        w = w * matched.to(w)
    return w


def laplacian_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean squared discrete Laplacian along time (dim -2), replicate-padded, kernel
    (-0.5, 1, -0.5): ``[..., T, C]`` -> scalar per leading index ``[...]``."""
    padded = torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)
    lap = padded[..., 1:-1, :] - 0.5 * (padded[..., :-2, :] + padded[..., 2:, :])
    return lap.square().mean(dim=(-2, -1))


def to_fit_space(points: torch.Tensor, image_size: float) -> torch.Tensor:
    """Pixel landmarks (y down) of an ``image_size``² image -> 224 fitting image, v up."""
    xy = points[..., :2].float()
    xy = torch.stack([xy[..., 0], image_size - xy[..., 1]], dim=-1)
    return xy * (FIT_IMAGE_SIZE / image_size)


class _Problem:
    """Shared pieces of the clip and image fits: targets, weights, projection, loss terms.

    The projection is ``FaceModel.project_landmarks(..., which="mp468")`` restricted to what the
    fit needs, with the 468 key rows of the bases gathered once (upstream's ``key_*_base``) and
    the identity term computed once per identity rather than once per frame."""

    def __init__(self, face_model, targets: torch.Tensor, weights: FitWeights):
        self.targets = targets  # [..., 468, 2] in fit space
        self.w = landmark_weights(weights, getattr(face_model, "mp468_matched", None)).to(targets)
        self.weights = weights
        index = face_model.landmark_index("mp468")
        k = index.shape[0]
        self.key_mean = face_model.mean_shape[index].to(targets)  # [468, 3]
        self.key_id = face_model.id_base.view(-1, 3, N_ID)[index].reshape(3 * k, N_ID).to(targets)
        self.key_exp = face_model.exp_base.view(-1, 3, N_EXP)[index].reshape(3 * k, N_EXP).to(targets)

    def project(self, id_, exp, euler, trans) -> torch.Tensor:
        """id [..., 1 or T, 80], exp [..., T, 64], euler/trans [..., T, 3] -> [..., T, 468, 2].

        Same maths as ``face.to_camera`` + ``face.project`` (tested equal), written with
        per-axis products: ``points @ R`` as a batched 3x3 matmul dominates the fit's run time."""
        k = self.key_mean.shape[0]
        shape = (id_ @ self.key_id.T + exp @ self.key_exp.T).unflatten(-1, (k, 3)) + self.key_mean
        rot = euler_to_rotation(euler).unsqueeze(-3)  # [..., T, 1, 3, 3], applied as p @ R
        x, y, z = shape.unsqueeze(-1).unbind(-2)  # each [..., T, 468, 1]
        posed = x * rot[..., 0, :] + y * rot[..., 1, :] + z * rot[..., 2, :] + trans.unsqueeze(-2)
        px, py, pz = posed.unbind(-1)
        depth = CAMERA_DISTANCE - pz  # camera looks down -z from distance 10
        return torch.stack([FOCAL * px / depth + CENTER, FOCAL * py / depth + CENTER], dim=-1)

    def landmark_loss(self, proj: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Weighted squared error, mean over the last three dims ``[..., T, 468, 2]``."""
        return ((proj - targets).square() * self.w[:, None]).mean(dim=(-3, -2, -1))

    def error_px(self, proj: torch.Tensor, image_size: float) -> torch.Tensor:
        keep = self.w > 0
        d = (proj - self.targets)[..., keep, :].norm(dim=-1).mean(-1)
        return d * (image_size / FIT_IMAGE_SIZE)


def _adam(params, lr):
    return torch.optim.Adam(params, lr=lr)


def _check_landmarks(landmarks: torch.Tensor, name: str) -> torch.Tensor:
    if landmarks.dim() != 3 or landmarks.shape[1] < NUM_MESH_LANDMARKS or landmarks.shape[2] < 2:
        raise InputError(f"{name}: expected landmarks [T, 468 or 478, 2+], got {list(landmarks.shape)}")
    if not torch.isfinite(landmarks[:, :NUM_MESH_LANDMARKS, :2]).all():
        raise InputError(f"{name}: landmarks contain NaN or infinity (undetected frames must be removed first)")
    return landmarks[:, :NUM_MESH_LANDMARKS, :2]


@torch.enable_grad()
def fit_clip(
    face_model,
    landmarks: torch.Tensor,
    image_size: float,
    *,
    schedule: FitSchedule = FitSchedule(),
    weights: FitWeights = VIDEO_WEIGHTS,
    on_step: Optional[ProgressFn] = None,
) -> FitResult:
    """Fit one identity and per-frame expression/pose to a clip's landmarks.

    ``landmarks``: ``[T, 468 (or 478), 2+]`` pixels of ``image_size``² frames (y down), on the
    device to fit on; ``face_model`` must be on the same device. Returns fp32 coefficients there.
    """
    lms = _check_landmarks(landmarks, "fit_clip")
    t = lms.shape[0]
    targets = to_fit_space(lms, image_size)
    prob = _Problem(face_model, targets, weights)
    zeros = targets.new_zeros
    id_ = zeros(1, N_ID, requires_grad=True)
    exp = zeros(t, N_EXP, requires_grad=True)
    euler = zeros(t, 3, requires_grad=True)
    trans = zeros(t, 3, requires_grad=True)
    opt_frame = _adam([euler, trans], schedule.lr)
    opt_idexp = _adam([id_, exp], schedule.lr)
    w = weights
    step = 0

    def total_loss(id_b, exp_b, euler_b, trans_b, tgt):
        proj = prob.project(id_b, exp_b, euler_b, trans_b)  # one identity row broadcast over frames
        lap = (
            laplacian_loss(id_b) + laplacian_loss(exp_b)
            + w.pose_laplacian * (laplacian_loss(euler_b) + laplacian_loss(trans_b))
        )
        reg = w.reg_id * id_b.square().mean(dim=(-2, -1)) + w.reg_exp * exp_b.square().mean(dim=(-2, -1))
        return prob.landmark_loss(proj, tgt) + reg + w.laplacian * lap

    for _ in range(schedule.pose_iters):  # stage 1: pose only, landmark term only
        loss = prob.landmark_loss(prob.project(id_, exp, euler, trans), targets)
        opt_frame.zero_grad()
        loss.backward()
        opt_frame.step()
        step += 1
        report(on_step, step, schedule.total, stage="fit pose")
    for _ in range(schedule.joint_iters):  # stage 2: everything
        loss = total_loss(id_, exp, euler, trans, targets)
        opt_frame.zero_grad()
        opt_idexp.zero_grad()
        loss.backward()
        opt_frame.step()
        opt_idexp.step()
        step += 1
        report(on_step, step, schedule.total, stage="fit identity")

    id_ = id_.detach()
    exp, euler, trans = exp.detach(), euler.detach(), trans.detach()
    if schedule.fine_iters > 0:
        exp, euler, trans = _fine_stage(
            total_loss, id_, exp, euler, trans, targets, schedule, on_step, step
        )
    with torch.no_grad():
        err = prob.error_px(prob.project(id_, exp, euler, trans), image_size)
    return FitResult(id_, exp, euler, trans, err)


def _batch_starts(t: int, batch: int) -> list[int]:
    """Upstream batching: consecutive batches, the last one aligned to the clip end."""
    if t <= batch:
        return [0]
    n = (t - 1) // batch + 1
    return [min(i * batch, t - batch) for i in range(n)]


def _fine_stage(total_loss, id_, exp, euler, trans, targets, schedule, on_step, step):
    t = exp.shape[0]
    b = min(schedule.fine_batch, t)
    starts = _batch_starts(t, b)
    idx = torch.stack([torch.arange(s, s + b) for s in starts]).to(exp.device)  # [nB, b]
    e = exp[idx].clone().requires_grad_(True)  # [nB, b, 64]
    u = euler[idx].clone().requires_grad_(True)
    v = trans[idx].clone().requires_grad_(True)
    tgt = targets[idx]  # [nB, b, 468, 2]
    opt = _adam([e, u, v], schedule.fine_lr)
    id_b = id_.expand(len(starts), 1, N_ID)
    for _ in range(schedule.fine_iters):
        loss = total_loss(id_b, e, u, v, tgt).sum()  # batches are independent: sum of their losses
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        report(on_step, step, schedule.total, stage="fit frames")
    exp, euler, trans = exp.clone(), euler.clone(), trans.clone()
    for k in range(len(starts)):  # later batches win on the overlap, as if run in order
        exp[idx[k]] = e[k].detach()
        euler[idx[k]] = u[k].detach()
        trans[idx[k]] = v[k].detach()
    return exp, euler, trans


@torch.enable_grad()
def fit_images(
    face_model,
    landmarks: torch.Tensor,
    image_size: float,
    *,
    schedule: FitSchedule = FitSchedule(),
    weights: FitWeights = IMAGE_WEIGHTS,
    on_step: Optional[ProgressFn] = None,
) -> FitResult:
    """Single-image fit (upstream ``fit_3dmm_for_a_image``) for ``B`` independent images at once:
    ``landmarks`` ``[B, 468 (or 478), 2+]``; every image gets its own identity (``id`` ``[B, 80]``).
    Stage 3 runs 50 steps at lr 0.005 on all four coefficient groups of each image."""
    lms = _check_landmarks(landmarks, "fit_images")
    n = lms.shape[0]
    targets = to_fit_space(lms, image_size)[:, None]  # [B, 1, 468, 2]: each image a 1-frame clip
    prob = _Problem(face_model, targets, weights)
    w = weights
    params = [targets.new_zeros(n, 1, d, requires_grad=True) for d in (N_ID, N_EXP, 3, 3)]
    id_, exp, euler, trans = params
    opt_frame = _adam([euler, trans], schedule.lr)
    opt_idexp = _adam([id_, exp], schedule.lr)

    def loss_fn(id_b, exp_b, euler_b, trans_b, with_reg=True):
        per_image = prob.landmark_loss(prob.project(id_b, exp_b, euler_b, trans_b), targets)
        if with_reg:
            per_image = per_image + w.reg_id * id_b.square().mean((-2, -1)) + w.reg_exp * exp_b.square().mean((-2, -1))
        return per_image.sum()  # independent images: each sees only its own gradient

    step = 0
    for _ in range(schedule.pose_iters):
        loss = loss_fn(id_, exp, euler, trans, with_reg=False)
        opt_frame.zero_grad()
        loss.backward()
        opt_frame.step()
        step += 1
        report(on_step, step, schedule.total, stage="fit pose")
    for _ in range(schedule.joint_iters):
        loss = loss_fn(id_, exp, euler, trans)
        opt_frame.zero_grad()
        opt_idexp.zero_grad()
        loss.backward()
        opt_frame.step()
        opt_idexp.step()
        step += 1
        report(on_step, step, schedule.total, stage="fit identity")
    if schedule.fine_iters > 0:
        params = [p.detach().clone().requires_grad_(True) for p in params]
        opt = _adam(params, schedule.fine_lr)
        for _ in range(schedule.fine_iters):
            loss = loss_fn(*params)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            report(on_step, step, schedule.total, stage="fit frames")
    id_, exp, euler, trans = (p.detach()[:, 0] for p in params)
    with torch.no_grad():
        err = prob.error_px(prob.project(id_[:, None], exp[:, None], euler[:, None], trans[:, None]), image_size)
    return FitResult(id_, exp, euler, trans, err[:, 0])


def check_coefficients(id_: torch.Tensor, exp: torch.Tensor, euler: torch.Tensor, trans: torch.Tensor) -> None:
    """Shape check of a coefficient set (``id`` [1 or T, 80], the others [T, *])."""
    t = exp.shape[0]
    check_shape(exp, (t, N_EXP), "exp")
    check_shape(euler, (t, 3), "euler")
    check_shape(trans, (t, 3), "trans")
    check_shape(id_, (None, N_ID), "id")
