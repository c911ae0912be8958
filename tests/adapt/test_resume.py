"""A checkpoint is resumed only by its own run: same base weights, same identity content (not
just the same frame count), same shaping settings. Each mismatch alone refuses (issue 12 item 1;
kills the `or` -> `and` mutant of the old check)."""

import logging

import pytest
import torch

from mimictalk_lib.adapt.resume import CHECKPOINT_VERSION, ResumeMismatch, identity_fingerprint
from mimictalk_lib.adapt.train import AdaptConfig, train_adapter
from mimictalk_lib.checkpoint import load_safetensors, read_safetensors_metadata, save_safetensors
from tests.adapt.synthetic import make_data, synthetic_identity
from tests.fixtures.tiny_renderer import random_renderer

CFG = AdaptConfig(steps=1, norm_mode="eval", lr=2e-2, lr_triplane=2e-2, preview_every=0, stochastic_render=False)


@pytest.fixture(scope="module")
def first_run(tiny_base, data, tmp_path_factory):
    """One step of person A's run, with its checkpoint in a work folder."""
    work = tmp_path_factory.mktemp("run")
    train_adapter(tiny_base, data, None, CFG, work_dir=work)
    return work / "checkpoint.safetensors"


def _resume(base, data, checkpoint, **changes):
    cfg = AdaptConfig(**dict(CFG.to_dict(), steps=2, **changes))
    return train_adapter(base, data, None, cfg, resume=checkpoint)


def test_identity_fingerprint_follows_content_not_length(tiny_base):
    side = tiny_base.cfg.image_resolution
    a, b = synthetic_identity(side, frames=6, seed=0), synthetic_identity(side, frames=6, seed=1)
    assert identity_fingerprint(a) == identity_fingerprint(synthetic_identity(side, frames=6, seed=0))
    assert identity_fingerprint(a) != identity_fingerprint(b)  # same frame count, another person
    a.exp[3, 7] += 1e-3  # one coefficient of one frame
    assert identity_fingerprint(a) != identity_fingerprint(synthetic_identity(side, frames=6, seed=0))


def test_same_run_resumes(tiny_base, data, first_run, caplog):
    with caplog.at_level(logging.WARNING, logger="MimicTalk"):
        done = _resume(tiny_base, data, first_run, seed=9)  # seed/batch may change (saved streams win)
    assert done.metadata["training"]["steps_done"] == 2
    assert "changed settings" in caplog.text
    assert done.metadata["training"]["identity_sha256"] == identity_fingerprint(data.identity)


def test_second_person_with_the_same_frame_count_is_not_resumed(tiny_base, data, first_run):
    other = make_data(tiny_base, frames=data.num_frames, seed=1)
    with pytest.raises(ResumeMismatch, match="another identity .same length, other content.") as info:
        _resume(tiny_base, other, first_run)
    assert info.value.reasons == ["another identity (same length, other content)"]  # base and settings match


def test_clip_of_another_length_is_not_resumed(tiny_base, first_run):
    with pytest.raises(ResumeMismatch, match=r"another identity \(6 frames vs 1 frame now\)"):
        _resume(tiny_base, make_data(tiny_base, frames=1), first_run)


def test_other_base_weights_alone_are_refused(data, first_run):
    other_base = random_renderer("mimictalk", seed=6)  # same architecture, other weights; same identity
    with pytest.raises(ResumeMismatch) as info:
        _resume(other_base, data, first_run)
    assert info.value.reasons == ["another base renderer (other weights)"]


@pytest.mark.parametrize("change", [dict(lr=1e-2), dict(lr_triplane=1e-1), dict(norm_mode="upstream"), dict(lora_r=3)])
def test_shaping_settings_must_match(tiny_base, data, first_run, change):
    with pytest.raises(ResumeMismatch, match="other settings: " + next(iter(change))) as info:
        _resume(tiny_base, data, first_run, **change)
    assert len(info.value.reasons) == 1


def test_checkpoint_of_an_older_version_is_refused(tiny_base, data, first_run, tmp_path):
    tensors, meta = load_safetensors(first_run)
    assert read_safetensors_metadata(first_run)["version"] == CHECKPOINT_VERSION
    old = tmp_path / "old.safetensors"
    save_safetensors(old, tensors, dict(meta, version=1))
    with pytest.raises(ResumeMismatch, match="older version"):
        _resume(tiny_base, data, old)


def test_refusal_leaves_the_checkpoint_untouched(tiny_base, data, first_run):
    before = first_run.read_bytes()
    with pytest.raises(ResumeMismatch):
        train_adapter(tiny_base, make_data(tiny_base, frames=6, seed=2), None, CFG, work_dir=first_run.parent,
                      resume=first_run)
    assert first_run.read_bytes() == before
    assert torch.isfinite(load_safetensors(first_run)[0]["triplane"]).all()


def test_real3d_renderer_is_refused(data):
    from mimictalk_lib.errors import InputError

    with pytest.raises(InputError, match="train_adapter needs the MimicTalk base renderer.*Real3D-Portrait"):
        train_adapter(random_renderer("real3d", seed=1), data, None, CFG)
