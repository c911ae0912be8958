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

Google Drive sources (files, public folders, zip archives) are fetched with ``gdown`` after the
Hub and URL sources; an HTML page (Drive's quota or permission page) or a damaged archive is a
failed source, never a file counted as present. Before downloading, a quick check (offline mode,
or no connection to any source host within seconds) ends in one message naming the missing files.
Lock-file updates take an inter-process file lock and rewrite the file atomically.

CLI: ``python -m mimictalk_lib.download [list|status|verify|fetch] [ids...] [--models-dir DIR]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import AssetMissingError, CheckpointError, DownloadError, FaceModelMissingError
from .manifest import Asset, GoogleDriveSource, HubSource, Manifest, ManifestFile, UrlSource, load_manifest
from .utils import ProgressFn, logger, report

PathLike = Union[str, os.PathLike]

MODELS_DIR_ENV = "MIMICTALK_MODELS_DIR"
"""Standalone (non-ComfyUI) model folder(s), separated by os.pathsep."""

NO_DOWNLOAD_ENV = "MIMICTALK_NO_DOWNLOAD"
"""Set to 1 to forbid every download (like HF_HUB_OFFLINE, but for this pack only)."""

STAGING_DIR = ".mimictalk-download"
"""Per-folder staging area; downloads land here and are moved into place after verification."""

_HASH_CHUNK = 8 << 20  # 8 MiB per read while hashing
_SHA256 = re.compile(r"[0-9a-f]{64}")
LOCK_TIMEOUT_S = 120
"""How long a process waits for another one's lock-file update."""
STALE_STAGING_S = 24 * 3600
"""A staging folder of a process that is gone, or older than this, is left over from a crash."""
MAX_ARCHIVE_MEMBER_BYTES = 16 << 30
"""Largest file taken out of a downloaded archive (the official checkpoints are under 2 GB)."""
PROBE_TIMEOUT_S = 2.0
"""Connection timeout of the up-front network check (offline: fail in seconds, not after retries)."""


def default_model_dirs() -> list[Path]:
    """Model folders outside ComfyUI: ``$MIMICTALK_MODELS_DIR`` or ``./models/mimictalk``."""
    env = os.environ.get(MODELS_DIR_ENV, "").strip()
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path.cwd() / "models" / "mimictalk"]


# ---------------------------------------------------------------- lock file


def _lock_damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"MimicTalk: the download lock file {path} is damaged ({what}). Delete {path.name} from {path.parent}: "
        "the model files are then hashed again on their next use and recorded anew (nothing else is lost)."
    )


def _valid_entry(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])
            is not None and all(type(entry.get(k)) is int and entry[k] >= 0 for k in ("size", "mtime_ns"))
            and all(isinstance(entry.get(k, ""), str) for k in ("source", "recorded")))


class LockFile:
    """``<model folder>/<manifest.lock_file>``: per relative path, the sha256 and size recorded on
    first download or first use, plus the mtime at which that hash was last verified.

    Every update re-reads the file under an inter-process lock (``filelock``, ``<name>.lock``
    beside it) and rewrites it atomically, so processes fetching different files at once never
    lose each other's records. A damaged file is refused with a message naming it and what to delete."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise _lock_damaged(self.path, f"unreadable: {e}") from e
        try:
            data = json.loads(text)
        except ValueError as e:
            raise _lock_damaged(self.path, f"not valid JSON: {e}") from e
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            raise _lock_damaged(self.path, "no 'files' table")
        bad = [str(k) for k, v in files.items() if not _valid_entry(v)]
        if bad:
            raise _lock_damaged(self.path, f"malformed record for {', '.join(bad[:3])}")
        return dict(files)

    def get(self, rel: str) -> Optional[dict]:
        return self.entries.get(rel)

    def record(self, rel: str, sha256: str, path: Path, source: str) -> None:
        st = path.stat()
        with self._locked():
            self.entries = self._read()  # what other processes recorded meanwhile
            old = self.entries.get(rel, {}) if self.entries.get(rel, {}).get("sha256") == sha256 else {}
            self.entries[rel] = {  # provenance of a hash is kept when a later use re-verifies it
                "sha256": sha256,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "source": old.get("source", source),
                "recorded": old.get("recorded", time.strftime("%Y-%m-%dT%H:%M:%S")),
            }
            self._save()

    def _locked(self):
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout as e:
            raise DownloadError(f"MimicTalk: {self.path}.lock has been held for {LOCK_TIMEOUT_S} s by another process; "
                                "if none is downloading, delete that .lock file") from e
        except OSError as e:  # a read-only shared folder still works, only without the cache
            logger.warning("MimicTalk: cannot lock %s (%s); recording without the lock", self.path, e)
            return contextlib.nullcontext()
        return _Release(lock)

    def _save(self) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_text(json.dumps({"version": 1, "files": self.entries}, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only shared folder still works, only without the cache
            tmp.unlink(missing_ok=True)
            logger.warning("MimicTalk: could not write lock file %s (%s)", self.path, e)


class _Release:
    """Context manager releasing an already acquired FileLock."""

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self.lock

    def __exit__(self, *exc):
        self.lock.release()


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


class DriveProblem(OSError):
    """A Google Drive download that did not yield the file (quota page, HTML, damaged archive...)."""


_HTML_START = (b"<!doctype html", b"<html", b"<?xml")


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    return head.startswith(_HTML_START)


def _drive_error_types() -> tuple[type[BaseException], ...]:
    try:
        from gdown.exceptions import DownloadError as GdownError
    except ImportError:  # gdown missing: the source reports it itself
        return ()
    try:
        import requests
    except ImportError:
        return (GdownError,)
    return (GdownError, requests.RequestException)


def _drive_item(source: GoogleDriveSource, name: str) -> tuple[str, Optional[str]]:
    """(Drive file id to download, archive member to extract or None) for asset file ``name``."""
    import gdown

    if source.file_id:
        return source.file_id, source.files[name] if source.archive else None
    want = source.item if source.archive else source.files[name]
    listing = gdown.download_folder(id=source.folder_id, skip_download=True, quiet=True)
    by_path = {str(f.path).replace(os.sep, "/"): f.id for f in listing}
    if want in by_path:
        return by_path[want], source.files[name] if source.archive else None
    top = want.split("/", 1)[0]
    for zipped in (f"{top}.zip", f"{want}.zip"):  # the folder may hold the top folder as one zip
        if zipped in by_path:
            return by_path[zipped], source.files[name]
    raise DriveProblem(f"the Drive folder does not list {want} (it holds: {', '.join(sorted(by_path)[:8]) or 'nothing'})")


def _extract_member(archive: Path, member: str, out: Path, spec: ManifestFile) -> Path:
    """Stream one member of a zip into ``out`` (never a path taken from the archive itself); zip's
    CRC check catches a damaged member."""
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                raise DriveProblem(f"the archive has no {member} (it holds: {', '.join(names[:8])})") from None
            if spec.size is not None and info.file_size != spec.size:
                raise DriveProblem(f"{member} in the archive is {info.file_size} bytes, expected {spec.size}")
            if info.file_size > MAX_ARCHIVE_MEMBER_BYTES:  # zipfile reads no more than this declared size
                raise DriveProblem(f"{member} in the archive declares {info.file_size:,} bytes, more than any model file")
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, _HASH_CHUNK)
    except zipfile.BadZipFile as e:
        raise DriveProblem(f"the downloaded archive is damaged or incomplete ({e})") from e
    return out


def _fetch_drive(source: GoogleDriveSource, name: str, staging: Path, spec: ManifestFile,
                 on_step: Optional[ProgressFn], session: dict) -> Path:
    try:
        import gdown
    except ImportError as e:
        raise DriveProblem("the gdown package is not installed (pip install gdown)") from e
    item_id, member = _drive_item(source, name)
    archive = session.get(item_id)
    if archive is None:
        target = (session["dir"] / f"{item_id}.zip") if member else staging / (Path(name).name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)

        def progress(done, total):
            report(on_step, done, total or 0, stage="download", file=name)

        kwargs = {"progress": progress} if "progress" in inspect.signature(gdown.download).parameters else {}
        got = gdown.download(id=item_id, output=str(target), quiet=True, **kwargs)
        if got is None or not target.is_file():  # older gdown versions return None on failure
            raise DriveProblem("Google Drive did not deliver the file")
        if _looks_like_html(target):
            text = target.read_bytes()[:20000].decode("utf-8", "replace").lower()
            quota = "too many users" in text or "quota" in text
            target.unlink()
            raise DriveProblem("Google Drive's download quota for this file is used up for now (its page says too many "
                               "users have viewed or downloaded it)" if quota else
                               "Google Drive sent a web page instead of the file (a permission or warning page)")
        if not member:
            return target
        session[item_id] = archive = target
    return _extract_member(archive, member, staging / (Path(name).name + ".part"), spec)


def _fetch(source, name: str, staging: Path, spec: ManifestFile, on_step: Optional[ProgressFn],
           session: Optional[dict] = None) -> Path:
    info = {"file": name}
    if isinstance(source, GoogleDriveSource):
        return _fetch_drive(source, name, staging, spec, on_step, session if session is not None else {"dir": staging})
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


def _new_staging(root: Path, tag: str = "") -> Path:
    """A fresh staging folder ``<root>/.mimictalk-download/<pid>-<tag><random>``."""
    return root / STAGING_DIR / f"{os.getpid()}-{tag}{uuid.uuid4().hex[:12]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_staging(root: Path) -> None:
    """Remove staging folders left by crashed or killed downloads (their process is gone, or they
    are older than a day), and the staging area itself when empty."""
    area = root / STAGING_DIR
    if not area.is_dir():
        return
    now = time.time()
    for entry in area.iterdir():
        pid = entry.name.split("-", 1)[0]
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        alive = pid.isdigit() and _pid_alive(int(pid))
        if not alive or (age > STALE_STAGING_S and int(pid) != os.getpid()):
            logger.info("MimicTalk: removing a staging folder left by an interrupted download: %s", entry)
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        area.rmdir()  # only when empty


def _download_file(asset: Asset, spec: ManifestFile, root: Path, lock: LockFile,
                   on_step: Optional[ProgressFn], session: Optional[dict] = None) -> None:
    """Try every source of one file in order; raise DownloadError naming them all on failure."""
    rel = f"{asset.target_dir}/{spec.name}"
    dest = root / rel
    tried: list[str] = []
    disabled = downloads_disabled()
    errors = _http_error_types() + _drive_error_types() + (DriveProblem,)
    for source in asset.sources_for(spec.name):
        if disabled:
            tried.append(f"{source.describe()}: not tried, {disabled}")
            continue
        staging = _new_staging(root)
        try:
            staging.mkdir(parents=True)
            logger.info("MimicTalk: downloading %s from %s into %s", spec.name, source.describe(), dest.parent)
            staged = _fetch(source, spec.name, staging, spec, on_step, session)
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
            with contextlib.suppress(OSError):
                (root / STAGING_DIR).rmdir()  # only when empty
    raise DownloadError(_failed_message(asset, spec.name, dest, tried))


def _failed_message(asset: Asset, name: str, dest: Path, tried: Sequence[str]) -> str:
    manual = [m.instructions + "".join(f"\n  {link}" for link in m.links) for m in asset.manual_instructions]
    return (
        f"MimicTalk could not obtain '{name}' (asset '{asset.id}', {asset.title}). "
        f"Put the file into {dest.parent} by hand, or fix the cause below and retry.\n"
        + "Sources tried:\n" + "\n".join(f"  - {t}" for t in tried or ["(no download source)"])
        + ("".join(f"\nManual instructions: {m}" for m in manual))
    )


def _source_hosts(source) -> list[tuple[str, int]]:
    from urllib.parse import urlsplit

    if isinstance(source, HubSource):
        from huggingface_hub import constants

        urls = [constants.ENDPOINT]
    elif isinstance(source, UrlSource):
        urls = list(source.files.values())
    else:
        urls = ["https://drive.google.com", "https://drive.usercontent.google.com"]
    out = []
    for u in urls:
        parts = urlsplit(u)
        if parts.hostname:
            out.append((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    return out


def network_unavailable(sources) -> Optional[str]:
    """Why none of ``sources`` can be reached right now, found in seconds (offline mode, or no
    connection to any of their hosts), or None. Behind a proxy the direct check is skipped."""
    disabled = downloads_disabled()
    if disabled:
        return disabled
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    hosts = list(dict.fromkeys(h for s in sources for h in _source_hosts(s)))
    for host in hosts:
        try:
            socket.create_connection(host, timeout=PROBE_TIMEOUT_S).close()
            return None
        except OSError:
            continue
    return ("no network connection (could not connect to " + ", ".join(h for h, _ in hosts) + ")") if hosts else None


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
    if not todo:
        return home / asset.target_dir
    sources = list({id(s): s for spec in todo for s in asset.sources_for(spec.name)}.values())
    offline = network_unavailable(sources)
    if offline:  # one quick, complete message instead of a retry loop per file and source
        names = ", ".join(spec.name for spec in todo)
        raise DownloadError(
            f"MimicTalk cannot download {names} ({asset.title}) now: {offline}.\n"
            + _failed_message(asset, todo[0].name, home / asset.target_dir / todo[0].name,
                              [f"{s.describe()}: not tried, {offline}" for s in sources])
        )
    todo += _archive_extras(asset, home, todo, wanted)
    clean_staging(home)
    session = {"dir": _new_staging(home, "archives-")}
    try:
        for spec in todo:
            _download_file(asset, spec, home, lock, on_step, session)
    finally:
        shutil.rmtree(session["dir"], ignore_errors=True)
        with contextlib.suppress(OSError):
            (home / STAGING_DIR).rmdir()
    return home / asset.target_dir


def _archive_extras(asset: Asset, home: Path, todo: Sequence[ManifestFile], wanted: Sequence[ManifestFile]) -> list[ManifestFile]:
    """Optional files of the asset that come out of the same Drive archive as a file being
    downloaded (e.g. the config.yaml beside a checkpoint): free once the archive is here."""
    items = {s.item_key for spec in todo for s in asset.sources_for(spec.name)
             if isinstance(s, GoogleDriveSource) and s.archive}
    extras = []
    for spec in asset.files:
        if spec in wanted or (home / asset.target_dir / spec.name).is_file():
            continue
        if any(isinstance(s, GoogleDriveSource) and s.archive and s.item_key in items for s in asset.sources_for(spec.name)):
            extras.append(spec)
    return extras


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
        state = "ok (verified)" if ok else "present (not verified yet)"
        if entry:
            state += f", {entry['size']:,} B, sha256 {entry['sha256'][:16]}…" + (
                f" recorded {entry.get('recorded', '?')} from {entry.get('source', '?')}" if spec.sha256 is None else "")
        rows.append((spec.name, state, path))
    return rows


def verify_assets(assets: Sequence[Asset], dirs: Sequence[Path], lock_name: str,
                  on_step: Optional[ProgressFn] = None) -> list[tuple[str, str, str, Optional[str]]]:
    """Re-hash every present file of ``assets`` (no size+mtime shortcut): (asset, file, path,
    problem or None). What ``status`` counts as verified by size and time is checked for real."""
    out = []
    for asset in assets:
        for spec in asset.files:
            found = next((d for d in dirs if (d / asset.target_dir / spec.name).is_file()), None)
            if found is None:
                continue
            path = found / asset.target_dir / spec.name
            problem = _check_file(path, spec, LockFile(found / lock_name), f"{asset.target_dir}/{spec.name}",
                                  on_step, "found on disk", use_cache=False)
            out.append((asset.id, spec.name, str(path), problem))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mimictalk_lib.download", description=(
        "List, check or download the MimicTalk model files of models_manifest.json. "
        "'fetch' downloads the auto-downloadable assets and prints instructions for manual ones."))
    p.add_argument("command", nargs="?", default="status", choices=("list", "status", "fetch", "verify"),
                   help="status: what is present (verified = unchanged size and time since the last hash); "
                        "verify: re-hash every present file; fetch: download what is missing")
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
    if args.command == "verify":
        bad = 0
        for aid, name, path, problem in verify_assets(assets, dirs, manifest.lock_file):
            bad += problem is not None
            print(f"{aid}: {name}: " + (f"CORRUPT: {problem}  {path}" if problem else f"ok (re-hashed)  {path}"))
        if bad:
            print(f"{bad} file(s) failed verification: delete them and run 'fetch' (or put them back by hand)",
                  file=sys.stderr)
        return 1 if bad else 0
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
