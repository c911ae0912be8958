"""SD-Hybrid adaptation on the tiny renderer: the loss goes down, only the tri-grid and LoRA
change, resuming reproduces an uninterrupted run bit for bit, an interrupt leaves a usable
adapter and a resumable checkpoint, and the progress callback gets losses and previews."""

import pytest
import torch

from mimictalk_lib.adapt.adapter import load_adapter, personalise
from mimictalk_lib.adapt.data import AdaptationData
from mimictalk_lib.adapt.lpips import LPIPS
from mimictalk_lib.adapt.resume import load_checkpoint
from mimictalk_lib.adapt.train import AdaptConfig, Trainer, train_adapter
from mimictalk_lib.checkpoint import read_safetensors_metadata
from mimictalk_lib.errors import CheckpointError, InputError, MimicTalkError
from mimictalk_lib.lora.inject import lora_parameters
from mimictalk_lib.renderer import RenderSource
from tests.adapt.synthetic import SyntheticSecc, synthetic_identity

# learning rates for a tiny random renderer (the upstream defaults are for the full model)
TINY = dict(lr=2e-2, lr_triplane=2e-2, preview_every=0)


def _eval_l1(trainer: Trainer) -> float:
    with torch.no_grad():
        trainer.model.eval()
        out = trainer.render(torch.arange(trainer.data.num_frames))
        return (out.image - trainer.data.targets(torch.arange(trainer.data.num_frames), "cpu")[0]).abs().mean().item()


def test_training_lowers_the_loss_and_changes_only_trigrid_and_lora(tiny_base, data):
    base_before = {k: v.clone() for k, v in tiny_base.state_dict().items()}
    trainer = Trainer(tiny_base, data, None, AdaptConfig(steps=10, batch_size=2, norm_mode="eval", **TINY))
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in trainer.model.named_buffers()}
    lora0 = [p.detach().clone() for p in lora_parameters(trainer.model)]
    plane0 = trainer.triplane.detach().clone()
    start = _eval_l1(trainer)
    for _ in range(10):
        losses = trainer.train_step()
    end = _eval_l1(trainer)
    assert end < 0.75 * start, (start, end)
    assert {"mse_loss", "head_mse_loss", "lip_mse_loss", "density_weight_l2_loss", "blink_reg_loss",
            "triplane_reg_loss", "total_loss"} <= set(losses)

    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    assert all(torch.equal(b, buffers[n]) for n, b in trainer.model.named_buffers())  # eval mode: no BN drift
    assert not torch.equal(trainer.triplane, plane0)
    assert any(not torch.equal(a, b) for a, b in zip(lora_parameters(trainer.model), lora0))
    base_after = tiny_base.state_dict()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def _same_adapter(a, b):
    assert set(a.lora) == set(b.lora)
    assert all(torch.equal(a.lora[k], b.lora[k]) for k in a.lora)
    assert torch.equal(a.triplane, b.triplane)
    assert all(torch.equal(a.norm_state[k], b.norm_state[k]) for k in a.norm_state)


def test_resume_reproduces_an_uninterrupted_run(tiny_base, data, tmp_path):
    """Train mode ('upstream': BatchNorm batch statistics, drop-path) and stochastic rendering:
    every random stream must be restored."""
    cfg = AdaptConfig(steps=4, norm_mode="upstream", checkpoint_every=2, **TINY)
    straight = train_adapter(tiny_base, data, None, cfg)
    train_adapter(tiny_base, data, None, AdaptConfig(**dict(cfg.to_dict(), steps=2)), work_dir=tmp_path)
    assert read_safetensors_metadata(tmp_path / "checkpoint.safetensors")["step"] == 2
    resumed = train_adapter(tiny_base, data, None, cfg, resume=tmp_path / "checkpoint.safetensors")
    _same_adapter(straight, resumed)
    assert any(not torch.equal(v, tiny_base.state_dict()[k]) for k, v in straight.norm_state.items())  # BN moved


class Stop(Exception):
    pass


def test_interrupt_keeps_a_usable_adapter_and_a_resumable_checkpoint(tiny_base, data, tmp_path):
    seen = []

    def on_step(done, total, **info):
        seen.append((done, total, info))
        if done == 2:
            raise Stop()

    cfg = AdaptConfig(steps=3, norm_mode="eval", checkpoint_every=100, **dict(TINY, preview_every=1))
    with pytest.raises(Stop):
        train_adapter(tiny_base, data, None, cfg, work_dir=tmp_path, on_step=on_step)
    assert [s[0] for s in seen] == [1, 2] and seen[0][1] == 3
    assert "total_loss" in seen[0][2]["losses"]
    preview = seen[0][2]["preview"]
    assert preview.shape == (data.resolution, data.resolution, 3) and 0 <= preview.min() <= preview.max() <= 1

    adapter = load_adapter(tmp_path / "adapter.safetensors")
    assert adapter.metadata["training"]["steps_done"] == 2
    pers = personalise(tiny_base, adapter)
    with torch.no_grad():
        trainer = Trainer(tiny_base, data, None, cfg)
        load_checkpoint(trainer, tmp_path / "checkpoint.safetensors")
        assert trainer.step == 2
        ours = trainer.render(torch.tensor([0, 3])).image
        source = RenderSource(pers.cano_planes, trainer.cano_secc, trainer.src_secc, trainer.kp_s, trainer.torso_ref,
                              trainer.bg, trainer.segmap0)
        theirs = pers.model.render(source, trainer._drive_secc(torch.tensor([0, 3])), data.identity.cameras[[0, 3]],
                                   data.identity.keypoints[[0, 3]], deterministic=True).image
    assert (ours - theirs).abs().max().item() < 1e-5  # adapter file == in-memory personalised renderer
    done = train_adapter(tiny_base, data, None, cfg, work_dir=tmp_path, resume=tmp_path / "checkpoint.safetensors")
    assert done.metadata["training"]["steps_done"] == 3


def test_bad_settings(tiny_base, data):
    with pytest.raises(InputError, match="steps"):
        AdaptConfig(steps=0)
    with pytest.raises(InputError, match="norm_mode"):
        AdaptConfig(norm_mode="train")
    with pytest.raises(InputError, match="lora_mode"):
        AdaptConfig(lora_mode="full")
    other = AdaptationData(synthetic_identity(32, frames=2), SyntheticSecc(64))
    with pytest.raises(InputError, match="renderer works at"):
        Trainer(tiny_base, other, None, AdaptConfig())


def test_face_model_secc_source_trains(tiny_base, tmp_path):
    """The real SECC path (face helper's rasteriser and blink edit) on a synthetic BFM."""
    from mimictalk_lib.face import load_face_model
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model

    write_synthetic_face_model(tmp_path)
    identity = synthetic_identity(tiny_base.cfg.image_resolution, frames=3)
    data = AdaptationData.from_identity(identity, load_face_model(tmp_path), tiny_base.cfg.secc_resolution)
    secc = data.drive_secc(torch.tensor([0, 2]))
    side = tiny_base.cfg.secc_resolution
    assert secc.shape == (2, 3, side, side) and secc.min() >= -1 - 1e-5 and secc.max() <= 1 + 1e-5 and (secc > -0.99).any()
    assert data.secc.blink(secc, torch.tensor([0.0, 1.0])).shape == secc.shape
    trainer = Trainer(tiny_base, data, LPIPS(), AdaptConfig(steps=1, **TINY))  # random AlexNet: exercises the path
    losses = trainer.train_step()
    assert {"lpips_loss", "blink_reg_loss"} <= set(losses) and "head_lpips_loss" not in losses  # raw 16² < 31²
    assert torch.isfinite(torch.tensor(losses["total_loss"]))


def test_out_of_memory_saves_and_explains(tiny_base, data, tmp_path, monkeypatch):
    real_step = Trainer.train_step

    def step(self):
        if self.step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", step)
    cfg = AdaptConfig(steps=3, norm_mode="eval", checkpoint_every=100, **TINY)
    with pytest.raises(MimicTalkError, match="batch_size=1") as info:
        train_adapter(tiny_base, data, None, cfg, work_dir=tmp_path)
    assert "checkpoint.safetensors" in str(info.value)
    assert read_safetensors_metadata(tmp_path / "checkpoint.safetensors")["step"] == 1
    monkeypatch.setattr(Trainer, "train_step", real_step)
    with pytest.raises(CheckpointError, match="other settings: lora_r 2 .now 3."):
        train_adapter(tiny_base, data, None, AdaptConfig(**dict(cfg.to_dict(), lora_r=3)), resume=tmp_path / "checkpoint.safetensors")


def test_trains_from_inference_mode_inputs(data):
    """ComfyUI loads models and runs nodes under torch.inference_mode: weights and the identity
    are inference tensors; training must still work (and leave them untouched)."""
    from tests.fixtures.tiny_renderer import random_renderer

    with torch.inference_mode():
        base = random_renderer("mimictalk", seed=6)
        ident = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(data.identity).items()}
        frozen = AdaptationData(type(data.identity)(**ident), data.secc)
        assert next(base.parameters()).is_inference() and frozen.identity.keypoints.is_inference()
        adapter = train_adapter(base, frozen, None, AdaptConfig(steps=1, **TINY))
    assert adapter.metadata["training"]["steps_done"] == 1 and torch.isfinite(adapter.triplane).all()


def test_image_preset_trains_the_trigrid_alone(tiny_base, data):
    cfg = AdaptConfig.image(steps=2, preview_every=0)
    trainer = Trainer(tiny_base, data, None, cfg)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and not lora_parameters(trainer.model)
    plane0 = trainer.triplane.detach().clone()
    trainer.train_step()
    assert not torch.equal(trainer.triplane, plane0)
    pers = personalise(tiny_base, trainer.adapter())
    assert pers.spec.lora_mode == "none" and torch.equal(pers.cano_planes, trainer.triplane.detach())
