"""SD-Hybrid adaptation: train a tri-grid and LoRA on one identity (MimicTalk §3, upstream
``inference/train_mimictalk_on_a_video.py``, class ``LoRATrainer``).

Trainable state (architecture reference §3.1): the canonical tri-grid, an ``nn.Parameter``
initialised from frame 0's head image through the canonical image->plane backbone (and
``plane2grid_module``), and LoRA on the layers ``lora_mode`` selects (:mod:`..lora`). Everything
else is frozen; the base renderer is shared, never written.

One step (§3.2, §3.4): draw ``batch_size`` random frames, render them from the tri-grid with the
driving SECC, camera, torso/background references and keypoints, compute the weighted losses
(:mod:`.losses`), multiply the tri-grid gradient by its element count (upstream does this; with
Adam it only changes the epsilon's weight), and take an Adam step with two parameter groups
(LoRA: ``lr``; tri-grid: ``lr_triplane``; betas (0.9, 0.98)). Without LoRA (``lora_mode='none'``)
upstream uses AdamW (weight decay 0.01) on the tri-grid alone.

``norm_mode='upstream'`` reproduces what the released script actually does: its first validation
pass ends with ``model.train()``, so training runs in train mode (BatchNorm on batch statistics,
updating its running statistics; SegFormer stochastic depth and dropout; one spectral-norm power
iteration per call), and the moved statistics are part of the result (kept in the adapter).
``'eval'`` keeps every layer in inference behaviour (deterministic, statistics frozen).

Long runs: ``on_step(step, total, losses=..., preview=..., validation=..., validation_strip=...)``
after each step (a preview render of frame 0 every ``preview_every`` steps, [S, S, 3] in [0, 1];
validation metrics and the validation frames (real, rendered) at validation steps, else None;
:class:`.report.TrainingLog` collects them); it may raise to stop. Every
``checkpoint_every`` steps, on an interrupt and on out-of-memory, a resumable checkpoint
(:mod:`.resume`: optimiser moments, RNG states, step) and a usable adapter are written to
``work_dir``; ``resume=`` continues bit-for-bit with the same settings.

Held-out validation (:mod:`.validation`): the clip's last ``holdout_fraction`` of frames (at least
``holdout_min_frames``) is never drawn for training. Every ``validate_every`` steps and at the end,
up to ``validation_frames`` of them are rendered and measured (PSNR, SSIM, LPIPS; full frame and
head box), reported to ``on_step(validation=...)``, kept in the checkpoint (resume keeps the
history) and in the adapter's metadata. ``early_stop_patience`` > 0 stops when validation LPIPS
has not improved by ``early_stop_margin`` for that many evaluations (``steps`` is then a maximum);
with ``keep_best`` the adapter returned (and ``best_adapter.safetensors`` in ``work_dir``) is the
one of the best evaluation, not the last.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, MimicTalkError
from ..lora.inject import LoraSpec, inject_lora, lora_parameters, lora_state_dict, share_copy
from ..renderer.model import RenderSource
from ..renderer.lora_targets import DEFAULT_LORA_MODE, DEFAULT_LORA_R, parse_lora_mode
from ..utils import ProgressFn, check_device_dtype, logger, report
from .adapter import Adapter, AdapterIdentity, base_fingerprint, base_parameters, norm_state, save_adapter
from .data import AdaptationData, signed
from .losses import (
    LOSS_WEIGHTS,
    blink_amounts,
    density_losses,
    lip_losses,
    resize_antialias,
    total_loss,
    triplane_reg_weight,
)
from .lpips import LPIPS
from .lpips import MIN_SIZE as LPIPS_MIN_SIZE
from .resume import forked_rng, identity_fingerprint, own_global_rng, seeded_global_rng
from .validation import EarlyStop, holdout_split, spread

ADAM_BETAS = (0.9, 0.98)
ADAMW_WEIGHT_DECAY = 0.01  # upstream, tri-grid only (no LoRA)
NORM_MODES = ("upstream", "eval")
CHECKPOINT_NAME, ADAPTER_NAME = "checkpoint.safetensors", "adapter.safetensors"
BEST_ADAPTER_NAME = "best_adapter.safetensors"


@dataclass(frozen=True)
class AdaptConfig:
    """Adaptation settings; defaults follow the upstream README for a video."""

    steps: int = 2000  # README "2000 steps ≈ 10 min" (code default 10 000; help: 3-10 for an image)
    lr: float = 1e-3  # LoRA learning rate (upstream --lr)
    lr_triplane: float = 0.1  # README: 0.1 for a video, 0.001 for an image (code default 0.005)
    lora_mode: str = DEFAULT_LORA_MODE  # secc2plane / sr / secc2plane_sr / all / none
    lora_r: int = DEFAULT_LORA_R
    conv_lora: str = "upstream"  # to_plane_cnn LoRA form: 'upstream' (loralib) or 'peft' (native)
    batch_size: int = 1  # upstream: 1 needs ~8 GB VRAM, 2 ~15 GB
    seed: int = 0
    norm_mode: str = "upstream"  # 'upstream' (train mode, as the released script) or 'eval'
    stochastic_render: bool = True  # upstream trains with jittered + importance ray samples
    blink_every: int = 4  # new blink levels every N steps (the loss itself is applied every step)
    checkpoint_every: int = 500  # resumable checkpoint + adapter in work_dir (upstream saves every 2000)
    preview_every: int = 100  # preview render passed to on_step (0 = never)
    holdout_fraction: float = 0.1  # the clip's last share never trained on (0: train on every frame)
    holdout_min_frames: int = 25  # held out at least this many frames (1 s at 25 fps)
    validate_every: int = 100  # validation render + metrics every N steps and at the end
    validation_frames: int = 8  # held-out frames rendered per validation (evenly spaced)
    early_stop_patience: int = 0  # stop after N validations without improvement (0: run all steps)
    early_stop_margin: float = 0.001  # validation LPIPS improvement that counts
    keep_best: bool = True  # return the adapter of the best validation, not the last

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "blink_every", "checkpoint_every", "holdout_min_frames", "validate_every",
                     "validation_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.lr < 0 or self.lr_triplane < 0:
            raise InputError(f"learning rates must be >= 0, got lr={self.lr}, lr_triplane={self.lr_triplane}")
        if not 0 <= self.holdout_fraction < 0.5:
            raise InputError(f"holdout_fraction must be in [0, 0.5), got {self.holdout_fraction!r}")
        if isinstance(self.early_stop_patience, bool) or not isinstance(self.early_stop_patience, int) \
                or self.early_stop_patience < 0 or self.early_stop_margin < 0:
            raise InputError(f"early_stop_patience must be an integer >= 0 and early_stop_margin >= 0, got "
                             f"{self.early_stop_patience!r}, {self.early_stop_margin!r}")
        if self.norm_mode not in NORM_MODES:
            raise InputError(f"norm_mode must be one of {NORM_MODES}, got {self.norm_mode!r}")
        parse_lora_mode(self.lora_mode)
        if self.lora_mode != "none":
            LoraSpec(self.lora_mode, self.lora_r, self.conv_lora)

    @classmethod
    def fast(cls, **kw) -> "AdaptConfig":
        """Faster preset: 1000 steps (half the README's 2000), otherwise unchanged. Quality is
        usually close for short clips; use the default for clips longer than ~20 s."""
        return cls(**dict(dict(steps=1000), **kw))

    @classmethod
    def image(cls, **kw) -> "AdaptConfig":
        """Single-image identity (upstream help: 3-10 steps, lr_triplane 0.001, lora_mode none):
        the tri-grid alone, with AdamW."""
        return cls(**dict(dict(steps=10, lr_triplane=1e-3, lora_mode="none"), **kw))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Trainer:
    """The adaptation state of one identity on one base renderer (see module docstring)."""

    def __init__(
        self,
        renderer: nn.Module,
        data: AdaptationData,
        lpips: Optional[LPIPS],
        config: AdaptConfig = AdaptConfig(),
        *,
        device: Optional[torch.device | str] = None,
    ) -> None:
        device = torch.device(device) if device is not None else next(renderer.parameters()).device
        dtype = next(renderer.parameters()).dtype
        check_device_dtype(device, dtype)
        if renderer.cfg.plane2grid is None:
            raise InputError(
                "train_adapter needs the MimicTalk base renderer (tri-grid, mimictalk_base_renderer); this is a "
                "Real3D-Portrait renderer (tri-plane), which SD-Hybrid adaptation does not support (upstream adapts "
                "only the MimicTalk base model)"
            )
        if data.resolution != renderer.cfg.image_resolution:
            raise InputError(
                f"the identity is {data.resolution}x{data.resolution} but the renderer works at "
                f"{renderer.cfg.image_resolution}x{renderer.cfg.image_resolution}; prepare the identity at that size"
            )
        self.config, self.data, self.lpips, self.device = config, data, lpips, device
        with torch.inference_mode(False), forked_rng(device):
            torch.manual_seed(config.seed + 3)  # LoRA A init (Kaiming) draws from the global RNG
            self.model = (share_copy(renderer, trainable=True) if config.lora_mode == "none" else
                          inject_lora(renderer, config.lora_mode, config.lora_r, conv_lora=config.conv_lora))
            self.model.to(device).requires_grad_(False).eval()  # no copy when already there
            for p in lora_parameters(self.model):
                p.requires_grad_(True)
            self.spec = LoraSpec(config.lora_mode, config.lora_r, config.conv_lora)
            self.base_structure, self.base_probe = base_fingerprint(base_parameters(renderer))
            self.identity_sha256 = identity_fingerprint(data.identity)
            self._init_references()
            head0 = signed(data.identity.head_images([0]), device)  # [1, 3, S, S], black background
            side = renderer.cfg.secc_resolution
            if head0.shape[-1] != side:
                head0 = F.interpolate(head0, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
            with torch.no_grad():  # upstream cal_cano_plane(head image of frame 0), eval mode
                planes = self.model.cano_planes(head0).float()
            self.triplane = nn.Parameter(planes.clone())
            self.triplane_init = planes.clone()
            self.optimizer = self._make_optimizer()
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.render_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.global_rng = seeded_global_rng(config.seed + 2, device)  # dropout / drop-path draws
        self.step = 0
        self.blink: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (frame indices [B], levels [3, B])
        self.blink_secc: list[torch.Tensor] = []
        self.last_losses: dict[str, float] = {}
        self.lambda_triplane = triplane_reg_weight(data.num_frames)
        self.split = holdout_split(data.num_frames, config.holdout_fraction, config.holdout_min_frames)
        self.train_frames = len(self.split[0]) if self.split else data.num_frames
        self.val_idx = spread(self.split[1], config.validation_frames) if self.split else None
        self.early = EarlyStop(config.early_stop_patience, config.early_stop_margin)
        self.best_adapter: Optional[Adapter] = None
        self.val_strip: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (real, rendered) [k, S, S, 3] 0..1
        if self.split is None and config.holdout_fraction > 0 and data.num_frames > 1:
            logger.info("the clip has %d frames, fewer than two held-out slices of %d: training on every frame, "
                        "without validation", data.num_frames, max(config.holdout_min_frames, 1))

    # --- setup ----------------------------------------------------------------------------------

    def _init_references(self) -> None:
        """Per-clip inputs, moved to the device once (clones: they may be inference tensors)."""
        ident, dev = self.data.identity, self.device
        self.cano_secc = _normal(self.data.secc.render(torch.zeros(1, 64))).to(dev)
        self.src_secc = self._drive_secc(torch.tensor([0]))
        self.torso_ref = signed(ident.torso_ref[None], dev)
        self.bg = signed(ident.plate[None], dev)
        self.segmap0 = ident.segmaps_one_hot([0]).to(dev)
        self.kp_s = ident.keypoints[:1].float().to(dev)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg, lora = self.config, lora_parameters(self.model)
        if not lora:
            return torch.optim.AdamW([self.triplane], lr=cfg.lr_triplane, betas=ADAM_BETAS, weight_decay=ADAMW_WEIGHT_DECAY)
        return torch.optim.Adam(
            [{"params": lora, "lr": cfg.lr, "betas": ADAM_BETAS},
             {"params": [self.triplane], "lr": cfg.lr_triplane, "betas": ADAM_BETAS}]
        )

    # --- one step -------------------------------------------------------------------------------

    def render(self, idx: torch.Tensor, drv_secc: Optional[torch.Tensor] = None, *, stochastic: bool = False):
        """Render frames ``idx`` of the clip with the current tri-grid and LoRA (RenderOutput)."""
        ident, dev = self.data.identity, self.device
        drv_secc = self._drive_secc(idx) if drv_secc is None else drv_secc
        source = RenderSource(self.triplane, self.cano_secc, self.src_secc, self.kp_s, self.torso_ref, self.bg, self.segmap0)
        return self.model.render(
            source, drv_secc, ident.cameras[idx].float().to(dev), ident.keypoints[idx].float().to(dev),
            deterministic=not stochastic, generator=self.render_gen if stochastic else None,
        )

    def _blink_loss(self, idx: torch.Tensor, drv_secc: torch.Tensor) -> Optional[torch.Tensor]:
        """L1(planes(half blink), mean(planes(less blink), planes(more blink))). Every
        ``blink_every`` steps (upstream: 4) the current driving SECC is blinked at three new
        levels; the loss is applied every step with the latest three maps, as upstream."""
        if "secc2plane" not in parse_lora_mode(self.config.lora_mode):
            return None  # no gradient path (upstream computes it and drops it from the total)
        if self.blink is None or self.step % self.config.blink_every == 0:
            self.set_blink(idx, torch.stack(blink_amounts(len(idx), self.data_gen)), drv_secc)
        planes = [self.model.expression_planes(self.cano_secc, self.src_secc, secc)
                  for secc in self.blink_secc]  # three passes, as upstream (train-mode BatchNorm sees each alone)
        return (planes[1] - (planes[0] + planes[2]) / 2).abs().mean()

    def set_blink(self, idx: torch.Tensor, amounts: torch.Tensor, drv_secc: Optional[torch.Tensor] = None) -> None:
        """Blink the driving SECC of frames ``idx`` at ``amounts`` [3, B] (p1, p2, p3)."""
        secc = self._drive_secc(idx) if drv_secc is None else drv_secc
        self.blink = (idx, amounts)
        self.blink_secc = [_normal(self.data.secc.blink(secc, p.to(secc.device))).to(self.device) for p in amounts]

    def _drive_secc(self, idx: torch.Tensor) -> torch.Tensor:
        return _normal(self.data.drive_secc(idx)).to(self.device)

    def _lpips(self, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        # images below AlexNet's minimum size (tiny test renderers) get no LPIPS term
        if self.lpips is None or min(x.shape[-2:]) < LPIPS_MIN_SIZE:
            return None
        return self.lpips(x, y).mean()

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the unweighted losses."""
        cfg, data, dev = self.config, self.data, self.device
        self.model.train(cfg.norm_mode == "upstream")
        with own_global_rng(self):
            idx = torch.randint(self.train_frames, (cfg.batch_size,), generator=self.data_gen)  # never held-out frames
            drv_secc = self._drive_secc(idx)
            out = self.render(idx, drv_secc, stochastic=cfg.stochastic_render)
            target, head = data.targets(idx, dev)
            r = out.image_raw.shape[-1]
            head_r = resize_antialias(head, r)
            image, raw = out.image.float(), out.image_raw.float()
            losses: dict[str, torch.Tensor] = {
                "mse_loss": (image - target).abs().mean(),
                "head_mse_loss": (raw - head_r).abs().mean(),
            }
            _put(losses, "lpips_loss", self._lpips(image, target))
            _put(losses, "head_lpips_loss", self._lpips(raw, head_r))
            lip_l1, lip_lp = lip_losses(image, target, data.identity.lip_rects[idx], self.lpips)
            _put(losses, "lip_mse_loss", lip_l1)
            _put(losses, "lip_lpips_loss", lip_lp)
            l2, entropy = density_losses(out.alpha, data.head_mask(idx, r).to(dev))
            _put(losses, "density_weight_l2_loss", l2)
            losses["density_weight_entropy_loss"] = entropy
            _put(losses, "blink_reg_loss", self._blink_loss(idx, drv_secc))
            losses["triplane_reg_loss"] = (self.triplane - self.triplane_init).abs().mean()
            weights = dict(LOSS_WEIGHTS, triplane_reg_loss=self.lambda_triplane)
            loss = total_loss(losses, weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.triplane.grad.mul_(self.triplane.numel())  # upstream: grad x numel before Adam
            self.optimizer.step()
        self.step += 1
        self.last_losses = {k: float(v.detach()) for k, v in losses.items()}
        self.last_losses["total_loss"] = float(loss.detach())
        return self.last_losses

    @torch.no_grad()
    def preview(self, frame: int = 0) -> torch.Tensor:
        """Deterministic render of ``frame`` with the current state: [S, S, 3] in [0, 1], CPU."""
        was_training = self.model.training
        self.model.eval()
        idx = torch.tensor([frame])
        out = self.render(idx)
        self.model.train(was_training)
        return ((out.image[0].float().permute(1, 2, 0) + 1) / 2).clamp(0, 1).cpu()

    @torch.no_grad()
    def validate(self) -> dict[str, Optional[float]]:
        """Render the held-out validation frames (deterministic, eval mode; no RNG stream is
        touched) and measure them against their targets: mean PSNR / SSIM / LPIPS over the full
        frame and the head box (None where not measurable). Keeps the frames for the report strip."""
        from ..evaluate.metrics import head_boxes, image_metrics

        was_training = self.model.training
        self.model.eval()
        preds, targets = [], []
        for part in self.val_idx.split(self.config.batch_size):
            preds.append(((self.render(part).image.float() + 1) / 2).clamp(0, 1).cpu())
            targets.append(((self.data.targets(part, "cpu")[0] + 1) / 2).clamp(0, 1))
        self.model.train(was_training)
        pred, target = torch.cat(preds), torch.cat(targets)
        masks = self.data.head_mask(self.val_idx, pred.shape[-1])[:, 0]
        per_frame = image_metrics(pred, target, boxes=head_boxes(masks), lpips=self.lpips)
        self.val_strip = (target.permute(0, 2, 3, 1), pred.permute(0, 2, 3, 1))
        return {k: _mean_or_none(v) for k, v in per_frame.items()}

    def run_validation(self, work: Optional[Path]) -> dict:
        """:meth:`validate`, recorded in the early-stop history; a new best becomes the kept adapter
        (and ``best_adapter.safetensors`` in ``work``)."""
        metrics = self.validate()
        if self.early.update(self.step, metrics) and self.config.keep_best:
            self.best_adapter = self.adapter()
            if work is not None:
                work.mkdir(parents=True, exist_ok=True)
                save_adapter(work / BEST_ADAPTER_NAME, self.best_adapter)
        return dict(metrics, step=self.step)

    def result(self) -> Adapter:
        """The adapter a run returns: the best validated one with ``keep_best``, else the current."""
        if self.config.keep_best and self.best_adapter is not None:
            best = self.best_adapter
            best.metadata["validation"] = self.validation_state()
            return best
        return self.adapter()

    def validation_state(self) -> dict:
        """The validation record (best score and step, evaluations since, history) for metadata."""
        return dict(self.early.state(), held_out=[self.split[1].start, self.split[1].stop] if self.split else None,
                    frames=self.val_idx.tolist() if self.val_idx is not None else [])

    # --- results --------------------------------------------------------------------------------

    def adapter(self) -> Adapter:
        """The current state as an :class:`Adapter` (CPU copies)."""
        ident = self.data.identity
        identity = AdapterIdentity(
            src_frame=signed(ident.frames[:1]), id=ident.id.float().cpu(), src_kp=ident.keypoints[0].float().cpu(),
            src_exp=ident.exp[:1].float().cpu(), src_euler=ident.euler[:1].float().cpu(),
            src_trans=ident.trans[:1].float().cpu(), bg=self.bg.cpu(), torso_ref=self.torso_ref.cpu(),
            segmap=self.segmap0.cpu(), video_id=str(ident.meta.get("source", "")),
        )
        return Adapter(
            lora={k: v.cpu().clone() for k, v in lora_state_dict(self.model).items()},
            spec=self.spec,
            triplane=self.triplane.detach().cpu().clone(),
            identity=identity,
            norm_state=norm_state(self.model),
            base_probe=self.base_probe,
            metadata={
                "source": "trained",
                "base": {"structure_sha256": self.base_structure},
                "training": dict(self.config.to_dict(), steps_done=self.step, num_frames=ident.num_frames,
                                 identity_sha256=self.identity_sha256),
                "final_losses": self.last_losses,
                "validation": self.validation_state(),
            },
        )

    def save(self, work_dir: Path) -> None:
        """Write the resumable checkpoint and the adapter into ``work_dir``."""
        from .resume import save_checkpoint

        work_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self, work_dir / CHECKPOINT_NAME)
        save_adapter(work_dir / ADAPTER_NAME, self.adapter())


def train_adapter(
    renderer: nn.Module,
    data: AdaptationData,
    lpips: Optional[LPIPS],
    config: AdaptConfig = AdaptConfig(),
    *,
    device: Optional[torch.device | str] = None,
    work_dir: Optional[str | Path] = None,
    resume: Optional[str | Path] = None,
    on_step: Optional[ProgressFn] = None,
) -> Adapter:
    """Run SD-Hybrid adaptation and return the adapter (see module docstring).

    ``lpips`` is the perceptual network (:func:`.lpips.load_lpips`); None drops the LPIPS terms
    (tests). ``resume`` is a checkpoint written by an earlier run of the same base weights,
    identity and settings (else :class:`.resume.ResumeMismatch`); with a
    ``work_dir`` the checkpoint and adapter are also kept up to date there. Callable from inside
    ``torch.inference_mode`` (a ComfyUI node): training leaves it, and inference-mode weights and
    identity tensors are cloned where autograd needs them.
    """
    with torch.inference_mode(False), torch.enable_grad():
        trainer = Trainer(renderer, data, lpips, config, device=device)
        if resume is not None:
            from .resume import load_checkpoint

            load_checkpoint(trainer, resume)
            _restore_best(trainer, Path(resume).parent / BEST_ADAPTER_NAME)
        work = Path(work_dir) if work_dir is not None else None
        try:
            while trainer.step < config.steps:
                losses = trainer.train_step()
                preview = None
                if config.preview_every and trainer.step % config.preview_every == 0:
                    preview = trainer.preview()
                validation = None
                if trainer.val_idx is not None and (trainer.step % config.validate_every == 0 or trainer.step == config.steps):
                    validation = trainer.run_validation(work)
                if work is not None and trainer.step % config.checkpoint_every == 0:
                    trainer.save(work)
                report(on_step, trainer.step, config.steps, losses=losses, preview=preview, validation=validation,
                       validation_strip=trainer.val_strip if validation is not None else None)
                if trainer.early.should_stop:
                    logger.info("early stop at step %d: validation LPIPS has not improved by %g for %d evaluations "
                                "(best %.4g at step %d)", trainer.step, config.early_stop_margin,
                                config.early_stop_patience, trainer.early.best, trainer.early.best_step)
                    break
        except torch.OutOfMemoryError as e:
            _save_on_exit(trainer, work)
            raise MimicTalkError(
                f"out of memory during adaptation at step {trainer.step + 1} with batch_size={config.batch_size}: "
                "use batch_size=1 (about 8 GB of GPU memory at full size), close other GPU work, or train on a "
                "larger GPU" + (f"; resume from {work / CHECKPOINT_NAME}" if work is not None else "")
            ) from e
        except BaseException:  # an interrupt (on_step raising, Ctrl-C): keep what was trained, re-raise
            _save_on_exit(trainer, work)
            raise
        if work is not None:
            trainer.save(work)
        return trainer.result()


def _save_on_exit(trainer: Trainer, work: Optional[Path]) -> None:
    """Save on the way out of a failed / interrupted run; a failure to save is logged, so the
    original exception is the one that propagates."""
    if work is None or trainer.step == 0:
        return
    try:
        trainer.save(work)
    except (OSError, MimicTalkError) as e:
        logger.error("adaptation stopped at step %d and its state could not be saved in %s: %s", trainer.step, work, e)
        return
    logger.info("adaptation stopped at step %d; checkpoint and adapter saved in %s", trainer.step, work)


# --- small helpers ----------------------------------------------------------------------------------


def _restore_best(trainer: Trainer, path: Path) -> None:
    """After a resume: the best adapter saved by the earlier part of the run, when its step is the
    recorded best (else the best is found again from here on)."""
    from .adapter import load_adapter

    if not (trainer.config.keep_best and trainer.early.best_step and path.is_file()):
        return
    best = load_adapter(path)
    if best.metadata.get("training", {}).get("steps_done") == trainer.early.best_step:
        trainer.best_adapter = best


def _mean_or_none(values: torch.Tensor) -> Optional[float]:
    """Mean over the measured frames (NaN = not measured); None when none was; inf stays inf."""
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else None


def _put(losses: dict, name: str, value: Optional[torch.Tensor]) -> None:
    if value is not None:
        losses[name] = value


def _normal(t: torch.Tensor) -> torch.Tensor:
    """A tensor usable by autograd (inference-mode tensors are cloned)."""
    return t.clone() if t.is_inference() else t
