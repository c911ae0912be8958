"""Held-out validation in adaptation: the held-out frames never reach a training batch, their
metrics reach progress, checkpoint and adapter, early stop fires on a plateau and keeps the best
adapter, and resume keeps the validation history."""

import math

import pytest
import torch

from mimictalk_lib.adapt.adapter import load_adapter
from mimictalk_lib.adapt.lpips import LPIPS
from mimictalk_lib.adapt.train import AdaptConfig, Trainer, train_adapter
from mimictalk_lib.adapt.validation import EarlyStop, holdout_split, spread
from mimictalk_lib.checkpoint import read_safetensors_metadata
from mimictalk_lib.errors import InputError
from tests.adapt.synthetic import make_data

FRAMES = 50  # 2 s: the smallest clip with a held-out slice (25 frames)
TINY = dict(lr=2e-2, lr_triplane=2e-2, preview_every=0, norm_mode="eval")


@pytest.fixture(scope="module")
def clip(tiny_base):
    return make_data(tiny_base, frames=FRAMES, seed=3)


@pytest.fixture(scope="module")
def lpips():
    torch.manual_seed(0)
    net = LPIPS()
    with torch.no_grad():
        for lin in net.lins:
            lin.weight.abs_()  # trained LPIPS heads are non-negative: distances >= 0
    return net


def test_split_rules():
    assert holdout_split(50, 0.1, 25) == (range(0, 25), range(25, 50))
    assert holdout_split(500, 0.1, 25) == (range(0, 450), range(450, 500))  # 10% when over 1 s
    assert holdout_split(49, 0.1, 25) is None and holdout_split(1, 0.1, 25) is None  # too short / a photo
    assert holdout_split(500, 0.0, 25) is None
    assert spread(range(450, 500), 4).tolist() == [450, 466, 483, 499] and spread(range(3, 5), 8).tolist() == [3, 4]
    with pytest.raises(InputError, match="holdout_fraction"):
        AdaptConfig(holdout_fraction=0.5)
    with pytest.raises(InputError, match="early_stop_patience"):
        AdaptConfig(early_stop_patience=-1)


def test_held_out_frames_never_reach_a_training_batch(tiny_base, clip, monkeypatch):
    phase, seen = ["?"], {"train": [], "validate": []}
    targets, train_step, validate = clip.targets, Trainer.train_step, Trainer.validate

    def spy_targets(idx, device):
        seen[phase[0]].extend(int(i) for i in idx)
        return targets(idx, device)

    def in_phase(name, fn):
        def run(self, *a, **k):
            phase[0] = name
            try:
                return fn(self, *a, **k)
            finally:
                phase[0] = "?"
        return run

    monkeypatch.setattr(clip, "targets", spy_targets)
    monkeypatch.setattr(Trainer, "train_step", in_phase("train", train_step))
    monkeypatch.setattr(Trainer, "validate", in_phase("validate", validate))
    reports = []
    cfg = AdaptConfig(steps=4, batch_size=5, validate_every=2, validation_frames=4, **TINY)
    train_adapter(tiny_base, clip, None, cfg, on_step=lambda d, t, **info: reports.append(info.get("validation")))
    # 20 draws from frames 0..24; drawing from all 50 would put one in the slice with p = 1 - 2^-20
    assert len(seen["train"]) == 20 and max(seen["train"]) < 25 and len(set(seen["train"])) > 5
    assert sorted(set(seen["validate"])) == [25, 33, 41, 49]
    assert [r is not None for r in reports] == [False, True, False, True]


def test_validation_metrics_reach_progress_checkpoint_and_adapter(tiny_base, clip, lpips, tmp_path):
    reports = []
    cfg = AdaptConfig(steps=4, validate_every=2, validation_frames=3, checkpoint_every=4, **TINY)
    adapter = train_adapter(tiny_base, clip, lpips, cfg, work_dir=tmp_path,
                            on_step=lambda d, t, **info: reports.append(info.get("validation")))
    v2, v4 = reports[1], reports[3]
    assert reports[0] is None and reports[2] is None and v2["step"] == 2 and v4["step"] == 4
    for v in (v2, v4):
        assert set(v) == {"step", "psnr", "ssim", "lpips", "head_psnr", "head_ssim", "head_lpips"}
        assert all(math.isfinite(v[k]) for k in v) and 0 < v["psnr"] < 60 and -1 <= v["ssim"] <= 1 and v["lpips"] >= 0
    assert v4["head_psnr"] != v4["psnr"]  # the head box is its own region
    meta = read_safetensors_metadata(tmp_path / "checkpoint.safetensors")
    assert [h["step"] for h in meta["validation"]["history"]] == [2, 4]
    val = adapter.metadata["validation"]
    assert [h["step"] for h in val["history"]] == [2, 4] and val["held_out"] == [25, 50] and val["frames"] == [25, 37, 49]
    assert val["best_step"] == adapter.metadata["training"]["steps_done"]  # the kept adapter is the best one


def _scripted(monkeypatch, scores):
    """Trainer.validate returns the next of ``scores`` as LPIPS and records the tri-plane it saw."""
    seen = []

    def validate(self):
        seen.append((self.step, self.triplane.detach().clone()))
        return {"psnr": 20.0, "ssim": 0.5, "lpips": scores[len(seen) - 1], "head_psnr": 20.0, "head_ssim": 0.5,
                "head_lpips": 0.3}

    monkeypatch.setattr(Trainer, "validate", validate)
    return seen


def test_early_stop_on_a_plateau_keeps_the_best_adapter(tiny_base, clip, monkeypatch, tmp_path):
    seen = _scripted(monkeypatch, [0.50, 0.40, 0.3995, 0.41, 0.40, 0.30])
    steps = []
    cfg = AdaptConfig(steps=30, validate_every=1, early_stop_patience=3, early_stop_margin=0.001, **TINY)
    adapter = train_adapter(tiny_base, clip, None, cfg, work_dir=tmp_path, on_step=lambda d, t, **i: steps.append(d))
    # best 0.40 at step 2; 0.3995 (< margin), 0.41, 0.40 do not count: stop after the 5th evaluation
    assert steps[-1] == 5 and [s for s, _ in seen] == [1, 2, 3, 4, 5]
    best_plane = seen[1][1]
    assert adapter.metadata["training"]["steps_done"] == 2 and torch.equal(adapter.triplane, best_plane)
    assert not torch.equal(adapter.triplane, seen[-1][1])  # not the last state
    saved_best = load_adapter(tmp_path / "best_adapter.safetensors")
    assert torch.equal(saved_best.triplane, best_plane)
    assert load_adapter(tmp_path / "adapter.safetensors").metadata["training"]["steps_done"] == 5  # the latest, for resume
    val = adapter.metadata["validation"]
    assert val["best_step"] == 2 and val["best"] == 0.40 and val["waited"] == 3 and len(val["history"]) == 5

    monkeypatch.undo()
    seen = _scripted(monkeypatch, [0.5, 0.4, 0.5, 0.5, 0.5])
    last = train_adapter(tiny_base, clip, None, AdaptConfig(steps=5, validate_every=1, keep_best=False, **TINY))
    assert last.metadata["training"]["steps_done"] == 5  # no early stop by default; keep_best off: the last


def test_resume_keeps_the_validation_history(tiny_base, clip, lpips, tmp_path):
    cfg = AdaptConfig(steps=3, validate_every=1, validation_frames=2, checkpoint_every=100, **TINY)
    straight = train_adapter(tiny_base, clip, lpips, cfg)

    class Stop(Exception):
        pass

    def stop_at_2(done, total, **info):
        if done == 2:
            raise Stop()

    with pytest.raises(Stop):
        train_adapter(tiny_base, clip, lpips, cfg, work_dir=tmp_path, on_step=stop_at_2)
    assert [h["step"] for h in read_safetensors_metadata(tmp_path / "checkpoint.safetensors")["validation"]["history"]] == [1, 2]
    resumed = train_adapter(tiny_base, clip, lpips, cfg, work_dir=tmp_path, resume=tmp_path / "checkpoint.safetensors")
    a, b = straight.metadata["validation"], resumed.metadata["validation"]
    assert [h["step"] for h in b["history"]] == [1, 2, 3]
    assert b["history"] == a["history"] and b["best_step"] == a["best_step"]  # bit-for-bit continuation
    assert resumed.metadata["training"]["steps_done"] == straight.metadata["training"]["steps_done"] == a["best_step"]
    assert torch.equal(resumed.triplane, straight.triplane)


def test_early_stop_state_round_trip():
    e = EarlyStop(patience=2, margin=0.01)
    assert e.update(1, {"lpips": 0.5}) and not e.update(2, {"lpips": 0.495}) and not e.should_stop
    assert not e.update(3, {"lpips": 0.6}) and e.should_stop
    f = EarlyStop(patience=2, margin=0.01)
    f.load(e.state())
    assert f.state() == e.state() and f.should_stop
    g = EarlyStop()
    assert g.update(1, {"lpips": None, "ssim": 0.9}) and g.best == pytest.approx(0.1)


def test_training_log_forwards_progress_and_draws_the_report():
    from mimictalk_lib.adapt.report import TrainingLog

    forwarded = []
    log = TrainingLog(lambda d, t, **info: forwarded.append((d, info.get("preview"))))
    strip = (torch.rand(3, 64, 64, 3), torch.rand(3, 64, 64, 3))
    log(1, 2, losses={"total_loss": 2.0})
    log(2, 2, losses={"total_loss": 1.0}, validation={"step": 2, "psnr": 20.0, "ssim": 0.5, "lpips": 0.3,
                                                      "head_psnr": 18.0, "head_ssim": 0.4, "head_lpips": None},
        validation_strip=strip)
    assert log.losses == [(1, 2.0), (2, 1.0)] and len(log.validation) == 1 and log.strip is strip
    assert forwarded[0] == (1, None) and forwarded[1][1].shape == (192 * 2 + 2 * 256, 768, 3)  # 4 curves + 3 frames x 2 rows
    image = log.image()
    assert image.shape == (1, 192 * 2 + 2 * 256, 768, 3) and 0 <= float(image.min()) and float(image.max()) <= 1
