"""Run in a fresh interpreter by test_pack.py: import the pack exactly as ComfyUI's
``load_custom_node`` does and print what happened as JSON on the last line of stdout.

    python pack_probe.py PACK_DIR [--library-first]

PACK_DIR is a folder whose name has a hyphen (like ``custom_nodes/comfyui-mimictalk``). Whether a
(fake) host is importable is decided by the caller through PYTHONPATH.
"""

import asyncio
import importlib
import importlib.util
import inspect
import json
import logging
import os
import pkgutil
import sys

COMFY_MODULES = ("folder_paths", "comfy", "comfy_api")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


def comfy_loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in COMFY_MODULES)


def import_whole_library():
    """Import mimictalk_lib and every submodule; report failures and ComfyUI imports."""
    import mimictalk_lib

    failed = {}
    for info in pkgutil.walk_packages(mimictalk_lib.__path__, "mimictalk_lib."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as e:  # e.g. an optional dependency; reported, not hidden
            failed[info.name] = f"{type(e).__name__}: {e}"
    return {"library_modules": sorted(m for m in sys.modules if m.startswith("mimictalk_lib")),
            "library_import_errors": failed, "comfy_after_library": comfy_loaded()}


def global_state():
    import torch

    return {
        "sys_path": list(sys.path),
        "root_handlers": [type(h).__name__ for h in logging.getLogger().handlers],
        "root_level": logging.getLogger().level,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "default_dtype": str(torch.get_default_dtype()),
        "grad_enabled": torch.is_grad_enabled(),
    }


def main():
    pack_dir = os.path.abspath(sys.argv[1])
    out = {}
    if "--library-first" in sys.argv:
        out.update(import_whole_library())
    capture = Capture()
    logging.getLogger().addHandler(capture)
    before = global_state()
    before["root_handlers"].remove("Capture")

    # nodes.py load_custom_node: module name = path with '.' -> '_x_', spec on __init__.py
    sys_module_name = pack_dir.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(sys_module_name, os.path.join(pack_dir, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[sys_module_name] = module
    spec.loader.exec_module(module)

    logging.getLogger().removeHandler(capture)
    after = global_state()
    out.update({
        "state_unchanged": before == after,
        "state_diff": {k: (before[k], after[k]) for k in before if before[k] != after[k]},
        "logs": [r for r in capture.records if r[0] in ("WARNING", "ERROR", "CRITICAL")],
        "has_entrypoint": hasattr(module, "comfy_entrypoint"),
        "has_node_class_mappings": hasattr(module, "NODE_CLASS_MAPPINGS"),
        "comfy_after_pack": comfy_loaded(),
    })
    if out["has_entrypoint"]:
        entry = module.comfy_entrypoint
        ext = asyncio.run(entry()) if inspect.iscoroutinefunction(entry) else entry()
        from comfy_api.latest import ComfyExtension

        asyncio.run(ext.on_load())
        nodes = asyncio.run(ext.get_node_list())
        from comfy_api.latest import io

        out.update({"is_extension": isinstance(ext, ComfyExtension), "node_list": [n.__name__ for n in nodes],
                    "node_list_is_list": isinstance(nodes, list),
                    "all_comfy_nodes": all(isinstance(n, type) and issubclass(n, io.ComfyNode) for n in nodes)})
    host = sys.modules[sys_module_name + ".nodes.host"]
    if "folder_paths" in sys.modules:
        import folder_paths

        out["folders"] = {k: v[0] for k, v in folder_paths.folder_names_and_paths.items() if "mimictalk" in k}
        out["models_dir"] = folder_paths.models_dir
    out["hosted"] = host.HOSTED
    out["node_modules"] = sorted(m.rsplit(".", 1)[1] for m in sys.modules if m.startswith(sys_module_name + ".nodes."))
    if not host.HOSTED:  # no host: nothing of the node layer runs (scripts use the library directly)
        print(json.dumps(out))
        return
    out["host_model_dirs"] = [str(p) for p in host.model_dirs()]
    out["host_adapter_dirs"] = [str(p) for p in host.adapter_dirs()]
    out["host_device"] = str(host.torch_device())
    out["host_auto_dtype_cpu"] = str(host.resolve_dtype("auto", host.torch_device()))
    if importlib.util.find_spec("comfy") is not None:
        import comfy.model_management as mm

        on_step = host.progress(10, node_id="7")
        on_step(3, 10, stage="render")
        mm.interrupt_current_processing(True)
        try:
            on_step(4, 10)
            out["interrupt_raised"] = False
        except mm.InterruptProcessingException:
            out["interrupt_raised"] = True
        import comfy.utils

        out["progress_updates"] = comfy.utils.bars[-1].updates if comfy.utils.bars else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
