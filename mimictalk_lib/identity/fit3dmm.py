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

import os
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch

from ..errors import InputError
from ..face.coeffs import Coefficients
from ..face.model import CAMERA_DISTANCE, CENTER, FOCAL, euler_to_rotation
from ..utils import ProgressFn, cpu_threads, logger, report
from .frames import face_boxes
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

    @classmethod
    def with_iterations(cls, iterations: int) -> "FitSchedule":
        """``iterations`` steps for each of stages 1 and 2 and a quarter of that (at least 1) for
        stage 3: upstream's 200 / 200 / 50 ratio scaled (Prepare Identity's ``fit_iterations``)."""
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise InputError(f"fit iterations must be a positive integer, got {iterations!r}")
        return cls(pose_iters=iterations, joint_iters=iterations, fine_iters=max(1, iterations // 4))


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
    """Fitted ``coeffs``: ``id`` ``[1, 80]`` (clip) or ``[B, 80]`` (images), ``exp`` ``[T, 64]``,
    ``euler`` ``[T, 3]`` (radians), ``trans`` ``[T, 3]``; ``landmark_error`` ``[T]``: mean distance
    (pixels of the input image) between fitted and given points, cheek points excluded."""

    coeffs: Coefficients
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

    def project(self, c: Coefficients) -> torch.Tensor:
        """id [..., 1 or T, 80], exp [..., T, 64], euler/trans [..., T, 3] -> [..., T, 468, 2].

        Same maths as ``face.to_camera`` + ``face.project`` (tested equal), written with
        per-axis products: ``points @ R`` as a batched 3x3 matmul dominates the fit's run time."""
        k = self.key_mean.shape[0]
        shape = (c.id @ self.key_id.T + c.exp @ self.key_exp.T).unflatten(-1, (k, 3)) + self.key_mean
        rot = euler_to_rotation(c.euler).unsqueeze(-3)  # [..., T, 1, 3, 3], applied as p @ R
        x, y, z = shape.unsqueeze(-1).unbind(-2)  # each [..., T, 468, 1]
        posed = x * rot[..., 0, :] + y * rot[..., 1, :] + z * rot[..., 2, :] + c.trans.unsqueeze(-2)
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


def _check_landmarks(landmarks: torch.Tensor, name: str) -> torch.Tensor:
    if landmarks.dim() != 3 or landmarks.shape[1] < NUM_MESH_LANDMARKS or landmarks.shape[2] < 2:
        raise InputError(f"{name}: expected landmarks [T, 468 or 478, 2+], got {list(landmarks.shape)}")
    if not torch.isfinite(landmarks[:, :NUM_MESH_LANDMARKS, :2]).all():
        raise InputError(f"{name}: landmarks contain NaN or infinity (undetected frames must be removed first)")
    return landmarks[:, :NUM_MESH_LANDMARKS, :2]


class _Runner:
    """Runs the staged schedule on P independent problems stacked on the leading axis
    (``[P, T, ...]`` parameters; the loss is the sum of the P problems' losses, so each problem's
    parameters see exactly their own gradient, as if fitted alone)."""

    def __init__(self, prob: _Problem, schedule: FitSchedule, on_step: Optional[ProgressFn]):
        self.prob, self.w, self.schedule, self.on_step, self.step = prob, prob.weights, schedule, on_step, 0

    def loss(self, c: Coefficients, targets, full: bool = True) -> torch.Tensor:
        """id [P, 1, 80], exp [P, T, 64], euler/trans [P, T, 3], targets [P, T, 468, 2]."""
        w = self.w
        loss = self.prob.landmark_loss(self.prob.project(c), targets)  # [P]
        if full:
            loss = loss + w.reg_id * c.id.square().mean((-2, -1)) + w.reg_exp * c.exp.square().mean((-2, -1))
            if w.laplacian:
                lap = laplacian_loss(c.exp) + w.pose_laplacian * (laplacian_loss(c.euler) + laplacian_loss(c.trans))
                loss = loss + w.laplacian * lap  # lap(id) is 0: one identity per problem
        return loss.sum()

    def optimise(self, optimizers, loss_fn, iters: int, stage: str) -> None:
        for _ in range(iters):
            loss = loss_fn()
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
            self.step += 1
            report(self.on_step, self.step, self.schedule.total, stage=stage)

    def coarse(self, c: Coefficients, targets) -> None:
        """Stages 1 and 2 (in place on the leaf tensors of ``c``)."""
        opt_frame = torch.optim.Adam([c.euler, c.trans], lr=self.schedule.lr)
        opt_idexp = torch.optim.Adam([c.id, c.exp], lr=self.schedule.lr)
        self.optimise([opt_frame], lambda: self.loss(c, targets, full=False), self.schedule.pose_iters, "fit pose")
        self.optimise([opt_frame, opt_idexp], lambda: self.loss(c, targets), self.schedule.joint_iters, "fit identity")

    def fine(self, c: Coefficients, targets, *, train_id: bool) -> Coefficients:
        """Stage 3 from a detached copy of ``c``: exp, euler and trans are updated, ``id`` only
        with ``train_id``."""
        c = c.map(lambda p: p.detach().clone().requires_grad_(True))
        c = replace(c, id=c.id.requires_grad_(train_id))
        opt = torch.optim.Adam([p for p in c.tensors() if p.requires_grad], lr=self.schedule.fine_lr)
        self.optimise([opt], lambda: self.loss(c, targets), self.schedule.fine_iters, "fit frames")
        return c.map(torch.Tensor.detach)


def _leaves(targets: torch.Tensor, lead: tuple, t: int) -> Coefficients:
    return Coefficients(*(targets.new_zeros(*lead, n, d, requires_grad=True)
                          for n, d in ((1, N_ID), (t, N_EXP), (t, 3), (t, 3))))


@torch.inference_mode(False)  # an optimisation: callers (ComfyUI nodes) may run in inference mode
@torch.enable_grad()
def fit_clip(
    face_model,
    landmarks: torch.Tensor,
    image_size: float,
    *,
    schedule: FitSchedule = FitSchedule(),
    weights: FitWeights = VIDEO_WEIGHTS,
    on_step: Optional[ProgressFn] = None,
    threads: Optional[int] = None,
) -> FitResult:
    """Fit one identity and per-frame expression/pose to a clip's landmarks.

    ``landmarks``: ``[T, 468 (or 478), 2+]`` pixels of ``image_size``² frames (y down), on the
    device to fit on; ``face_model`` must be on the same device. Returns fp32 coefficients there.
    Works from inside ``torch.inference_mode`` (it leaves it for the optimisation; inference-mode
    landmarks and face models are only read). ``threads``: CPU intra-op threads for the fit
    (:func:`~mimictalk_lib.utils.small_tensor_threads`: default 1, restored afterwards)."""
    lms = _check_landmarks(landmarks, "fit_clip")
    with cpu_threads(lms.device, threads):
        return _fit_clip(face_model, lms, image_size, schedule, weights, on_step)


def _fit_clip(face_model, lms: torch.Tensor, image_size: float, schedule: FitSchedule, weights: FitWeights,
              on_step: Optional[ProgressFn]) -> FitResult:
    t = lms.shape[0]
    targets = to_fit_space(lms, image_size)[None]  # [1, T, 468, 2]: one problem
    prob = _Problem(face_model, targets, weights)
    run = _Runner(prob, schedule, on_step)
    params = _leaves(targets, (1,), t)
    run.coarse(params, targets)
    c = params.map(lambda p: p.detach()[0])
    if schedule.fine_iters > 0:  # batches of frames as independent problems, identity frozen
        b = min(schedule.fine_batch, t)
        idx = torch.stack([torch.arange(s, s + b) for s in _batch_starts(t, b)]).to(c.exp.device)  # [nB, b]
        n_b = idx.shape[0]
        batches = Coefficients(c.id.expand(n_b, 1, N_ID), c.exp[idx], c.euler[idx], c.trans[idx])
        fine = run.fine(batches, targets[0][idx], train_id=False)
        exp, euler, trans = c.exp.clone(), c.euler.clone(), c.trans.clone()
        for k in range(n_b):  # later batches win on the overlap, as if run in order
            exp[idx[k]], euler[idx[k]], trans[idx[k]] = fine.exp[k], fine.euler[k], fine.trans[k]
        c = Coefficients(c.id, exp, euler, trans)
    with torch.no_grad():
        err = prob.error_px(prob.project(c), image_size)[0]
    return FitResult(c, err)


def _batch_starts(t: int, batch: int) -> list[int]:
    """Upstream batching: consecutive batches, the last one aligned to the clip end."""
    if t <= batch:
        return [0]
    n = (t - 1) // batch + 1
    return [min(i * batch, t - batch) for i in range(n)]


@torch.inference_mode(False)  # an optimisation: callers (ComfyUI nodes) may run in inference mode
@torch.enable_grad()
def fit_images(
    face_model,
    landmarks: torch.Tensor,
    image_size: float,
    *,
    schedule: FitSchedule = FitSchedule(),
    weights: FitWeights = IMAGE_WEIGHTS,
    on_step: Optional[ProgressFn] = None,
    threads: Optional[int] = None,
) -> FitResult:
    """Single-image fit (upstream ``fit_3dmm_for_a_image``) for ``B`` independent images at once:
    ``landmarks`` ``[B, 468 (or 478), 2+]``; every image gets its own identity (``id`` ``[B, 80]``).
    Stage 3 runs 50 steps at lr 0.005 on all four coefficient groups of each image. Like
    :func:`fit_clip`, callable from inside ``torch.inference_mode``, and ``threads`` as there."""
    lms = _check_landmarks(landmarks, "fit_images")
    with cpu_threads(lms.device, threads):
        return _fit_images(face_model, lms, image_size, schedule, weights, on_step)


def _fit_images(face_model, lms: torch.Tensor, image_size: float, schedule: FitSchedule, weights: FitWeights,
                on_step: Optional[ProgressFn]) -> FitResult:
    n = lms.shape[0]
    targets = to_fit_space(lms, image_size)[:, None]  # [B, 1, 468, 2]: each image a 1-frame problem
    prob = _Problem(face_model, targets, weights)
    run = _Runner(prob, schedule, on_step)
    params = _leaves(targets, (n,), 1)
    run.coarse(params, targets)
    if schedule.fine_iters > 0:
        params = run.fine(params, targets, train_id=True)
    c = params.map(lambda p: p.detach()[:, 0])
    with torch.no_grad():
        err = prob.error_px(prob.project(c.map(lambda p: p[:, None])), image_size)
    return FitResult(c, err[:, 0])


# --------------------------------------------------------------------------- fit quality

WARN_FIT_ERROR = 0.05
"""Mean landmark error (fraction of the face height) above which the fit is reported as poor. A
converged fit of a frontal face with the matching BFM files leaves a few pixels on a 512² crop
(~1-2 % of a 266 px face); the synthetic fixtures fit to ~0.2 %."""
MAX_FIT_ERROR = 0.15
"""Mean landmark error (fraction of the face height) above which the identity is refused: the lip
and eye boxes derived from such a fit miss their features (a wrong landmark-to-mesh file gives
~0.25: 70 px on a 266 px face)."""
MAX_FIT_ERROR_ENV = "MIMICTALK_MAX_FIT_ERROR"


@dataclass(frozen=True)
class FitQuality:
    """How well fitted coefficients reproduce the landmarks they were fitted to (pixels of the
    frames; cheek and unmatched points excluded, as in the fit)."""

    mean_px: float  # mean distance over frames and points
    worst_px: float  # largest single point distance
    worst_frame: int  # the frame holding it
    face_px: float  # median landmark-box height: the face size the fractions refer to

    @property
    def mean_fraction(self) -> float:
        return self.mean_px / max(self.face_px, 1e-6)

    @property
    def worst_fraction(self) -> float:
        return self.worst_px / max(self.face_px, 1e-6)

    def as_meta(self) -> dict:
        return dict(asdict(self), mean_fraction=self.mean_fraction, worst_fraction=self.worst_fraction)

    def summary(self) -> str:
        return (f"3DMM fit error {self.mean_px:.1f} px mean ({self.mean_fraction:.1%} of the {self.face_px:.0f} px "
                f"face), {self.worst_px:.1f} px worst (frame {self.worst_frame})")


def fit_quality(face_model, fit: FitResult, landmarks: torch.Tensor, image_size: float) -> FitQuality:
    """Measure ``fit`` against the ``landmarks`` ``[T, 468 (or 478), 2+]`` (pixels of ``image_size``²
    frames) it was fitted to; its ``id`` may be one identity ``[1, 80]`` or one per frame."""
    lms = _check_landmarks(landmarks, "fit_quality")
    targets = to_fit_space(lms, image_size)
    prob = _Problem(face_model, targets, VIDEO_WEIGHTS)  # the mask (w > 0) is the same for both weightings
    c = fit.coeffs.to(targets)
    with torch.no_grad():
        proj = prob.project(c.per_frame().map(lambda x: x[:, None]))[:, 0]
        keep = prob.w > 0
        d = (proj - targets)[:, keep].norm(dim=-1) * (image_size / FIT_IMAGE_SIZE)  # [T, K]
        per_frame_worst = d.amax(dim=1)
        boxes = face_boxes(lms.float())
        face = float((boxes[:, 3] - boxes[:, 1]).median())
    k = int(per_frame_worst.argmax())
    return FitQuality(float(d.mean()), float(per_frame_worst[k]), k, face)


def max_fit_error() -> float:
    """The refusal threshold: ``MIMICTALK_MAX_FIT_ERROR`` (a fraction of the face height) if set,
    else ``MAX_FIT_ERROR``."""
    text = os.environ.get(MAX_FIT_ERROR_ENV, "").strip()
    if not text:
        return MAX_FIT_ERROR
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise InputError(f"environment variable {MAX_FIT_ERROR_ENV} must be a positive fraction of the face height "
                         f"(default {MAX_FIT_ERROR}), got {text!r}")
    return value


LIKELY_FIT_CAUSES = (
    "the face model's landmark-to-mesh file (index_mp468_from_mesh35709.npy) does not belong to its "
    "BFM_model_front.mat (a file from another BFM version or conversion); the face is turned or tilted far from "
    "frontal, or partly hidden (hands, microphone, hair); several faces confuse the landmarks; a strong lens "
    "distortion; or too few fit iterations"
)


def check_fit_quality(quality: FitQuality, what: str, max_fraction: Optional[float] = None) -> None:
    """Refuse a fit whose mean error exceeds ``max_fraction`` of the face height (default
    :func:`max_fit_error`), warn above ``WARN_FIT_ERROR``; the message names the likely causes."""
    limit = max_fit_error() if max_fraction is None else max_fraction
    if quality.mean_fraction > limit:
        raise InputError(
            f"{what}: the 3DMM fit does not match the face: {quality.summary()}, above the limit of {limit:.0%} of "
            f"the face height, so the lip and eye regions would be wrong. Likely causes: {LIKELY_FIT_CAUSES}. Check "
            f"the face model files and the clip; to accept the fit anyway set the environment variable "
            f"{MAX_FIT_ERROR_ENV} to a larger fraction (now {limit:g})."
        )
    if quality.mean_fraction > WARN_FIT_ERROR:
        logger.warning("%s: poor %s (warning above %.0f%%, refused above %.0f%%). Likely causes: %s.",
                       what, quality.summary(), 100 * WARN_FIT_ERROR, 100 * limit, LIKELY_FIT_CAUSES)
    else:
        logger.info("%s: %s", what, quality.summary())

