"""Style prompts: fitted expressions aligned with the clip's audio features, cropped to the
common length L = min(T_exp, T_hubert / 2, T_f0 / 2), invalid frames excluded."""

import torch

from mimictalk_lib.identity import FitSchedule, Identity, style_prompt_from_clip, style_prompt_from_identity
from tests.fixtures.synthetic_identity import BlobLandmarker, draw_clip, observable_face_model
from tests.fixtures.tiny_a2m import speech_like, synthetic_features, tiny_hubert


def small_identity(t: int, kind: str = "clip", **meta) -> Identity:
    """An Identity with the right shapes (16² frames) and exp[k] = k, for bookkeeping tests."""
    s = 16
    return Identity(
        frames=torch.zeros(t, s, s, 3, dtype=torch.uint8), segmaps=torch.zeros(t, s, s, dtype=torch.uint8),
        landmarks=torch.zeros(t, 478, 3), id=torch.zeros(1, 80),
        exp=torch.arange(t, dtype=torch.float32)[:, None].expand(t, 64).clone(),
        euler=torch.zeros(t, 3), trans=torch.zeros(t, 3), cameras=torch.zeros(t, 25),
        keypoints=torch.zeros(t, 68, 3), lip_rects=torch.zeros(t, 4, dtype=torch.long),
        plate=torch.zeros(s, s, 3, dtype=torch.uint8), torso_ref=torch.zeros(s, s, 3, dtype=torch.uint8),
        torso_ref_mask=torch.zeros(s, s, dtype=torch.bool), meta=dict(kind=kind, **meta),
    )


def test_prompt_from_identity_skips_dropped_frames():
    # frames 3 and 4 of a 12-frame timeline were dropped; audio covers 10 frames (20 HuBERT frames)
    positions = [0, 1, 2, 5, 6, 7, 8, 9, 10, 11]
    ident = small_identity(10, frame_positions=positions)
    feats = synthetic_features(20)
    length = min(12, feats.num_frames // 2, feats.num_voiced_frames // 2)  # 9 (f0 has 19 frames)
    prompt = style_prompt_from_identity(ident, feats)
    # the longest valid run within the first L timeline positions is 5 .. L-1
    assert prompt.num_frames == length - 5
    assert prompt.motion[:, 0].tolist() == list(range(3, 3 + length - 5))  # exp rows of positions 5..
    assert prompt.hubert.shape[0] == 2 * (length - 5)
    torch.testing.assert_close(prompt.hubert, feats.hubert[10 : 2 * length])


def test_prompt_from_photo_identity_is_an_image_prompt():
    prompt = style_prompt_from_identity(small_identity(1, kind="photo"))
    assert prompt.num_frames == 100 and prompt.hubert.abs().sum() == 0
    assert torch.equal(prompt.motion[0], torch.zeros(64))


def test_prompt_from_clip_end_to_end(tmp_path):
    frames = draw_clip(30)  # 1.2 s at 25 fps
    audio = {"waveform": speech_like(1.0)[None, None], "sample_rate": 16000}  # shorter than the video
    prompt = style_prompt_from_clip(
        frames, fps=25, audio=audio, landmarker=BlobLandmarker(), face_model=observable_face_model(tmp_path),
        hubert=tiny_hubert(), with_f0=False, schedule=FitSchedule(5, 5, 2),
    )
    # 1.0 s of audio -> 49 HuBERT frames padded to 56 -> 28 motion frames; f0 (mel) length 49 -> 24
    assert prompt.num_frames == 24
    assert prompt.motion.shape == (24, 64) and prompt.hubert.shape == (48, 32) and prompt.f0.shape == (48,)
