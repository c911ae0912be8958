"""Jobs files and the optional ray import, without a cluster: who x audio makes one job per pair
with paths relative to the file; mistakes are named; a missing ray says how to install it."""

from __future__ import annotations

import json
import sys

import pytest

from mimictalk_lib.distributed.cluster import import_ray
from mimictalk_lib.distributed.jobs import load_jobs
from mimictalk_lib.errors import DependencyMissingError, InputError


def test_who_times_audio_and_explicit_jobs(tmp_path):
    spec = {"out_dir": "out", "defaults": {"seed": 7, "pose": "identity"},
            "who": [{"adapter": "anna.adapter.safetensors"}, {"identity": "ben.identity.safetensors"}],
            "audio": ["a.wav", "talks/b.mp3"],
            "jobs": [{"name": "intro", "identity": "ben.identity.safetensors", "audio": "i.wav", "out": "intro.mp4",
                      "seed": 1}]}
    (tmp_path / "jobs.json").write_text(json.dumps(spec))
    jobs = load_jobs(tmp_path / "jobs.json")
    assert [j.name for j in jobs] == ["intro", "anna__a", "anna__b", "ben__a", "ben__b"]
    assert jobs[0].seed == 1 and all(j.seed == 7 and j.pose == "identity" for j in jobs[1:])
    assert jobs[2].adapter == str(tmp_path / "anna.adapter.safetensors") and jobs[2].identity is None
    assert jobs[2].audio == str(tmp_path / "talks" / "b.mp3") and jobs[2].out == str(tmp_path / "out" / "anna__b.mp4")


@pytest.mark.parametrize("spec, message", [
    ({"who": [{"identity": "x"}]}, "no jobs"),
    ({"jobs": [{"audio": "a.wav", "out": "o.mp4", "sead": 1}]}, r"unknown keys \['sead'\]"),
    ({"jobs": [{"audio": "a.wav"}]}, "has no 'out'"),
    ({"jobs": [{"audio": "a.wav", "out": "o.mp4"}, {"audio": "b.wav", "out": "x/o.mp4"}]}, r"\['o'\] appear more than once"),
    ({"who": [{"seed": 1}], "audio": ["a.wav"]}, "needs an adapter and/or an identity"),
])
def test_mistakes_are_named(tmp_path, spec, message):
    (tmp_path / "jobs.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match=message):
        load_jobs(tmp_path / "jobs.json")


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(DependencyMissingError, match=r'pip install "mimictalk\[ray\]"'):
        import_ray()


def test_connect_ships_this_library_to_the_workers(monkeypatch):
    """When the library makes the Ray connection (a ComfyUI node, the CLI without a running Ray in
    the process), ray.init gets this copy of mimictalk_lib as a py_module (inside ComfyUI the workers
    could not import it otherwise), merged with the caller's runtime_env; a connection the process
    already has is used as it is."""
    import types
    from pathlib import Path

    import mimictalk_lib
    from mimictalk_lib.distributed.cluster import connect

    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: bool(calls), init=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert connect("ray://head:10001", {"runtime_env": {"env_vars": {"A": "1"}}, "num_cpus": 2}) is fake
    (kw,) = calls
    assert kw["address"] == "ray://head:10001" and kw["num_cpus"] == 2
    assert kw["runtime_env"]["env_vars"] == {"A": "1"}
    (lib,) = kw["runtime_env"]["py_modules"]
    assert Path(lib) == Path(mimictalk_lib.__file__).resolve().parent and Path(lib).name == "mimictalk_lib"
    connect("auto")  # already connected: no second init
    assert len(calls) == 1
