"""A local stand-in for the Hugging Face hub's file API (the part `snapshot_download` uses), serving model
directories from disk over real HTTP: `GET /api/models/<repo>/revision/<rev>` (repo info: the commit),
`GET /api/models/<repo>/tree/<rev>` (the file list), `HEAD`/`GET /<repo>/resolve/<rev>/<file>` (metadata headers
and the bytes). An unknown repo is a 404 with the hub's `X-Error-Code: RepoNotFound`. Point huggingface_hub at
it with HF_ENDPOINT (a child process) or `huggingface_hub.constants.ENDPOINT`."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _files(d: Path) -> dict[str, Path]:
    return {str(f.relative_to(d)): f for f in sorted(d.rglob("*")) if f.is_file()}


@contextmanager
def serve_hub(repos: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """Serve `repos` (repo id -> model directory) on a free loopback port; yields (endpoint, request log)."""
    log: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  head: bool = False) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj: object) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _not_found(self, head: bool = False) -> None:
            self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound",
                                                                   "Content-Type": "application/json"}, head)

        def _route(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            log.append(f"{self.command} {path}")
            if path.startswith("/api/models/"):
                rest = path.removeprefix("/api/models/")
                for repo, d in repos.items():
                    if rest.startswith(repo + "/revision/"):
                        return self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                           "siblings": [{"rfilename": f} for f in _files(d)]})
                    if rest.startswith(repo + "/tree/"):
                        return self._json([{"type": "file", "path": f, "size": p.stat().st_size,
                                            "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                                           for f, p in _files(d).items()])
                return self._not_found(head)
            for repo, d in repos.items():
                prefix = f"/{repo}/resolve/"
                if path.startswith(prefix):
                    _, _, name = path.removeprefix(prefix).partition("/")
                    f = _files(d).get(name)
                    if f is None:
                        return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, head)
                    body = f.read_bytes()
                    return self._send(200, body, {"X-Repo-Commit": COMMIT,
                                                  "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                                                  "Content-Type": "application/octet-stream"}, head)
            return self._not_found(head)

        def do_GET(self) -> None:  # noqa: N802 -- http.server's name
            self._route(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._route(head=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
