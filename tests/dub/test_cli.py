"""``python -m mimictalk_lib dub`` on tiny weights: the library called directly, an mp4 at the
source's size and rate as long as the speech, a JSON report, and clear errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mimictalk_lib.__main__ import main
from tests.dub.conftest import identity_for, source_frames
from tests.nodes.harness import fake_mediapipe, tiny  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def files(tmp_path_factory, face_model, renderer):
    from mimictalk_lib.a2m import A2MConfig, InContextAudio2MotionModel
    from mimictalk_lib.video import write_video
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model
    from tests.fixtures.tiny_a2m import randomize_, speech_like, tiny_hubert
    from tests.nodes.tiny_assets import _save_converted, write_wav

    root = tmp_path_factory.mktemp("dubcli")
    _save_converted(root / "renderer", renderer, "renderer")
    a2m = randomize_(InContextAudio2MotionModel(dataclasses.replace(A2MConfig.tiny(True), motion_dim=64)), seed=0)
    _save_converted(root / "a2m", a2m, "ics_a2m")
    tiny_hubert().model.save_pretrained(root / "hubert")
    bfm = write_synthetic_face_model(root / "bfm", derived=False)
    frames = source_frames(10)
    video = write_video(root / "source.mp4", frames, 30.0, crf=0, preset="ultrafast",
                        audio={"waveform": speech_like(10 / 30, 16000, seed=1)[None, None], "sample_rate": 16000}).path
    ident = identity_for(face_model, frames, 30.0)
    ident.save(root / "source.identity.safetensors")
    write_wav(root / "speech.wav", speech_like(0.5, 16000), 16000)
    return dict(root=root, video=video, bfm=bfm)


def test_dub_command_writes_the_video_and_a_report(files, capsys):
    import av

    r = files["root"]
    out, rep = r / "out" / "dubbed.mp4", r / "report.json"
    code = main(["dub", "--video", str(files["video"]), "--audio", str(r / "speech.wav"),
                 "--identity", str(r / "source.identity.safetensors"), "--out", str(out), "--renderer", str(r / "renderer"),
                 "--a2m", str(r / "a2m"), "--hubert", str(r / "hubert"), "--face-model", str(files["bfm"]),
                 "--steps", "2", "--report", str(rep)])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out)
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height, float(v.average_rate)) == (160, 96, 30.0)
        assert sum(1 for _ in c.decode(v)) == 15
    report = json.loads(rep.read_text())
    assert report["frames"] == 15 and report["no_face_frames"] == 0 and report["length_mode"] == "pingpong"


def test_dub_command_reports_bad_input_without_a_traceback(files, capsys):
    r = files["root"]
    code = main(["dub", "--video", str(r / "missing.mp4"), "--audio", str(r / "speech.wav"),
                 "--identity", str(r / "source.identity.safetensors"), "--out", str(r / "x.mp4"),
                 "--renderer", str(r / "renderer"), "--a2m", str(r / "a2m"), "--hubert", str(r / "hubert"),
                 "--face-model", str(files["bfm"])])
    assert code == 1
    assert "missing.mp4" in capsys.readouterr().err


@pytest.mark.slow  # light identity (MediaPipe double, default fit) + one-shot dub
def test_dub_command_without_an_identity_prepares_a_light_one(tiny, fake_mediapipe, capsys, tmp_path):
    """No --identity: the identity is prepared from the video while it streams, with the models
    folder's MediaPipe files (here the test double's)."""
    import av

    from tests.nodes.tiny_assets import DUB_FPS, SPEECH_SECONDS

    models = tiny["models"]
    tiny_dir = models / "tiny"
    out = tmp_path / "dubbed.mp4"
    code = main(["dub", "--video", str(tiny["input"] / "dub_source.mp4"), "--audio", str(tiny["input"] / "speech.wav"),
                 "--out", str(out), "--models-dir", str(models), "--renderer", str(tiny_dir / "real3d_renderer"),
                 "--a2m", str(tiny_dir / "ics_a2m"), "--hubert", str(tiny_dir / "hubert"),
                 "--face-model", str(models / "bfm"), "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height, float(v.average_rate)) == (320, 240, DUB_FPS)
        assert sum(1 for _ in c.decode(v)) == round(SPEECH_SECONDS * DUB_FPS)
