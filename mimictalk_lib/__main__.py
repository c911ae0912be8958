"""``python -m mimictalk_lib <command> ...``: the library's command-line entry points.

- ``talk``: speech + a personalised adapter (or a portrait photo) -> an mp4, without ComfyUI: loads
  the renderer, face model and ICS-A2M, extracts the audio features, samples the motion, renders
  and writes the video through the same library functions the pack's nodes call, with the
  defaults of the pack's talk / one-shot workflows;
- ``render``: speech -> mp4(s) calling the library directly, one job or a jobs file, in-process or
  across a Ray cluster with ``--ray [ADDRESS]`` (``mimictalk_lib.distributed.cli``);
- ``dub``: a video + new speech -> the same video saying it (``mimictalk_lib.dub.cli``, library direct);
- ``download``: list, check or fetch the manifest's model files (``mimictalk_lib.download``);
- ``convert``: upstream checkpoint -> model.safetensors + config.json (``mimictalk_lib.convert``);
- ``evaluate``: rendered video vs reference video -> metrics table, JSON, plot (``mimictalk_lib.evaluate``);
- ``serve``: a live talking head over WebRTC with a small web page (``mimictalk_lib.live.server``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

DEFAULT_RENDERER = {"adapter": "mimictalk_base_renderer", "portrait": "real3dportrait_renderer"}

SETTINGS: dict[str, tuple[str, ...]] = {
    # name: the same setting as NODE.INPUT of the pack's workflows (accepted by --set too)
    "steps": ("MimicTalkAudioToMotion.steps",),
    "solver": ("MimicTalkAudioToMotion.solver",),
    "cfg_scale": ("MimicTalkAudioToMotion.cfg_scale",),
    "temperature": ("MimicTalkAudioToMotion.temperature",),
    "seed": ("MimicTalkAudioToMotion.seed",),
    "mouth_amp": ("MimicTalkAudioToMotion.mouth_amp",),
    "trim": ("MimicTalkAudioToMotion.trim",),
    "chunk_size": ("MimicTalkRender.chunk_size",),
    "pose": ("MimicTalkRender.pose",),
    "map_to_init_pose": ("MimicTalkRender.map_to_init_pose",),
    "blink": ("MimicTalkRender.blink",),
    "deterministic": ("MimicTalkRender.deterministic",),
    "render_seed": ("MimicTalkRender.seed",),
    "crf": ("MimicTalkVideoCombine.crf",),
    "audio_fit": ("MimicTalkVideoCombine.audio_fit",),
    "precision": ("MimicTalkLoadRenderer.precision", "MimicTalkLoadAudio2Motion.precision"),
    "crop": ("MimicTalkPrepareIdentity.crop",),
    "fit_iterations": ("MimicTalkPrepareIdentity.fit_iterations",),
    "check_base": ("MimicTalkApplyAdapter.check_base",),
}
"""Every setting of ``talk`` (defaults: :func:`default_settings`)."""


def default_settings() -> dict[str, Any]:
    """The defaults of every setting: the library's (the shipped workflows' widget values)."""
    from .a2m import DEFAULT_CFG_SCALE, DEFAULT_STEPS, DEFAULT_TEMPERATURE
    from .identity import FitSchedule
    from .video import DEFAULT_CRF

    return dict(steps=DEFAULT_STEPS, solver="midpoint", cfg_scale=DEFAULT_CFG_SCALE, temperature=DEFAULT_TEMPERATURE,
                seed=0, mouth_amp=1.0, trim="audio", chunk_size=4, pose="static", map_to_init_pose=True,
                blink="period", deterministic=True, render_seed=0, crf=DEFAULT_CRF, audio_fit="fit", precision="auto",
                crop="auto", fit_iterations=FitSchedule().pose_iters, check_base=True)


def _talk_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mimictalk_lib talk",
        description="Make a talking-head video from speech, without ComfyUI. With --adapter it renders a personalised "
                    "MimicTalk adapter (like the pack's talk workflow); with --portrait a single photo one-shot with "
                    "the Real3D-Portrait renderer (like the one-shot workflow). Weights come from the models folder "
                    "(see README); missing ones are downloaded when the manifest allows it, unless offline.")
    p.add_argument("--audio", required=True, help="speech: an audio or video file")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--adapter", help="a personalised adapter (.safetensors saved by Save Adapter, or an official "
                                       ".ckpt; a path, or a name under <models-dir>/adapters)")
    who.add_argument("--portrait", help="a portrait photo (one-shot; needs the optional mediapipe package)")
    p.add_argument("--out", required=True, help="the mp4 to write")
    p.add_argument("--models-dir", help="the mimictalk model folder (default $MIMICTALK_MODELS_DIR or ./models/mimictalk)")
    p.add_argument("--renderer", help="renderer weights (default: mimictalk_base_renderer with --adapter, "
                                      "real3dportrait_renderer with --portrait; or a converted folder: a path, or a "
                                      "name in the models dir)")
    p.add_argument("--a2m", help="audio-to-motion weights (default ics_a2m)")
    p.add_argument("--hubert", help="HuBERT weights (default hubert_large)")
    p.add_argument("--steps", type=int, help="ODE steps of the motion sampler (default 20)")
    p.add_argument("--seed", type=int, help="motion and blink seed (default 0)")
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance (default 1.5)")
    p.add_argument("--pose", choices=("static", "identity"), help="head pose (default static)")
    p.add_argument("--no-download", action="store_true", help="never download; use only files already present")
    p.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                   help="change any other setting, e.g. --set chunk_size=8 (repeatable); the workflows' NODE.INPUT "
                        "names work too (--set MimicTalkRender.chunk_size=8). Settings: " + ", ".join(SETTINGS))
    p.add_argument("--save-settings", help="also write the settings that were used to this JSON file")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting (defaults, then the flags, then ``--set``)."""
    settings = default_settings()
    aliases = {alias: name for name, names in SETTINGS.items() for alias in names}
    for name, value in (("steps", args.steps), ("seed", args.seed), ("render_seed", args.seed),
                        ("cfg_scale", args.cfg_scale), ("pose", args.pose)):
        if value is not None:
            settings[name] = value
    for item in args.set:
        key, sep, raw = item.partition("=")
        name = aliases.get(key, key)
        if not sep or name not in settings:
            raise SystemExit(f"--set {item!r}: unknown setting {key!r}; expected NAME=VALUE with NAME one of "
                             f"{', '.join(SETTINGS)} (e.g. --set chunk_size=8)")
        try:
            settings[name] = json.loads(raw)
        except ValueError:
            settings[name] = raw  # a bare string
    return settings


def _device():
    """Where the models run: the current accelerator, else the CPU."""
    import torch

    accel = getattr(torch, "accelerator", None)
    current = accel.current_accelerator() if accel is not None and accel.is_available() else None
    return torch.device(current) if current is not None else torch.device("cpu")


def _dtype(precision: str, device):
    """The compute dtype for ``precision``: auto is fp32 on the CPU and bf16 on an accelerator with it;
    bf16 on the CPU is the renderer's and motion sampler's opt-in where the CPU has native bf16 (as in
    the loader nodes); fp16 on the CPU is refused."""
    import torch

    from .utils import check_device_dtype

    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision != "auto":
        if precision not in named:
            raise SystemExit(f"--set precision={precision!r}: use auto, fp32, bf16 or fp16")
        check_device_dtype(device, named[precision], cpu_bf16=True)
        return named[precision]
    backend = torch.get_device_module(device.type) if device.type != "cpu" else None
    supported = getattr(backend, "is_bf16_supported", None)
    return torch.bfloat16 if supported is not None and supported() else torch.float32


def _weights(name: str, assets: Sequence[str], folders: Sequence[Path], allow_download: bool) -> Path:
    """A manifest asset (verified, downloaded when allowed), a path the user gave, or a name in a
    model folder."""
    from . import download
    from .errors import AssetMissingError

    if name in assets:
        return download.ensure_asset(name, folders, allow_download=allow_download, on_step=_log_progress("download"))
    given = Path(name).expanduser()
    if given.exists():
        return given
    found = next((d / name for d in folders if (d / name).exists()), None)
    if found is None:
        raise AssetMissingError(f"weights '{name}' not found: not a path, and not in the model folders "
                                f"({', '.join(map(str, folders))}); use one of {', '.join(assets)} or a converted model folder")
    return found


def _adapter_path(name: str, folders: Sequence[Path]) -> Path:
    from .errors import InputError

    given = Path(name).expanduser()
    if given.is_file():
        return given
    found = next((d / "adapters" / name for d in folders if (d / "adapters" / name).is_file()), None)
    if found is None:
        raise InputError(f"--adapter '{name}': no such file, and not in the adapter folders "
                         f"({', '.join(str(d / 'adapters') for d in folders)})")
    return found


def _log_progress(stage: str) -> Callable[..., None]:
    """An ``on_step`` that logs every 10 %."""
    from .utils import logger

    last = [-1]

    def on_step(done: int, total: int, **info) -> None:
        if total > 0 and (pct := int(100 * done / total) // 10) != last[0]:
            last[0] = pct
            logger.info("MimicTalk: %s %d/%d", info.get("stage", stage), done, total)

    return on_step


def run_talk(args: argparse.Namespace, settings: dict[str, Any], folders: Sequence[Path], out: Path):
    """The talk / one-shot flow through the library; returns the ``WrittenVideo``."""
    import torch

    from .a2m import load_a2m, load_hubert
    from .adapt.adapter import load_adapter, personalise
    from .adapt.official_import import import_official_checkpoint
    from .errors import InputError
    from .identity import FitSchedule, PrepareBackends, PrepareOptions, prepare_photo_identity
    from .models import A2M_ASSETS, HUBERT_ASSETS, RENDERER_ASSETS, load_face_model_from, mediapipe_files
    from .pipeline import audio_to_motion, build_session, render_to_video, renderer_model
    from .renderer import load_renderer
    from .video import read_audio

    allow = not args.no_download
    device = _device()
    dtype = _dtype(settings["precision"], device)
    portrait = args.portrait is not None
    renderer = load_renderer(_weights(args.renderer or DEFAULT_RENDERER["portrait" if portrait else "adapter"],
                                      RENDERER_ASSETS, folders, allow), device=device, dtype=dtype)
    face_model = load_face_model_from(folders, allow_download=allow, need_mp468=portrait)
    a2m = load_a2m(_weights(args.a2m or A2M_ASSETS[0], A2M_ASSETS, folders, allow), device, dtype)
    # bf16 on the CPU is the motion sampler's opt-in only (measured there); HuBERT stays fp32, as in the node
    hubert_dtype = torch.float32 if device.type == "cpu" else dtype
    hubert = load_hubert(_weights(args.hubert or HUBERT_ASSETS[0], HUBERT_ASSETS, folders, allow), device, hubert_dtype)
    identity = None
    if portrait:
        identity = prepare_photo_identity(
            Path(args.portrait),
            PrepareBackends(face_model=face_model, **mediapipe_files(folders, allow_download=allow)),
            PrepareOptions(crop=settings["crop"], device=device, size=renderer.model.cfg.image_resolution,
                           schedule=FitSchedule.with_iterations(settings["fit_iterations"])),
            on_step=_log_progress("identity"))
    else:
        path = _adapter_path(args.adapter, folders)
        adapter = import_official_checkpoint(path, renderer.model) if path.suffix == ".ckpt" else load_adapter(path)
        renderer = personalise(renderer.model, adapter, check_base_model=settings["check_base"])
    audio = read_audio(args.audio)
    if audio is None or audio.num_samples == 0:
        raise InputError(f"--audio '{args.audio}' has no audio track; pick a file with sound")
    motion = audio_to_motion(
        a2m, hubert, audio, style=identity, steps=settings["steps"], cfg_scale=settings["cfg_scale"],
        temperature=settings["temperature"], method=settings["solver"],
        generator=torch.Generator().manual_seed(settings["seed"]), mouth_amp=settings["mouth_amp"],
        trim=settings["trim"], on_step=_log_progress("motion"))
    session = build_session(renderer, face_model, identity, motion, pose=settings["pose"],
                            map_to_init_pose=settings["map_to_init_pose"], blink=settings["blink"],
                            blink_seed=settings["render_seed"])
    model = renderer_model(renderer)
    return render_to_video(
        session, out, audio=audio, chunk_size=settings["chunk_size"], deterministic=settings["deterministic"],
        generator=torch.Generator(device=model.device).manual_seed(settings["render_seed"]),
        on_step=_log_progress("render"), audio_mode=settings["audio_fit"], crf=settings["crf"],
        metadata={"mimictalk_settings": settings})


def talk(argv: Optional[Sequence[str]] = None) -> int:
    """Render a talking head from the command line; returns the process exit code."""
    from . import download
    from .errors import AssetMissingError, MimicTalkError

    args = _talk_parser().parse_args(argv)
    settings = _settings(args)
    folders = [Path(args.models_dir).expanduser().resolve()] if args.models_dir else download.default_model_dirs()
    out = Path(args.out).expanduser().resolve()
    if args.save_settings:
        Path(args.save_settings).write_text(json.dumps(settings, indent=1), encoding="utf-8")
    logging_to_stderr()
    try:
        run_talk(args, settings, folders, out)
    except MimicTalkError as e:
        print(str(e), file=sys.stderr)
        if isinstance(e, AssetMissingError):  # the run stops at the first missing file: list them all
            print(f"\nEvery model file and whether it is present: python -m mimictalk_lib.download status "
                  f"--models-dir {os.pathsep.join(map(str, folders))}", file=sys.stderr)
        return 1
    print(out)
    return 0


def logging_to_stderr() -> None:
    """Show the library's INFO messages (progress, downloads) on stderr for the CLI."""
    import logging

    logger = logging.getLogger("MimicTalk")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _commands() -> dict[str, Callable[[Optional[Sequence[str]]], int]]:
    from . import convert, download
    from .dub import cli as dub_cli
    from .evaluate import cli as evaluate_cli

    def serve(argv):  # imported on use: the live server's optional packages load only then
        from .live.server import main as serve_main

        return serve_main(argv)

    def render(argv):  # imported on use: ray (optional) loads only with --ray
        from .distributed.cli import main as render_main

        return render_main(argv)

    return {"talk": talk, "render": render, "dub": dub_cli.main, "download": download.main, "convert": convert.main,
            "evaluate": evaluate_cli.main, "serve": serve}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] not in commands:
        print("usage: python -m mimictalk_lib {" + ",".join(commands) + "} [args...]\n"
              + (__doc__ or ""), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
