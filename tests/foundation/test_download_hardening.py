"""Downloads under hostile or unlucky conditions (issue 21 items 2 and 7, issue 12 item 6 and the
Google Drive source): staging folders never outlive a download, two processes record their files
in one lock file without losing any, a damaged lock file says what to delete, ``verify`` re-hashes
what ``status`` trusts by size and time, offline ends fast in one message, and Google Drive files,
folders and zip archives arrive (or fail clearly) with gdown stubbed at the library boundary."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

from mimictalk_lib import download
from mimictalk_lib.download import ensure_asset
from mimictalk_lib.errors import CheckpointError, DownloadError
from mimictalk_lib.manifest import GoogleDriveSource, ManifestFile, ManualSource, UrlSource, parse_manifest
from tests.foundation.test_download import (  # noqa: F401 - fixtures
    CONFIG, LOCK, REPO, REV, WEIGHTS, hub, hub_source, make_asset, manifest_of, online, sha,
)


def staging_gone(models) -> bool:
    return not (models / download.STAGING_DIR).exists()


# --- staging folders (issue 21 item 7) ------------------------------------------------------------


def test_a_failed_download_leaves_no_staging_folder(online, tmp_path):
    models = tmp_path / "models"
    dead = online.add_url_file("gone.bin", b"", mode="404")
    m = manifest_of(make_asset([UrlSource({"model.safetensors": dead}, "t")], files=[make_asset([]).files[0]]))
    with pytest.raises(DownloadError):
        ensure_asset("tiny", [models], allow_download=True, manifest=m)
    assert staging_gone(models)
    ensure_asset("tiny", [models], allow_download=True, manifest=manifest_of(make_asset([hub_source()])))
    assert staging_gone(models)


def test_stale_staging_folders_are_removed_at_start(online, tmp_path):
    models = tmp_path / "models"
    area = models / download.STAGING_DIR
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    crashed = area / f"{dead_pid}-0123456789ab"  # a process killed mid-download
    old_style = area / "0123456789ab"  # written before staging folders carried the pid
    for folder in (crashed, old_style):
        folder.mkdir(parents=True)
        (folder / "model.safetensors.part").write_bytes(b"x" * 1000)
    mine = area / f"{os.getpid()}-live0000000"  # this process's own (a concurrent download): kept
    mine.mkdir()
    ensure_asset("tiny", [models], allow_download=True, manifest=manifest_of(make_asset([hub_source()])))
    assert not crashed.exists() and not old_style.exists() and mine.exists()
    old = time.time() - download.STALE_STAGING_S - 10
    os.utime(mine, (old, old))
    download.clean_staging(models)
    assert mine.exists()  # its own process is alive: never removed under a running download


# --- the lock file (issue 21 items 2 and 7) -------------------------------------------------------


CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from mimictalk_lib.download import ensure_asset
    from mimictalk_lib.manifest import Asset, HubSource, Manifest, ManifestFile
    models, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    names = [f"{{tag}}{{i}}.json" for i in range(6)]
    asset = Asset(id=tag, title=tag, category="renderer", nodes=(), functions=("mimictalk_lib.a2m",), license="x",
                  target_dir=tag, auto_download=True, files=tuple(ManifestFile(n, None, None) for n in names),
                  sources=(HubSource("{repo}", "{rev}", {{n: n for n in names}}, "t"),))
    while not go.exists():
        time.sleep(0.01)
    ensure_asset(tag, [models], allow_download=True, manifest=Manifest("mimictalk", "{lock}", (asset,)))
""")


def test_two_processes_fetching_different_files_keep_every_record(hub, tmp_path, repo_root):
    for tag in "ab":
        for i in range(6):
            hub.add_repo_file(REPO, REV, f"{tag}{i}.json", f'{{"{tag}": {i}}}'.encode(), lfs=False)
    models, go = tmp_path / "models", tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(repo_root))
    script = CHILD.format(repo=REPO, rev=REV, lock=LOCK)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(models), tag, str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in "ab"]
    time.sleep(2.0)  # both started and waiting: they download at the same time
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    entries = json.loads((models / LOCK).read_text())["files"]
    assert sorted(entries) == sorted(f"{t}/{t}{i}.json" for t in "ab" for i in range(6))
    assert not [p for p in models.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("content, what", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "no 'files' table"),
    ('{"files": "x"}', "no 'files' table"),
    ('{"files": {"tiny/config.json": "abc"}}', "malformed record for tiny/config.json"),
    ('{"files": {"tiny/config.json": {"sha256": "zz", "size": 1, "mtime_ns": 1}}}', "malformed record"),
    ('{"files": {"tiny/config.json": {"sha256": "' + "0" * 64 + '", "size": "big", "mtime_ns": 1}}}', "malformed record"),
])
def test_a_damaged_lock_file_names_itself_and_what_to_delete(tmp_path, content, what):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_bytes(CONFIG)
    (tmp_path / LOCK).write_text(content)
    m = manifest_of(make_asset([hub_source()], files=[ManifestFile("config.json", None, None)]))
    with pytest.raises(CheckpointError, match=what) as err:
        ensure_asset("tiny", [tmp_path], allow_download=False, manifest=m)
    assert str(tmp_path / LOCK) in str(err.value) and f"Delete {LOCK}" in str(err.value)


def test_verify_rehashes_what_status_trusts_by_size_and_time(tmp_path, capsys, monkeypatch):
    data = b"landmarker weights"
    (tmp_path / "mediapipe").mkdir()
    path = tmp_path / "mediapipe" / "face_landmarker.task"
    path.write_bytes(data)
    asset = make_asset([UrlSource({"face_landmarker.task": "https://example.invalid/x"}, "t")],
                       files=[ManifestFile("face_landmarker.task", None, None)], aid="mediapipe_face_landmarker")
    asset = type(asset)(**{**asset.__dict__, "target_dir": "mediapipe"})
    m = manifest_of(asset)
    monkeypatch.setattr(download, "load_manifest", lambda: m)
    ensure_asset("mediapipe_face_landmarker", [tmp_path], allow_download=False, manifest=m)  # hash recorded
    st = path.stat()
    path.write_bytes(b"LANDMARKER weights")  # same size, different content ...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old time
    assert download.main(["status", "--models-dir", str(tmp_path)]) == 0
    assert "face_landmarker.task: ok (verified)" in capsys.readouterr().out  # status trusts size + time
    assert download.main(["verify", "--models-dir", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "face_landmarker.task: CORRUPT: sha256" in out.out and "failed verification" in out.err
    path.write_bytes(data)
    assert download.main(["verify", "--models-dir", str(tmp_path)]) == 0
    assert "ok (re-hashed)" in capsys.readouterr().out


# --- offline (issue 12 item 6) -----------------------------------------------------------------------


def test_offline_says_once_which_files_are_missing_without_touching_the_network(hub, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE (the suite's default): one DownloadError whose first line names every
    missing file, and no request at all."""
    url = hub.add_url_file("a.npy", b"x")
    files = [ManifestFile(n, None, None) for n in ("ncc_code.npy", "bfm_left_eye_faces.npy", "bfm_right_eye_faces.npy")]
    m = manifest_of(make_asset([UrlSource({f.name: url for f in files}, "t")], files=files))
    with pytest.raises(DownloadError) as err:
        ensure_asset("tiny", [tmp_path], allow_download=True, manifest=m)
    first = str(err.value).splitlines()[0]
    assert all(f.name in first for f in files) and "HF_HUB_OFFLINE" in first
    assert hub.requests == []


def test_no_network_is_found_in_seconds_not_after_retries(tmp_path, monkeypatch):
    """Online mode but nothing reachable: the up-front probe ends it (here a refused port) before
    any download library runs its retry loop."""
    import socket

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    called = []
    monkeypatch.setattr(download, "_fetch", lambda *a, **k: called.append(a))
    files = [ManifestFile("ncc_code.npy", None, None), ManifestFile("bfm_left_eye_faces.npy", None, None)]
    m = manifest_of(make_asset([UrlSource({f.name: f"http://127.0.0.1:{port}/{f.name}" for f in files}, "t")], files=files))
    with pytest.raises(DownloadError, match=r"ncc_code.npy, bfm_left_eye_faces.npy .*no network connection"):
        ensure_asset("tiny", [tmp_path], allow_download=True, manifest=m)
    assert called == []


# --- Google Drive ------------------------------------------------------------------------------------


class FakeDrive:
    """gdown stubbed at the library boundary: ``download(id=, output=, quiet=, progress=)`` writes the
    file registered under that id (or a quota page, or raises), ``download_folder(id=,
    skip_download=True)`` lists a folder."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.folders: dict[str, dict[str, str]] = {}  # folder id -> {path: file id}
        self.calls: list[tuple] = []
        self.fail: dict[str, BaseException] = {}

    def download(self, url=None, output=None, quiet=False, id=None, progress=None, **kw):
        self.calls.append(("download", id))
        if id in self.fail:  # as a broken transfer leaves it: part of the file written, then the error
            with open(output, "wb") as fh:
                fh.write(self.files.get(id, b"PK\x03\x04 partial")[:100])
            raise self.fail[id]
        data = self.files[id]
        with open(output, "wb") as fh:
            fh.write(data[: len(data) // 2])
            if progress:
                progress(len(data) // 2, len(data))
            fh.write(data[len(data) // 2:])
        return output

    def download_folder(self, url=None, id=None, output=None, quiet=False, skip_download=False, **kw):
        from gdown.download import GoogleDriveFileToDownload

        self.calls.append(("listing", id))
        assert skip_download
        return [GoogleDriveFileToDownload(fid, path, path) for path, fid in self.folders[id].items()]


@pytest.fixture
def drive(monkeypatch):
    import gdown
    import gdown.download  # noqa: F401 - the submodule, before the package attribute is patched
    from huggingface_hub import constants

    fake = FakeDrive()
    monkeypatch.setattr(gdown, "download", fake.download)
    monkeypatch.setattr(gdown, "download_folder", fake.download_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(download, "network_unavailable", lambda sources: download.downloads_disabled())
    return fake


def zipped(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


CKPT, YAML = os.urandom(20000), b"htbsr_head_threshold: 0.9\n"
ZIP_ID = "1gz8A6xestHp__GbZT5qozb43YaybRJhZ"
MANUAL = ManualSource("Download the zip from the authors' Google Drive by hand and unpack it into the folder.")


def renderer_asset(source) -> object:
    files = [ManifestFile("model_ckpt_steps_100000.ckpt", None, None), ManifestFile("config.yaml", None, None, optional=True)]
    return make_asset([source, MANUAL], files=files, category="renderer")


def zip_source() -> GoogleDriveSource:
    inner = "240210_real3dportrait_orig/secc2plane_torso_orig/"
    return GoogleDriveSource({"model_ckpt_steps_100000.ckpt": inner + "model_ckpt_steps_100000.ckpt",
                              "config.yaml": inner + "config.yaml"}, "test", file_id=ZIP_ID, archive="zip")


def test_drive_zip_is_unpacked_into_the_layout_and_recorded(drive, tmp_path, capsys, monkeypatch):
    inner = "240210_real3dportrait_orig/secc2plane_torso_orig/"
    drive.files[ZIP_ID] = zipped({inner + "model_ckpt_steps_100000.ckpt": CKPT, inner + "config.yaml": YAML,
                                  "240210_real3dportrait_orig/audio2secc_vae/x.ckpt": b"unused"})
    m = manifest_of(renderer_asset(zip_source()))
    steps = []
    folder = ensure_asset("tiny", [tmp_path], allow_download=True, manifest=m, on_step=lambda d, t, **i: steps.append(i))
    assert (folder / "model_ckpt_steps_100000.ckpt").read_bytes() == CKPT
    assert (folder / "config.yaml").read_bytes() == YAML  # optional, but free from the same archive
    assert drive.calls == [("download", ZIP_ID)]  # the archive is downloaded once for both files
    assert not (folder / "x.ckpt").exists() and staging_gone(tmp_path)
    assert any(i.get("stage") == "download" for i in steps)
    lock = download.LockFile(tmp_path / LOCK)
    entry = lock.get("tiny/model_ckpt_steps_100000.ckpt")
    assert entry["sha256"] == sha(CKPT) and entry["size"] == len(CKPT) and "Google Drive" in entry["source"]
    monkeypatch.setattr(download, "load_manifest", lambda: m)
    assert download.main(["status", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(CKPT):,} B, sha256 {sha(CKPT)[:16]}" in out and "Google Drive" in out


def test_drive_folder_files_by_path(drive, tmp_path):
    drive.folders["1Kc6ueDO9HFDN3BhtJCEKNCZtyKHSktaA"] = {
        "mimictalk_orig/os_secc2plane_torso/model_ckpt_steps_100000.ckpt": "fileidckpt001",
        "mimictalk_orig/os_secc2plane_torso/config.yaml": "fileidyaml001"}
    drive.files.update(fileidckpt001=CKPT, fileidyaml001=YAML)
    src = GoogleDriveSource({"model_ckpt_steps_100000.ckpt": "mimictalk_orig/os_secc2plane_torso/model_ckpt_steps_100000.ckpt"},
                            "test", folder_id="1Kc6ueDO9HFDN3BhtJCEKNCZtyKHSktaA")
    folder = ensure_asset("tiny", [tmp_path], allow_download=True, manifest=manifest_of(renderer_asset(src)))
    assert (folder / "model_ckpt_steps_100000.ckpt").read_bytes() == CKPT
    assert ("download", "fileidckpt001") in drive.calls


def test_drive_folder_holding_the_top_folder_as_a_zip(drive, tmp_path):
    drive.folders["1Kc6ueDO9HFDN3BhtJCEKNCZtyKHSktaA"] = {"mimictalk_orig.zip": "fileidzip0001"}
    drive.files["fileidzip0001"] = zipped({"mimictalk_orig/os_secc2plane_torso/model_ckpt_steps_100000.ckpt": CKPT})
    src = GoogleDriveSource({"model_ckpt_steps_100000.ckpt": "mimictalk_orig/os_secc2plane_torso/model_ckpt_steps_100000.ckpt"},
                            "test", folder_id="1Kc6ueDO9HFDN3BhtJCEKNCZtyKHSktaA")
    folder = ensure_asset("tiny", [tmp_path], allow_download=True, manifest=manifest_of(renderer_asset(src)))
    assert (folder / "model_ckpt_steps_100000.ckpt").read_bytes() == CKPT


QUOTA_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
              b"<p class=\"uc-error-caption\">Sorry, you can't view or download this file at this time.</p>"
              b"<p class=\"uc-error-subcaption\">Too many users have viewed or downloaded this file recently.</p></body></html>")


@pytest.mark.parametrize("case", ["quota_page_saved", "quota_error_raised", "html_instead_of_file", "interrupted",
                                  "truncated_zip", "member_missing", "folder_path_missing"])
def test_drive_failures_end_in_a_clear_error_with_the_manual_route(drive, tmp_path, case):
    import gdown

    inner = "240210_real3dportrait_orig/secc2plane_torso_orig/"
    good = zipped({inner + "model_ckpt_steps_100000.ckpt": CKPT, inner + "config.yaml": YAML})
    source = zip_source()
    expect = {
        "quota_page_saved": "download quota for this file is used up",
        "quota_error_raised": "Too many users",
        "html_instead_of_file": "web page instead of the file",
        "interrupted": "Connection broken",
        "truncated_zip": "archive is damaged or incomplete",
        "member_missing": "archive has no",
        "folder_path_missing": "does not list",
    }[case]
    if case == "quota_page_saved":
        drive.files[ZIP_ID] = QUOTA_PAGE
    elif case == "quota_error_raised":
        drive.fail[ZIP_ID] = gdown.exceptions.FileURLRetrievalError(
            "Failed to retrieve file url: Too many users have viewed or downloaded this file recently.")
    elif case == "html_instead_of_file":
        drive.files[ZIP_ID] = b"\n  <html><body>Sign in</body></html>"
    elif case == "interrupted":
        drive.fail[ZIP_ID] = gdown.exceptions.DownloadError("Connection broken: IncompleteRead(100 bytes read)")
    elif case == "truncated_zip":
        drive.files[ZIP_ID] = good[: len(good) // 2]
    elif case == "member_missing":
        drive.files[ZIP_ID] = zipped({"other/model.ckpt": CKPT})
    else:
        drive.folders["folderid0001"] = {"something/else.ckpt": "x" * 12}
        source = GoogleDriveSource({"model_ckpt_steps_100000.ckpt": "a/model_ckpt_steps_100000.ckpt"}, "t",
                                   folder_id="folderid0001")
    with pytest.raises(DownloadError, match=expect) as err:
        ensure_asset("tiny", [tmp_path], allow_download=True, manifest=manifest_of(renderer_asset(source)))
    assert "Manual instructions: Download the zip" in str(err.value)
    assert not (tmp_path / "tiny" / "model_ckpt_steps_100000.ckpt").exists() and staging_gone(tmp_path)
    assert download.LockFile(tmp_path / LOCK).get("tiny/model_ckpt_steps_100000.ckpt") is None


def test_drive_comes_after_hub_sources_and_before_the_manual_route(online, drive, tmp_path):
    """Listed first in the manifest, Drive is still tried after the Hub: the Hub file wins."""
    drive.files[ZIP_ID] = b"never fetched"
    src = GoogleDriveSource({"config.json": "x/config.json"}, "t", file_id=ZIP_ID, archive="zip")
    asset = make_asset([src, hub_source(["config.json"]), MANUAL], files=[ManifestFile("config.json", None, None)])
    assert [s.kind for s in asset.sources_for("config.json")] == ["huggingface", "google_drive"]
    ensure_asset("tiny", [tmp_path], allow_download=True, manifest=manifest_of(asset))
    assert drive.calls == [] and (tmp_path / "tiny" / "config.json").read_bytes() == CONFIG


def test_manifest_drive_sources_parse_and_match_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    from mimictalk_lib.manifest import MANIFEST_PATH, load_schema

    data = json.loads(MANIFEST_PATH.read_text())
    jsonschema.validate(data, load_schema())
    m = parse_manifest(data)
    real3d = m.get("real3dportrait_renderer")
    drive = [s for s in real3d.sources if isinstance(s, GoogleDriveSource)]
    assert real3d.auto_download and drive and drive[0].file_id == ZIP_ID and drive[0].archive == "zip"
    for aid in ("mimictalk_base_renderer", "ics_a2m"):
        assert any(isinstance(s, GoogleDriveSource) and s.folder_id == "1Kc6ueDO9HFDN3BhtJCEKNCZtyKHSktaA"
                   for s in m.get(aid).sources)
    assert not m.get("bfm2009").auto_download and not any(isinstance(s, GoogleDriveSource) for s in m.get("bfm2009").sources)
    bad = json.loads(json.dumps(data))
    bad["assets"][0]["sources"].insert(0, {"kind": "google_drive", "file_id": "short", "files": {"x": "y"}, "evidence": "e"})
    with pytest.raises(Exception, match="Drive id|file"):
        parse_manifest(bad)
