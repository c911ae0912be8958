"""The models manifest: every model or data file the pack needs, as typed, validated records.

``models_manifest.json`` (pack root) is the single source of truth for weights: where each file
goes under the ``mimictalk`` model folder, its size and sha256 (or the explicit ``"unknown"``
marker: recorded in the lock file on first download), its licence, which nodes use it, and an
ordered list of sources (a Hugging Face repository at a pinned commit, a plain URL, a Google Drive
file, archive or public folder, or manual instructions for licence-restricted files such as the Basel Face Model). The JSON Schema next to
this module (``manifest.schema.json``) describes the file; ``load_manifest`` checks the same rules
without needing the ``jsonschema`` package, so the library validates at run time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Optional, Union

from .errors import MimicTalkError

MANIFEST_PATH = Path(__file__).resolve().parents[1] / "models_manifest.json"
"""The pack's manifest (top level of the pack, next to ``pyproject.toml``)."""

SCHEMA_PATH = Path(__file__).resolve().with_name("manifest.schema.json")

UNKNOWN_SHA256 = "unknown"
"""Manifest marker: the hash is not published; it is recorded on first download and verified later."""

CATEGORIES = (
    "renderer",
    "audio_to_motion",
    "audio_encoder",
    "mediapipe",
    "perceptual_loss",
    "face_model",
    "face_derived",
    "evaluation",
)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ASSET_ID = re.compile(r"[a-z][a-z0-9_]*")


class ManifestError(MimicTalkError, ValueError):
    """models_manifest.json does not follow its schema."""


@dataclass(frozen=True)
class ManifestFile:
    """One file of an asset. ``size``/``sha256`` are None when the manifest says unknown."""

    name: str  # relative path inside the asset folder
    size: Optional[int]
    sha256: Optional[str]
    optional: bool = False
    note: str = ""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face repository at a pinned commit; ``files`` maps asset file -> repo path."""

    repo_id: str
    revision: str
    files: Mapping[str, str]
    evidence: str
    repo_type: str = "model"
    kind: str = field(default="huggingface", init=False)

    def describe(self) -> str:
        return f"Hugging Face {self.repo_id}@{self.revision[:12]}"


@dataclass(frozen=True)
class UrlSource:
    """Plain https URLs, one per asset file."""

    files: Mapping[str, str]
    evidence: str
    kind: str = field(default="url", init=False)

    def describe(self) -> str:
        return "URL " + ", ".join(sorted(set(self.files.values())))


@dataclass(frozen=True)
class GoogleDriveSource:
    """A file or a public folder on Google Drive, fetched with the ``gdown`` library.

    ``file_id``: one Drive file; ``folder_id``: a public folder, whose listing maps paths to file
    ids. With ``archive="zip"`` the Drive item is a zip archive (``item``: its path inside the
    folder, for folder sources) and ``files`` maps each asset file to its member path in the
    archive; otherwise ``files`` maps each asset file to its path inside the folder (a file source
    provides exactly one file)."""

    files: Mapping[str, str]
    evidence: str
    file_id: Optional[str] = None
    folder_id: Optional[str] = None
    archive: Optional[str] = None
    item: Optional[str] = None
    kind: str = field(default="google_drive", init=False)

    def describe(self) -> str:
        what = f"file {self.file_id}" if self.file_id else f"folder {self.folder_id}"
        return f"Google Drive {what}" + (f" ({self.item})" if self.item else "") + (" zip" if self.archive else "")

    @property
    def item_key(self) -> tuple:
        """Identifies the Drive item one download fetches (an archive serves several files)."""
        return (self.file_id, self.folder_id, self.item)


@dataclass(frozen=True)
class ManualSource:
    """Human instructions (registration, licence) for files the pack must never fetch itself."""

    instructions: str
    links: tuple[str, ...] = ()
    kind: str = field(default="manual", init=False)

    def describe(self) -> str:
        return "manual download: " + self.instructions


Source = Union[HubSource, UrlSource, GoogleDriveSource, ManualSource]

SOURCE_ORDER = {"huggingface": 0, "url": 1, "google_drive": 2}
"""Download sources are tried in this order of kind (manifest order within a kind): the Hub and
pinned URLs first, Google Drive (quota-limited, no pinned revision) after them, and the manual
instructions last."""


@dataclass(frozen=True)
class Asset:
    """One manifest entry: files that live together in ``<mimictalk folder>/<target_dir>``."""

    id: str
    title: str
    category: str
    nodes: tuple[str, ...]
    functions: tuple[str, ...]
    license: str
    target_dir: str
    auto_download: bool
    files: tuple[ManifestFile, ...]
    sources: tuple[Source, ...]
    description: str = ""
    notes: str = ""

    def file(self, name: str) -> ManifestFile:
        for f in self.files:
            if f.name == name:
                return f
        raise ManifestError(
            f"asset '{self.id}' has no file '{name}'; its files are: "
            + ", ".join(f.name for f in self.files)
        )

    def wanted_files(self, include_optional: bool = False) -> tuple[ManifestFile, ...]:
        return tuple(f for f in self.files if include_optional or not f.optional)

    def sources_for(self, name: str) -> tuple[Source, ...]:
        """Download sources that provide file ``name`` (manual sources are not included)."""
        found = [s for s in self.sources if not isinstance(s, ManualSource) and name in s.files]
        return tuple(sorted(found, key=lambda s: SOURCE_ORDER[s.kind]))

    @property
    def manual_instructions(self) -> tuple[ManualSource, ...]:
        return tuple(s for s in self.sources if isinstance(s, ManualSource))


@dataclass(frozen=True)
class Manifest:
    folder: str  # ComfyUI model-folder key, "mimictalk"
    lock_file: str  # lock-file name inside each model folder
    assets: tuple[Asset, ...]

    def get(self, asset_id: str) -> Asset:
        for a in self.assets:
            if a.id == asset_id:
                return a
        raise ManifestError(
            f"unknown asset id '{asset_id}'; the manifest has: " + ", ".join(a.id for a in self.assets)
        )

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.assets)


# ---------------------------------------------------------------- parsing


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ManifestError(f"models manifest, {where}: {msg}")


def _relpath(value: Any, where: str) -> str:
    ok = isinstance(value, str) and value != "" and "\\" not in value and ":" not in value
    ok = ok and not value.startswith("/") and ".." not in PurePosixPath(value).parts
    _need(ok, where, f"expected a relative POSIX path without '..', got {value!r}")
    return value


def _parse_file(d: Mapping[str, Any], where: str) -> ManifestFile:
    name = _relpath(d.get("name"), where + ".name")
    size = d.get("size")
    _need(size is None or (isinstance(size, int) and size >= 0), where, f"size must be a byte count or null, got {size!r}")
    sha = d.get("sha256")
    _need(sha == UNKNOWN_SHA256 or (isinstance(sha, str) and _SHA256.fullmatch(sha)), where,
          f"sha256 must be 64 lower-case hex digits or '{UNKNOWN_SHA256}', got {sha!r}")
    return ManifestFile(name, size, None if sha == UNKNOWN_SHA256 else sha,
                        bool(d.get("optional", False)), d.get("note", ""))


def _parse_source(d: Mapping[str, Any], names: set[str], where: str) -> Source:
    kind = d.get("kind")
    if kind == "manual":
        text = d.get("instructions", "")
        _need(isinstance(text, str) and len(text) >= 20, where, "manual sources need instructions")
        return ManualSource(text, tuple(d.get("links", ())))
    _need(kind in ("huggingface", "url", "google_drive"), where, f"unknown source kind {kind!r}")
    files = d.get("files")
    _need(isinstance(files, dict) and len(files) > 0, where, "'files' must map asset file names")
    unknown = sorted(set(files) - names)
    _need(not unknown, where, f"'files' names files the asset does not list: {unknown}")
    _need(bool(d.get("evidence")), where, "say where the pinned revision / URL came from ('evidence')")
    if kind == "google_drive":
        return _parse_drive(d, files, where)
    if kind == "url":
        bad = [u for u in files.values() if not (isinstance(u, str) and u.startswith("https://"))]
        _need(not bad, where, f"URLs must be https: {bad}")
        return UrlSource(dict(files), d["evidence"])
    revision = d.get("revision", "")
    _need(isinstance(revision, str) and _COMMIT.fullmatch(revision) is not None, where,
          f"revision must be a full 40-hex commit sha (a branch is not reproducible), got {revision!r}")
    for path in files.values():
        _relpath(path, where + ".files")
    return HubSource(d["repo_id"], revision, dict(files), d["evidence"], d.get("repo_type", "model"))


_DRIVE_ID = re.compile(r"[A-Za-z0-9_-]{10,}")


def _parse_drive(d: Mapping[str, Any], files: Mapping[str, Any], where: str) -> GoogleDriveSource:
    file_id, folder_id, archive, item = d.get("file_id"), d.get("folder_id"), d.get("archive"), d.get("item")
    _need((file_id is None) != (folder_id is None), where, "a google_drive source needs exactly one of file_id / folder_id")
    for value in (file_id, folder_id):
        _need(value is None or (isinstance(value, str) and _DRIVE_ID.fullmatch(value) is not None), where,
              f"bad Google Drive id {value!r}")
    _need(archive in (None, "zip"), where, f"archive must be 'zip' or absent, got {archive!r}")
    for path in files.values():
        _relpath(path, where + ".files")
    if item is not None:
        _relpath(item, where + ".item")
    _need(not (folder_id and archive) or item is not None, where, "a zip inside a folder needs 'item' (its path in the folder)")
    _need(item is None or (folder_id and archive), where, "'item' is only for a zip inside a folder")
    _need(archive or folder_id or len(files) == 1, where, "a plain Drive file provides exactly one asset file")
    return GoogleDriveSource(dict(files), d["evidence"], file_id, folder_id, archive, item)


def _parse_asset(d: Mapping[str, Any], index: int) -> Asset:
    aid = d.get("id")
    where = f"assets[{index}] ({aid})"
    _need(isinstance(aid, str) and _ASSET_ID.fullmatch(aid) is not None, where, f"bad id {aid!r}")
    _need(d.get("category") in CATEGORIES, where, f"category must be one of {CATEGORIES}")
    files = tuple(_parse_file(f, f"{where}.files[{i}]") for i, f in enumerate(d.get("files", ())))
    _need(len(files) > 0, where, "an asset needs at least one file")
    names = {f.name for f in files}
    _need(len(names) == len(files), where, "duplicate file names")
    sources = tuple(_parse_source(s, names, f"{where}.sources[{i}]") for i, s in enumerate(d.get("sources", ())))
    _need(len(sources) > 0, where, "an asset needs at least one source")
    auto = d.get("auto_download")
    _need(isinstance(auto, bool), where, "auto_download must be true or false")
    if auto:
        uncovered = [f.name for f in files if not any(name_in(s, f.name) for s in sources)]
        _need(not uncovered, where, f"auto_download is true but no download source provides {uncovered}")
    else:
        _need(any(isinstance(s, ManualSource) for s in sources), where,
              "an asset that is not auto-downloaded needs manual instructions")
    used_by = d.get("used_by", {})
    _need(bool(used_by.get("functions")), where, "used_by.functions must name the library code using it")
    return Asset(
        id=aid, title=d.get("title", aid), category=d["category"],
        nodes=tuple(used_by.get("nodes", ())), functions=tuple(used_by["functions"]),
        license=d.get("license", ""), target_dir=_relpath(d.get("target_dir"), where + ".target_dir"),
        auto_download=auto, files=files, sources=sources,
        description=d.get("description", ""), notes=d.get("notes", ""),
    )


def name_in(source: Source, name: str) -> bool:
    return not isinstance(source, ManualSource) and name in source.files


def parse_manifest(data: Mapping[str, Any]) -> Manifest:
    """Check ``data`` (the decoded JSON) and build the typed manifest."""
    _need(data.get("schema_version") == 1, "top level", f"unsupported schema_version {data.get('schema_version')!r}")
    _need(isinstance(data.get("lock_file"), str) and "/" not in data["lock_file"], "top level",
          "lock_file must be a plain file name")
    assets = tuple(_parse_asset(a, i) for i, a in enumerate(data.get("assets", ())))
    ids = [a.id for a in assets]
    _need(len(set(ids)) == len(ids), "top level", "duplicate asset ids")
    # Two assets may share a folder (e.g. the BFM files and their derived assets), not a file.
    paths = [f"{a.target_dir}/{f.name}" for a in assets for f in a.files]
    dup = sorted({p for p in paths if paths.count(p) > 1})
    _need(not dup, "top level", f"two assets claim the same file: {dup}")
    return Manifest(folder=data.get("folder", "mimictalk"), lock_file=data["lock_file"], assets=assets)


@lru_cache(maxsize=4)
def _load_cached(path: str) -> Manifest:
    with open(path, encoding="utf-8") as fh:
        return parse_manifest(json.load(fh))


def load_manifest(path: Optional[Union[str, Path]] = None) -> Manifest:
    """Read and validate the manifest (the pack's own one by default); cached per path."""
    path = Path(path) if path is not None else MANIFEST_PATH
    if not path.is_file():
        raise ManifestError(f"models manifest not found at {path}; reinstall the pack")
    return _load_cached(str(path.resolve()))


def load_schema() -> dict:
    """The JSON Schema of the manifest (for jsonschema-based checks in tests and tooling)."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return json.load(fh)
