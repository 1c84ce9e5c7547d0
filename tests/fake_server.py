"""The one recording HTTP server under every local fake of a Google API (tests/fake_gcp.py,
tests/fake_vertex.py): a threaded server on loopback that parses each request's JSON body,
records it as a `Recorded`, and answers what the subclass's `route` returns. A request no route
knows answers 501 and is marked `unhandled`, so a test can tell "gcloud asked for something new"
from a real outcome.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    unhandled: bool = False


def unimplemented(rec: Recorded) -> tuple[int, dict]:
    """The fake's own answer to a request it has no route for (not Google's)."""
    message = f"fake: no route for {rec.method} {rec.path}"
    return 501, {"error": {"code": 501, "message": message, "status": "UNIMPLEMENTED"}}


class RecordingServer:
    """Subclasses implement `route(rec)` -> (status, JSON payload), or None for "no route".

    `route` runs under `self.lock`, so it may change the fake's state freely.
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def route(self, rec: Recorded) -> tuple[int, Any] | None:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------
    def start(self, host: str = "127.0.0.1"):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                url = urlsplit(self.path)
                rec = Recorded(self.command, url.path, parse_qs(url.query), body, dict(self.headers))
                with fake.lock:
                    fake.requests.append(rec)
                    result = fake.route(rec)
                    if result is None:
                        rec.unhandled = True
                        result = unimplemented(rec)
                code, payload = result
                rec.status = code
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self._server = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def hostport(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.hostport}"

    # -- queries for tests -----------------------------------------------------------
    def calls(self, method: str | None = None, pattern: str = "") -> list[Recorded]:
        """Recorded requests whose method matches and whose path matches the regex PATTERN."""
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and re.search(pattern, r.path)
            ]

    def unhandled(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.unhandled]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
