"""requirements.txt and pyproject.toml against the Comfy Registry / ComfyUI-Manager rules
(comfyui_conventions.md §5.1, §8.3 rule 9), and the README / CI contract."""

from __future__ import annotations

import os
import re

import pytest

tomllib = pytest.importorskip("tomllib")

FORBIDDEN = {"torch", "torchvision", "torchaudio", "torchsde"}  # ComfyUI provides them; Manager skips them
NEEDS_COMPILER_OR_NATIVE = {"pytorch3d", "mmcv", "mmcv-full", "dlib", "insightface", "onnxruntime-gpu", "mediapipe"}
OPENCV = {"opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"}
CORE = {"safetensors", "peft", "librosa", "numpy", "huggingface-hub", "einops", "transformers", "av"}
LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<spec>.*)$")
LOWER_BOUND = re.compile(r"^>=\s*\d+(\.\d+)*$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
REGISTRY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def parse(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = LINE.match(line.replace(" ", ""))
        assert m, f"unparseable requirement {line!r}"
        out[canonical(m.group("name"))] = m.group("spec")
    return out


@pytest.fixture(scope="module")
def pyproject(repo_root):
    return tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))


def test_requirements_txt_follows_the_manager_rules(repo_root):
    reqs = parse(requirement_lines(repo_root / "requirements.txt"))
    assert not FORBIDDEN & reqs.keys(), "torch* comes from ComfyUI"
    assert not NEEDS_COMPILER_OR_NATIVE & reqs.keys()
    assert len(OPENCV & reqs.keys()) <= 1
    assert CORE <= reqs.keys(), f"missing core dependencies: {CORE - reqs.keys()}"
    for name, spec in reqs.items():
        assert LOWER_BOUND.match(spec), f"{name}{spec}: lower bounds only (no pins, caps or extras)"


def test_pyproject_is_registry_valid(pyproject):
    p = pyproject["project"]
    assert REGISTRY_NAME.match(p["name"]) and len(p["name"]) < 100 and "comfyui" not in p["name"].lower()
    assert SEMVER.match(p["version"]), p["version"]
    assert p["description"].strip()
    assert set(p["license"]) <= {"text", "file"} and any(p["license"].values())
    assert p["requires-python"].startswith(">=")
    assert p["urls"]["Repository"].startswith("https://")
    classifiers = p["classifiers"]
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(c.startswith("Environment :: GPU :: ") for c in classifiers)
    comfy = pyproject["tool"]["comfy"]
    assert re.match(r"^[a-z0-9][a-z0-9-]*$", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    assert re.match(r"^>=\s*0\.\d+\.\d+$", comfy["requires-comfyui"])
    assert pyproject["tool"]["pytest"]["ini_options"]["addopts"].startswith("--import-mode=importlib")


def test_pyproject_mirrors_the_requirement_files(repo_root, pyproject):
    assert parse(pyproject["project"]["dependencies"]) == parse(requirement_lines(repo_root / "requirements.txt"))
    test_extra = pyproject["project"]["optional-dependencies"]["test"]
    assert parse(test_extra) == parse(requirement_lines(repo_root / "requirements-test.txt"))
    assert "jsonschema" in parse(test_extra) and "pytest" in parse(test_extra)


def test_minimum_comfyui_version_is_stated_once(repo_root, pyproject):
    host = (repo_root / "nodes" / "host.py").read_text(encoding="utf-8")
    version = pyproject["tool"]["comfy"]["requires-comfyui"].lstrip(">= ")
    assert f'MIN_COMFYUI_VERSION = "{version}"' in host
    assert version in (repo_root / "README.md").read_text(encoding="utf-8")


def test_no_eval_or_exec_in_shipped_python(repo_root):
    """Registry standard (and comfy node publish's ruff S102/S307): no eval/exec."""
    call = re.compile(r"(?<![.\w])(eval|exec)\s*\(")
    offenders = []
    for folder, dirs, files in os.walk(repo_root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("venv", "__pycache__", "scratch")]
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and call.search(open(path, encoding="utf-8").read()):
                offenders.append(os.path.relpath(path, repo_root))
    assert offenders == []


def test_readme_test_command_is_what_ci_runs(repo_root):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    ci = (repo_root / ".ci" / "run").read_text(encoding="utf-8")
    section = readme.split("## Set-up commands", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^\s*1\. \*\*Install and run the main job", section, re.M)
    assert re.search(r"^\s*2\. \*\*Run the tests", section, re.M)
    assert "bash .ci/run" in section
    inner = re.search(r"the test command `([^`]+)`", section).group(1)
    assert inner in ci and "HF_HUB_OFFLINE=1" in ci
    assert "torch==2.13.0" in ci and "requirements-test.txt" in ci and '"$status" -eq 5' in ci
    assert "docs/benchmarks.md" in readme


def test_slow_marker_is_registered(pyproject):
    markers = pyproject["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers)
