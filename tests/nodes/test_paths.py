"""File widgets name files inside their own folders only (issue 21 item 3): the renderer,
ICS-A2M and HuBERT weights in the ``mimictalk`` model folders, adapters in the adapter folders,
audio in the input folder. No absolute path, no ``..``, no symlink leading outside; a refusal is a
validation error naming the folders, in the node's ``validate_inputs`` and when a graph is run."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

from tests.nodes.harness import fakehost_module, submodule


@contextmanager
def link(at, target):
    """A symlink ``at`` -> ``target`` for the duration of a test (the tiny tree is shared)."""
    at.symlink_to(target, target_is_directory=target.is_dir())
    try:
        yield at
    finally:
        at.unlink()


@pytest.fixture
def outside(tiny, tmp_path):
    """Copies of real model files in a folder that is not a model folder."""
    renderer = tmp_path / "elsewhere" / "renderer"
    shutil.copytree(tiny["models"] / "tiny" / "mimictalk_renderer", renderer)
    adapter = tmp_path / "elsewhere" / "stranger.safetensors"
    shutil.copy(tiny["models"] / "adapters" / "person.safetensors", adapter)
    audio = tmp_path / "elsewhere" / "speech.wav"
    shutil.copy(tiny["input"] / "speech.wav", audio)
    return {"renderer": renderer, "adapter": adapter, "audio": audio}


def test_model_weights_only_from_the_model_folders(pack, tiny, outside):
    loaders = submodule(pack, "nodes.loaders")
    ok = loaders.LoadRenderer.validate_inputs
    assert ok(weights="tiny/mimictalk_renderer", precision="auto") is True
    models = str(tiny["models"])
    for bad in (str(outside["renderer"]), str(tiny["models"] / "tiny" / "mimictalk_renderer"),
                "../mimictalk/tiny/mimictalk_renderer", "tiny/../tiny/mimictalk_renderer",
                os.path.relpath(outside["renderer"], tiny["models"])):
        msg = ok(weights=bad, precision="auto")
        assert msg is not True and models in msg and "no absolute path" in msg, bad
        assert loaders.locate(bad) is None
    with link(tiny["models"] / "linked_out", outside["renderer"]):  # a link inside that leads outside
        assert ok(weights="linked_out", precision="auto") is not True
    with link(tiny["models"] / "linked_in", tiny["models"] / "tiny" / "mimictalk_renderer"):  # inside -> inside
        assert ok(weights="linked_in", precision="auto") is True
    msg = loaders.LoadAudio2Motion.validate_inputs(a2m="tiny/ics_a2m", hubert=str(tiny["models"] / "tiny" / "hubert"),
                                                   precision="auto")
    assert msg is not True and "HuBERT" in msg and models in msg


def test_adapters_only_from_the_adapter_folders(pack, tiny, outside):
    adapters = submodule(pack, "nodes.adapters")
    ok = adapters.LoadAdapter.validate_inputs
    assert ok(adapter="person.safetensors") is True
    folder = str(tiny["models"] / "adapters")
    for bad in (str(outside["adapter"]), str(tiny["models"] / "adapters" / "person.safetensors"),
                "../adapters/person.safetensors", os.path.relpath(outside["adapter"], tiny["models"] / "adapters"),
                "checkpoints/run/checkpoint.safetensors", "person.txt"):
        msg = ok(adapter=bad)
        assert msg is not True and folder in msg, bad
        assert adapters.locate_adapter(bad) is None
    with link(tiny["models"] / "adapters" / "linked.safetensors", outside["adapter"]):
        assert ok(adapter="linked.safetensors") is not True
        assert "linked.safetensors" not in adapters.adapter_files()  # not offered either
    lib_errors = submodule(pack, "mimictalk_lib.errors")
    with pytest.raises(lib_errors.InputError):  # execute refuses too (a graph that skipped validation)
        adapters.LoadAdapter.execute(adapter=str(outside["adapter"]))


def test_audio_only_from_the_input_folder(pack, tiny, outside):
    video = submodule(pack, "nodes.video")
    assert video.LoadAudio.validate_inputs(audio="speech.wav") is True
    for bad in (str(outside["audio"]), str(tiny["input"] / "speech.wav"), "../input/speech.wav",
                os.path.relpath(outside["audio"], tiny["input"]), "speech.wav/..", "../output/x.wav [output]"):
        msg = video.LoadAudio.validate_inputs(audio=bad)
        assert msg is not True and ("input" in msg or "output" in msg) and "no absolute path" in msg, bad
    with link(tiny["input"] / "linked.wav", outside["audio"]):
        assert video.LoadAudio.validate_inputs(audio="linked.wav") is not True
        with pytest.raises(submodule(pack, "mimictalk_lib.errors").InputError):
            video.LoadAudio.execute(audio="linked.wav")


def test_a_graph_naming_a_file_outside_is_refused_at_validation(pack, tiny, outside):
    executor = fakehost_module(pack, "executor")
    prompt = {"1": {"class_type": "MimicTalkLoadAudio", "inputs": {"audio": str(outside["audio"])}},
              "2": {"class_type": "MimicTalkLoadAdapter", "inputs": {"adapter": str(outside["adapter"])}},
              "3": {"class_type": "MimicTalkSaveAdapter", "inputs": {"adapter": ["2", 0], "name": "x", "overwrite": False,
                                                                    "triplane_precision": "fp32"}},
              "4": {"class_type": "MimicTalkVideoCombine", "inputs": {"images": ["5", 0], "fps": 25.0, "audio": ["1", 0],
                                                                     "filename_prefix": "x", "crf": 19, "audio_fit": "fit"}},
              "5": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}}}
    nodes = submodule(pack, "nodes")
    with pytest.raises(executor.PromptError) as e:
        executor.run_prompt(prompt, nodes.NODE_LIST)
    assert set(e.value.node_errors) == {"1", "2"}
    assert str(tiny["input"]) in str(e.value) and str(tiny["models"] / "adapters") in str(e.value)
