"""Rendering on a local Ray cluster on the CPU (2 workers, tiny weights): the video equals the
single-process one frame for frame (ranges come back out of order and are written in order), a
worker killed mid-run is restarted and only its range re-run, and a jobs file runs as a batch
whose failing job is reported while the others complete."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from mimictalk_lib.__main__ import main  # noqa: E402
from mimictalk_lib.distributed.cluster import RayRenderer, render_local  # noqa: E402
from mimictalk_lib.distributed.worker import ModelFiles, RenderJob  # noqa: E402
from tests.pipeline.conftest import make_identity, motion  # noqa: E402

T = 6
OPTIONS = dict(range_frames=2, chunk_size=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory, face_model, renderer):
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model
    from tests.fixtures.tiny_a2m import speech_like
    from tests.nodes.tiny_assets import _save_converted, write_wav

    root = tmp_path_factory.mktemp("ray")
    _save_converted(root / "renderer", renderer, "renderer")
    bfm = write_synthetic_face_model(root / "bfm", derived=False)
    make_identity(face_model, frames=4).save(root / "anna.identity.safetensors")
    (root / "bad.identity.safetensors").write_bytes(b"not a safetensors file")
    torch.save(motion(T), root / "motion.pt")
    write_wav(root / "speech.wav", speech_like(T / 25, 16000), 16000)
    return root, ModelFiles(renderer=str(root / "renderer"), face_model=str(bfm), device="cpu")


def _job(root, name="anna", identity="anna.identity.safetensors"):
    return RenderJob(name=name, audio=str(root / "speech.wav"), out=str(root / f"{name}.mp4"),
                     identity=str(root / identity), motion=str(root / "motion.pt"), pose="identity")


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 1
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def reference(files):
    root, models = files
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray workers (OMP_NUM_THREADS=1): the same fp32 sums
    try:
        (result,) = render_local([_job(root, "single")], models, **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    assert result.ok, result.error
    return _frames(result.out)


def _pid_when_up(actor, tries: int = 120) -> int:
    for _ in range(tries):  # a restarting actor answers ActorUnavailableError until it is back
        try:
            return ray.get(actor.call.remote("info"))["pid"]
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.5)
    raise AssertionError("the killed worker was not restarted")


def test_ray_render_equals_single_process_and_survives_a_killed_worker(cluster, crash_marker, files, reference):
    root, models = files
    pool = RayRenderer(models, workers=2)
    before = sorted(p["pid"] for p in ray.get([a.call.remote("info") for a in pool.actors]))
    steps = []
    try:
        assert not crash_marker.exists()
        (result,) = pool.run([_job(root, "anna")], on_step=lambda done, total, **_: steps.append((done, total)),
                             **OPTIONS)
        assert crash_marker.exists()  # the worker rendering frames 2-3 died mid-range (once)
        assert result.ok, result.error
        assert np.array_equal(_frames(result.out), reference)  # every frame, in order
        assert result.attempts == {0: 1, 2: 2, 4: 1}  # the killed range re-ran; finished ranges were not re-rendered
        after = sorted(_pid_when_up(a) for a in pool.actors)
        assert len(set(before) & set(after)) == 1  # the dead worker was restarted as a new process, the other kept
        assert steps[-1] == (T, T) and [d for d, _ in steps] == sorted(d for d, _ in steps)
    finally:
        pool.shutdown()


def test_jobs_file_batch_reports_the_failing_job_and_completes_the_rest(cluster, files, reference, capsys):
    root, _ = files
    spec = {"out_dir": "batch", "defaults": {"motion": "motion.pt", "pose": "identity"},
            "who": [{"identity": "anna.identity.safetensors"}, {"identity": "bad.identity.safetensors"}],
            "audio": ["speech.wav"]}
    (root / "jobs.json").write_text(json.dumps(spec))
    code = main(["render", "--jobs", str(root / "jobs.json"), "--ray", "--renderer", str(root / "renderer"),
                 "--face-model", os.fspath(Path(files[1].face_model)), "--device", "cpu", "--range-frames", "2",
                 "--chunk-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    good, bad = root / "batch" / "anna__speech.mp4", root / "batch" / "bad__speech.mp4"
    assert out.strip() == str(good) and np.array_equal(_frames(good), reference)
    assert "FAILED bad__speech:" in err and not bad.exists()
