"""A local HTTP server that answers like the Hugging Face model hub, for download tests.

It serves the endpoints ``huggingface_hub.snapshot_download`` / ``hf_hub_download`` call (checked
against the installed huggingface_hub 2.4):

- ``GET /api/models/{repo}[/revision/{rev}]``: model info (``id``, ``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}``: the file listing (``type``, ``path``, ``size``, ``oid``
  = git blob sha1, and ``lfs`` {``oid`` = sha256, ``size``, ``pointerSize``} for LFS files);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}``: the file, with ``X-Repo-Commit``, ``ETag``
  (the git blob sha1, or the sha256 for LFS files, which also get ``X-Linked-Etag`` and
  ``X-Linked-Size``) and ``Content-Length``.

Unknown repos answer 404 with ``X-Error-Code: RepoNotFound``, unknown files ``EntryNotFound``,
as the hub does. ``{rev}`` may be ``main`` or the repo's commit sha. No Xet headers are sent,
so the client downloads over plain HTTP. ``failing`` names files whose GET answers 500 (the
HEAD still works), to exercise a download that breaks half-way. ``requests`` records
``(method, path)`` of every request.

    with FakeHub({"org/model": {"config.json": b"{}", "model.safetensors": b"..."}}) as hub:
        env["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def repo_from_dir(directory: str | Path) -> dict[str, bytes]:
    """The files of a folder (e.g. a ``save_pretrained`` checkpoint) as a repo's contents."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], *, failing: set[str] | frozenset[str] = frozenset()):
        self.repos = repos
        self.failing = set(failing)
        self.shas = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- answers ----------------------------------------------------------------------------------------------

    def _is_lfs(self, filename: str) -> bool:
        return filename.endswith(LFS_SUFFIXES)

    def _tree_entry(self, filename: str, data: bytes) -> dict:
        entry = {"type": "file", "path": filename, "size": len(data), "oid": git_blob_sha1(data)}
        if self._is_lfs(filename):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _model_info(self, repo: str) -> dict:
        return {
            "_id": self.shas[repo][:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": self.shas[repo],
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "chronos-forecasting",
            "lastModified": "2024-11-01T00:00:00.000Z",
            "createdAt": "2024-11-01T00:00:00.000Z",
            "siblings": [{"rfilename": name} for name in self.repos[repo]],
        }

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, payload, head: bool, headers: dict[str, str] | None = None) -> None:
                body = json.dumps(payload).encode()
                self._send(200, body, {"Content-Type": "application/json", **(headers or {})}, head)

            def _error(self, status: int, code: str, message: str, head: bool, headers: dict | None = None) -> None:
                body = json.dumps({"error": message}).encode()
                self._send(
                    status, body, {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message,
                                   **(headers or {})}, head,
                )

            def _repo_and_rest(self, parts: list[str]) -> tuple[str | None, list[str]]:
                if len(parts) >= 2 and "/".join(parts[:2]) in hub.repos:
                    return "/".join(parts[:2]), parts[2:]
                if parts and parts[0] in hub.repos:
                    return parts[0], parts[1:]
                return None, parts

            def _rev_ok(self, repo: str, rev: str) -> bool:
                return rev in ("main", hub.shas[repo])

            def _answer(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                parts = [p for p in path.split("/") if p]
                if parts[:2] == ["api", "models"]:
                    repo, rest = self._repo_and_rest(parts[2:])
                    if repo is None:
                        return self._error(404, "RepoNotFound", "Repository not found", head)
                    if not rest or (rest[0] == "revision" and len(rest) == 2):
                        if rest and not self._rev_ok(repo, rest[1]):
                            return self._error(404, "RevisionNotFound", "Invalid rev id", head)
                        return self._json(hub._model_info(repo), head)
                    if rest[0] == "tree" and len(rest) >= 2 and self._rev_ok(repo, rest[1]):
                        prefix = "/".join(rest[2:])
                        entries = [hub._tree_entry(name, data) for name, data in hub.repos[repo].items()
                                   if name.startswith(prefix)]
                        return self._json(entries, head)
                    return self._error(404, "EntryNotFound", "not found", head)
                repo, rest = self._repo_and_rest(parts)
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found", head)
                if len(rest) < 3 or rest[0] != "resolve":
                    return self._error(404, "EntryNotFound", "not found", head)
                commit = {"X-Repo-Commit": hub.shas[repo]}
                if not self._rev_ok(repo, rest[1]):
                    return self._error(404, "RevisionNotFound", "Invalid rev id", head)
                filename = "/".join(rest[2:])
                data = hub.repos[repo].get(filename)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist", head, commit)
                if not head and filename in hub.failing:
                    return self._error(500, "InternalError", "storage backend failed", head, commit)
                headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **commit}
                if hub._is_lfs(filename):
                    digest = hashlib.sha256(data).hexdigest()
                    headers.update({"ETag": f'"{digest}"', "X-Linked-Etag": f'"{digest}"',
                                    "X-Linked-Size": str(len(data))})
                else:
                    headers["ETag"] = f'"{git_blob_sha1(data)}"'
                self._send(200, data, headers, head)

        return Handler
