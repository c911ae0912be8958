"""models_manifest.json against its JSON Schema and the rules the downloader relies on."""

from __future__ import annotations

import copy
import hashlib
import json

import jsonschema
import pytest

from mimictalk_lib.manifest import (
    MANIFEST_PATH,
    HubSource,
    ManifestError,
    ManualSource,
    load_manifest,
    load_schema,
    parse_manifest,
)

UPSTREAM_MIMICTALK = MANIFEST_PATH.parents[1] / "upstream" / "MimicTalk"


@pytest.fixture(scope="module")
def raw():
    return json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_manifest_matches_its_schema(raw, validator):
    errors = sorted(validator.iter_errors(raw), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_every_asset_the_nodes_need_is_listed():
    m = load_manifest()
    assert set(m.ids) >= {
        "mimictalk_base_renderer", "ics_a2m", "real3dportrait_renderer", "hubert_large",
        "mediapipe_face_landmarker", "mediapipe_selfie_multiclass", "lpips_alex", "bfm2009",
        "bfm_derived_upstream",
    }
    for a in m.assets:
        assert a.functions and a.license and a.files and a.sources


def test_bfm_is_manual_only_and_hub_sources_are_pinned():
    m = load_manifest()
    bfm = m.get("bfm2009")
    assert not bfm.auto_download and bfm.category == "face_model"
    assert all(isinstance(s, ManualSource) for s in bfm.sources)
    assert "faces.dmi.unibas.ch/bfm" in bfm.sources[0].instructions
    for a in m.assets:
        for s in a.sources:
            if isinstance(s, HubSource):
                assert len(s.revision) == 40 and s.evidence


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d["assets"][3]["sources"][0].__setitem__("revision", "main"), "revision"),
    (lambda d: d["assets"][0]["files"][0].__setitem__("sha256", "abc"), "sha256"),
    (lambda d: d["assets"][0].__setitem__("target_dir", "../outside"), "relative"),
    (lambda d: d["assets"][7].__setitem__("auto_download", True), "no download source"),
    (lambda d: d["assets"][3]["sources"][0]["files"].__setitem__("nope.bin", "nope.bin"), "does not list"),
])
def test_broken_manifests_are_refused_by_schema_and_parser(raw, validator, mutate, where):
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(ManifestError, match=where):
        parse_manifest(broken)
    if where != "no download source" and where != "does not list":  # cross-field rules: parser only
        assert list(validator.iter_errors(broken))


def test_pinned_hashes_match_the_real_files_we_have(shared_data):
    """The sizes and hashes we computed ourselves, re-checked against the files (skip if absent)."""
    m = load_manifest()
    checked = 0
    candidates = {("mediapipe_face_landmarker", "face_landmarker.task"): shared_data / "face_landmarker.task"}
    for name in ("ncc_code.npy", "bfm_left_eye_faces.npy", "bfm_right_eye_faces.npy"):
        candidates[("bfm_derived_upstream", name)] = UPSTREAM_MIMICTALK / "deep_3drecon" / name
    for (aid, fname), path in candidates.items():
        if not path.is_file():
            continue
        spec = m.get(aid).file(fname)
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (spec.size, spec.sha256), fname
        checked += 1
    if checked == 0:
        pytest.skip("none of the reference files is present on this machine")


def test_used_by_modules_exist(repo_root):
    for a in load_manifest().assets:
        for module in a.functions:
            path = repo_root / module.replace(".", "/")
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), f"{a.id}: {module}"
