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


@pytest.fixture
def first_run(tiny_base, data, tmp_path):
    """One step of person A's run, with its checkpoint in a work folder. Per test (one tiny step,
    ~0.3 s): the mutation run maps a function to the tests that call it, and a module-scoped
    fixture would credit every save to the first test alone."""
    work = tmp_path / "run"
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
    assert (f"resuming {first_run} with changed settings {{'seed': (0, 9)}} (saved, now): the run continues, "
            "not bit-for-bit") in caplog.messages  # the file, only what changed, both values
    assert done.metadata["training"]["identity_sha256"] == identity_fingerprint(data.identity)


def test_second_person_with_the_same_frame_count_is_not_resumed(tiny_base, data, first_run):
    other = make_data(tiny_base, frames=data.num_frames, seed=1)
    with pytest.raises(ResumeMismatch, match="another identity .same length, other content.") as info:
        _resume(tiny_base, other, first_run)
    assert info.value.reasons == ["another identity (same length, other content)"]  # base and settings match
    assert info.value.path == first_run and str(info.value).startswith(f"{first_run} belongs to another training run")


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


# --- the pieces on their own (no training: fast enough for the mutation run) --------------------

import hashlib  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from mimictalk_lib.adapt.adapter import PROBE_ATOL, PROBE_RTOL  # noqa: E402
from mimictalk_lib.adapt.resume import (  # noqa: E402
    default_run_name,
    global_rng_states,
    load_checkpoint,
    own_global_rng,
    resume_mismatches,
    seeded_global_rng,
)
from mimictalk_lib.errors import CheckpointError  # noqa: E402

CPU = torch.device("cpu")


def test_identity_fingerprint_is_the_documented_sha256(tiny_base):
    """The fingerprint is stored in checkpoints and adapters and names run folders, so its byte
    format is a file format: recomputed here from its definition (each field's name, dtype, shape
    and bytes, then frame 0 alone, then the frame count)."""
    ident = synthetic_identity(tiny_base.cfg.image_resolution, frames=6, seed=3)
    h = hashlib.sha256()
    fields = ["id", "exp", "euler", "trans", "cameras", "keypoints", "lip_rects", "plate", "torso_ref"]
    for name, t in [(n, getattr(ident, n)) for n in fields] + [("frame0", ident.frames[:1])]:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode() + t.contiguous().numpy().tobytes())
    h.update(b"frames:6")
    assert identity_fingerprint(ident) == h.hexdigest()
    ident.frames[1:] = 255 - ident.frames[1:]  # later frames are covered by their coefficients, not pixels
    assert identity_fingerprint(ident) == h.hexdigest()


def test_default_run_name_is_the_sources_stem_and_the_fingerprint(tiny_base):
    ident = synthetic_identity(tiny_base.cfg.image_resolution, frames=2, seed=4)
    tail = "-" + identity_fingerprint(ident)[:10]
    for source, stem in [("C:\\clips\\person 11.mp4", "person_11"), ("/v/-Xavier Y.X-.mp4", "Xavier_Y.X"), ("/v/..Ünïcode  name!!.mkv", "n_code_name"),
                         ("/v/" + "a" * 50 + ".mp4", "a" * 40), ("/v/___.mp4", "identity"), ("", "identity"),
                         (None, "identity")]:
        ident.meta = {"source": source}
        assert default_run_name(ident) == stem + tail, source
    ident.meta = None
    assert default_run_name(ident) == "identity" + tail


def test_seeded_global_rng_is_manual_seed_without_touching_the_process():
    torch.manual_seed(123)
    process = torch.get_rng_state()
    states = seeded_global_rng(7, CPU)
    assert torch.equal(torch.get_rng_state(), process)
    torch.manual_seed(7)
    assert list(states) == ["cpu"] and torch.equal(states["cpu"], torch.get_rng_state())
    assert list(global_rng_states(CPU)) == ["cpu"] and torch.equal(global_rng_states(CPU)["cpu"], torch.get_rng_state())


def test_own_global_rng_continues_the_runs_stream_and_restores_the_process():
    trainer = SimpleNamespace(device=CPU, global_rng=seeded_global_rng(7, CPU))
    torch.manual_seed(123)
    process = torch.get_rng_state()
    with own_global_rng(trainer):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), process)
    with pytest.raises(RuntimeError):
        with own_global_rng(trainer):  # a step that fails still advances the run's stream
            second = torch.rand(4)
            raise RuntimeError("step failed")
    with own_global_rng(trainer):
        third = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), process)
    torch.manual_seed(7)
    assert torch.equal(torch.cat([first, second, third]), torch.rand(12))  # one stream, continued


def _fake_trainer(**config):
    return SimpleNamespace(base_structure="arch", base_probe=torch.tensor([1.0, -2.0, 0.5, 0.0]), identity_sha256="person",
                           data=SimpleNamespace(num_frames=6), config=AdaptConfig(**config))


def _saved(trainer, **changes):
    meta = {"version": CHECKPOINT_VERSION, "base": {"structure_sha256": trainer.base_structure},
            "identity": {"sha256": trainer.identity_sha256, "num_frames": 6}, "config": trainer.config.to_dict()}
    return {"base_probe": trainer.base_probe.clone()}, dict(meta, **changes)


def test_resume_mismatches_one_at_a_time_and_all_at_once():
    trainer = _fake_trainer(lr=1e-3)
    tensors, meta = _saved(trainer)
    assert resume_mismatches(trainer, tensors, meta) == []
    assert resume_mismatches(trainer, tensors, dict(meta, version="2")) == []
    old = "it was written by an older version of the pack, which did not record the identity"
    assert resume_mismatches(trainer, tensors, {k: v for k, v in meta.items() if k != "version"}) == [old]
    assert resume_mismatches(trainer, tensors, dict(meta, version=1)) == [old]

    near = trainer.base_probe * (1 + 0.5 * PROBE_RTOL) + 0.5 * PROBE_ATOL  # a bf16 copy of the same base (0 needs atol)
    assert resume_mismatches(trainer, {"base_probe": near}, meta) == []
    other = "another base renderer (other weights)"
    for probe in (trainer.base_probe + 4 * PROBE_ATOL + 2 * PROBE_RTOL * trainer.base_probe.abs(), trainer.base_probe[:2], None):
        assert resume_mismatches(trainer, {} if probe is None else {"base_probe": probe}, meta) == [other]
    arch = ["another base renderer architecture"]  # the weights are not compared across architectures
    assert resume_mismatches(trainer, {}, dict(meta, base={"structure_sha256": "other"})) == arch
    assert resume_mismatches(trainer, tensors, dict(meta, base=None)) == arch

    person = dict(meta["identity"], sha256="someone else")
    assert resume_mismatches(trainer, tensors, dict(meta, identity=person)) == ["another identity (same length, other content)"]
    assert resume_mismatches(trainer, tensors, dict(meta, identity=dict(person, num_frames=1))) == [
        "another identity (1 frame vs 6 frames now)"]
    assert resume_mismatches(trainer, tensors, dict(meta, identity=None)) == ["another identity (None frames vs 6 frames now)"]

    settings = dict(meta["config"], lr=2e-3, lora_r=3, seed=5, batch_size=1)  # seed / batch size may change
    assert resume_mismatches(trainer, tensors, dict(meta, config=settings)) == [
        "other settings: lora_r 3 (now 2), lr 0.002 (now 0.001)"]
    assert resume_mismatches(trainer, tensors, dict(meta, config=None))[0].startswith(
        "other settings: lora_mode None (now ")
    assert resume_mismatches(trainer, {}, dict(meta, base=None, identity=person, config=settings)) == [
        arch[0], "another identity (same length, other content)", "other settings: lora_r 3 (now 2), lr 0.002 (now 0.001)"]


def test_resume_mismatch_message_names_the_file_the_reasons_and_the_way_out(tmp_path):
    err = ResumeMismatch(tmp_path / "c.safetensors", ["a", "b"])
    assert err.reasons == ["a", "b"] and err.path == tmp_path / "c.safetensors"
    assert str(err) == (f"{tmp_path / 'c.safetensors'} belongs to another training run (a; b); train_adapter cannot "
                        "resume it: pass another work_dir to start a new run beside it, or resume=None to start over")


def test_a_file_that_is_no_checkpoint_is_refused_by_its_format(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_safetensors(path, {"x": torch.zeros(1)}, {"format": "mimictalk-adapter"})
    with pytest.raises(CheckpointError, match=r"adapter.safetensors is not a MimicTalk adaptation checkpoint "
                                              r"\(format 'mimictalk-adapter'\)$"):
        load_checkpoint(_fake_trainer(), path)


def test_resuming_a_finished_run_returns_its_adapter(tiny_base, data, first_run):
    """No step left: the result is the saved state itself (tri-grid, LoRA, step, last losses)."""
    from mimictalk_lib.adapt.adapter import load_adapter

    saved = load_adapter(first_run.parent / "adapter.safetensors")
    done = train_adapter(tiny_base, data, None, CFG, resume=first_run)
    assert done.metadata["training"]["steps_done"] == 1
    assert done.metadata["final_losses"] == saved.metadata["final_losses"] != {}
    assert torch.equal(done.triplane, saved.triplane)
    assert all(torch.equal(done.lora[k], saved.lora[k]) for k in saved.lora)


def test_damaged_optimiser_state_is_a_checkpoint_error(tiny_base, data, first_run, tmp_path):
    tensors, meta = load_safetensors(first_run)
    meta["param_groups"][0]["params"] = meta["param_groups"][0]["params"][:-1]
    bad = tmp_path / "bad.safetensors"
    save_safetensors(bad, tensors, meta)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: optimiser state does not match this run's parameters \("):
        _resume(tiny_base, data, bad)
