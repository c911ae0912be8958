"""The image->plane encoders against the official key tables: exact key sets and shapes, strict
loading, configuration inference and its errors. Modules are built on the meta device."""

import pathlib

import pytest
import torch

from mimictalk_lib.errors import CheckpointError
from mimictalk_lib.renderer.img2plane import (CanoBackboneConfig, CanoImg2PlaneBackbone, Plane2Grid,
                                              Plane2GridConfig)
from mimictalk_lib.renderer.segformer import SeccBackboneConfig, SeccImg2PlaneBackbone

TABLES = pathlib.Path(__file__).resolve().parents[1] / "data" / "state_dict_keys"
MIMICTALK = "mimictalk_base_torso_trigridv2_d3.tsv"  # 288-channel planes + plane2grid
REAL3D = "real3dportrait_secc2plane_torso_orig.tsv"  # 96-channel planes

CANO, SECC, P2G = "cano_img2plane_backbone.", "secc_img2plane_backbone.", "plane2grid_module."


def table(name: str) -> dict[str, torch.Size]:
    """``key -> shape`` of a reference table, in file order."""
    rows = (line.split("\t") for line in (TABLES / name).read_text().splitlines() if line)
    return {key: torch.Size(int(d) for d in shape.strip("()").split(",") if d.strip())
            for key, shape, *_ in rows}


def meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in table(name).items()}


def on_meta(cls, cfg):
    with torch.device("meta"):
        return cls(cfg)


def shapes(module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


BUILDS = [
    (MIMICTALK, CANO, CanoImg2PlaneBackbone, CanoBackboneConfig.full(288)),
    (REAL3D, CANO, CanoImg2PlaneBackbone, CanoBackboneConfig.full(96)),
    (MIMICTALK, SECC, SeccImg2PlaneBackbone, SeccBackboneConfig.full(288)),
    (REAL3D, SECC, SeccImg2PlaneBackbone, SeccBackboneConfig.full(96)),
    (MIMICTALK, P2G, Plane2Grid, Plane2GridConfig.full(32, 3)),
]


@pytest.mark.parametrize("tsv, prefix, cls, cfg", BUILDS)
def test_state_dict_equals_reference_table(tsv, prefix, cls, cfg):
    want = {k[len(prefix):]: s for k, s in table(tsv).items() if k.startswith(prefix)}
    got = shapes(on_meta(cls, cfg))
    assert list(got) == list(want)  # same keys, same order
    assert got == want


@pytest.mark.parametrize("tsv, prefix, cls, cfg", BUILDS)
def test_strict_load_of_reference_layout(tsv, prefix, cls, cfg):
    sd = {k[len(prefix):]: torch.empty(s) for k, s in table(tsv).items() if k.startswith(prefix)}
    module = on_meta(cls, cfg)
    result = module.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(p.device.type == "cpu" for p in module.parameters())


def test_real3d_has_no_plane2grid():
    assert not any(k.startswith(P2G) for k in table(REAL3D))


@pytest.mark.parametrize("tsv, out", [(MIMICTALK, 288), (REAL3D, 96)])
def test_infer_full_configs_from_tables(tsv, out):
    sd = meta_state_dict(tsv)
    assert CanoBackboneConfig.infer(sd) == CanoBackboneConfig.full(out)
    assert SeccBackboneConfig.infer(sd) == SeccBackboneConfig.full(out)


def test_infer_plane2grid_depth_from_plane_channels():
    sd = meta_state_dict(MIMICTALK)
    cfg = Plane2GridConfig.infer(sd, plane_channels=288 // 3)
    assert cfg == Plane2GridConfig.full(32, 3) and cfg.plane_channels == 96
    with pytest.raises(CheckpointError, match="does not divide"):
        Plane2GridConfig.infer(sd, plane_channels=100)


@pytest.mark.parametrize("cls, cfg_cls", [(CanoImg2PlaneBackbone, CanoBackboneConfig),
                                          (SeccImg2PlaneBackbone, SeccBackboneConfig),
                                          (Plane2Grid, Plane2GridConfig)])
def test_infer_round_trips_tiny(cls, cfg_cls):
    tiny = cfg_cls.tiny()
    sd = {"pre." + k: v for k, v in on_meta(cls, tiny).state_dict().items()}
    kwargs = {"plane_channels": tiny.plane_channels} if cfg_cls is Plane2GridConfig else {}
    assert cfg_cls.infer(sd, "pre.", base=tiny, **kwargs) == tiny


def test_infer_names_mis_shaped_key():
    sd = meta_state_dict(MIMICTALK)
    key = CANO + "low_reso_vit.block3.attn.kv.weight"
    sd[key] = torch.empty(2048, 1000, device="meta")
    with pytest.raises(CheckpointError, match="block3.attn.kv.weight"):
        CanoBackboneConfig.infer(sd)


def test_infer_names_missing_and_unexpected_keys():
    sd = meta_state_dict(REAL3D)
    del sd[SECC + "fuse_head.linear_fuse.bn.running_var"]
    with pytest.raises(CheckpointError, match="missing .*linear_fuse.bn.running_var"):
        SeccBackboneConfig.infer(sd)

    sd = meta_state_dict(REAL3D)
    sd[SECC + "to_plane_cnn.0.lora_A"] = torch.empty(6, 768, device="meta")  # personalised layout
    with pytest.raises(CheckpointError, match="unexpected .*to_plane_cnn.0.lora_A"):
        SeccBackboneConfig.infer(sd)
    assert SeccBackboneConfig.infer(sd, strict=False) == SeccBackboneConfig.full(96)


def test_infer_rejects_other_input_modes():
    sd = meta_state_dict(REAL3D)
    sd[CANO + "low_reso_encoder.encoder.conv1.weight"] = torch.empty(64, 6, 7, 7, device="meta")
    with pytest.raises(CheckpointError, match="img2plane_input_mode"):
        CanoBackboneConfig.infer(sd)


def test_infer_on_a_non_renderer_state_dict_names_the_missing_key():
    with pytest.raises(CheckpointError, match="prenet.weight"):
        SeccBackboneConfig.infer({"foo.weight": torch.empty(1, device="meta")})
