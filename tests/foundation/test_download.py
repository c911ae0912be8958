"""The downloader against a loopback Hub: the real huggingface_hub client code path runs
(HEAD /resolve, LFS redirect to a CDN, GET), with good files, wrong hashes, truncated bodies, 404s,
offline mode, tokens, corrupt local files and manual-only assets."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from mimictalk_lib import download
from mimictalk_lib.download import ensure_asset
from mimictalk_lib.errors import AssetMissingError, CheckpointError, DownloadError, FaceModelMissingError
from mimictalk_lib.manifest import Asset, HubSource, Manifest, ManifestFile, ManualSource, UrlSource
from tests.foundation.hubserver import TinyHub

REPO = "test-org/tiny-model"
REV = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = os.urandom(300_000)  # an "LFS" file, served through the CDN redirect
CONFIG = b'{"hidden_size": 8}'
LOCK = ".mimictalk-lock.json"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_asset(sources, *, files=None, auto=True, category="audio_encoder", aid="tiny") -> Asset:
    files = files or (ManifestFile("model.safetensors", len(WEIGHTS), sha(WEIGHTS)),
                      ManifestFile("config.json", None, None))
    return Asset(id=aid, title="tiny test asset", category=category, nodes=(), functions=("mimictalk_lib.a2m",),
                 license="test", target_dir="tiny", auto_download=auto, files=tuple(files), sources=tuple(sources))


def manifest_of(*assets) -> Manifest:
    return Manifest(folder="mimictalk", lock_file=LOCK, assets=tuple(assets))


def hub_source(files=("model.safetensors", "config.json")) -> HubSource:
    return HubSource(REPO, REV, {f: f for f in files}, evidence="test")


@pytest.fixture
def hub():
    with TinyHub() as h:
        h.add_repo_file(REPO, REV, "model.safetensors", WEIGHTS, lfs=True)
        h.add_repo_file(REPO, REV, "config.json", CONFIG, lfs=False)
        yield h


@pytest.fixture
def online(monkeypatch, hub, tmp_path):
    """Switch huggingface_hub online and at the loopback hub, as HF_ENDPOINT would at import
    (tests/conftest.py forces HF_HUB_OFFLINE=1; monkeypatch restores everything)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return hub


def no_leftovers(models):
    staging = models / download.STAGING_DIR
    return not staging.exists() or not any(staging.iterdir())


def test_good_files_download_verify_and_cache(online, tmp_path):
    models = tmp_path / "models"
    m = manifest_of(make_asset([hub_source()]))
    steps = []
    folder = ensure_asset("tiny", [models], allow_download=True, manifest=m,
                          on_step=lambda d, t, **i: steps.append((d, t, i)))
    assert folder == models / "tiny"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "config.json").read_bytes() == CONFIG
    assert no_leftovers(models)
    # the LFS file came through the redirect to the CDN, the small one straight from the hub
    assert ("cdn", "GET", f"/blobs/{sha(WEIGHTS)}", None) in [r[:4] for r in online.requests]
    downloads = [(d, t) for d, t, i in steps if i.get("stage") == "download" and i.get("file") == "model.safetensors"]
    assert downloads and downloads[-1] == (len(WEIGHTS), len(WEIGHTS))
    # the unknown hash of config.json is recorded in the lock file (models folder, not the pack)
    lock = download.LockFile(models / LOCK)
    assert lock.get("tiny/config.json")["sha256"] == sha(CONFIG)
    assert lock.get("tiny/model.safetensors")["sha256"] == sha(WEIGHTS)

    # second use: no network, no re-hashing (size + mtime cache)
    n_requests = len(online.requests)
    hashed = []
    real = download.sha256_file
    download.sha256_file = lambda p, *a, **k: hashed.append(p) or real(p, *a, **k)
    try:
        assert ensure_asset("tiny", [models], allow_download=True, manifest=m) == folder
    finally:
        download.sha256_file = real
    assert len(online.requests) == n_requests and hashed == []


def test_plain_url_source(online, tmp_path):
    data = os.urandom(5000)
    url = online.add_url_file("face_landmarker.task", data)
    asset = make_asset([UrlSource({"face_landmarker.task": url}, "test")],
                       files=[ManifestFile("face_landmarker.task", len(data), sha(data))])
    folder = ensure_asset("tiny", [tmp_path / "m"], allow_download=True, manifest=manifest_of(asset))
    assert (folder / "face_landmarker.task").read_bytes() == data


def test_wrong_hash_is_rejected_and_nothing_is_kept(online, tmp_path):
    models = tmp_path / "models"
    bad = ManifestFile("model.safetensors", len(WEIGHTS), "0" * 64)
    m = manifest_of(make_asset([hub_source(["model.safetensors"])], files=[bad]))
    with pytest.raises(DownloadError) as err:
        ensure_asset("tiny", [models], allow_download=True, manifest=m)
    msg = str(err.value)
    assert "model.safetensors" in msg and str(models / "tiny") in msg
    assert f"Hugging Face {REPO}@{REV[:12]}" in msg and sha(WEIGHTS) in msg and "0" * 64 in msg
    assert not (models / "tiny" / "model.safetensors").exists() and no_leftovers(models)


def test_truncated_body_is_rejected(online, tmp_path):
    online.state.repos[(REPO, REV)]["model.safetensors"].mode = "truncate"
    models = tmp_path / "models"
    m = manifest_of(make_asset([hub_source(["model.safetensors"])], files=[make_asset([]).files[0]]))
    with pytest.raises(DownloadError, match="(?s)model.safetensors.*(Consistency|size)"):
        ensure_asset("tiny", [models], allow_download=True, manifest=m)
    assert not (models / "tiny" / "model.safetensors").exists() and no_leftovers(models)


def test_consistently_truncated_url_file_fails_the_size_check(online, tmp_path):
    data = os.urandom(4000)
    url = online.add_url_file("x.bin", data[:1000])  # server is self-consistent, file is short
    asset = make_asset([UrlSource({"x.bin": url}, "test")], files=[ManifestFile("x.bin", len(data), None)])
    with pytest.raises(DownloadError, match="(?s)x.bin.*(expected 4000|Consistency)"):
        ensure_asset("tiny", [tmp_path / "m"], allow_download=True, manifest=manifest_of(asset))
    assert not (tmp_path / "m" / "tiny" / "x.bin").exists()


def test_404_falls_back_to_the_next_source_and_names_every_failure(online, tmp_path):
    data = os.urandom(3000)
    spec = ManifestFile("model.safetensors", len(data), sha(data))
    missing = HubSource(REPO, REV, {"model.safetensors": "not/there.safetensors"}, "test")
    url = online.add_url_file("mirror.safetensors", data)
    m = manifest_of(make_asset([missing, UrlSource({"model.safetensors": url}, "test")], files=[spec]))
    folder = ensure_asset("tiny", [tmp_path / "a"], allow_download=True, manifest=m)
    assert (folder / "model.safetensors").read_bytes() == data

    dead_url = online.add_url_file("gone.bin", b"", mode="404")
    m = manifest_of(make_asset([missing, UrlSource({"model.safetensors": dead_url}, "test")], files=[spec]))
    with pytest.raises(DownloadError) as err:
        ensure_asset("tiny", [tmp_path / "b"], allow_download=True, manifest=m)
    msg = str(err.value)
    assert "EntryNotFound" in msg or "404" in msg
    assert msg.count("  - ") == 2 and dead_url in msg


def test_offline_mode_names_file_folder_and_sources_without_network(hub, tmp_path):
    # tests/conftest.py forces HF_HUB_OFFLINE=1: the default state of the whole suite
    assert download.downloads_disabled()
    url = hub.add_url_file("config.json", CONFIG)
    m = manifest_of(make_asset([hub_source(), UrlSource({"config.json": url}, "test")]))
    with pytest.raises(DownloadError) as err:
        ensure_asset("tiny", [tmp_path / "m"], allow_download=True, manifest=m)
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and str(tmp_path / "m" / "tiny") in msg and REPO in msg
    assert hub.requests == []


def test_token_is_sent_to_the_hub_but_not_to_the_cdn(online, monkeypatch, tmp_path):
    online.state.token = "hf_secret"
    m = manifest_of(make_asset([hub_source()]))
    with pytest.raises(DownloadError, match="401|GatedRepo|Unauthorized|Authentication"):
        ensure_asset("tiny", [tmp_path / "a"], allow_download=True, manifest=m)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    ensure_asset("tiny", [tmp_path / "b"], allow_download=True, manifest=m)
    assert ("hub", "HEAD") in [(r[0], r[1]) for r in online.requests if r[3] == "Bearer hf_secret"]
    assert all(r[3] is None for r in online.requests if r[0] == "cdn")


def test_corrupt_local_file_is_redownloaded_or_refused(online, tmp_path):
    models = tmp_path / "models"
    m = manifest_of(make_asset([hub_source()]))
    folder = ensure_asset("tiny", [models], allow_download=True, manifest=m)
    (folder / "model.safetensors").write_bytes(WEIGHTS[:1000])  # truncated by a crash elsewhere
    with pytest.raises(CheckpointError, match="truncated"):
        ensure_asset("tiny", [models], allow_download=False, manifest=m)
    ensure_asset("tiny", [models], allow_download=True, manifest=m)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS

    # a file whose hash was unknown is checked against the hash recorded on first download
    tampered = b'{"hidden_size": 9}'
    assert len(tampered) == len(CONFIG)
    (folder / "config.json").write_bytes(tampered)
    with pytest.raises(CheckpointError, match="recorded on first download"):
        ensure_asset("tiny", [models], allow_download=False, manifest=m)
    ensure_asset("tiny", [models], allow_download=True, manifest=m)
    assert (folder / "config.json").read_bytes() == CONFIG


def test_interrupt_leaves_nothing_behind(online, tmp_path):
    class Stop(Exception):
        pass

    def on_step(done, total, **info):
        if info.get("stage") == "download" and done > 0:
            raise Stop

    models = tmp_path / "models"
    with pytest.raises(Stop):
        ensure_asset("tiny", [models], allow_download=True, on_step=on_step,
                     manifest=manifest_of(make_asset([hub_source()])))
    assert not (models / "tiny" / "model.safetensors").exists() and no_leftovers(models)


def test_resolution_across_folders_and_download_disabled(online, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    data = os.urandom(100)
    spec = ManifestFile("w.bin", len(data), sha(data))
    m = manifest_of(make_asset([hub_source(["model.safetensors"])], files=[ManifestFile("model.safetensors", None, None)]),
                    make_asset([UrlSource({"w.bin": "https://example.invalid/w.bin"}, "t")], files=[spec], aid="w"))
    (second / "tiny").mkdir(parents=True)
    (second / "tiny" / "w.bin").write_bytes(data)
    assert ensure_asset("w", [first, second], allow_download=False, manifest=m) == second / "tiny"
    with pytest.raises(AssetMissingError, match="automatic download is disabled") as err:
        ensure_asset("tiny", [first, second], allow_download=False, manifest=m)
    assert not isinstance(err.value, DownloadError) and str(first / "tiny") in str(err.value)
    assert ensure_asset("tiny", [first, second], allow_download=True, manifest=m) == first / "tiny"


def test_manual_assets_raise_with_human_instructions(tmp_path):
    manual = ManualSource("Register at the university and accept the licence, then copy the file.",
                          ("https://faces.dmi.unibas.ch/bfm/",))
    files = [ManifestFile("BFM_model_front.mat", None, None), ManifestFile("extra.mat", None, None, optional=True)]
    m = manifest_of(make_asset([manual], files=files, auto=False, category="face_model", aid="bfm"),
                    make_asset([manual], files=[ManifestFile("a.ckpt", None, None)], auto=False, category="renderer"))
    with pytest.raises(FaceModelMissingError) as err:
        ensure_asset("bfm", [tmp_path], allow_download=True, manifest=m)
    msg = str(err.value)
    assert "never downloaded automatically" in msg and "faces.dmi.unibas.ch" in msg and "BFM_model_front.mat" in msg
    assert "extra.mat" not in msg  # optional files are not demanded
    with pytest.raises(AssetMissingError, match="Register at the university"):
        ensure_asset("tiny", [tmp_path], allow_download=True, manifest=m)
    # placed by hand: accepted, and its hash is recorded for later checks
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "BFM_model_front.mat").write_bytes(b"bfm")
    assert ensure_asset("bfm", [tmp_path], allow_download=False, manifest=m) == tmp_path / "tiny"
    assert download.LockFile(tmp_path / LOCK).get("tiny/BFM_model_front.mat")["sha256"] == sha(b"bfm")


def test_hf_endpoint_env_is_honoured_in_a_fresh_process(hub, tmp_path, repo_root):
    """End to end as a user would run it: HF_ENDPOINT set before huggingface_hub is imported."""
    script = textwrap.dedent(f"""
        from mimictalk_lib.download import ensure_asset
        from mimictalk_lib.manifest import Asset, HubSource, Manifest, ManifestFile
        asset = Asset(id="t", title="t", category="renderer", nodes=(), functions=("mimictalk_lib.a2m",),
                      license="x", target_dir="t", auto_download=True,
                      files=(ManifestFile("config.json", None, None),),
                      sources=(HubSource("{REPO}", "{REV}", {{"config.json": "config.json"}}, "t"),))
        print(ensure_asset("t", [r"{tmp_path}"], allow_download=True,
                           manifest=Manifest("mimictalk", "{LOCK}", (asset,))))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(repo_root))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t" / "config.json").read_bytes() == CONFIG
    assert any(r[:2] == ("hub", "HEAD") for r in hub.requests)


def test_cli_list_and_status(capsys, tmp_path):
    assert download.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "hubert_large" in out and "manual" in out and "auto-download" in out
    assert download.main(["status", "mediapipe_face_landmarker", "--models-dir", str(tmp_path)]) == 0
    assert "face_landmarker.task: missing" in capsys.readouterr().out


def test_package_entry_point_dispatches(capsys):
    from mimictalk_lib.__main__ import main

    assert main(["download", "list"]) == 0
    assert "lpips_alex" in capsys.readouterr().out
    assert main(["nope"]) == 2 and "usage: python -m mimictalk_lib" in capsys.readouterr().err


def test_asset_dir_finds_the_registered_folder_without_checking_files(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert download.asset_dir("bfm2009", [first, second]) == first / "bfm"
    (second / "bfm").mkdir(parents=True)
    assert download.asset_dir("bfm2009", [first, second]) == second / "bfm"
    # every BFM file is optional in the manifest: the face checker decides what is missing
    assert ensure_asset("bfm2009", [first], allow_download=False) == first / "bfm"


def test_progress_class_is_a_complete_silent_tqdm():
    """huggingface_hub's Xet reporter calls more of tqdm than update(); all must exist."""
    seen = []
    bar = download._progress_class(lambda d, t, **i: seen.append((d, t, i)), {"file": "w.bin"})(total=100, unit="B")
    bar.update(30)
    bar.update(70)
    bar.set_postfix_str("1 MB/s", refresh=False)
    assert bar.format_dict.get("rate") is None or bar.format_dict["rate"] >= 0
    bar.refresh()
    bar.close()
    assert seen == [(30, 100, {"stage": "download", "file": "w.bin"}), (100, 100, {"stage": "download", "file": "w.bin"})]
