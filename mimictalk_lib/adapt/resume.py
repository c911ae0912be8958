"""Resumable adaptation checkpoints (safetensors + JSON metadata, no pickle).

A checkpoint is resumed only by the run it belongs to: the same base weights (structure hash and
a probe of values), the same identity (a fingerprint of its content, :func:`identity_fingerprint`,
never just its frame count) and the same settings that shape the trained tensors and their
updates (:data:`_STRUCTURE`); anything else raises :class:`ResumeMismatch` naming what differs.

Everything a step depends on is saved, so a resumed run continues bit-for-bit (same device and
settings): LoRA matrices, the tri-grid and its initial value (the regulariser's anchor), Adam's
moments and step counts, the norm buffers that move in train mode, the data / render generators
and the global RNG streams (dropout, drop-path), the cached blink levels, the step count and the
held-out validation history (best score and step, evaluations since).
About 4 x the tri-grid (~300 MB at full size); the adapter written beside it is ~83 MB.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from ..checkpoint import load_safetensors, save_safetensors
from ..errors import CheckpointError
from ..utils import count, logger
from ..lora.inject import lora_state_dict, load_lora_state_dict
from .adapter import PROBE_ATOL, PROBE_RTOL, load_norm_state, norm_state

if TYPE_CHECKING:
    from .train import Trainer

CHECKPOINT_FORMAT = "mimictalk-adapt-checkpoint"
CHECKPOINT_VERSION = 2  # 2: identity fingerprint and base probe (version 1 cannot be checked)
_STRUCTURE = ("lora_mode", "lora_r", "conv_lora", "norm_mode", "lr", "lr_triplane")
"""Settings a resumed run must share with the saved one (they shape the trained tensors, what the
saved norm statistics mean, and the optimiser's updates)."""
_STREAM = ("batch_size", "seed", "stochastic_render", "blink_every")
"""Settings that may change on resume (e.g. a smaller batch after running out of memory; the seed
only matters at the start, the saved random streams replace it); the run then continues validly
but no longer bit-for-bit like an uninterrupted one. ``steps`` may grow (train longer)."""
_FINGERPRINT_FIELDS = ("id", "exp", "euler", "trans", "cameras", "keypoints", "lip_rects", "plate", "torso_ref")
"""Identity tensors hashed by :func:`identity_fingerprint` (besides frame 0 and the frame count)."""


class ResumeMismatch(CheckpointError):
    """A checkpoint that belongs to another run. ``reasons`` lists what differs (base renderer,
    identity, settings) in plain words; callers (the Train Adapter node) re-word the remedy."""

    def __init__(self, path: str | os.PathLike, reasons: list[str]) -> None:
        self.path, self.reasons = path, reasons
        super().__init__(
            f"{path} belongs to another training run ({'; '.join(reasons)}); train_adapter cannot resume it: "
            "pass another work_dir to start a new run beside it, or resume=None to start over"
        )


def identity_fingerprint(identity) -> str:
    """sha256 of an identity's content: its 3DMM coefficients, cameras, keypoints, lip boxes,
    background and torso plates, frame 0 (the tri-grid's initialisation) and the frame count.
    Two clips of the same length but another person (or another take) never share it."""
    h = hashlib.sha256()
    first = identity.frames[:1]
    for name, t in [(n, getattr(identity, n)) for n in _FINGERPRINT_FIELDS] + [("frame0", first)]:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    h.update(f"frames:{identity.num_frames}".encode())
    return h.hexdigest()


def save_checkpoint(trainer: "Trainer", path: str | os.PathLike) -> None:
    """Write the full training state of ``trainer`` to ``path``."""
    tensors: dict[str, torch.Tensor] = {f"lora.{k}": v for k, v in lora_state_dict(trainer.model).items()}
    tensors["triplane"] = trainer.triplane.detach()
    tensors["triplane_init"] = trainer.triplane_init
    tensors.update({f"norm.{k}": v for k, v in norm_state(trainer.model).items()})
    opt = trainer.optimizer.state_dict()
    for index, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    tensors["base_probe"] = trainer.base_probe
    tensors["rng.data"] = trainer.data_gen.get_state()
    tensors["rng.render"] = trainer.render_gen.get_state()
    tensors.update({f"rng.global.{k}": v for k, v in trainer.global_rng.items()})
    if trainer.blink is not None:
        tensors["blink.idx"], tensors["blink.amounts"] = trainer.blink
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": trainer.step,
        "config": trainer.config.to_dict(),
        "base": {"structure_sha256": trainer.base_structure},
        "identity": {"sha256": trainer.identity_sha256, "num_frames": trainer.data.num_frames},
        "param_groups": [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in opt["param_groups"]],
        "last_losses": trainer.last_losses,
        "validation": trainer.early.state(),  # held-out validation history, best score and step
    }
    save_safetensors(path, tensors, meta)


def load_checkpoint(trainer: "Trainer", path: str | os.PathLike) -> None:
    """Restore ``trainer`` (freshly built with the same renderer, clip and settings) from ``path``."""
    tensors, meta = load_safetensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a MimicTalk adaptation checkpoint (format {meta.get('format')!r})")
    reasons = resume_mismatches(trainer, tensors, meta)
    if reasons:
        raise ResumeMismatch(path, reasons)
    saved, now = meta["config"], trainer.config.to_dict()
    changed = {k: (saved.get(k), now[k]) for k in _STREAM if saved.get(k) != now[k]}
    if changed:
        logger.warning("resuming %s with changed settings %s (saved, now): the run continues, not bit-for-bit", path, changed)

    dev = trainer.device
    lora = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
    load_lora_state_dict(trainer.model, lora)
    load_norm_state(trainer.model, {k[len("norm."):]: v for k, v in tensors.items() if k.startswith("norm.")})
    with torch.no_grad():
        trainer.triplane.copy_(tensors["triplane"].to(dev))
    trainer.triplane_init = tensors["triplane_init"].to(dev)

    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(dev)
    groups = [dict(g) for g in meta["param_groups"]]
    for g, live in zip(groups, trainer.optimizer.param_groups):  # steps / lrs may be changed on resume
        g["lr"] = live["lr"]
        g["betas"] = tuple(g["betas"])
    try:
        trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
    except ValueError as e:
        raise CheckpointError(f"{path}: optimiser state does not match this run's parameters ({e})") from e

    trainer.data_gen.set_state(tensors["rng.data"])
    trainer.render_gen.set_state(tensors["rng.render"])
    trainer.global_rng = {k[len("rng.global."):]: v for k, v in tensors.items() if k.startswith("rng.global.")}
    if "blink.idx" in tensors:
        trainer.set_blink(tensors["blink.idx"], tensors["blink.amounts"])
    trainer.step = int(meta["step"])
    trainer.last_losses = dict(meta.get("last_losses", {}))
    trainer.early.load(meta.get("validation"))


def default_run_name(identity) -> str:
    """A run name of the identity's own: the source file's stem (letters, digits, '.', '_', '-';
    at most 40) and 10 hex digits of :func:`identity_fingerprint`, so two people never share a
    run folder and the same identity always finds its own run again."""
    source = str((identity.meta or {}).get("source") or "identity")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.replace("\\", "/")).stem).strip("._-")[:40] or "identity"
    return f"{stem}-{identity_fingerprint(identity)[:10]}"


def resume_mismatches(trainer: "Trainer", tensors: dict[str, torch.Tensor], meta: dict) -> list[str]:
    """What keeps ``trainer`` from resuming the checkpoint (``tensors``, ``meta``); each item is a
    reason in plain words. Every check stands alone: any one mismatch refuses."""
    if int(meta.get("version", 0)) < 2:
        return ["it was written by an older version of the pack, which did not record the identity"]
    reasons = []
    base, probe = meta.get("base") or {}, tensors.get("base_probe")
    if base.get("structure_sha256") != trainer.base_structure:
        reasons.append("another base renderer architecture")
    elif probe is None or probe.shape != trainer.base_probe.shape or not torch.allclose(
            probe, trainer.base_probe, rtol=PROBE_RTOL, atol=PROBE_ATOL):
        reasons.append("another base renderer (other weights)")
    ident = meta.get("identity") or {}
    if ident.get("sha256") != trainer.identity_sha256:
        frames = ident.get("num_frames")
        reasons.append(f"another identity ({count(frames, 'frame')} vs {count(trainer.data.num_frames, 'frame')} now)"
                       if frames != trainer.data.num_frames else "another identity (same length, other content)")
    saved, now = meta.get("config") or {}, trainer.config.to_dict()
    changed = [f"{k} {saved.get(k)!r} (now {now[k]!r})" for k in _STRUCTURE if saved.get(k) != now[k]]
    if changed:
        reasons.append("other settings: " + ", ".join(changed))
    return reasons


# --- the global RNG streams (dropout, drop-path) a run owns -------------------------------------


def forked_rng(device: torch.device):
    """``torch.random.fork_rng`` over the CPU generator and, on an accelerator (CUDA, XPU, MPS,
    ...), ``device``'s own: the process' streams are restored on exit."""
    return torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type)


def global_rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The process' global RNG states: CPU, and the accelerator when training on one (keyed by
    its ``device.type``)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type != "cpu":
        states[device.type] = torch.get_device_module(device.type).get_rng_state(device)
    return states


def seeded_global_rng(seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states ``torch.manual_seed(seed)`` gives, without touching the process' own."""
    with forked_rng(device):
        torch.manual_seed(seed)
        return global_rng_states(device)


@contextmanager
def own_global_rng(trainer: "Trainer") -> Iterator[None]:
    """Run a step on the trainer's own global RNG stream (``trainer.global_rng``, saved in
    checkpoints), restoring the process' RNG afterwards."""
    device = trainer.device
    with forked_rng(device):
        torch.set_rng_state(trainer.global_rng["cpu"])
        if device.type in trainer.global_rng and device.type != "cpu":
            torch.get_device_module(device.type).set_rng_state(trainer.global_rng[device.type], device)
        try:
            yield
        finally:
            trainer.global_rng = global_rng_states(device)
