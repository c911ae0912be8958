"""Node behaviour on tiny weights with the fake host: model management, error messages, inputs
never mutated, ComfyUI data conventions, seeds, Cancel during rendering and training (what was
trained is kept and usable), video writing with metadata and optional audio."""

from __future__ import annotations

import importlib

import pytest
import torch

from tests.nodes.harness import lib, submodule, video_facts
from tests.nodes.tiny_assets import SPEECH_RATE, motion_frames

RENDERER = dict(weights="tiny/mimictalk_renderer", precision="auto", auto_download=False)
A2M = dict(a2m="tiny/ics_a2m", hubert="tiny/hubert", precision="auto", auto_download=False)
MOTION = dict(steps=3, solver="midpoint", cfg_scale=1.5, temperature=0.3, seed=0, mouth_amp=1.0, trim="audio")
RENDER = dict(chunk_size=4, pose="static", map_to_init_pose=True, blink="period", deterministic=True, seed=0)


def comfy(name):
    """A fake host module (``comfy.utils``, ...). The pack imports most of them lazily, inside a
    node's ``execute``: importing here keeps a test independent of which nodes ran before it."""
    return importlib.import_module(name)


def call(node, **inputs):
    """One node call as ComfyUI makes it (inside inference mode); its output values."""
    with torch.inference_mode():
        return node.execute(**inputs).args


@pytest.fixture(scope="module")
def nodes(pack):
    mods = {m: submodule(pack, f"nodes.{m}") for m in ("loaders", "identity", "train", "adapters", "motion", "render", "video")}
    return type("Nodes", (), {n.__name__: n for m in mods.values() for n in m.NODES})


@pytest.fixture(scope="module")
def loaded(nodes):
    (base,) = call(nodes.LoadRenderer, **RENDERER)
    (face,) = call(nodes.LoadFaceModel, auto_download=False)
    (a2m,) = call(nodes.LoadAudio2Motion, **A2M)
    (audio,) = call(nodes.LoadAudio, audio="speech.wav")
    (adapter,) = call(nodes.LoadAdapter, adapter="person.safetensors")
    (person,) = call(nodes.ApplyAdapter, renderer=base, adapter=adapter, check_base=True)
    (motion,) = call(nodes.AudioToMotion, a2m=a2m, audio=audio, **MOTION)
    return dict(base=base, face=face, a2m=a2m, audio=audio, adapter=adapter, person=person, motion=motion)


@pytest.fixture
def interrupt_after(monkeypatch, pack):
    """interrupt_after(n, total=None): press Cancel right after the n-th progress update of a bar
    (of that total), as a user would while the node runs."""
    utils, mm = comfy("comfy.utils"), comfy("comfy.model_management")
    original = utils.ProgressBar.update_absolute

    def arm(n: int, total=None):
        def update(self, value, total_=None, preview=None):
            original(self, value, total_, preview)
            if (total is None or self.total == total) and len(self.updates) == n:
                mm.interrupt_current_processing(True)

        monkeypatch.setattr(utils.ProgressBar, "update_absolute", update)

    yield arm
    mm.interrupt_current_processing(False)


def test_renderer_is_managed_by_the_host(nodes, loaded):
    base = loaded["base"]
    assert isinstance(base.managed, comfy("comfy.model_patcher").ModelPatcher)
    before = len(comfy("comfy.model_management").loaded_models)
    model = base.module()
    assert comfy("comfy.model_management").loaded_models[before:] == [[base.managed]]
    assert model.dtype == torch.float32 and model.device.type == "cpu"  # auto on the CPU host: fp32
    assert base.info["layout"] == "mimictalk" and not base.personalised and loaded["person"].personalised


def test_manual_weights_missing_say_how_to_get_them(pack, nodes):
    with pytest.raises(lib(pack, "errors").AssetMissingError) as e:
        call(nodes.LoadRenderer, weights="mimictalk_base_renderer", precision="auto", auto_download=True)
    assert "model_ckpt_steps_100000.ckpt" in str(e.value) and "drive.google.com" in str(e.value)


def test_missing_face_model_shows_the_checker_message(pack, nodes, tmp_path, monkeypatch):
    monkeypatch.setitem(comfy("folder_paths").folder_names_and_paths, "mimictalk", ([str(tmp_path)], set()))
    with pytest.raises(lib(pack, "errors").FaceModelMissingError) as e:
        call(nodes.LoadFaceModel, auto_download=False)
    assert "BFM_model_front.mat" in str(e.value) and str(tmp_path / "bfm") in str(e.value)


def _cpu_bf16_gate(pack, monkeypatch, check):
    """A loader's ``validate_inputs`` (as ``check(precision)``) refuses fp16 on the CPU always and
    bf16 without native bf16; skips the test on CPUs without it, else bf16 passes."""
    assert "half precision" in check("fp16")
    monkeypatch.setattr(submodule(pack, "nodes.loaders"), "cpu_bf16_native", lambda: False)
    assert "no native bf16" in check("bf16")
    monkeypatch.undo()
    if not lib(pack, "utils").cpu_bf16_native():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX)")
    assert check("bf16") is True


def test_renderer_loader_takes_bf16_on_the_cpu_only_with_native_bf16(pack, nodes, loaded, monkeypatch):
    """bf16 on the CPU is the renderer's opt-in too (docs/benchmarks.md: ~2x, 37-61 dB PSNR): refused
    without native bf16; where the CPU has it, a personalised bf16 renderer renders through the
    Render node to frames near the fp32 ones (measured on [0, 1] frames: mean |diff| 5.1e-4,
    max 4.3e-3; the bound is ~6x that, a broken path is off by far more)."""
    _cpu_bf16_gate(pack, monkeypatch, lambda precision: nodes.LoadRenderer.validate_inputs(
        weights="tiny/mimictalk_renderer", precision=precision))
    (base,) = call(nodes.LoadRenderer, **{**RENDERER, "precision": "bf16"})
    (person,) = call(nodes.ApplyAdapter, renderer=base, adapter=loaded["adapter"], check_base=True)
    assert person.module().dtype == torch.bfloat16
    motion = loaded["motion"][:3]
    want, _, _ = call(nodes.Render, renderer=loaded["person"], face_model=loaded["face"], motion=motion, **RENDER)
    got, _, _ = call(nodes.Render, renderer=person, face_model=loaded["face"], motion=motion, **RENDER)
    diff = (got.float() - want.float()).abs()
    assert got.shape == want.shape and diff.mean().item() < 3e-3 and diff.max().item() < 0.03


def test_a2m_loader_takes_bf16_on_the_cpu_only_with_native_bf16(pack, nodes, loaded, monkeypatch):
    """bf16 on the CPU is the motion sampler's opt-in (docs/benchmarks.md): the A2M loader takes it
    where the CPU has native bf16 (HuBERT stays fp32); fp16 stays refused."""
    _cpu_bf16_gate(pack, monkeypatch, lambda precision: nodes.LoadAudio2Motion.validate_inputs(
        a2m="tiny/ics_a2m", hubert="tiny/hubert", precision=precision))
    (a2m,) = call(nodes.LoadAudio2Motion, **{**A2M, "precision": "bf16"})
    net, hubert = a2m.modules()
    assert next(net.parameters()).dtype == torch.bfloat16 and next(hubert.parameters()).dtype == torch.float32
    (motion,) = call(nodes.AudioToMotion, a2m=a2m, audio=loaded["audio"], **MOTION)
    assert motion.dtype == torch.float32 and motion.shape == loaded["motion"].shape and torch.isfinite(motion).all()


def test_apply_adapter_leaves_the_base_untouched(nodes, loaded):
    base_module = loaded["base"].module()
    before = {k: v.clone() for k, v in base_module.state_dict().items()}
    (person,) = call(nodes.ApplyAdapter, renderer=loaded["base"], adapter=loaded["adapter"], check_base=True)
    after = base_module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [k for k, v in person.module().state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed  # the merged LoRA lives in the new renderer only
    assert person.managed is not loaded["base"].managed


def test_audio_to_motion_is_seeded_and_leaves_the_audio_alone(nodes, loaded):
    audio = loaded["audio"]
    wave = audio["waveform"].clone()
    assert audio["sample_rate"] == SPEECH_RATE and audio["waveform"].shape[:2] == (1, 1)
    (m2,) = call(nodes.AudioToMotion, a2m=loaded["a2m"], audio=audio, **MOTION)
    (m3,) = call(nodes.AudioToMotion, a2m=loaded["a2m"], audio=audio, **dict(MOTION, seed=1))
    assert loaded["motion"].shape == (motion_frames(), 64) and torch.equal(loaded["motion"], m2)
    assert not torch.equal(m2, m3)
    assert torch.equal(audio["waveform"], wave)


def test_render_follows_comfy_conventions(nodes, loaded):
    motion = loaded["motion"].clone()
    bars = comfy("comfy.utils").bars
    n_bars = len(bars)
    images, masks, fps = call(nodes.Render, renderer=loaded["person"], face_model=loaded["face"], motion=loaded["motion"], **RENDER)
    t = motion_frames()
    assert images.shape == (t, 64, 64, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert 0 <= float(images.min()) and float(images.max()) <= 1 and float(images.std()) > 0
    assert masks.shape == (t, 64, 64) and 0 <= float(masks.min()) <= float(masks.max()) <= 1
    assert fps == 25.0 and isinstance(fps, float)
    assert torch.equal(loaded["motion"], motion)
    assert bars[n_bars].updates == [(4, t), (8, t), (12, t), (t, t)]  # one tick per chunk
    # a part (start_frame, frame_count) is the same frames of the full render (issue 17)
    part, part_masks, _ = call(nodes.Render, renderer=loaded["person"], face_model=loaded["face"], motion=loaded["motion"],
                               **RENDER, start_frame=5, frame_count=6)
    assert torch.equal(part, images[5:11]) and torch.equal(part_masks, masks[5:11])
    with pytest.raises(Exception, match=f"start_frame / frame_count: start frame {t} is past the end"):
        call(nodes.Render, renderer=loaded["person"], face_model=loaded["face"], motion=loaded["motion"], **RENDER,
             start_frame=t)


def test_render_stops_between_chunks_on_cancel(nodes, loaded, interrupt_after):
    interrupt_after(1, total=motion_frames())
    with pytest.raises(comfy("comfy.model_management").InterruptProcessingException):
        call(nodes.Render, renderer=loaded["person"], face_model=loaded["face"], motion=loaded["motion"], **RENDER)
    assert comfy("comfy.utils").bars[-1].updates == [(4, motion_frames())]  # stopped after the first chunk


def test_cancelled_training_keeps_a_usable_resumable_adapter(pack, nodes, loaded, interrupt_after):
    from tests.adapt.synthetic import synthetic_identity

    identity = synthetic_identity(64)
    train = dict(renderer=loaded["base"], identity=identity, face_model=loaded["face"], steps=5, lr=1e-3,
                 lr_triplane=0.1, lora_rank=2, lora_mode="secc2plane_sr", batch_size=1, seed=0,
                 perceptual_loss=False, run_name="cancel_test", resume=True, auto_download=False)
    interrupt_after(2, total=5)
    with pytest.raises(comfy("comfy.model_management").InterruptProcessingException):
        call(nodes.TrainAdapter, **train)
    assert comfy("comfy.model_management").unloaded  # other models were unloaded before training
    kept = "checkpoints/cancel_test/adapter.safetensors"
    assert kept in submodule(pack, "nodes.adapters").adapter_files()
    (partial,) = call(nodes.LoadAdapter, adapter=kept)
    assert partial.metadata["training"]["steps_done"] == 3  # Cancel is seen at the next step's report
    (person,) = call(nodes.ApplyAdapter, renderer=loaded["base"], adapter=partial, check_base=True)
    images, _, _ = call(nodes.Render, renderer=person, face_model=loaded["face"], motion=loaded["motion"][:3], **RENDER)
    assert images.shape[0] == 3 and torch.isfinite(images).all()

    comfy("comfy.model_management").interrupt_current_processing(False)
    interrupt_after(10**6)  # never
    adapter, curve = call(nodes.TrainAdapter, **train)  # resumes at step 3
    assert adapter.metadata["training"]["steps_done"] == 5
    assert curve.shape == (1, 384, 768, 3) and 0 <= float(curve.min()) and float(curve.max()) <= 1  # the report's 4 panels
    assert bool((curve[:, :192, :384] < 0.9).any())  # the loss line is drawn (a 6-frame clip: no validation strip)


def test_perceptual_loss_offline_fails_with_the_downloader_message(pack, nodes, loaded):
    from tests.adapt.synthetic import synthetic_identity

    with pytest.raises(lib(pack, "errors").DownloadError) as e:
        call(nodes.TrainAdapter, renderer=loaded["base"], identity=synthetic_identity(64), face_model=loaded["face"],
             steps=1, lr=1e-3, lr_triplane=0.1, lora_rank=2, lora_mode="secc2plane_sr", batch_size=1, seed=0,
             perceptual_loss=True, run_name="lpips_test", resume=False, auto_download=True)
    assert "alexnet-owt-7be5be79.pth" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)


def test_prepare_identity_needs_exactly_one_source(pack, nodes, loaded):
    common = dict(face_model=loaded["face"], fps=25.0, crop="auto", missing_faces="drop", fit_iterations=2,
                  auto_download=False)
    for extra in ({}, {"images": torch.zeros(1, 64, 64, 3), "video": object()}):
        with pytest.raises(lib(pack, "errors").InputError, match="exactly one"):
            call(nodes.PrepareIdentity, **common, **extra)


def test_prepare_identity_from_a_photo_at_the_renderer_size(nodes, loaded, tiny, fake_mediapipe):
    from tests.fixtures.synthetic_identity import draw_clip

    photo = draw_clip(1, 300, 240, centre=(120.0, 130.0), radius=55).float() / 255
    identity, preview = call(nodes.PrepareIdentity, face_model=loaded["face"], images=photo, fps=25.0, crop="auto",
                             missing_faces="drop", fit_iterations=2, auto_download=False, renderer=loaded["base"])
    assert identity.is_photo and identity.num_frames == 1 and identity.size == 64
    assert preview.dim() == 4 and preview.shape[-1] == 3 and 0 <= float(preview.min()) <= float(preview.max()) <= 1


def test_video_combine_writes_h264_aac_with_metadata(pack, nodes, tiny):
    combine = nodes.VideoCombine
    frames = torch.rand(10, 32, 48, 3)
    hidden = submodule(pack, "nodes.host").io.HiddenHolder(prompt={"1": {"class_type": "X"}}, extra_pnginfo={"workflow": {"w": 1}})
    node = type("VideoCombine", (combine,), {"hidden": hidden})
    long_audio = {"waveform": torch.randn(1, 2, 44_100) * 0.1, "sample_rate": 44_100}  # 1 s for 0.4 s of video
    video, = call(node, images=frames, fps=25.0, audio=long_audio, filename_prefix="tests/combine", crf=23, audio_fit="fit")
    facts = video_facts(video.get_stream_source())
    assert facts["frames"] == 10 and facts["fps"] == 25.0 and facts["codec"] == "h264" and facts["size"] == (48, 32)
    assert facts["audio_codec"] == "aac" and abs(facts["audio_seconds"] - 0.4) < 0.05  # trimmed to the video
    assert facts["metadata"]["prompt"] == '{"1": {"class_type": "X"}}' and facts["metadata"]["workflow"] == '{"w": 1}'
    silent, = call(node, images=frames, fps=12.5, filename_prefix="tests/combine", crf=23, audio_fit="fit")
    facts = video_facts(silent.get_stream_source())
    assert "audio_codec" not in facts and facts["fps"] == 12.5
    assert silent.get_stream_source().endswith("combine_00002_.mp4")  # numbered like core SaveVideo


def test_video_combine_respects_disable_metadata(pack, nodes, monkeypatch):
    monkeypatch.setattr(comfy("comfy.cli_args").args, "disable_metadata", True)
    hidden = submodule(pack, "nodes.host").io.HiddenHolder(prompt={"1": {}}, extra_pnginfo={"workflow": {}})
    node = type("VideoCombine", (nodes.VideoCombine,), {"hidden": hidden})
    video, = call(node, images=torch.rand(2, 16, 16, 3), fps=25.0, filename_prefix="tests/nometa", crf=23, audio_fit="fit")
    assert "prompt" not in video_facts(video.get_stream_source())["metadata"]


def test_load_adapter_imports_an_official_checkpoint(pack, nodes, tiny):
    from mimictalk_lib.lora.official import split_official_lora
    from mimictalk_lib.renderer import RendererConfig, load_renderer
    from tests.fixtures.tiny_renderer import tiny_checkpoint
    from tests.nodes.tiny_assets import _save_converted

    ckpt = tiny_checkpoint("personalised", seed=3)
    base_sd, _ = split_official_lora(ckpt["state_dict"]["model"])
    base_model = load_renderer(base_sd, base_config=RendererConfig.tiny()).model
    _save_converted(tiny["models"] / "tiny" / "official_base", base_model, "renderer")
    path = tiny["models"] / "adapters" / "official" / "model_ckpt_steps_10.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    (base,) = call(nodes.LoadRenderer, weights="tiny/official_base", precision="auto", auto_download=False)
    (adapter,) = call(nodes.LoadAdapter, adapter="official/model_ckpt_steps_10.ckpt", renderer=base)
    assert adapter.metadata["source"] == "official_import" and adapter.spec.r == 2
    (person,) = call(nodes.ApplyAdapter, renderer=base, adapter=adapter, check_base=True)
    assert person.personalised


def test_training_previews_reach_the_progress_bar(pack):
    pytest.importorskip("PIL")
    on_step = submodule(pack, "nodes.host").progress(10)
    on_step(3, 10, preview=torch.rand(8, 8, 3))
    on_step(4, 10)
    bar = comfy("comfy.utils").bars[-1]
    assert bar.updates == [(3, 10), (4, 10)]
    assert bar.previews[0][0] == "JPEG" and bar.previews[0][1].size == (8, 8) and bar.previews[1] is None
