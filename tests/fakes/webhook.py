"""A local HTTP endpoint standing in for an alert webhook: records every POST and answers ``status``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    """``with Webhook(path=...) as hook``: ``hook.url`` to post to; ``bodies`` (parsed JSON, or None),
    ``paths`` and ``content_types`` of the requests received, in order."""

    def __init__(self, status: int = 200, path: str = "/hook"):
        self.status, self.path = status, path
        self.bodies: list[object] = []
        self.paths: list[str] = []
        self.content_types: list[str | None] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    hook.bodies.append(json.loads(body))
                except ValueError:
                    hook.bodies.append(None)
                hook.paths.append(self.path)
                hook.content_types.append(self.headers.get("Content-Type"))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
