"""A jobs file: many identities / adapters x many audio files, rendered as one batch.

JSON, paths relative to the file's folder::

    {
      "out_dir": "renders",
      "defaults": {"seed": 0, "pose": "static", "steps": 20},
      "who": [{"adapter": "anna.adapter.safetensors"}, {"identity": "ben.identity.safetensors"}],
      "audio": ["lecture1.wav", "lecture2.wav"],
      "jobs": [{"name": "intro", "adapter": "anna.adapter.safetensors", "audio": "intro.wav", "out": "intro.mp4"}]
    }

``who`` x ``audio`` makes one job per pair, named ``<who>__<audio>`` (file stems) and written to
``out_dir/<name>.mp4``; ``jobs`` adds jobs one by one. ``defaults`` apply to every job.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Union

from ..errors import InputError
from .worker import RenderJob

PATH_KEYS = ("audio", "out", "adapter", "identity", "motion")
JOB_KEYS = {f.name for f in fields(RenderJob)}


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".safetensors", ".identity", ".adapter"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return Path(name).stem


def load_jobs(path: Union[str, Path]) -> list[RenderJob]:
    """The jobs of a jobs file (see the module note), paths made absolute."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"jobs file {path}: cannot read it as JSON ({e})") from e
    if not isinstance(spec, dict):
        raise InputError(f"jobs file {path}: expected a JSON object with 'who' + 'audio' and/or 'jobs'")
    base, defaults = path.parent, dict(spec.get("defaults") or {})
    out_dir = Path(spec.get("out_dir") or ".")
    raw = [dict(j) for j in spec.get("jobs") or []]
    for who in spec.get("who") or []:
        if not isinstance(who, dict) or not (who.get("adapter") or who.get("identity")):
            raise InputError(f"jobs file {path}: each 'who' entry needs an adapter and/or an identity, got {who!r}")
        for audio in spec.get("audio") or []:
            name = f"{_stem(who.get('adapter') or who['identity'])}__{_stem(audio)}"
            raw.append({**who, "audio": audio, "name": name, "out": str(out_dir / f"{name}.mp4")})
    if not raw:
        raise InputError(f"jobs file {path}: no jobs (give 'who' and 'audio' lists, or a 'jobs' list)")
    jobs = []
    for n, item in enumerate(raw):
        item = {**defaults, **item}
        unknown = set(item) - JOB_KEYS
        if unknown:
            raise InputError(f"jobs file {path}: job {n + 1} has unknown keys {sorted(unknown)} (known: {sorted(JOB_KEYS)})")
        for key in ("audio", "out"):
            if not item.get(key):
                raise InputError(f"jobs file {path}: job {n + 1} has no {key!r}")
        item.setdefault("name", _stem(item["out"]))
        for key in PATH_KEYS:
            if item.get(key):
                item[key] = str((base / item[key]).resolve())
        jobs.append(RenderJob(**item))
    names = [j.name for j in jobs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"jobs file {path}: job names must differ, {twice} appear more than once")
    return jobs
