"""Smoke tests of the bench/ scripts: each runs as ``python -m bench.<name> --tiny --device cpu``
from the repository root and prints its markdown table; and the shared (device, dtype) plan
refuses half precision on the CPU. The figures themselves are not checked (bench, not tests)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from bench import _common as common

HEADERS = {
    "render": "| device | dtype | chunk | frames | s/frame (wall) | frames/s | CPU s/frame | peak memory (GiB) |",
    "a2m": "| device | dtype | audio s | motion frames | HuBERT s | f0 s | f0 tracker | sampling s | total s | x realtime "
           "| peak MB (features) | peak MB (sampling) |",
    "adapt": "| device | dtype | batch | s/step (wall) | CPU s/step | peak memory | 1000 steps | 2000 steps |",
    "secc": "| device | dtype | work | maps/s | ms/map | CUDA peak MiB |",
    "prepare": "| stage | device | seconds | s per s of video |",
    "dub": "| seconds | source | frames | identity frames (25 fps) | wall s (prepare + dub) | frames/s | peak RSS MiB "
           "| identity held MiB | frames held |",
    "prepare --threads": "| stage | threads | best s | median s | median / first count's |",
    "ray": "| workers | models | frames | start-up s | render s | frames/s | speed-up |",
}


def run_bench(repo_root, name: str, *options: str) -> list[dict]:
    """Run the script with ``--tiny --device cpu``; its table as one dict per row."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny ops: one thread is much faster on 2 cores
    script = name.split(" ")[0]
    done = subprocess.run([sys.executable, "-m", f"bench.{script}", "--tiny", "--device", "cpu", *options],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert HEADERS[name] in lines, done.stdout
    start = lines.index(HEADERS[name])
    assert lines[start + 1] == "|" + "---|" * HEADERS[name].count(" | ") + "---|"
    keys = [c.strip() for c in HEADERS[name].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(keys), line
        rows.append(dict(zip(keys, cells)))
    return rows


@pytest.mark.parametrize("name, options, n_rows, positive", [
    ("render", ("--frames", "1", "--chunks", "1"), 1, ("s/frame (wall)", "peak memory (GiB)")),
    ("a2m", ("--seconds", "1"), 1, ("sampling s", "peak MB (sampling)")),
    ("adapt", (), 1, ("s/step (wall)", "CPU s/step")),
    ("secc", ("--batches", "1"), 2, ("maps/s", "ms/map")),
])
def test_tiny_run_prints_table(repo_root, name, options, n_rows, positive):
    rows = run_bench(repo_root, name, *options)
    assert len(rows) == n_rows
    for row in rows:
        assert (row["device"], row["dtype"]) == ("cpu", "fp32")
        assert all(float(row[k].split()[0]) > 0 for k in positive), row


def test_tiny_dub_memory_prints_table(repo_root):
    """The dub bench's memory row (light identity prepared + dub in one worker) for a 1 s 640x360
    source at 5 fps (one worker process: ~15 s of CPU, most of it imports)."""
    from bench.dub import MEMORY_HEADER

    assert HEADERS["dub"] == "| " + " | ".join(MEMORY_HEADER) + " |"
    (row,) = run_bench(repo_root, "dub", "--skip-quality", "--memory-seconds", "1")
    assert (row["seconds"], row["frames"], row["identity frames (25 fps)"]) == ("1", "5", "25")
    assert float(row["peak RSS MiB"]) > 0 and float(row["identity held MiB"]) > 0
    assert int(row["frames held"]) == 5  # every distinct frame of so short a source (at most 16 + 1)


@pytest.mark.slow  # ~12 s: MediaPipe on a real 1.2 s clip, a short 3DMM fit, the plate
def test_tiny_prepare_prints_table(repo_root, shared_data):
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe is not installed")
    rows = run_bench(repo_root, "prepare")
    assert [r["stage"].split(" ")[0] for r in rows] == ["frames", "landmarks", "segmentation", "fit", "plate", "total"]
    assert all(r["device"] == "cpu" and float(r["seconds"]) > 0 for r in rows)
    assert float(rows[-1]["seconds"]) == pytest.approx(sum(float(r["seconds"]) for r in rows[:-1]), abs=0.03)


def test_tiny_prepare_threads_prints_table(repo_root):
    """The thread-count table needs no media: both stages at each count, ratio 1 for the first."""
    rows = run_bench(repo_root, "prepare --threads", "--threads", "1,2")
    assert [(r["stage"].split(" ")[0], r["threads"]) for r in rows] == [("fit", "1"), ("fit", "2"),
                                                                         ("keypoints", "1"), ("keypoints", "2")]
    assert all(float(r["best s"]) > 0 and float(r["median s"]) >= float(r["best s"]) for r in rows)
    assert rows[0]["median / first count's"] == rows[2]["median / first count's"] == "1.00"


def test_tiny_ray_prints_table(repo_root):
    """One Ray CPU worker on a local cluster renders the 4-frame job with the models from files and
    sent from memory (as the nodes' ray_address): ~20-40 s, most of it Ray and worker start-up."""
    pytest.importorskip("ray")
    from bench.ray import HEADER

    assert HEADERS["ray"] == "| " + " | ".join(HEADER) + " |"
    rows = run_bench(repo_root, "ray", "--workers", "1", "--models", "files,memory")
    assert [(r["workers"], r["models"], r["frames"], r["speed-up"]) for r in rows] == [("1", "files", "4", "1.00"),
                                                                                      ("1", "memory", "4", "1.00")]
    assert all(float(r["frames/s"]) > 0 and float(r["start-up s"]) > 0 for r in rows)


# --- the shared (device, dtype) plan ------------------------------------------------------------


def plan(argv: list[str], allowed=("fp32", "bf16")):
    ap = argparse.ArgumentParser()
    common.add_common_args(ap, dtypes=allowed)
    return common.plan(ap, ap.parse_args(argv), allowed=allowed)


def test_plan_defaults_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan([]) == [("cpu", ["fp32"])]
    assert plan(["--device", "cpu", "--dtypes", "fp32"]) == [("cpu", ["fp32"])]


def test_plan_skips_half_precision_on_default_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert plan(["--dtypes", "fp32,bf16"]) == [("cpu", ["fp32"]), ("cuda", ["fp32", "bf16"])]
    assert "cpu: bf16 skipped" in capsys.readouterr().err
    assert plan([]) == [("cpu", ["fp32"]), ("cuda", ["fp32", "bf16"])]


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--dtypes", "bf16"], "half precision is only supported on a GPU"),
    (["--device", "cpu", "--dtypes", "fp32,fp16"], "unknown or unsupported dtype 'fp16'"),
    (["--dtypes", "float32"], "unknown or unsupported dtype 'float32'"),
    (["--device", "cuda"], "torch sees no CUDA device"),
])
def test_plan_refuses_clearly(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        plan(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# --- side by side with upstream (bench/_upstream.py, ``--upstream PATH``) -------------------------


def run_upstream_option(repo_root, *options: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "bench.a2m", *options], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_upstream_option_refuses_a_folder_that_is_not_a_checkout(repo_root, tmp_path):
    (tmp_path / "modules").mkdir()
    done = run_upstream_option(repo_root, "--upstream", str(tmp_path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "is not an upstream MimicTalk checkout: it lacks inference/mimictalk_infer.py" in done.stderr
    assert "git clone https://github.com/yerfor/MimicTalk" in done.stderr
    done = run_upstream_option(repo_root, "--upstream", str(tmp_path / "absent"))
    assert done.returncode == 2 and "is not a folder" in done.stderr


def test_a2m_upstream_option_takes_fp32_or_fp32_with_bf16_only(repo_root, tmp_path):
    done = run_upstream_option(repo_root, "--upstream", str(tmp_path), "--dtypes", "bf16")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "give --dtypes fp32 or fp32,bf16" in done.stderr


def test_render_upstream_option_refuses_clearly(repo_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*options):
        return subprocess.run([sys.executable, "-m", "bench.render", *options], cwd=repo_root, env=env,
                              capture_output=True, text=True, timeout=120)

    done = run("--upstream", str(tmp_path))
    assert done.returncode == 2 and "is not an upstream MimicTalk checkout" in done.stderr, done.stderr[-2000:]
    done = run("--upstream", str(tmp_path), "--tiny")
    assert done.returncode == 2 and "full-size renderer on the CPU in fp32; leave out --tiny" in done.stderr
    done = run("--upstream", str(tmp_path), "--dtypes", "bf16")
    assert done.returncode == 2 and "give --dtypes fp32 or fp32,bf16" in done.stderr


def test_upstream_stub_fails_loudly_when_used():
    from bench import _upstream

    name = "mimictalk_test_absent_module"
    try:
        assert _upstream.stub([name, "torch"]) == [name]  # installed modules are never stubbed
        mod = importlib.import_module(name)
        placeholder = mod.Tsit5  # usable as a default value ...
        with pytest.raises(RuntimeError, match=f"{name}.Tsit5 is a stub"):
            placeholder()  # ... never run
    finally:
        sys.modules.pop(name, None)


def test_upstream_random_weights_follow_the_seed():
    from bench import _upstream

    def weights(seed):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Embedding(5, 2))
        return _upstream.random_state_dict(model, seed, matrix_std=0.02, gains={"1.weight": 0.5})

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["0.weight"], c["0.weight"])
    assert a["0.weight"].std() < 0.05 and a["2.weight"].std() > 0.5  # matrices redrawn, embeddings kept
    assert torch.allclose(a["1.weight"], torch.full((3,), 0.5), atol=0.2) and (a["1.running_var"] >= 0.5).all()


@pytest.mark.slow  # full-size models on both sides: a minute or more on two cores
def test_upstream_side_by_side_prints_table(repo_root):
    """Runs only where an upstream checkout is named by MIMICTALK_UPSTREAM (never in CI)."""
    path = os.environ.get("MIMICTALK_UPSTREAM")
    if not path:
        pytest.skip("MIMICTALK_UPSTREAM (an upstream MimicTalk checkout) is not set")
    if any(importlib.util.find_spec(m) is None for m in ("torchdiffeq", "beartype")):
        pytest.skip("upstream's torchdiffeq / beartype are not installed")
    done = run_upstream_option(repo_root, "--upstream", path, "--seconds", "1", "--repeats", "1", "--threads", "1",
                               timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| audio s | motion frames | threads | repeats | ours s (each) |" in done.stdout
    assert "parity: max |ours - upstream|" in done.stdout and " <= tolerance 1e-06" in done.stdout
