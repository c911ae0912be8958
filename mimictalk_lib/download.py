"""Resolve, verify and download the manifest's assets into the ``mimictalk`` model folder(s).

``ensure_asset`` is what loaders call. It looks for an asset in every registered model folder
(ComfyUI's ``folder_paths.get_folder_paths("mimictalk")``, which includes ``extra_model_paths.yaml``
entries), verifies each file (size, then sha256; hashes that the manifest marks unknown are
recorded in a lock file on first use and checked on every later use), and downloads what is
missing or corrupt into the first (default) folder: through ``huggingface_hub`` for Hub sources
(honouring ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and tokens) or its HTTP helper for plain URLs,
always into a staging folder next to the target and moved in place with ``os.replace`` only after
verification, so a half-written file never counts as present. Re-hashing a 1 GB file on every load
is avoided by caching a verification (size + mtime) in the lock file.

Never called at import time; nodes call it from ``execute`` with their ``auto_download`` widget.

CLI: ``python -m mimictalk_lib.download [list|status|fetch] [ids...] [--models-dir DIR]``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import AssetMissingError, CheckpointError, DownloadError, FaceModelMissingError
from .manifest import Asset, HubSource, Manifest, ManifestFile, load_manifest
from .utils import ProgressFn, logger, report

PathLike = Union[str, os.PathLike]

MODELS_DIR_ENV = "MIMICTALK_MODELS_DIR"
"""Standalone (non-ComfyUI) model folder(s), separated by os.pathsep."""

NO_DOWNLOAD_ENV = "MIMICTALK_NO_DOWNLOAD"
"""Set to 1 to forbid every download (like HF_HUB_OFFLINE, but for this pack only)."""

STAGING_DIR = ".mimictalk-download"
"""Per-folder staging area; downloads land here and are moved into place after verification."""

_HASH_CHUNK = 8 << 20  # 8 MiB per read while hashing


def default_model_dirs() -> list[Path]:
    """Model folders outside ComfyUI: ``$MIMICTALK_MODELS_DIR`` or ``./models/mimictalk``."""
    env = os.environ.get(MODELS_DIR_ENV, "").strip()
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path.cwd() / "models" / "mimictalk"]


# ---------------------------------------------------------------- lock file


class LockFile:
    """``<model folder>/<manifest.lock_file>``: per relative path, the sha256 and size recorded on
    first download or first use, plus the mtime at which that hash was last verified."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.entries = dict(data.get("files", {}))
            except (OSError, ValueError) as e:
                logger.warning("MimicTalk: ignoring unreadable lock file %s (%s); hashes will be re-checked", path, e)

    def get(self, rel: str) -> Optional[dict]:
        return self.entries.get(rel)

    def record(self, rel: str, sha256: str, path: Path, source: str) -> None:
        st = path.stat()
        old = self.entries.get(rel, {}) if self.entries.get(rel, {}).get("sha256") == sha256 else {}
        self.entries[rel] = {  # provenance of a hash is kept when a later use re-verifies it
            "sha256": sha256,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "source": old.get("source", source),
            "recorded": old.get("recorded", time.strftime("%Y-%m-%dT%H:%M:%S")),
        }
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": 1, "files": self.entries}, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only shared folder still works, only without the cache
            tmp.unlink(missing_ok=True)
            logger.warning("MimicTalk: could not write lock file %s (%s)", self.path, e)


def sha256_file(path: Path, on_step: Optional[ProgressFn] = None, **info) -> str:
    """Stream the sha256 of a file, reporting bytes hashed through ``on_step``."""
    total = path.stat().st_size
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
            done += len(chunk)
            report(on_step, done, total, stage="verify", **info)
    return h.hexdigest()


def _check_file(path: Path, spec: ManifestFile, lock: LockFile, rel: str,
                on_step: Optional[ProgressFn], source: str, *, use_cache: bool = True) -> Optional[str]:
    """Verify ``path`` against the manifest and the lock file; None when it is good, else what is
    wrong. Unknown hashes are recorded (trust on first use). With ``use_cache`` a verification
    recorded for the same size and mtime is reused instead of re-hashing."""
    st = path.stat()
    if spec.size is not None and st.st_size != spec.size:
        return f"size is {st.st_size} bytes, expected {spec.size} (truncated or wrong file)"
    entry = lock.get(rel)
    expected = spec.sha256 or (entry or {}).get("sha256")
    if use_cache and entry and expected == entry.get("sha256") and entry.get("size") == st.st_size \
            and entry.get("mtime_ns") == st.st_mtime_ns:
        return None  # verified before, unchanged since
    if spec.sha256 is None and entry and entry.get("size") != st.st_size:
        return f"size is {st.st_size} bytes, but {entry.get('size')} was recorded on first download"
    actual = sha256_file(path, on_step, file=rel)
    if expected is None:
        logger.info("MimicTalk: recording sha256 %s of %s (the manifest publishes no hash)", actual, path)
    elif actual != expected:
        origin = "the manifest" if spec.sha256 else f"the lock file {lock.path} (recorded on first download)"
        return f"sha256 is {actual}, expected {expected} from {origin}"
    lock.record(rel, actual, path, source)
    return None


# ---------------------------------------------------------------- fetching


def _http_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions a failed download can raise. huggingface_hub's errors derive from the HTTP
    library it uses (requests in 0.x, httpx/httpx2 later); its transport errors (connection
    refused, timeouts) derive from that library's base error but not from OSError."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    lib = [c for c in HfHubHTTPError.__mro__ if c.__module__.split(".")[0] in ("requests", "httpx", "httpx2")]
    return (OSError, ValueError, EntryNotFoundError, HfHubHTTPError, *lib[-1:])


def downloads_disabled() -> Optional[str]:
    """Why downloading is impossible right now (offline mode), or None."""
    from huggingface_hub import constants

    is_offline = getattr(constants, "is_offline_mode", None)
    env_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    if env_offline or (is_offline() if is_offline else constants.HF_HUB_OFFLINE):
        return "offline mode is on (HF_HUB_OFFLINE=1); unset it to download"
    if os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return f"downloads are disabled ({NO_DOWNLOAD_ENV}=1)"
    return None


def _progress_class(on_step: ProgressFn, info: dict) -> type:
    """A silent tqdm subclass for huggingface_hub's ``tqdm_class`` hook that forwards the byte
    count to ``on_step``. A real tqdm (disabled) so every method the hub's HTTP and Xet progress
    reporters call exists."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = kwargs.get("initial", 0) or 0

        def update(self, n=1):
            self._done += n or 0
            report(on_step, self._done, self.total or 0, stage="download", **info)
            return super().update(n)

    return _Bar


def _tqdm_kwargs(fn, on_step: Optional[ProgressFn], info: dict) -> dict:
    if on_step is None or "tqdm_class" not in inspect.signature(fn).parameters:
        return {}  # huggingface_hub's own bar (terminal), or an old version without the hook
    return {"tqdm_class": _progress_class(on_step, info)}


def _fetch(source, name: str, staging: Path, spec: ManifestFile, on_step: Optional[ProgressFn]) -> Path:
    info = {"file": name}
    if isinstance(source, HubSource):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(
            source.repo_id, source.files[name], revision=source.revision, repo_type=source.repo_type,
            local_dir=staging, **_tqdm_kwargs(hf_hub_download, on_step, info),
        )
        return Path(path)
    from huggingface_hub.file_download import http_get

    tmp = staging / (Path(name).name + ".part")
    with open(tmp, "wb") as fh:
        http_get(source.files[name], fh, expected_size=spec.size, displayed_filename=Path(name).name,
                 **_tqdm_kwargs(http_get, on_step, info))
    return tmp


def _download_file(asset: Asset, spec: ManifestFile, root: Path, lock: LockFile,
                   on_step: Optional[ProgressFn]) -> None:
    """Try every source of one file in order; raise DownloadError naming them all on failure."""
    rel = f"{asset.target_dir}/{spec.name}"
    dest = root / rel
    tried: list[str] = []
    disabled = downloads_disabled()
    errors = _http_error_types()
    for source in asset.sources_for(spec.name):
        if disabled:
            tried.append(f"{source.describe()}: not tried, {disabled}")
            continue
        staging = root / STAGING_DIR / uuid.uuid4().hex[:12]
        try:
            staging.mkdir(parents=True)
            logger.info("MimicTalk: downloading %s from %s into %s", spec.name, source.describe(), dest.parent)
            staged = _fetch(source, spec.name, staging, spec, on_step)
            problem = _check_file(staged, spec, lock, rel, on_step, source.describe(), use_cache=False)
            if problem:
                tried.append(f"{source.describe()}: downloaded file rejected, {problem}")
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, dest)  # same folder tree: atomic, keeps the recorded size and mtime
            logger.info("MimicTalk: %s verified and saved to %s", spec.name, dest)
            return
        except errors as e:
            tried.append(f"{source.describe()}: {type(e).__name__}: {e}".replace("\n", " "))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    manual = [m.instructions for m in asset.manual_instructions]
    raise DownloadError(
        f"MimicTalk could not obtain '{spec.name}' (asset '{asset.id}', {asset.title}). "
        f"Put the file into {dest.parent} by hand, or fix the cause below and retry.\n"
        + "Sources tried:\n" + "\n".join(f"  - {t}" for t in tried or ["(no download source)"])
        + ("".join(f"\nManual instructions: {m}" for m in manual))
    )


# ---------------------------------------------------------------- public API


def _asset_home(asset: Asset, dirs: Sequence[Path], wanted: Sequence[ManifestFile]) -> Path:
    """The first folder holding every wanted file of the asset, else the default (first) one."""
    for d in dirs:
        if all((d / asset.target_dir / f.name).is_file() for f in wanted):
            return d
    return dirs[0]


def asset_dir(asset_id: str, model_dirs: Optional[Sequence[PathLike]] = None, *,
              manifest: Optional[Manifest] = None) -> Path:
    """The asset's folder without checking any file: the first registered folder where it exists,
    else where it belongs in the default folder. For assets whose completeness another check
    decides (the face model: ``mimictalk_lib.face.files.check_face_model_files``)."""
    manifest = manifest or load_manifest()
    asset = manifest.get(asset_id)
    dirs = [Path(d).expanduser() for d in (model_dirs if model_dirs is not None else default_model_dirs())]
    for d in dirs:
        if (d / asset.target_dir).is_dir():
            return d / asset.target_dir
    return dirs[0] / asset.target_dir


def _missing_message(asset: Asset, home: Path, missing: Sequence[str], dirs: Sequence[Path], why: str) -> str:
    where = home / asset.target_dir
    lines = [f"MimicTalk: {asset.title} ('{asset.id}') is missing {', '.join(missing)}; {why}.",
             f"Put the file(s) into {where}."]
    if len(dirs) > 1:
        lines.append("Folders searched: " + ", ".join(str(d / asset.target_dir) for d in dirs))
    for m in asset.manual_instructions:
        lines.append("How to get them: " + m.instructions)
        lines.extend(f"  {link}" for link in m.links)
    for f in missing:
        for s in asset.sources_for(f):
            lines.append(f"Download source for {f}: {s.describe()}")
    lines.append(f"Licence: {asset.license}")
    return "\n".join(lines)


def ensure_asset(
    asset_id: str,
    model_dirs: Optional[Sequence[PathLike]] = None,
    *,
    allow_download: bool,
    on_step: Optional[ProgressFn] = None,
    include_optional: bool = False,
    manifest: Optional[Manifest] = None,
) -> Path:
    """Return the folder holding asset ``asset_id`` with every (required) file present and verified.

    ``model_dirs``: the registered ``mimictalk`` folders in priority order (the host's
    ``model_dirs()``; default ``default_model_dirs()``). Missing or corrupt files are downloaded into
    the folder the asset was found in (the first one when absent) if ``allow_download`` and the
    manifest allows it. ``on_step(done, total, stage=, file=)`` reports bytes downloaded/hashed and
    may raise to interrupt (nothing half-written stays behind).

    Raises ``DownloadError`` (offline, or every source failed: names the file, the folder and each
    source with its error), ``AssetMissingError`` / ``FaceModelMissingError`` (manual-only asset
    or downloads not allowed: human instructions), ``CheckpointError`` (a present file is corrupt
    and cannot be re-downloaded).
    """
    manifest = manifest or load_manifest()
    asset = manifest.get(asset_id)
    dirs = [Path(d).expanduser() for d in (model_dirs if model_dirs is not None else default_model_dirs())]
    if not dirs:
        raise AssetMissingError(f"no model folder is registered for '{manifest.folder}'")
    wanted = asset.wanted_files(include_optional)
    home = _asset_home(asset, dirs, wanted)
    lock = LockFile(home / manifest.lock_file)
    can_download = allow_download and asset.auto_download
    todo: list[ManifestFile] = []
    missing: list[str] = []
    for spec in wanted:
        path = home / asset.target_dir / spec.name
        if not path.is_file():
            todo.append(spec)
            missing.append(spec.name)
            continue
        problem = _check_file(path, spec, lock, f"{asset.target_dir}/{spec.name}", on_step, "found on disk")
        if problem is None:
            continue
        if not (can_download and asset.sources_for(spec.name)):
            raise CheckpointError(
                f"MimicTalk: {path} is corrupt: {problem}. Delete it and "
                + ("enable auto-download to fetch it again." if asset.auto_download else "obtain it again.")
                + f" If you replaced it on purpose, remove its entry from {lock.path}."
            )
        logger.warning("MimicTalk: %s is corrupt (%s); downloading it again", path, problem)
        todo.append(spec)
    if missing and not can_download:
        why = ("it is never downloaded automatically (licence or no pinned public source)" if not asset.auto_download
               else "automatic download is disabled (enable auto_download)")
        err = FaceModelMissingError if asset.category == "face_model" else AssetMissingError
        raise err(_missing_message(asset, home, missing, dirs, why))
    for spec in todo:
        _download_file(asset, spec, home, lock, on_step)
    return home / asset.target_dir


def asset_status(asset: Asset, dirs: Sequence[Path], lock_name: str) -> list[tuple[str, str, Optional[Path]]]:
    """(file, state, path) per file: 'ok (verified)', 'present (not verified)', 'missing', ..."""
    rows = []
    for spec in asset.files:
        found = next((d for d in dirs if (d / asset.target_dir / spec.name).is_file()), None)
        if found is None:
            rows.append((spec.name, "missing" + (" (optional)" if spec.optional else ""), None))
            continue
        path = found / asset.target_dir / spec.name
        entry = LockFile(found / lock_name).get(f"{asset.target_dir}/{spec.name}")
        st = path.stat()
        fresh = entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns
        ok = fresh and (spec.sha256 is None or entry.get("sha256") == spec.sha256)
        rows.append((spec.name, "ok (verified)" if ok else "present (not verified yet)", path))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mimictalk_lib.download", description=(
        "List, check or download the MimicTalk model files of models_manifest.json. "
        "'fetch' downloads the auto-downloadable assets and prints instructions for manual ones."))
    p.add_argument("command", nargs="?", default="status", choices=("list", "status", "fetch"))
    p.add_argument("ids", nargs="*", help="asset ids (default: all)")
    p.add_argument("--models-dir", action="append", type=Path,
                   help=f"model folder (repeatable; default ${MODELS_DIR_ENV} or ./models/mimictalk)")
    p.add_argument("--include-optional", action="store_true", help="also fetch/check optional files")
    args = p.parse_args(argv)
    manifest = load_manifest()
    dirs = args.models_dir or default_model_dirs()
    assets = [manifest.get(i) for i in args.ids] if args.ids else list(manifest.assets)
    if args.command == "list":
        for a in assets:
            mode = "auto-download" if a.auto_download else "manual"
            print(f"{a.id:30s} {mode:13s} {a.target_dir}/  [{a.license}]")
            for f in a.files:
                size = f"{f.size} B" if f.size is not None else "size unknown"
                print(f"    {f.name}{' (optional)' if f.optional else ''}: {size}, sha256 {f.sha256 or 'unknown'}")
        return 0
    if args.command == "status":
        for a in assets:
            print(f"{a.id}:")
            for name, state, path in asset_status(a, dirs, manifest.lock_file):
                print(f"    {name}: {state}" + (f"  {path}" if path else ""))
        return 0
    failed = 0
    for a in assets:
        try:
            where = ensure_asset(a.id, dirs, allow_download=True, include_optional=args.include_optional,
                                 manifest=manifest)
            print(f"{a.id}: ok in {where}")
        except AssetMissingError as e:  # DownloadError and FaceModelMissingError included
            failed += 1
            print(f"{a.id}: {e}\n", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
