"""A small local fake of the two Google Cloud APIs the project's scripts call through gcloud.

The real `gcloud` CLI is pointed at it with its own endpoint-override settings (see
`FakeGcp.gcloud_env`), so the tests exercise gcloud's real argument handling, request
building, operation polling and error reporting; only Google's servers are replaced.

- Artifact Registry v1: repositories get / create (returns an operation that is already
  done, polled by gcloud), getIamPolicy / setIamPolicy, operations get.
- Compute Engine v1: instances get / insert (returns a zone operation, polled by gcloud
  with `wait`), zone operations get / wait, images getFromFamily, project get.

Every request is recorded as a `Recorded` (method, path, query, JSON body) so tests can
assert what gcloud sent. Anything the fake does not know answers 501 and is recorded with
`unhandled=True`, so a test can tell "gcloud asked for something new" from a real outcome.

Run it by hand to watch what gcloud sends:  python3 tests/fake_gcp.py  (prints the env).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

AR_PREFIX = "/v1/"
COMPUTE_PREFIX = "/compute/v1/"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0
    unhandled: bool = False


def _error(code: int, status: str, message: str) -> tuple[int, dict]:
    return code, {"error": {"code": code, "message": message, "status": status, "errors": []}}


@dataclass
class FakeGcp:
    """The fake's state and HTTP server. Use as a context manager or call start()/stop()."""

    repositories: dict[str, dict] = field(default_factory=dict)
    iam_policies: dict[str, dict] = field(default_factory=dict)
    instances: dict[str, dict] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    # Make the next N create calls fail with this (code, status, message), for error tests.
    fail_create: tuple[int, str, str] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> FakeGcp:
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
                rec = Recorded(self.command, url.path, parse_qs(url.query), body)
                with fake._lock:
                    fake.requests.append(rec)
                    code, payload = fake._route(rec)
                rec.status = code
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGcp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def gcloud_env(self, config_dir: Path, project: str | None, token: str | None = "fake-token") -> dict:
        """Environment that points the real gcloud at this fake, with no Google account.

        token=None leaves gcloud unauthenticated (no access-token file, no account).
        """
        config_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "CLOUDSDK_CONFIG": str(config_dir),
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_ARTIFACTREGISTRY": f"{self.url}/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": f"{self.url}/compute/v1/",
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            "CLOUDSDK_METRICS_ENVIRONMENT": "hfgpu-tests",
        }
        if project:
            env["CLOUDSDK_CORE_PROJECT"] = project
        if token is not None:
            token_file = config_dir / "access-token"
            token_file.write_text(token)
            env["CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"] = str(token_file)
        return env

    # -- queries for tests -----------------------------------------------------------
    def calls(self, method: str | None = None, pattern: str = "") -> list[Recorded]:
        """Recorded requests whose method matches and whose path matches the regex PATTERN."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and re.search(pattern, r.path)
            ]

    def unhandled(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.unhandled]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- routing ---------------------------------------------------------------------
    def _route(self, rec: Recorded) -> tuple[int, dict]:
        if rec.path.startswith(COMPUTE_PREFIX):
            result = self._compute(rec, rec.path[len(COMPUTE_PREFIX) :])
        elif rec.path.startswith(AR_PREFIX):
            result = self._artifactregistry(rec, rec.path[len(AR_PREFIX) :])
        else:
            result = None
        if result is None:
            rec.unhandled = True
            return _error(501, "UNIMPLEMENTED", f"fake_gcp: no route for {rec.method} {rec.path}")
        return result

    def _take_failure(self) -> tuple[int, dict] | None:
        if self.fail_create is None:
            return None
        code, status, message = self.fail_create
        return _error(code, status, message)

    # Artifact Registry ----------------------------------------------------------------
    def _artifactregistry(self, rec: Recorded, path: str) -> tuple[int, dict] | None:
        m = re.fullmatch(r"projects/([^/]+)/locations/([^/]+)/repositories", path)
        if m and rec.method == "POST":
            project, location = m.groups()
            repo_id = (rec.query.get("repositoryId") or [""])[0]
            name = f"projects/{project}/locations/{location}/repositories/{repo_id}"
            failure = self._take_failure()
            if failure:
                return failure
            if name in self.repositories:
                return _error(409, "ALREADY_EXISTS", f"the repository already exists: {name}")
            repo = {**(rec.body or {}), "name": name}
            repo.setdefault("createTime", "2026-01-01T00:00:00Z")
            self.repositories[name] = repo
            op = f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
            return 200, {
                "name": op,
                "done": True,
                "response": {"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.Repository"}
                | repo,
            }
        m = re.fullmatch(r"(projects/[^/]+/locations/[^/]+/operations/[^/]+)", path)
        if m and rec.method == "GET":
            return 200, {"name": m.group(1), "done": True}
        m = re.fullmatch(r"(projects/[^/]+/locations/[^/]+/repositories/[^/:]+)(:\w+)?", path)
        if not m:
            return None
        name, verb = m.groups()
        if name not in self.repositories:
            return _error(404, "NOT_FOUND", f"Requested entity was not found. ({name})")
        if verb is None and rec.method == "GET":
            return 200, self.repositories[name]
        if verb == ":getIamPolicy":
            return 200, self.iam_policies.get(name, {"etag": "ACAB"})
        if verb == ":setIamPolicy" and rec.method == "POST":
            policy = dict((rec.body or {}).get("policy") or {})
            policy["etag"] = base64.b64encode(uuid.uuid4().bytes[:6]).decode()
            self.iam_policies[name] = policy
            return 200, policy
        return None

    # Compute Engine ------------------------------------------------------------------
    def _compute(self, rec: Recorded, path: str) -> tuple[int, dict] | None:
        base = f"{self.url}{COMPUTE_PREFIX}"
        m = re.fullmatch(r"projects/([^/]+)/global/images/family/([^/]+)", path)
        if m and rec.method == "GET":
            project, family = m.groups()
            image = f"{family}-v20260101"
            return 200, {
                "kind": "compute#image",
                "name": image,
                "family": family,
                "status": "READY",
                "selfLink": f"{base}projects/{project}/global/images/{image}",
            }
        m = re.fullmatch(r"projects/([^/]+)", path)
        if m and rec.method == "GET":
            return 200, {
                "kind": "compute#project",
                "name": m.group(1),
                "defaultServiceAccount": f"123456789-compute@developer.gserviceaccount.com ({m.group(1)})",
                "selfLink": f"{base}projects/{m.group(1)}",
            }
        m = re.fullmatch(r"projects/([^/]+)/zones/([^/]+)", path)
        if m and rec.method == "GET":
            project, zone = m.groups()
            return 200, {
                "kind": "compute#zone",
                "name": zone,
                "status": "UP",
                "region": f"{base}projects/{project}/regions/{zone.rsplit('-', 1)[0]}",
                "selfLink": f"{base}projects/{project}/zones/{zone}",
            }
        m = re.fullmatch(r"projects/([^/]+)/zones/([^/]+)/operations/([^/]+)(/wait)?", path)
        if m:
            project, zone, op, _ = m.groups()
            return 200, self._zone_op(project, zone, op, target="")
        m = re.fullmatch(r"projects/([^/]+)/zones/([^/]+)/instances", path)
        if m and rec.method == "POST":
            project, zone = m.groups()
            failure = self._take_failure()
            if failure:
                return failure
            body = dict(rec.body or {})
            key = f"projects/{project}/zones/{zone}/instances/{body.get('name')}"
            if key in self.instances:
                return _error(409, "ALREADY_EXISTS", f"The resource '{key}' already exists")
            body.update(
                kind="compute#instance",
                status="RUNNING",
                zone=f"{base}projects/{project}/zones/{zone}",
                selfLink=f"{base}{key}",
                id="1234567890",
            )
            self.instances[key] = body
            return 200, self._zone_op(project, zone, f"operation-{uuid.uuid4().hex[:12]}", f"{base}{key}")
        m = re.fullmatch(r"(projects/([^/]+)/zones/([^/]+)/instances/([^/]+))", path)
        if m and rec.method == "GET":
            key = m.group(1)
            if key not in self.instances:
                return _error(404, "NOT_FOUND", f"The resource '{key}' was not found")
            return 200, self.instances[key]
        return None

    def _zone_op(self, project: str, zone: str, op: str, target: str) -> dict:
        base = f"{self.url}{COMPUTE_PREFIX}projects/{project}/zones/{zone}"
        return {
            "kind": "compute#operation",
            "name": op,
            "operationType": "insert",
            "status": "DONE",
            "progress": 100,
            "targetLink": target,
            "zone": base,
            "selfLink": f"{base}/operations/{op}",
        }


def main() -> None:
    """Serve until interrupted and print each request: a way to see what gcloud sends."""
    import tempfile
    import time

    fake = FakeGcp().start()
    cfg = Path(tempfile.mkdtemp(prefix="fake-gcp-"))
    for key, value in fake.gcloud_env(cfg, "my-project").items():
        print(f"export {key}={value}")
    seen = 0
    try:
        while True:
            time.sleep(0.5)
            for rec in fake.requests[seen:]:
                print(rec.status, rec.method, rec.path, rec.query, json.dumps(rec.body)[:2000], flush=True)
            seen = len(fake.requests)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
