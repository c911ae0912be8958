"""Per-identity work done once: the renderer's prepared source (SR reference encoded) equals the
unprepared path exactly, and a TalkingSource encodes its torso / plate reference once per renderer
for every clip made from it (re-encoding only for a new plate or changed weights)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import torch

from mimictalk_lib.pipeline import build_session, iter_talking_head, one_shot_source
from tests.fixtures.tiny_renderer import random_renderer, renderer_inputs
from tests.pipeline.conftest import motion


def _counting(monkeypatch, model) -> list:
    calls = []
    original = model.prepare_reference
    monkeypatch.setattr(model, "prepare_reference", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_prepared_source_renders_exactly_like_the_raw_one():
    model = random_renderer("mimictalk", seed=5)
    inp = renderer_inputs(model.cfg, frames=2, seed=5)
    with torch.inference_mode():
        raw = model.render(**inp)
        prepared = model.prepare_source(inp["source"])
        cached = model.render(**dict(inp, source=prepared))
        again = model.render(**dict(inp, source=prepared))
    assert model.prepare_source(prepared) is prepared
    for f in ("image", "image_raw", "alpha", "depth"):  # same operations on the same values: bit-identical
        assert torch.equal(getattr(raw, f), getattr(cached, f)) and torch.equal(getattr(cached, f), getattr(again, f))


def test_talking_source_encodes_its_reference_once_per_renderer(monkeypatch, face_model, identity):
    model = random_renderer("mimictalk", seed=0)
    src = one_shot_source(model, identity)
    fresh = copy.deepcopy(src)  # an identical source with an empty cache, rendered first
    calls = _counting(monkeypatch, model)
    want = torch.cat([c.images for c in iter_talking_head(build_session(model, face_model, fresh, motion(3)), chunk_size=2)])
    assert len(calls) == 1
    calls.clear()

    # two clips (two sessions) of one source: one encoding, frames equal to the uncached path
    first = torch.cat([c.images for c in iter_talking_head(build_session(model, face_model, src, motion(3)), chunk_size=2)])
    second = torch.cat([c.images for c in iter_talking_head(build_session(model, face_model, src, motion(3)), chunk_size=2)])
    assert len(calls) == 1
    assert torch.equal(first, want) and torch.equal(second, want)

    # a new plate is a new source: its own encoding, the old one untouched
    red = torch.zeros(1, 64, 64, 3)
    red[..., 0] = 1
    other = src.with_background(red)
    assert src.sr_reference(model) is src.sr_reference(model) and len(calls) == 1
    assert other.sr_reference(model) is not src.sr_reference(model) and len(calls) == 2

    # weights changed in place (e.g. a LoRA merged into this module): encoded again
    with torch.no_grad():
        model.superresolution.bg_encoder[0].bias.add_(0.5)
    before = src.sr_reference(model2 := random_renderer("mimictalk", seed=0))  # same weights as model before
    changed = src.sr_reference(model)
    assert len(calls) == 3 and not torch.equal(changed.bg_features, before.bg_features)
    assert src.sr_reference(model) is changed and len(calls) == 3

    # another renderer gets its own entry; pickling drops the cache
    assert torch.equal(src.sr_reference(model2).bg_features, before.bg_features)
    restored = pickle.loads(pickle.dumps(src))
    assert len(restored._references) == 0 and torch.equal(restored.bg, src.bg)
    assert dataclasses.replace(src)._references is not src._references


def test_weights_made_under_inference_mode_are_cached_too(identity):
    with torch.inference_mode():  # a ComfyUI host loads models under inference mode
        model = random_renderer("mimictalk", seed=0)
    src = one_shot_source(model, identity)
    assert src.sr_reference(model) is src.sr_reference(model)
