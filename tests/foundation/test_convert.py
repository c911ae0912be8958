"""The converter: upstream .ckpt (+ config.yaml) -> model.safetensors + config.json, kind
detection, yaml cross-check and refusals."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from mimictalk_lib import convert
from mimictalk_lib.checkpoint import load_safetensors
from mimictalk_lib.convert import CheckpointKind, convert_checkpoint
from mimictalk_lib.errors import CheckpointError


@dataclass(frozen=True)
class ToyConfig:
    width: int
    depth: int

    def describe(self) -> str:
        return f"toy width {self.width} depth {self.depth}"


def infer_toy(sd) -> ToyConfig:
    depth = sum(1 for k in sd if k.startswith("toy_body.") and k.endswith(".weight"))
    return ToyConfig(width=sd["toy_head.weight"].shape[0], depth=depth)


TOY = CheckpointKind("toy", "toy network", ("toy_head", "toy_body"), infer_toy, "toy_task",
                     lambda cfg: {"toy_width": cfg.width})


def toy_state_dict() -> dict:
    w = torch.randn(6, 4)
    return {"toy_head.weight": w, "toy_head.conv.weight": w,  # aliased, like upstream LoRA convs
            "toy_body.0.weight": torch.randn(6, 6), "toy_body.1.weight": torch.randn(6, 6).t(),
            "toy_body.1.bias": torch.randn(6)}


def write_ckpt(path, model: dict, **extra) -> None:
    ckpt = {"epoch": 3, "global_step": int(path.stem.rsplit("_", 1)[-1]) if "steps" in path.name else 0,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
            "state_dict": {"model": model}, **extra}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)  # upstream's legacy format


def test_round_trip_from_a_folder_with_yaml(tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    sd = toy_state_dict()
    write_ckpt(src / "model_ckpt_steps_100.ckpt", {k: torch.zeros_like(v) for k, v in sd.items()})
    write_ckpt(src / "model_ckpt_steps_2000.ckpt", sd)
    (src / "config.yaml").write_text("task_cls: tasks.toy_task.ToyTask\ntoy_width: 6\nlr: 0.0001\n")
    out = convert_checkpoint(src, tmp_path / "out", kinds=[TOY])
    tensors, meta = load_safetensors(out / "model.safetensors")
    assert tensors.keys() == sd.keys() and all(torch.equal(tensors[k], sd[k]) for k in sd)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == meta
    assert cfg["kind"] == "toy" and cfg["config"] == {"width": 6, "depth": 2}
    assert cfg["source"] == {"file": "model_ckpt_steps_2000.ckpt", "global_step": 2000, "epoch": 3}
    assert cfg["yaml"] == {"file": "config.yaml", "checked": {"toy_width": 6}, "ignored": False}
    assert cfg["num_parameters"] == sum(v.numel() for v in sd.values())
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_yaml_disagreement_and_wrong_yaml_kind_are_refused(tmp_path):
    write_ckpt(tmp_path / "model_ckpt_steps_1.ckpt", toy_state_dict())
    (tmp_path / "config.yaml").write_text("task_cls: tasks.toy_task.ToyTask\ntoy_width: 8\n")
    with pytest.raises(CheckpointError, match="toy_width: yaml says 8, the weights say 6"):
        convert_checkpoint(tmp_path / "model_ckpt_steps_1.ckpt", tmp_path / "out", kinds=[TOY])
    out = convert_checkpoint(tmp_path, tmp_path / "out", kinds=[TOY], check_yaml=False)
    assert json.loads((out / "config.json").read_text())["yaml"]["ignored"] is True
    (tmp_path / "config.yaml").write_text("task_cls: tasks.os_avatar.audio2motion_task.Audio2MotionTask\n")
    with pytest.raises(CheckpointError, match="does not belong to this checkpoint"):
        convert_checkpoint(tmp_path, tmp_path / "out2", kinds=[TOY])


def test_wrong_kinds_are_refused(tmp_path):
    opt_only = tmp_path / "optimizer.ckpt"
    torch.save({"optimizer_states": [{"state": {}, "param_groups": []}], "epoch": 1}, opt_only)
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        convert_checkpoint(opt_only, tmp_path / "o1")
    foreign = tmp_path / "resnet.ckpt"
    write_ckpt(foreign, {"conv1.weight": torch.ones(2, 3, 7, 7), "fc.weight": torch.ones(10, 2)})
    with pytest.raises(CheckpointError, match=r"not a checkpoint this converter knows.*\['conv1', 'fc'\].*Supported"):
        convert_checkpoint(foreign, tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_cli_reports_errors_and_success(tmp_path, capsys, monkeypatch):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model": {"x": torch.ones(1)}}, "cfg": ToyConfig(1, 1)}, evil)
    assert convert.main([str(evil), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not an upstream" in err and "ToyConfig" in err and "weights_only=False" not in err
    monkeypatch.setattr(convert, "KINDS", (TOY,))
    write_ckpt(tmp_path / "model_ckpt_steps_5.ckpt", toy_state_dict())
    assert convert.main([str(tmp_path / "model_ckpt_steps_5.ckpt"), str(tmp_path / "o")]) == 0
    assert "toy width 6 depth 2" in capsys.readouterr().out


def test_real_ics_a2m_layout_round_trip(tmp_path):
    a2m = pytest.importorskip("mimictalk_lib.a2m")
    for aux in (True, False):
        model = a2m.InContextAudio2MotionModel(a2m.A2MConfig.tiny(aux))
        sd = model.state_dict()
        src = tmp_path / f"a2m{aux}"
        src.mkdir()
        write_ckpt(src / "model_ckpt_steps_1856000.ckpt", sd)
        (src / "config.yaml").write_text(
            "task_cls: tasks.os_avatar.icl_audio2motion_task.InContextAudio2MotionTask\n"
            f"use_aux_features: {str(aux).lower()}\n")
        out = convert_checkpoint(src, tmp_path / f"out{aux}")
        tensors, meta = load_safetensors(out / "model.safetensors")
        fresh = a2m.InContextAudio2MotionModel(a2m.A2MConfig.tiny(aux))
        fresh.load_state_dict(tensors, strict=True)
        assert all(torch.equal(fresh.state_dict()[k], sd[k]) for k in sd)
        assert meta["kind"] == "ics_a2m" and meta["config"]["use_aux_features"] is aux
        assert meta["config"]["depth"] == a2m.A2MConfig.tiny(aux).depth
        assert meta["yaml"]["checked"] == {"use_aux_features": aux}




@pytest.mark.parametrize("layout", ["mimictalk", "real3d", "personalised"])
def test_real_renderer_layouts_round_trip_through_the_loader(tmp_path, layout):
    """Convert a tiny upstream-style renderer checkpoint with the real renderer kind and load the
    result with the renderer package's loader: same weights, planes and LoRA facts as loading the
    upstream checkpoint itself."""
    pytest.importorskip("mimictalk_lib.renderer.loading")
    tiny_renderer = pytest.importorskip("tests.fixtures.tiny_renderer")
    from dataclasses import replace

    from mimictalk_lib.renderer.config import RendererConfig, infer_renderer_config
    from mimictalk_lib.renderer.loading import load_renderer

    base = RendererConfig.tiny("real3d" if layout == "real3d" else "mimictalk")
    # tiny checkpoints need the non-weight settings (heads, samples) of the tiny preset
    kind = replace(convert.KINDS[0], infer=lambda sd: infer_renderer_config(sd, base=base))
    ckpt = tiny_renderer.tiny_checkpoint(layout)
    torch.save(ckpt, tmp_path / "model_ckpt_steps_10.ckpt", _use_new_zipfile_serialization=False)
    feature = "triplane" if layout == "real3d" else "trigrid_v2"
    (tmp_path / "config.yaml").write_text(
        "task_cls: tasks.os_avatar.secc_img2plane_torso_task.SECC_Img2PlaneEG3D_TorsoTask\n"
        f"triplane_feature_type: {feature}\n" + ("torso_inp_mode: rgb_alpha\n" if layout == "real3d" else ""))
    out = convert_checkpoint(tmp_path, tmp_path / "out", kinds=[kind])
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "renderer" and meta["num_tensors"] == len(ckpt["state_dict"]["model"])
    assert meta["yaml"]["checked"]["triplane_feature_type"] == feature
    assert meta["yaml"]["checked"]["torso_inp_mode"] == ("rgb_alpha" if layout == "real3d" else "rgb")

    ours = load_renderer(out, base_config=base)
    ref = load_renderer(ckpt, base_config=base)
    assert ours.layout == ref.layout == layout
    assert ours.config == ref.config
    ref_sd = ref.model.state_dict()
    assert all(torch.equal(v, ref_sd[k]) for k, v in ours.model.state_dict().items())
    if layout == "personalised":
        assert torch.equal(ours.cano_planes, ref.cano_planes) and ours.lora_args == ref.lora_args
        person, _ = load_safetensors(out / "personalization.safetensors")
        assert torch.equal(person["id"], ckpt["person_ds"]["id"]) and meta["person_ds"] == {"video_id": "synthetic"}
    else:
        assert not (out / "personalization.safetensors").exists()
