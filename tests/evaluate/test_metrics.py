"""Evaluation metrics: identical frames score perfectly, unrelated frames poorly; the head box,
landmark distance, blink rate and pose jitter measure what they say; evaluate() returns a table,
JSON and a plot and turns every missing optional model into a note."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mimictalk_lib.adapt.lpips import LPIPS
from mimictalk_lib.evaluate import evaluate, evaluate_identity, identity_frames
from mimictalk_lib.evaluate import metrics as M
from mimictalk_lib.errors import InputError
from tests.fixtures.tiny_renderer import smooth_image


def _images(n: int, side: int, seed: int) -> torch.Tensor:
    """[n, 3, S, S] in [0, 1]: smooth random images (natural-image-like statistics)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([(smooth_image(side, 3, g) + 1) / 2 for _ in range(n)]).clamp(0, 1)


@pytest.fixture(scope="module")
def lpips():
    torch.manual_seed(0)  # random AlexNet and heads (positive, as trained LPIPS heads are)
    net = LPIPS()
    with torch.no_grad():
        for lin in net.lins:
            lin.weight.abs_()
    return net


def test_identical_frames_are_perfect_and_unrelated_frames_poor(lpips):
    a, b = _images(3, 64, 0), _images(3, 64, 1)
    boxes = torch.tensor([[8, 8, 56, 56]] * 3)
    same = M.image_metrics(a, a.clone(), boxes=boxes, lpips=lpips)
    assert set(same) == {"psnr", "ssim", "lpips", "head_psnr", "head_ssim", "head_lpips"}
    assert torch.isinf(same["psnr"]).all() and torch.isinf(same["head_psnr"]).all()
    assert torch.allclose(same["ssim"], torch.ones(3), atol=1e-5) and torch.allclose(same["head_ssim"], torch.ones(3), atol=1e-5)
    assert same["lpips"].abs().max() < 1e-6 and same["head_lpips"].abs().max() < 1e-6

    other = M.image_metrics(a, b, boxes=boxes, lpips=lpips)
    assert (other["psnr"] < 15).all() and (other["head_psnr"] < 15).all()  # dB
    assert (other["ssim"] < 0.5).all() and (other["head_ssim"] < 0.5).all()
    assert (other["lpips"] > 1e-3).all() and (other["head_lpips"] > 1e-3).all()
    slightly = M.image_metrics(a, (a + 0.01).clamp(0, 1), lpips=lpips)  # ordered: close beats unrelated
    assert (slightly["psnr"] > 35).all() and (slightly["ssim"] > other["ssim"]).all()
    assert (slightly["lpips"] < other["lpips"]).all()


def test_head_region_sees_only_the_box():
    a = _images(1, 64, 0)
    b = a.clone()
    b[..., :8, :] = 1 - b[..., :8, :]  # damage outside the head box only
    m = M.image_metrics(b, a, boxes=torch.tensor([[10, 10, 50, 50]]))
    assert torch.isinf(m["head_psnr"]).all() and m["psnr"] < 30
    assert torch.isnan(m["lpips"]).all()  # no network: not measured


def test_head_boxes_from_masks():
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 3:7, 5:12] = True
    assert M.head_boxes(masks).tolist() == [[5, 3, 12, 7], [0, 0, 0, 0]]


def _face(n: int) -> torch.Tensor:
    """[n, 478, 3] points: a fixed random face layout 100 px wide, eyes open."""
    g = torch.Generator().manual_seed(0)
    pts = torch.zeros(n, 478, 3)
    pts[:, :, :2] = 100 + 100 * torch.rand(478, 2, generator=g)
    for p1, p2, p3, p4, p5, p6 in (M.RIGHT_EYE_EAR, M.LEFT_EYE_EAR):
        x = 130.0 if p1 == M.RIGHT_EYE_EAR[0] else 160.0
        pts[:, p1, :2], pts[:, p4, :2] = torch.tensor([x, 120.0]), torch.tensor([x + 20, 120.0])
        for top, bottom, dx in ((p2, p6, 6.0), (p3, p5, 14.0)):
            pts[:, top, :2], pts[:, bottom, :2] = torch.tensor([x + dx, 116.0]), torch.tensor([x + dx, 124.0])
    return pts


def test_landmark_distance_blink_rate_and_jitter():
    ref = _face(50)
    ok = torch.ones(50, dtype=torch.bool)
    d = M.landmark_distance(ref, ref.clone(), ok)
    assert d["lmd_face"].abs().max() == 0 and d["lmd_mouth"].abs().max() == 0
    shifted = ref.clone()
    shifted[:, :, 0] += 3.0
    d = M.landmark_distance(shifted, ref, ok)
    assert torch.allclose(d["lmd_face"], torch.full((50,), 3.0)) and torch.allclose(d["lmd_mouth"], torch.full((50,), 3.0))
    moved = ref.clone()
    moved[:, list(M.MOUTH_POINTS), 1] += 5.0  # only the mouth differs
    d = M.landmark_distance(moved, ref, ok)
    assert torch.allclose(d["lmd_mouth"], torch.full((50,), 5.0)) and float(d["lmd_face"][0]) < 5.0

    assert M.blink_rate(ref, ok, 25.0) == 0
    blinking = ref.clone()
    for start in (10, 30):  # two blinks of 3 frames in 2 s: 60 per minute
        for p1, p2, p3, p4, p5, p6 in (M.RIGHT_EYE_EAR, M.LEFT_EYE_EAR):
            for top, bottom in ((p2, p6), (p3, p5)):
                blinking[start:start + 3, top, 1] = blinking[start:start + 3, bottom, 1] - 0.5
    assert M.blink_rate(blinking, ok, 25.0) == pytest.approx(60.0)

    still = M.pose_jitter(ref, ok)
    assert all(v == 0 for v in still.values())
    smooth = ref.clone()
    smooth[:, :, 0] += torch.arange(50.0)[:, None]  # constant velocity: no acceleration
    assert M.pose_jitter(smooth, ok)["jitter_position"] < 1e-6
    shaky = ref.clone()
    shaky[::2, :, 0] += 2.0  # alternate 2 px
    assert M.pose_jitter(shaky, ok)["jitter_position"] > 1.0


def test_evaluate_reports_table_json_plot_and_notes(lpips):
    a = (_images(5, 64, 0).permute(0, 2, 3, 1))
    masks = torch.zeros(5, 64, 64, dtype=torch.bool)
    masks[:, 10:50, 12:52] = True
    steps = []
    result = evaluate(a, a.clone(), head_masks=masks, lpips=lpips, on_step=lambda d, t, **k: steps.append((d, t)))
    assert steps[-1] == (5, 5)
    assert math.isinf(result.metrics["psnr"]) and result.metrics["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert result.metrics["lpips"] == pytest.approx(0.0, abs=1e-6) and math.isinf(result.metrics["head_psnr"])
    data = json.loads(result.to_json())
    assert data["metrics"]["psnr"] == "inf" and len(data["per_frame"]["ssim"]) == 5 and data["info"]["frames"] == 5
    notes = " ".join(result.notes)
    assert "LSE-C / LSE-D" in notes and "CSIM" in notes and "landmark metrics" in notes
    table = result.table()
    assert table.startswith("| metric |") and "| psnr | inf | dB |" in table
    plot = result.plot()
    assert plot.dim() == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.shape[2] == 768
    assert 0 <= float(plot.min()) and float(plot.max()) <= 1

    other = evaluate((_images(5, 64, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1), a)  # uint8 input too
    assert other.metrics["psnr"] < 15 and math.isnan(other.metrics["lpips"])
    assert any("head-region" in n for n in other.notes) and any("LPIPS" in n for n in other.notes)


def test_evaluate_with_a_landmarker_and_resized_reference():
    from tests.fixtures.synthetic_identity import BlobLandmarker, FACE_COLOURS

    frames = torch.zeros(4, 64, 64, 3, dtype=torch.uint8)
    frames[:, 16:48, 16:48] = torch.tensor(FACE_COLOURS[0], dtype=torch.uint8)
    big = frames.repeat_interleave(2, 1).repeat_interleave(2, 2)  # the reference at 128²
    result = evaluate(frames, big, landmarker=BlobLandmarker())
    assert result.metrics["lmd_face"] < 2.0 and result.metrics["blink_rate"] == 0
    assert any("resized" in n for n in result.notes)


def test_bad_inputs_are_explained():
    with pytest.raises(InputError, match="IMAGE"):
        evaluate(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(InputError, match="no frames"):
        evaluate(torch.zeros(0, 8, 8, 3), torch.zeros(0, 8, 8, 3))


def test_evaluate_identity_rerenders_the_held_out_slice(tmp_path):
    from mimictalk_lib.face import load_face_model
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model
    from tests.fixtures.tiny_renderer import random_renderer
    from tests.pipeline.conftest import make_identity

    face_model = load_face_model(write_synthetic_face_model(tmp_path / "bfm"))
    identity = make_identity(face_model, frames=50)
    assert identity_frames(identity, "held_out").tolist() == list(range(25, 50))  # 10%, at least 1 s
    assert identity_frames(identity, "all").tolist() == list(range(50))
    with pytest.raises(InputError, match="too few"):
        identity_frames(make_identity(face_model, frames=49), "held_out")
    result = evaluate_identity(random_renderer("mimictalk", seed=0), face_model, identity, frames="held_out", chunk_size=8)
    assert result.info["frame_indices"] == list(range(25, 50)) and result.info["frames"] == 25
    assert len(result.per_frame["psnr"]) == 25 and len(result.per_frame["head_ssim"]) == 25
    assert 0 < result.metrics["psnr"] < 40 and -1 <= result.metrics["ssim"] < 1  # a random renderer: far off
    assert result.metrics["lpips"] != result.metrics["lpips"]  # NaN: no network given


def test_cli_writes_table_json_and_plot(tmp_path, capsys):
    from mimictalk_lib.__main__ import main
    from mimictalk_lib.video import write_video

    clip = (_images(10, 64, 0).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    write_video(tmp_path / "a.mp4", clip, 25.0, crf=0)
    write_video(tmp_path / "b.mp4", clip.flip(2), 25.0, crf=0)
    code = main(["evaluate", "--rendered", str(tmp_path / "a.mp4"), "--reference", str(tmp_path / "a.mp4"),
                 "--json", str(tmp_path / "same.json"), "--plot", str(tmp_path / "same.png"),
                 "--models-dir", str(tmp_path / "models"), "--no-landmarks"])
    out = capsys.readouterr().out
    assert code == 0 and "| psnr | inf | dB |" in out and "LPIPS: not measured; its weights are missing" in out
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["info"]["frames"] == 10 and same["metrics"]["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "same.png").stat().st_size > 0
    assert main(["evaluate", "--rendered", str(tmp_path / "a.mp4"), "--reference", str(tmp_path / "b.mp4"),
                 "--json", str(tmp_path / "diff.json"), "--models-dir", str(tmp_path / "models"), "--no-landmarks"]) == 0
    assert json.loads((tmp_path / "diff.json").read_text())["metrics"]["psnr"] < 20
    assert main(["evaluate", "--rendered", str(tmp_path / "missing.mp4"), "--reference", str(tmp_path / "a.mp4"),
                 "--models-dir", str(tmp_path / "models"), "--no-landmarks"]) == 1
