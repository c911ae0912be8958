"""Offloading from this process to a local Ray cluster (2 CPU workers, tiny weights): the Render
node with a ray_address (through the fake ComfyUI host, the pack imported under ComfyUI's mangled
module name, so the workers get its objects under the library's own name) returns the same frames
as a local render, whole and as a sub-range, with one progress bar; Cancel stops it and kills the
workers; a missing ray names the node and widget. The dub path with its face frames rendered on
the workers equals the single-process dub."""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager

import pytest
import torch

from mimictalk_lib.distributed.offload import RayChunks
from mimictalk_lib.dub import dub_video
from tests.dub.conftest import identity_for, source_frames
from tests.dub.test_cli import files  # noqa: F401  (fixture: tiny weights and a source video as files)
from tests.dub.test_dub import speech
from tests.nodes.harness import lib, pack, tiny  # noqa: F401  (fixtures)
from tests.nodes.test_nodes import RENDER, call, comfy, interrupt_after, loaded, nodes  # noqa: F401  (fixtures)
from tests.nodes.tiny_assets import motion_frames
from tests.pipeline.conftest import motion


@contextmanager
def one_thread():
    """As the Ray workers (OMP_NUM_THREADS=1): the same fp32 sums, so frames compare exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def small_ranges(pack, monkeypatch):
    """4-frame ranges: the tiny motion splits into several ranges over the two workers."""
    monkeypatch.setattr(lib(pack, "distributed.offload"), "RANGE_FRAMES", 4)


def render(nodes, loaded, **inputs):
    return call(nodes.Render, renderer=loaded["person"], face_model=loaded["face"], motion=loaded["motion"],
                **{**RENDER, **inputs})


def test_render_node_on_ray_equals_a_local_render(cluster, nodes, loaded, small_ranges):
    t = motion_frames()
    with one_thread():
        images, masks, _ = render(nodes, loaded)
    bars = comfy("comfy.utils").bars
    n_bars = len(bars)
    got, got_masks, fps = render(nodes, loaded, ray_address="auto")
    assert torch.equal(got, images) and torch.equal(got_masks, masks) and fps == 25.0
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    (bar,) = bars[n_bars:]  # one bar: frames done / total, rising to the end
    done = [d for d, _ in bar.updates]
    assert done == sorted(done) and bar.updates[-1] == (t, t) and {total for _, total in bar.updates} == {t}
    part, part_masks, _ = render(nodes, loaded, start_frame=5, frame_count=6, ray_address="auto")
    assert torch.equal(part, images[5:11]) and torch.equal(part_masks, masks[5:11])
    assert bars[-1].updates[-1] == (6, 6)


def assert_killed(ray, actors, seconds: float = 60) -> None:
    """Every actor is dead within ``seconds``: ``ray.kill`` only asks Ray to stop a worker, so a
    call made at once may still reach it; a killed actor answers ``RayActorError`` soon after,
    and one left rendering keeps answering."""
    deadline = time.monotonic() + seconds
    for actor in actors:
        while True:
            try:
                ray.get(actor.call.remote("info"), timeout=seconds)
            except ray.exceptions.RayActorError:
                break
            assert time.monotonic() < deadline, "a worker still answers after the pool was shut down"
            time.sleep(0.2)


@pytest.fixture
def stopped(pack, monkeypatch) -> list:
    """The actors of every Ray pool shut down during the test (the pack's own RayRenderer class)."""
    cls = lib(pack, "distributed.cluster").RayRenderer
    pools, shutdown = [], cls.shutdown

    def spy(self):
        pools.append(list(self.actors))
        shutdown(self)

    monkeypatch.setattr(cls, "shutdown", spy)
    return pools


def test_render_node_on_ray_stops_on_cancel_and_kills_the_workers(cluster, pack, nodes, loaded, small_ranges,
                                                                   interrupt_after, stopped):
    t = motion_frames()
    interrupt_after(1, total=t)  # Cancel right after the first update (0 of t frames)
    with pytest.raises(comfy("comfy.model_management").InterruptProcessingException):
        render(nodes, loaded, ray_address="auto")
    assert comfy("comfy.utils").bars[-1].updates[-1][0] < t
    (actors,) = stopped
    assert len(actors) == 2
    assert_killed(cluster, actors)  # killed, not left rendering


def test_render_node_without_ray_names_the_node_and_widget(nodes, loaded, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(Exception, match=r"MimicTalk Render ray_address: rendering on a Ray cluster needs the optional "
                                        r"ray package: pip install .* leave ray_address empty"):
        render(nodes, loaded, ray_address="auto")


def test_dub_on_ray_equals_the_single_process_dub(cluster, renderer, face_model):
    frames = source_frames(12)
    ident = identity_for(face_model, frames, 30.0, dropped=(4,))  # a no-face source frame inside the dub
    kw = dict(fps=30.0, renderer=renderer, face_model=face_model, identity=ident, motion=motion(15), chunk_size=2)
    with one_thread():
        local = dub_video(frames, speech(0.6), **kw)
        with RayChunks(renderer, face_model, range_frames=4) as chunks:
            on_ray = dub_video(frames, speech(0.6), render_chunks=chunks, **kw)
    assert on_ray.frames.shape == (18, 96, 160, 3) and on_ray.report.no_face_frames == 2
    assert torch.equal(on_ray.frames, local.frames)
    assert on_ray.report.as_dict() == local.report.as_dict()


def _dub_node(pack, loaded, face_model, **inputs):
    from tests.nodes.harness import submodule

    frames = source_frames(12)
    ident = identity_for(face_model, frames, 30.0, dropped=(4,))
    kw = dict(renderer=loaded["person"], face_model=loaded["face"], identity=ident, a2m=loaded["a2m"],
              audio=loaded["audio"], length="pingpong", pose="source", colour="mean_std", chunk_size=2, steps=3, seed=0,
              filename_prefix="ray/dub", crf=19, fps=30.0, images=frames.float() / 255)
    return call(submodule(pack, "nodes.dub").DubVideo, **{**kw, **inputs})


@pytest.fixture
def written(monkeypatch):
    """written(video_module) -> list: the uint8 frames every VideoWriter of that copy of the library is
    given, per file name's first word (compared rather than decoded mp4s: H.264 is not bit-stable across runs here)."""
    def spy_on(video):
        got, write = {}, video.VideoWriter.write

        def spy(self, frames):
            got.setdefault(re.split(r"[._]", self.path.name.lstrip("."))[0], []).append(torch.as_tensor(frames).clone())
            return write(self, frames)

        monkeypatch.setattr(video.VideoWriter, "write", spy)
        return got

    return spy_on


def test_dub_node_on_ray_equals_a_local_dub_and_writes_parts(cluster, pack, loaded, face_model, small_ranges, written):
    frames = written(lib(pack, "video"))
    with one_thread():
        _, local = _dub_node(pack, loaded, face_model, filename_prefix="ray/local")
        _, on_ray = _dub_node(pack, loaded, face_model, filename_prefix="ray/remote", ray_address="auto")
        _, part = _dub_node(pack, loaded, face_model, filename_prefix="ray/part", start_frame=6, frame_count=5,
                            ray_address="auto")
    local_frames, ray_frames = torch.cat(frames["local"]), torch.cat(frames["remote"])
    assert local == on_ray and "dubbed 18 frames" in local and local_frames.shape == (18, 96, 160, 3)
    assert torch.equal(ray_frames, local_frames)
    assert "part: frames 6-10 of 18" in part and torch.equal(torch.cat(frames["part"]), local_frames[6:11])


def test_dub_command_on_ray_equals_the_single_process_command(cluster, files, capsys, written):
    import av

    from mimictalk_lib import video
    from mimictalk_lib.__main__ import main

    frames = written(video)
    r = files["root"]
    args = ["dub", "--video", str(files["video"]), "--audio", str(r / "speech.wav"), "--identity",
            str(r / "source.identity.safetensors"), "--renderer", str(r / "renderer"), "--a2m", str(r / "a2m"),
            "--hubert", str(r / "hubert"), "--face-model", str(files["bfm"]), "--steps", "2", "--chunk-size", "2"]
    with one_thread():
        assert main([*args, "--out", str(r / "single.mp4")]) == 0
        assert main([*args, "--out", str(r / "ray.mp4"), "--ray", "--range-frames", "4"]) == 0
    assert capsys.readouterr().out.split() == [str(r / "single.mp4"), str(r / "ray.mp4")]
    single = torch.cat(frames["single"])
    assert single.shape[0] == 15 and torch.equal(torch.cat(frames["ray"]), single)
    with av.open(str(r / "ray.mp4")) as c:
        assert len(c.streams.audio) == 1 and sum(1 for _ in c.decode(video=0)) == 15


def test_a_worker_that_cannot_start_says_why(cluster, face_model):
    from mimictalk_lib.distributed.offload import render_on_ray
    from mimictalk_lib.errors import MimicTalkError

    with pytest.raises(MimicTalkError, match="worker failed to start: .*expected a MimicTalk renderer, got str"):
        render_on_ray("not a renderer", face_model, None, motion(4), workers=1)


def test_dub_node_on_ray_stops_on_cancel_and_kills_the_workers(cluster, pack, tiny, loaded, face_model, small_ranges,
                                                               interrupt_after, stopped):
    interrupt_after(1)  # Cancel after the dub's first progress update
    with pytest.raises(comfy("comfy.model_management").InterruptProcessingException):
        _dub_node(pack, loaded, face_model, filename_prefix="ray/cancelled", ray_address="auto")
    assert comfy("comfy.utils").bars[-1].updates[-1][0] < 18
    (actors,) = stopped
    assert_killed(cluster, actors)
    assert not list((tiny["output"] / "ray").glob("*cancelled*"))  # no partial mp4 left
