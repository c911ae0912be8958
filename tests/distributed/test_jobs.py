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
