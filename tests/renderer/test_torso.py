"""Torso warp model (mimictalk_lib.renderer.torso): geometry conventions and behaviour on the
tiny preset."""

import pytest
import torch

from mimictalk_lib.renderer.torso import (
    KEYPOINT_INDICES,
    TorsoConfig,
    TorsoWarpModel,
    coordinate_grid_3d,
    dilate_mask,
)

CFG = TorsoConfig.tiny()


def _inputs(cfg: TorsoConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = cfg.resolution
    labels = torch.zeros(batch, r, r, dtype=torch.long)
    labels[:, r // 2 :, :] = 4  # clothes in the lower half
    labels[:, r // 2 :, : r // 4] = 2  # some body skin
    segmap = torch.nn.functional.one_hot(labels, 6).permute(0, 3, 1, 2).float()
    kp_s = torch.cat([torch.rand(batch, 68, 2, generator=g) * 1.6 - 0.8, torch.zeros(batch, 68, 1)], -1)
    kp_d = kp_s + torch.cat([torch.randn(batch, 68, 2, generator=g) * 0.05, torch.zeros(batch, 68, 1)], -1)
    return dict(
        torso_img=torch.rand(batch, 3, r, r, generator=g) * 2 - 1,
        segmap=segmap,
        kp_s=kp_s,
        kp_d=kp_d,
        head_rgb=torch.rand(batch, 3, r, r, generator=g) * 2 - 1,
        head_alpha=torch.rand(batch, 1, r, r, generator=g),
    )


def test_coordinate_grid_order_and_range():
    grid = coordinate_grid_3d(3, 4, 5)
    assert grid.shape == (3, 4, 5, 3)
    assert torch.allclose(grid[0, 0, :, 0], torch.linspace(-1, 1, 5), atol=1e-7)  # x runs along W
    assert torch.allclose(grid[0, :, 0, 1], torch.linspace(-1, 1, 4), atol=1e-7)  # y along H
    assert torch.allclose(grid[:, 0, 0, 2], torch.linspace(-1, 1, 3), atol=1e-7)  # z along D
    assert grid[1, 2, 3].tolist() == pytest.approx([0.5, 1 / 3, 0.0])


def test_dilate_mask_square():
    m = torch.zeros(1, 1, 11, 11)
    m[0, 0, 5, 5] = 1
    d = dilate_mask(m, 7)
    assert d.shape == m.shape and d.sum() == 49 and d[0, 0, 2:9, 2:9].min() == 1


@pytest.mark.parametrize("in_channels", [3, 5])
def test_forward_shapes_and_ranges(in_channels):
    cfg = TorsoConfig.tiny(in_channels)
    model = TorsoWarpModel(cfg).eval()
    with torch.no_grad():
        out = model(**_inputs(cfg))
    r, h = cfg.resolution, cfg.feature_resolution
    assert out["rgb"].shape == (2, 3, r, r)
    assert out["hid"].shape == (2, cfg.hidden_channels, r, r)
    assert out["occlusion"].shape == (2, 1, h, h)
    assert out["occlusion_2"].shape == (2, 1, r, r)
    assert 0 < out["occlusion_2"].min() and out["occlusion_2"].max() < 1
    assert torch.equal(out["kp_drv"], _inputs(cfg)["kp_d"][:, list(KEYPOINT_INDICES[4])])
    assert all(torch.isfinite(v).all() for v in out.values())


def test_equal_keypoints_give_identity_deformation():
    """With kp_s == kp_d every sparse motion is the identity, so the softmax-weighted sum is too."""
    model = TorsoWarpModel(CFG).eval()
    inp = _inputs(CFG)
    kp = inp["kp_s"][:, list(KEYPOINT_INDICES[4])]
    with torch.no_grad():
        volume, seg = model.encode(inp["torso_img"], inp["segmap"])
        seg_vol = seg.unsqueeze(2).expand(-1, -1, volume.shape[2], -1, -1)
        deformation, _, _ = model.motion_field_estimator(torch.cat([volume, seg_vol], 1), kp, kp, inp["head_rgb"], inp["head_alpha"])
    grid = coordinate_grid_3d(*volume.shape[2:])
    assert torch.allclose(deformation, grid.expand_as(deformation), atol=1e-6)


def test_appearance_is_masked_to_the_torso():
    model = TorsoWarpModel(CFG).eval()
    inp = _inputs(CFG)
    no_torso = torch.zeros_like(inp["segmap"])
    no_torso[:, 0] = 1  # all background
    with torch.no_grad():
        volume, seg = model.encode(inp["torso_img"], no_torso)
        masked, _ = model.encode(inp["torso_img"], inp["segmap"])
    assert volume.abs().max() == 0 and seg.abs().max() == 0
    assert masked[..., -1, :].abs().max() > 0  # bottom rows (torso) carry features


def test_batch_one_reference_broadcasts():
    model = TorsoWarpModel(CFG).eval()
    inp = _inputs(CFG, batch=3)
    one = {k: v[:1] for k, v in inp.items()}
    with torch.no_grad():
        ref = model.encode(one["torso_img"], one["segmap"])
        shared = model.warp(*ref, one["kp_s"], inp["kp_d"], inp["head_rgb"], inp["head_alpha"])
        per = model.warp(*ref, one["kp_s"], inp["kp_d"][2:], inp["head_rgb"][2:], inp["head_alpha"][2:])
    assert shared["rgb"].shape[0] == 3
    assert torch.allclose(shared["rgb"][2:], per["rgb"], atol=1e-5)


def test_spectral_norm_eval_uses_stored_vectors():
    model = TorsoWarpModel(CFG).eval()
    conv = model.deform_based_generator.in_conv.layers[0]
    u0, v0 = conv.weight_u.clone(), conv.weight_v.clone()
    with torch.no_grad():
        model(**_inputs(CFG))
    assert torch.equal(conv.weight_u, u0) and torch.equal(conv.weight_v, v0)
    sigma = torch.dot(u0, conv.weight_orig.flatten(1) @ v0)
    assert torch.allclose(conv.weight, conv.weight_orig / sigma)
    assert {"weight_orig", "weight_u", "weight_v", "bias"} == set(conv.state_dict())


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="in_channels"):
        TorsoWarpModel(TorsoConfig.tiny(4))
