"""Fake ``folder_paths``: the model-folder registry with ComfyUI's semantics (§3.1)."""

import os
import tempfile

base_path = os.environ.get("FAKEHOST_BASE") or tempfile.mkdtemp(prefix="fakehost-")
models_dir = os.path.join(base_path, "models")
supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths = {
    "checkpoints": ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions),
    "loras": ([os.path.join(models_dir, "loras")], supported_pt_extensions),
}


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name):
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name):
    paths, exts = folder_names_and_paths[folder_name]
    out = set()
    for root in paths:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    out.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def get_full_path(folder_name, filename):
    for root in folder_names_and_paths.get(folder_name, ([], set()))[0]:
        path = os.path.join(root, filename)
        if os.path.isfile(path):
            return path
    return None


def get_output_directory():
    return os.path.join(base_path, "output")


def get_temp_directory():
    return os.path.join(base_path, "temp")


def get_input_directory():
    return os.path.join(base_path, "input")


def get_annotated_filepath(name, default_dir=None):
    for kind, getter in (("input", get_input_directory), ("output", get_output_directory), ("temp", get_temp_directory)):
        if name.endswith(f" [{kind}]"):
            return os.path.join(getter(), name[: -len(kind) - 3])
    return os.path.join(default_dir or get_input_directory(), name)


def exists_annotated_filepath(name):
    return os.path.exists(get_annotated_filepath(name))


_CONTENT = {"audio": (".wav", ".mp3", ".flac", ".ogg", ".m4a"), "video": (".mp4", ".webm", ".mov", ".mkv"),
            "image": (".png", ".jpg", ".jpeg", ".webp")}


def filter_files_content_types(files, content_types):
    exts = tuple(e for c in content_types for e in _CONTENT.get(c, ()))
    return [f for f in files if f.lower().endswith(exts)]


def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
    """(folder, filename, counter, subfolder, prefix) like ComfyUI: counter = 1 + the highest
    number already used by ``<filename>_<number>_*`` files of the folder."""
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
        raise Exception("Saving image outside the output folder is not allowed.")
    os.makedirs(folder, exist_ok=True)
    used = [int(f[len(filename) + 1:].split("_")[0]) for f in os.listdir(folder)
            if f.startswith(filename + "_") and f[len(filename) + 1:].split("_")[0].isdigit()]
    return folder, filename, max(used, default=0) + 1, subfolder, filename_prefix
