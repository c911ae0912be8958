"""build_session: pose modes, ping-pong, map_to_init_pose, z freezing, blink, sources (no NeRF rendering)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from mimictalk_lib.adapt.adapter import AdapterIdentity, PersonalisedRenderer
from mimictalk_lib.errors import InputError
from mimictalk_lib.face.camera import camera_sequence, mirror_indices
from mimictalk_lib.face.coeffs import HeadPose
from mimictalk_lib.face.secc import render_secc
from mimictalk_lib.pipeline import TalkingSource, build_session, make_source, one_shot_source, personalised_source
from tests.pipeline.conftest import make_identity, motion


@pytest.fixture(scope="module")
def source(renderer, identity):
    return one_shot_source(renderer, identity)


def test_one_shot_source_from_identity(renderer, identity, source):
    cfg = renderer.cfg
    assert source.kind == "one-shot"
    assert source.cano_planes.shape == (1, 3, cfg.plane_channels, cfg.plane_resolution, cfg.plane_resolution)
    assert torch.isfinite(source.cano_planes).all()
    # planes come from the head image through the canonical backbone
    head = identity.head_images([0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.inference_mode():
        torch.testing.assert_close(source.cano_planes, renderer.cano_planes(head))
    assert torch.equal(source.id, identity.id) and torch.equal(source.src_pose.euler, identity.euler[:1])
    assert source.src_kp.shape == (1, 68, 3) and source.src_kp.abs().max() <= 1 and (source.src_kp[..., 2] == 0).all()
    assert source.segmap.shape == (1, 6, 64, 64) and torch.equal(source.segmap.sum(1), torch.ones(1, 64, 64))
    assert source.bg.shape == source.torso_ref.shape == (1, 3, 64, 64)
    assert source.bg.min() >= -1 and source.bg.max() <= 1


@pytest.mark.parametrize("pose", ["static", "identity", "explicit"])
def test_shapes_and_frame_counts_per_pose_mode(renderer, face_model, identity, source, pose):
    t = 15  # longer than the 6-frame identity clip
    if pose == "explicit":
        g = torch.Generator().manual_seed(3)
        pose = (torch.randn(4, 3, generator=g) * 0.1, torch.randn(4, 3, generator=g) * 0.1)
    s = build_session(renderer, face_model, source, motion(t), pose=pose, blink="none")
    side = renderer.cfg.secc_resolution
    assert s.num_frames == t
    assert s.camera.shape == (t, 25) and s.kp_d.shape == (t, 68, 3)
    assert s.euler.shape == s.trans.shape == (t, 3) and s.blink.shape == (t,)
    assert s.cano_secc.shape == s.src_secc.shape == (1, 3, side, side)
    assert s.drv_secc(slice(3, 7)).shape == (4, 3, side, side)
    assert s.kp_d.abs().max() <= 1 and (s.kp_d[..., 2] == 0).all()
    assert s.face_model is face_model  # already on the renderer's device: not copied
    if pose == "static":  # constant pose: every camera equals the source's
        torch.testing.assert_close(s.camera, camera_sequence(identity.coefficients.pose[:1]).expand(t, -1))


def test_identity_poses_are_ping_pong_indexed_with_z_frozen(renderer, face_model, identity, source):
    t = 15
    s = build_session(renderer, face_model, source, motion(t), pose="identity", map_to_init_pose=False, blink="none")
    idx = mirror_indices(t, identity.num_frames)
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0, 0, 1, 2]
    torch.testing.assert_close(s.euler, identity.euler[idx])
    torch.testing.assert_close(s.trans[:, :2], identity.trans[idx, :2])
    assert (s.trans[:, 2] == identity.trans[0, 2]).all()  # z frozen to frame 0
    torch.testing.assert_close(s.camera, camera_sequence(HeadPose(s.euler, s.trans)))  # window-7 smoothed


def test_map_to_init_pose_puts_frame_zero_on_the_source_pose(renderer, face_model, identity):
    src = one_shot_source(renderer, identity, frame=3)  # source pose != the clip's frame 0
    from mimictalk_lib.identity.torso import inpaint_torso

    own_torso = inpaint_torso(identity.frames[3:4], identity.segmaps[3:4])[0]
    torch.testing.assert_close(src.torso_ref, own_torso.permute(0, 3, 1, 2).float() / 127.5 - 1)  # its own torso
    s = build_session(renderer, face_model, src, motion(8), pose="identity", map_to_init_pose=True, blink="none")
    torch.testing.assert_close(s.euler[0], identity.euler[3])
    torch.testing.assert_close(s.trans[0], identity.trans[3])
    # a constant offset: the motion of the pose is kept
    clip = identity.euler[mirror_indices(8, identity.num_frames)]
    torch.testing.assert_close(s.euler - s.euler[:1], clip - clip[:1])
    off = build_session(renderer, face_model, src, motion(8), pose="identity", map_to_init_pose=False, blink="none")
    torch.testing.assert_close(off.euler[0], identity.euler[0])


def test_src_exp_modes(renderer, face_model, identity, source):
    m = motion(5)
    side = renderer.cfg.secc_resolution
    s = build_session(renderer, face_model, source, m, blink="none")  # upstream: first driving frame
    torch.testing.assert_close(s.src_secc, render_secc(face_model, identity.id, m[:1], size=side))
    torch.testing.assert_close(s.cano_secc, render_secc(face_model, identity.id, torch.zeros(1, 64), size=side))
    torch.testing.assert_close(s.drv_secc(slice(0, 5)), render_secc(face_model, identity.id, m, size=side))
    own = build_session(renderer, face_model, source, m, blink="none", src_exp="source")
    torch.testing.assert_close(own.src_secc, render_secc(face_model, identity.id, identity.exp[:1], size=side))


def test_blink_changes_only_the_eye_region(renderer, face_model, source):
    m = motion(14, scale=0.2)
    closed = build_session(renderer, face_model, source, m, blink="period", blink_seed=0)
    opened = build_session(renderer, face_model, source, m, blink="none")
    assert (opened.blink == 0).all() and closed.blink.max() > 0.9 and closed.blink[0] == 0
    a, b = closed.drv_secc(slice(0, 14)), opened.drv_secc(slice(0, 14))
    h, w = a.shape[-2:]
    eye = torch.zeros(h, w, dtype=torch.bool)  # upstream's eye prior boxes plus their margin
    eye[h // 4 - 4: h // 2 + 4, w // 4 - 4: 3 * w // 4 + 4] = True
    diff = (a - b).abs().amax(1)  # [T, H, W]
    assert diff[:, ~eye].max() <= 1 / 127.5 + 1e-6  # outside the eyes: only 8-bit quantisation
    blinking = closed.blink > 0.5
    assert (diff[blinking][:, eye] > 0.05).sum() > 0  # the eyes really close
    assert (diff[closed.blink == 0] == 0).all()  # frames without a blink are untouched
    # same seed, same blinks; the cameras and keypoints do not depend on blinking
    again = build_session(renderer, face_model, source, m, blink="period", blink_seed=0)
    assert torch.equal(again.blink, closed.blink) and torch.equal(closed.camera, opened.camera)


def test_background_override(renderer, face_model, source):
    bg = torch.zeros(1, 40, 60, 3)
    bg[..., 0] = 1.0  # red, not square: centre-cropped
    s = build_session(renderer, face_model, source, motion(3), background=bg)
    assert s.source.bg.shape == (1, 3, 40, 40)
    assert (s.source.bg[:, 0] == 1).all() and (s.source.bg[:, 1:] == -1).all()
    assert not torch.equal(source.bg, s.source.bg) and source.bg.shape == (1, 3, 64, 64)  # input not mutated


def test_personalised_sources(renderer, face_model, identity):
    planes = torch.randn(1, 3, renderer.cfg.plane_channels, renderer.cfg.plane_resolution, renderer.cfg.plane_resolution)
    kp = torch.rand(68, 3) * 2.4 - 1.2  # unclamped, z != 0 like a stored src_kp
    person = AdapterIdentity(id=torch.randn(1, 80), src_kp=kp)
    pr = PersonalisedRenderer(model=renderer, cano_planes=planes, identity=person, spec=None, metadata={})
    with pytest.raises(InputError, match="torso_ref, bg, segmap"):
        personalised_source(pr)
    src = make_source(pr, identity)  # the identity fills what the adapter lacks
    assert src.kind == "personalised" and torch.equal(src.cano_planes, planes)
    assert torch.equal(src.id, person.id)  # the adapter's own id wins
    assert torch.equal(src.src_kp[0, :, :2], kp[:, :2]) and (src.src_kp[..., 2] == 0).all()
    assert torch.equal(src.src_pose.euler, identity.euler[:1])
    s = build_session(pr, face_model, identity, motion(4), pose="identity")
    assert s.source.kind == "personalised" and s.num_frames == 4
    full = AdapterIdentity(id=person.id, src_kp=kp, bg=src.bg, torso_ref=src.torso_ref, segmap=src.segmap)
    alone = PersonalisedRenderer(model=renderer, cano_planes=planes, identity=full, spec=None, metadata={})
    with pytest.raises(InputError, match="source head pose"):  # static pose needs the source pose
        build_session(alone, face_model, None, motion(4))
    s = build_session(alone, face_model, None, motion(4), pose=(identity.euler, identity.trans), map_to_init_pose=False)
    torch.testing.assert_close(s.euler, identity.euler[:4])


def test_bad_inputs(renderer, face_model, identity, source):
    with pytest.raises(InputError, match="motion"):
        build_session(renderer, face_model, source, torch.zeros(5, 8))
    with pytest.raises(InputError, match="empty"):
        build_session(renderer, face_model, source, torch.zeros(0, 64))
    with pytest.raises(InputError, match="pose"):
        build_session(renderer, face_model, source, motion(3), pose="nearest")
    with pytest.raises(InputError, match="blink"):
        build_session(renderer, face_model, source, motion(3), blink="always")
    with pytest.raises(InputError, match="identity"):
        build_session(renderer, face_model, None, motion(3))  # base renderer without an identity
    photo = make_identity(face_model, frames=1, kind="photo")
    assert isinstance(one_shot_source(renderer, photo), TalkingSource)
    with pytest.raises(InputError, match="outside"):
        one_shot_source(renderer, photo, frame=2)


def test_small_face_warns(renderer, face_model, caplog):
    photo = make_identity(face_model, frames=1, kind="photo")
    small = dataclasses.replace(photo, landmarks=photo.landmarks * 0.3)  # face box ~6 % of the frame
    with caplog.at_level(logging.WARNING, logger="MimicTalk"):
        one_shot_source(renderer, photo)
        assert "covers" not in caplog.text
        one_shot_source(renderer, small)
    assert "covers 6 %" in caplog.text
