"""Tiny weights and input media laid out as a ComfyUI install would hold them, for running the
pack's nodes and workflows without real weights (Tier 2, the main command, the real-ComfyUI
end-to-end test).

``build(root)`` writes (and returns the paths of)::

    root/models/mimictalk/tiny/mimictalk_renderer/   tiny MimicTalk base renderer (converted layout)
    root/models/mimictalk/tiny/real3d_renderer/      tiny Real3D-Portrait renderer
    root/models/mimictalk/tiny/ics_a2m/              tiny ICS-A2M (64-d motion, 32-d audio)
    root/models/mimictalk/tiny/hubert/               tiny HuBERT (Hugging Face folder)
    root/models/mimictalk/bfm/                       synthetic Basel Face Model (+ MediaPipe map)
    root/models/mimictalk/mediapipe/                 placeholders of the two MediaPipe model files
    root/models/mimictalk/adapters/person.safetensors  an adapter trained 2 steps on the tiny base
    root/input/speech.wav, clip.mp4, portrait.png    speech, a drawn talking clip, a drawn photo
    root/input/dub_source.mp4                        a drawn 320x240 30 fps clip for the dub workflow

The MediaPipe placeholders carry the manifest's size and a lock-file verification entry with the
manifest's sha256 (the downloader's "verified before, unchanged since" cache), so the pack's
``ensure_asset`` accepts them offline; the test double of ``mediapipe`` (``doubles/mediapipe``)
reads them. Everything is random or synthetic: outputs are checked for shape, length and
plumbing, never for looks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import wave
from pathlib import Path

import numpy as np
import torch

SPEECH_SECONDS = 0.6  # -> 15 motion frames at 25 fps
SPEECH_RATE = 16_000
CLIP_FRAMES = 26  # the identity checks need at least 1 s at 25 fps
DUB_FRAMES, DUB_FPS = 40, 30.0  # input/dub_source.mp4: the video the dub workflow dubs (320x240)
MEDIAPIPE_ASSETS = ("mediapipe_face_landmarker", "mediapipe_selfie_multiclass")


def _save_converted(folder: Path, model: torch.nn.Module, kind: str) -> None:
    """model.safetensors + config.json in the layout of ``python -m mimictalk_lib.convert``."""
    from mimictalk_lib.checkpoint import save_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    meta = {"format": "mimictalk-converted", "format_version": 1, "kind": kind,
            "config_class": f"{type(cfg).__module__}.{type(cfg).__qualname__}", "config": dataclasses.asdict(cfg)}
    save_safetensors(folder / "model.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()}, meta)
    (folder / "config.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def write_wav(path: Path, wave_f32: torch.Tensor, rate: int) -> None:
    pcm = (wave_f32.clamp(-1, 1) * 32767).round().to(torch.int16).numpy()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_png(path: Path, image: torch.Tensor) -> None:
    """uint8 [H, W, 3] -> PNG through PyAV's encoder."""
    import av

    h, w = int(image.shape[0]), int(image.shape[1])
    with av.open(str(path), "w", format="image2") as c:
        stream = c.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image.numpy()), format="rgb24")
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            c.mux(packet)


def _mediapipe_placeholders(models: Path) -> None:
    from mimictalk_lib.download import LockFile
    from mimictalk_lib.manifest import load_manifest

    manifest = load_manifest()
    lock = LockFile(models / manifest.lock_file)
    for asset_id in MEDIAPIPE_ASSETS:
        asset = manifest.get(asset_id)
        for spec in asset.files:
            path = models / asset.target_dir / spec.name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(b"placeholder for the mediapipe test double\n")
                fh.truncate(spec.size or 1024)  # sparse: the manifest's size costs no disk
            lock.record(f"{asset.target_dir}/{spec.name}", spec.sha256, path, "test placeholder")


def _train_adapter(base_dir: Path, bfm: Path, out: Path) -> None:
    """A real (2-step) adapter on the tiny base as stored on disk, from a synthetic 64² identity."""
    from mimictalk_lib.adapt.adapter import save_adapter
    from mimictalk_lib.adapt.data import AdaptationData
    from mimictalk_lib.adapt.train import AdaptConfig, train_adapter
    from mimictalk_lib.face import load_face_model
    from mimictalk_lib.renderer import load_renderer
    from tests.adapt.synthetic import synthetic_identity

    base = load_renderer(base_dir).model
    data = AdaptationData.from_identity(synthetic_identity(base.cfg.image_resolution), load_face_model(bfm),
                                        base.cfg.secc_resolution)
    adapter = train_adapter(base, data, None, AdaptConfig(steps=2, preview_every=0, stochastic_render=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_adapter(out, adapter)


def build(root: Path) -> dict[str, Path]:
    from mimictalk_lib.a2m import A2MConfig, InContextAudio2MotionModel
    from mimictalk_lib.video import write_video
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model
    from tests.fixtures.synthetic_identity import draw_clip
    from tests.fixtures.tiny_a2m import randomize_, speech_like, tiny_hubert
    from tests.fixtures.tiny_renderer import random_renderer

    models, inputs = root / "models" / "mimictalk", root / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    for layout, seed in (("mimictalk", 0), ("real3d", 1)):
        _save_converted(models / "tiny" / f"{layout}_renderer", random_renderer(layout, seed=seed), "renderer")
    torch.manual_seed(0)
    a2m = randomize_(InContextAudio2MotionModel(dataclasses.replace(A2MConfig.tiny(True), motion_dim=64)), seed=0)
    _save_converted(models / "tiny" / "ics_a2m", a2m, "ics_a2m")
    tiny_hubert().model.save_pretrained(models / "tiny" / "hubert")
    bfm = write_synthetic_face_model(models / "bfm", derived=False)  # the upstream helper files are optional
    _mediapipe_placeholders(models)
    _train_adapter(models / "tiny" / "mimictalk_renderer", bfm, models / "adapters" / "person.safetensors")

    speech = speech_like(SPEECH_SECONDS, SPEECH_RATE)
    write_wav(inputs / "speech.wav", speech, SPEECH_RATE)
    clip = draw_clip(CLIP_FRAMES, 256, 256, centre=(128.0, 110.0), radius=60)
    clip_audio = speech_like(CLIP_FRAMES / 25, SPEECH_RATE, seed=1)
    write_video(inputs / "clip.mp4", clip, 25, audio={"waveform": clip_audio[None, None], "sample_rate": SPEECH_RATE})
    write_png(inputs / "portrait.png", draw_clip(1, 300, 240, centre=(120.0, 130.0), radius=55)[0])
    dub = draw_clip(DUB_FRAMES, 240, 320, centre=(200.0, 110.0), radius=48)  # landscape, 30 fps, face off-centre
    write_video(inputs / "dub_source.mp4", dub, DUB_FPS,
                audio={"waveform": speech_like(DUB_FRAMES / DUB_FPS, SPEECH_RATE, seed=2)[None, None], "sample_rate": SPEECH_RATE})
    return {"root": root, "models": models, "input": inputs, "output": root / "output", "temp": root / "temp"}


def motion_frames(seconds: float = SPEECH_SECONDS) -> int:
    """Frames a speech of ``seconds`` gives (trim='audio': its duration at 25 fps)."""
    return max(1, math.floor(seconds * 25 + 0.5))
