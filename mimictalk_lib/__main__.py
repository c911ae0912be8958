"""``python -m mimictalk_lib <command> ...``: the library's command-line entry points.

- ``talk``: speech + a personalised adapter (or a portrait photo) -> an mp4, without a ComfyUI
  server: runs the pack's own talk / one-shot workflow (``workflows/*.json``, converted to an API
  graph) through the pack's in-process executor, with the same node classes ComfyUI runs;
- ``dub``: a video + new speech -> the same video saying it (``mimictalk_lib.dub.cli``, library direct);
- ``download``: list, check or fetch the manifest's model files (``mimictalk_lib.download``);
- ``convert``: upstream checkpoint -> model.safetensors + config.json (``mimictalk_lib.convert``);
- ``evaluate``: rendered video vs reference video -> metrics table, JSON, plot (``mimictalk_lib.evaluate``);
- ``serve``: a live talking head over WebRTC with a small web page (``mimictalk_lib.live.server``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOWS = {"adapter": "mimictalk_talk", "portrait": "mimictalk_one_shot"}
DEFAULT_RENDERER = {"adapter": "mimictalk_base_renderer", "portrait": "real3dportrait_renderer"}


def load_pack(pack_dir: Path = PACK_DIR):
    """Import the node pack the way ComfyUI does (by file location, module name = the folder path
    with '.' -> '_x_'); returns its ``nodes`` package."""
    name = str(pack_dir).replace(".", "_x_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, pack_dir / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.nodes")


def _talk_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mimictalk_lib talk",
        description="Make a talking-head video from speech, without a ComfyUI server. With --adapter it runs the "
                    "pack's talk workflow (a personalised MimicTalk adapter); with --portrait the one-shot workflow "
                    "(a single photo, Real3D-Portrait renderer). Weights come from the models folder (see README); "
                    "missing ones are downloaded when the manifest allows it, unless offline.")
    p.add_argument("--audio", required=True, help="speech: an audio or video file")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--adapter", help="a personalised adapter (.safetensors saved by Save Adapter; a path, or a name "
                                       "under <models-dir>/adapters)")
    who.add_argument("--portrait", help="a portrait photo (one-shot; needs the optional mediapipe package)")
    p.add_argument("--out", required=True, help="the mp4 to write")
    p.add_argument("--models-dir", help="the mimictalk model folder (default $MIMICTALK_MODELS_DIR or ./models/mimictalk)")
    p.add_argument("--renderer", help="renderer weights (default: mimictalk_base_renderer with --adapter, "
                                      "real3dportrait_renderer with --portrait; or a converted folder in the models dir)")
    p.add_argument("--a2m", help="audio-to-motion weights (default ics_a2m)")
    p.add_argument("--hubert", help="HuBERT weights (default hubert_large)")
    p.add_argument("--steps", type=int, help="ODE steps of the motion sampler (default 20)")
    p.add_argument("--seed", type=int, help="motion and blink seed (default 0)")
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance (default 1.5)")
    p.add_argument("--pose", choices=("static", "identity"), help="head pose (default static)")
    p.add_argument("--no-download", action="store_true", help="never download; use only files already present")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=JSON",
                   help="set any widget of the graph, e.g. --set MimicTalkRender.chunk_size=8 (repeatable)")
    p.add_argument("--save-graph", help="also write the API-format graph that was run to this file")
    return p


def _settings(args: argparse.Namespace, who: str) -> dict[str, dict[str, Any]]:
    """{node class: {input: value}} for the workflow, from the command line."""
    table: dict[str, dict[str, Any]] = {
        "MimicTalkLoadAudio": {"audio": str(Path(args.audio).resolve())},
        "MimicTalkLoadRenderer": {"weights": args.renderer or DEFAULT_RENDERER[who]},
        "MimicTalkVideoCombine": {"filename_prefix": "mimictalk"},
    }
    if who == "adapter":
        adapter = Path(args.adapter)
        table["MimicTalkLoadAdapter"] = {"adapter": str(adapter.resolve()) if adapter.exists() else args.adapter}
    else:
        table["LoadImage"] = {"image": str(Path(args.portrait).resolve())}
    optional = {("MimicTalkLoadAudio2Motion", "a2m"): args.a2m, ("MimicTalkLoadAudio2Motion", "hubert"): args.hubert,
                ("MimicTalkAudioToMotion", "steps"): args.steps, ("MimicTalkAudioToMotion", "seed"): args.seed,
                ("MimicTalkRender", "seed"): args.seed, ("MimicTalkAudioToMotion", "cfg_scale"): args.cfg_scale,
                ("MimicTalkRender", "pose"): args.pose}
    for (cls, name), value in optional.items():
        if value is not None:
            table.setdefault(cls, {})[name] = value
    if args.no_download:
        for cls in ("MimicTalkLoadRenderer", "MimicTalkLoadAudio2Motion", "MimicTalkLoadFaceModel", "MimicTalkPrepareIdentity"):
            table.setdefault(cls, {})["auto_download"] = False
    for item in args.set:
        key, sep, raw = item.partition("=")
        cls, dot, name = key.partition(".")
        if not (sep and dot and cls and name):
            raise SystemExit(f"--set {item!r}: expected NODE.INPUT=VALUE, e.g. MimicTalkRender.chunk_size=8")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare string
        table.setdefault(cls, {})[name] = value
    return table


def talk(argv: Optional[Sequence[str]] = None) -> int:
    """Run the talk / one-shot workflow headless; returns the process exit code."""
    args = _talk_parser().parse_args(argv)
    who = "adapter" if args.adapter else "portrait"
    if args.models_dir:
        os.environ["MIMICTALK_MODELS_DIR"] = str(Path(args.models_dir).resolve())
    out = Path(args.out).resolve()
    nodes = load_pack()
    lib = importlib.import_module(nodes.__name__.rsplit(".", 1)[0] + ".mimictalk_lib")
    errors = importlib.import_module(lib.__name__ + ".errors")
    executor = importlib.import_module(nodes.__name__ + ".executor")
    workflow_mod = importlib.import_module(nodes.__name__ + ".workflow")
    logging_to_stderr()

    ui_graph = json.loads((PACK_DIR / "workflows" / f"{WORKFLOWS[who]}.json").read_text(encoding="utf-8"))
    schemas = executor.schemas(list(nodes.NODE_LIST) + executor.CORE_NODES)
    prompt = workflow_mod.ui_to_api(ui_graph, schemas)
    settings = _settings(args, who)
    unknown = set(settings) - {n["class_type"] for n in prompt.values()}
    if unknown:
        raise SystemExit(f"--set: the {WORKFLOWS[who]} graph has no node of type {sorted(unknown)}")
    for node in prompt.values():
        node["inputs"].update(settings.get(node["class_type"], {}))
    if args.save_graph:
        Path(args.save_graph).write_text(json.dumps(prompt, indent=1), encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="mimictalk-talk-") as work:
        nodes.host.set_standalone_directories(output=work, input=Path.cwd(), temp=Path(work) / "temp")
        try:
            result = executor.run_prompt(prompt, nodes.NODE_LIST, extra_data={"extra_pnginfo": {"workflow": ui_graph}})
        except (errors.MimicTalkError, executor.PromptError) as e:
            print(str(e), file=sys.stderr)
            if isinstance(e, errors.AssetMissingError):  # the run stops at the first missing file: list them all
                print(f"\nEvery model file and whether it is present: python -m mimictalk_lib.download status "
                      f"--models-dir {os.environ.get('MIMICTALK_MODELS_DIR', 'models/mimictalk')}", file=sys.stderr)
            return 1
        saved = [f for u in result.ui.values() for f in u.get("images", []) if str(f.get("filename", "")).endswith(".mp4")]
        if len(saved) != 1:
            print(f"mimictalk talk: expected one video from the graph, got {saved}", file=sys.stderr)
            return 1
        produced = Path(work) / saved[0]["subfolder"] / saved[0]["filename"]
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(produced), out)
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

    return {"talk": talk, "dub": dub_cli.main, "download": download.main, "convert": convert.main,
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
