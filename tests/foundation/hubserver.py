"""A tiny Hugging Face Hub stand-in on 127.0.0.1 for downloader tests.

It answers the requests the real ``huggingface_hub`` client makes for ``hf_hub_download``:
``HEAD /{repo_id}/resolve/{revision}/{path}`` with the headers the client requires
(``X-Repo-Commit``, ``ETag`` / ``X-Linked-Etag``, ``Content-Length`` / ``X-Linked-Size``, the
``X-Error-Code`` of a 404), an LFS-style 302 to a second "CDN" server on another port (another
origin, so the client takes the metadata from the redirect itself and drops the token, as with the
real CDN), and the ``GET`` of the body. Plain-URL files are served by the CDN under ``/files/``.

Per file a ``mode`` injects a failure: ``"ok"``, ``"truncate"`` (the body stops halfway while the
metadata announces the full size), ``"404"``.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Served:
    data: bytes
    lfs: bool = True
    mode: str = "ok"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def body(self) -> bytes:
        return self.data[: len(self.data) // 2] if self.mode == "truncate" else self.data


@dataclass
class HubState:
    repos: dict = field(default_factory=dict)  # (repo_id, revision) -> {path: Served}
    urls: dict = field(default_factory=dict)  # name -> Served (plain URLs on the CDN)
    token: str | None = None  # when set, the hub requires "Authorization: Bearer <token>"
    requests: list = field(default_factory=list)  # (server, method, path, authorization)
    cdn_url: str = ""


def _make_handler(state: HubState, server_name: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, code: int, headers: dict, body: bytes = b"", *, length: int | None = None):
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _error(self, code: int, error_code: str, commit: str | None = None):
            headers = {"X-Error-Code": error_code, "Content-Type": "application/json"}
            if commit:
                headers["X-Repo-Commit"] = commit
            self._send(code, headers, b'{"error": "%s"}' % error_code.encode())

        def _hub(self, path: str):
            # /{org}/{name}/resolve/{revision}/{file path}
            parts = path.strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "RepoNotFound")
            repo_id, revision, fpath = "/".join(parts[:2]), unquote(parts[3]), unquote("/".join(parts[4:]))
            if state.token and self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._error(401, "GatedRepo")
            revisions = {rev for (rid, rev) in state.repos if rid == repo_id}
            if not revisions:
                return self._error(404, "RepoNotFound")
            if revision not in revisions:
                return self._error(404, "RevisionNotFound")
            served = state.repos[(repo_id, revision)].get(fpath)
            if served is None or served.mode == "404":
                return self._error(404, "EntryNotFound", commit=revision)
            common = {"X-Repo-Commit": revision}
            if served.lfs:  # like the real Hub: 302 to the CDN, metadata on the redirect
                return self._send(302, {**common, "Location": f"{state.cdn_url}/blobs/{served.sha256}",
                                        "X-Linked-Etag": f'"{served.sha256}"',
                                        "X-Linked-Size": len(served.data)})
            etag = hashlib.sha1(served.data).hexdigest()
            body = served.body()
            self._send(200, {**common, "ETag": f'"{etag}"'}, body, length=len(body))

        def _cdn(self, path: str):
            served = None
            if path.startswith("/blobs/"):
                sha = path.rsplit("/", 1)[1]
                served = next((s for files in state.repos.values() for s in files.values() if s.sha256 == sha), None)
            elif path.startswith("/files/"):
                served = state.urls.get(unquote(path[len("/files/"):]))
            if served is None or served.mode == "404":
                return self._send(404, {"Content-Type": "text/plain"}, b"not found")
            body = served.body()
            self._send(200, {"ETag": f'"{served.sha256}"', "Content-Type": "application/octet-stream"}, body)

        def _dispatch(self):
            path = urlsplit(self.path).path
            state.requests.append((server_name, self.command, path, self.headers.get("Authorization")))
            return self._hub(path) if server_name == "hub" else self._cdn(path)

        do_GET = _dispatch
        do_HEAD = _dispatch

    return Handler


class TinyHub:
    """Two loopback servers (hub + CDN) sharing one ``HubState``; use as a context manager."""

    def __init__(self):
        self.state = HubState()
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self.state, name))
                         for name in ("hub", "cdn")]
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.state.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                         for s in self._servers]

    def add_repo_file(self, repo_id: str, revision: str, path: str, data: bytes, *, lfs: bool = True,
                      mode: str = "ok") -> Served:
        served = Served(data, lfs, mode)
        self.state.repos.setdefault((repo_id, revision), {})[path] = served
        return served

    def add_url_file(self, name: str, data: bytes, *, mode: str = "ok") -> str:
        self.state.urls[name] = Served(data, False, mode)
        return f"{self.state.cdn_url}/files/{name}"

    @property
    def requests(self) -> list:
        return self.state.requests

    def __enter__(self) -> "TinyHub":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
