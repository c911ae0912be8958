"""The Dub Video node and the mimictalk_dub workflow's API twin on tiny weights (fake host): an mp4
at the source's size and frame rate as long as the speech, with the workflow embedded."""

from __future__ import annotations

import json

import pytest

from tests.nodes.harness import fake_mediapipe, load_twin, pack, run, tiny, video_facts, with_overrides  # noqa: F401
from tests.nodes.tiny_assets import DUB_FPS, DUB_FRAMES, SPEECH_SECONDS

EXTRA = {"extra_pnginfo": {"workflow": {"name": "from the test"}}}
DUB_OVERRIDES = {"MimicTalkDubVideo": {"steps": 3, "chunk_size": 8}, "LoadVideo": {"file": "dub_source.mp4"}}
"""The dub twin on tiny weights: a 320x240 30 fps source (tests/nodes/tiny_assets.py)."""


def check_dub_video(facts: dict) -> None:
    """The dubbed mp4 has the source's size and frame rate and the speech's duration."""
    assert facts["size"] == (320, 240) and facts["fps"] == DUB_FPS and facts["codec"] == "h264"
    assert facts["frames"] == round(SPEECH_SECONDS * DUB_FPS) < DUB_FRAMES
    assert facts["audio_codec"] == "aac" and abs(facts["audio_seconds"] - SPEECH_SECONDS) < 0.05


@pytest.mark.slow  # identity preparation (MediaPipe double, short fit) + one-shot dub of 15 frames: ~30-60 s
def test_dub_twin_runs_to_an_mp4_at_the_source_size_and_rate(pack, tiny, fake_mediapipe):
    prompt = with_overrides(load_twin("mimictalk_dub"), **DUB_OVERRIDES)
    result = run(pack, prompt, EXTRA)
    (files,) = [u["images"] for u in result.ui.values() if u.get("images")]
    (f,) = files
    facts = video_facts(tiny["output"] / f["subfolder"] / f["filename"])
    check_dub_video(facts)
    assert json.loads(facts["metadata"]["prompt"]) == prompt


def test_dub_node_needs_exactly_one_source(pack):
    from tests.nodes.harness import submodule

    node = submodule(pack, "nodes.dub").DubVideo
    errors = submodule(pack, "mimictalk_lib.errors")
    with pytest.raises(errors.InputError, match="exactly one of 'video' or 'images'"):
        node.execute(None, None, None, None, None, "pingpong", "source", "mean_std", 4, 3, 0, "x", 19, 25.0)


@pytest.mark.slow  # light identity (MediaPipe double, short fit) + one-shot dub of 15 frames
def test_dub_node_prepares_a_light_identity_when_none_is_connected(pack, tiny, fake_mediapipe):
    """Identity unconnected: Dub Video prepares the light identity itself while streaming the video."""
    prompt = with_overrides(load_twin("mimictalk_dub"), **DUB_OVERRIDES)
    (dub_id,) = [k for k, v in prompt.items() if v["class_type"] == "MimicTalkDubVideo"]
    del prompt[dub_id]["inputs"]["identity"]
    for k in [k for k, v in prompt.items() if v["class_type"] in ("MimicTalkPrepareIdentity", "PreviewImage")]:
        del prompt[k]
    result = run(pack, prompt, EXTRA)
    (files,) = [u["images"] for u in result.ui.values() if u.get("images")]
    (f,) = files
    check_dub_video(video_facts(tiny["output"] / f["subfolder"] / f["filename"]))
