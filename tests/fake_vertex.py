"""Local fakes of the Google APIs that a Vertex AI custom job touches, for tests/test_vertex.py.

- `FakeVertex`: the Vertex AI API v1 `projects.locations.customJobs` create / get, as the real
  `gcloud ai custom-jobs create|describe` calls them through its endpoint override
  (`CLOUDSDK_API_ENDPOINT_OVERRIDES_AIPLATFORM`). Shapes and states follow the REST reference:
  https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.customJobs and
  .../v1/JobState (JOB_STATE_QUEUED -> PENDING -> RUNNING -> SUCCEEDED | FAILED ...). A job's
  `state` advances one step on each GET, through `progression`; a FAILED job carries `error`
  (a google.rpc.Status) as the reference says. Errors are Google's JSON error bodies
  (https://cloud.google.com/apis/design/errors): {"error": {"code", "message", "status"}}.
  The same server answers Cloud Logging v2 `entries.list` (POST /v2/entries:list), which
  `gcloud ai custom-jobs stream-logs` polls with a filter on resource.labels.job_id and timestamp
  bounds (https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/list): each job has
  the LogEntry records (resource type ml_job, jsonPayload.message) of `log_lines`.
- `FakeMetadata`: the Compute Engine metadata server's service-account token endpoint
  (https://cloud.google.com/compute/docs/access/authenticate-workloads#applications): it refuses a
  request without `Metadata-Flavor: Google` (403), and answers
  {"access_token", "expires_in", "token_type": "Bearer"}.
- `FakeSecretManager`: Secret Manager v1 `projects.secrets.versions.access`
  (https://cloud.google.com/secret-manager/docs/reference/rest/v1/projects.secrets.versions/access):
  `GET /v1/projects/P/secrets/S/versions/V:access` with `Authorization: Bearer TOKEN` answers
  {"name", "payload": {"data": BASE64, "dataCrc32c"}}; a wrong token 401 UNAUTHENTICATED, an
  unknown secret 404 NOT_FOUND. `latest` is the newest version.

Every request is recorded (method, path, query, headers, JSON body) by tests/fake_server.py's
RecordingServer; anything unknown answers 501 and is marked `unhandled`.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import zlib
from pathlib import Path
from typing import Any

from fake_gcp import gcloud_offline_env
from fake_server import Recorded, RecordingServer

SUCCESS = ["JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
REQUIRED = "List of found errors:\t1.Field: {}; Message: Required field is not set.\t"
FAILURE = ["JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_FAILED"]


def error(code: int, status: str, message: str) -> tuple[int, dict]:
    return code, {"error": {"code": code, "message": message, "status": status}}


class FakeVertex(RecordingServer):
    """Vertex AI v1 customJobs: create (POST .../customJobs) and get (GET /v1/NAME)."""

    def __init__(
        self,
        progression: list[str] | None = None,
        fail_create: tuple[int, str, str] | None = None,
        log_lines: list[str] | None = None,
    ):
        super().__init__()
        self.progression = list(progression or SUCCESS)
        self.fail_create = fail_create
        self.log_lines = list(log_lines or [])
        self.log_entries: dict[str, list[dict]] = {}
        self.jobs: dict[str, dict] = {}
        self._gets: dict[str, int] = {}
        self._next_id = 1234567890123456789

    def gcloud_env(self, config_dir: Path, project: str | None, token: str | None = "fake-token") -> dict:
        """Environment that points the real gcloud's `ai` commands at this fake, with no account."""
        overrides = {"AIPLATFORM": f"{self.url}/", "LOGGING": f"{self.url}/"}
        return gcloud_offline_env(config_dir, project, token, overrides)

    def creates(self) -> list[Recorded]:
        return self.calls("POST", r"/customJobs$")

    def route(self, rec: Recorded) -> tuple[int, dict] | None:
        m = re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)/customJobs", rec.path)
        if m and rec.method == "POST":
            return self._create(*m.groups(), rec.body)
        m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/customJobs/[^/:]+)", rec.path)
        if m and rec.method == "GET":
            return self._get(m.group(1))
        if rec.path == "/v2/entries:list" and rec.method == "POST":
            return self._list_entries(rec.body or {})
        return None

    def _list_entries(self, body: dict) -> tuple[int, dict]:
        text = body.get("filter", "")
        job = re.search(r'resource.labels.job_id="([^"]+)"', text)
        entries = self.log_entries.get(job.group(1), []) if job else []

        def bound(op: str) -> dt.datetime | None:
            m = re.search(rf'timestamp{op}"([^"]+)"', text)
            return dt.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")) if m else None

        ge, gt, lt = bound(">="), bound(">"), bound("<")
        picked = []
        for entry in entries:
            when = dt.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
            if (ge and when < ge) or (gt and when <= gt) or (lt and when >= lt):
                continue
            picked.append(entry)
        if "desc" in body.get("orderBy", "").lower():
            picked.reverse()
        return 200, {"entries": picked[: int(body.get("pageSize") or 1000)]}

    def _make_log(self, name: str) -> None:
        """The job's log lines, stamped a minute before now (past stream-logs' 5 s upper bound)."""
        job_id = name.rsplit("/", 1)[1]
        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
        self.log_entries[job_id] = [
            {
                "logName": f"{name.split('/locations/')[0]}/logs/workerpool0-0",
                "resource": {"type": "ml_job", "labels": {"job_id": job_id, "task_name": "workerpool0-0"}},
                "timestamp": (start + dt.timedelta(milliseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "severity": "INFO",
                "insertId": f"{i:08d}",
                "jsonPayload": {"message": line, "levelname": "INFO"},
            }
            for i, line in enumerate(self.log_lines)
        ]

    def _create(self, project: str, location: str, body: Any) -> tuple[int, dict]:
        if self.fail_create is not None:
            # Whatever Google answer the test names (code, status, message), in Google's error body.
            return error(*self.fail_create)
        # The reference marks displayName and jobSpec.workerPoolSpecs as required; Vertex answers a
        # missing one with 400 INVALID_ARGUMENT.
        if not isinstance(body, dict) or not body.get("displayName"):
            return error(400, "INVALID_ARGUMENT", REQUIRED.format("custom_job.display_name"))
        pools = (body.get("jobSpec") or {}).get("workerPoolSpecs") or []
        if not pools or not all((p.get("containerSpec") or {}).get("imageUri") for p in pools if p):
            return error(400, "INVALID_ARGUMENT", REQUIRED.format("job_spec.worker_pool_specs"))
        job_id = str(self._next_id)
        self._next_id += 1
        name = f"projects/{project}/locations/{location}/customJobs/{job_id}"
        job = {
            **body,
            "name": name,
            "state": self.progression[0],
            "createTime": "2026-11-29T07:00:00.000000Z",
            "updateTime": "2026-11-29T07:00:00.000000Z",
        }
        self.jobs[name] = job
        self._gets[name] = 0
        self._make_log(name)
        return 200, job

    def _get(self, name: str) -> tuple[int, dict]:
        job = self.jobs.get(name)
        if job is None:
            # customJobs.get on an unknown job: 404 NOT_FOUND (AIP-131; wording unverified).
            return error(404, "NOT_FOUND", f'The CustomJob "{name}" does not exist.')
        self._gets[name] += 1
        state = self.progression[min(self._gets[name], len(self.progression) - 1)]
        job["state"] = state
        if state == "JOB_STATE_RUNNING":
            job.setdefault("startTime", "2026-11-29T07:05:00.000000Z")
        if state in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            job["endTime"] = "2026-11-29T07:30:00.000000Z"
        if state == "JOB_STATE_FAILED":
            # CustomJob.error is a google.rpc.Status (REST reference); the replica's message is the
            # one Vertex shows in the console for a non-zero exit (wording unverified).
            job["error"] = {
                "code": 3,
                "message": "The replica workerpool0-0 exited with a non-zero status of 1. "
                "To find out more about why your job exited please check the logs: https://console.cloud.google.com/",
            }
        return 200, job


class FakeMetadata(RecordingServer):
    """The metadata server's default service-account token."""

    TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"

    def __init__(self, token: str = "ya29.fake-metadata-token"):
        super().__init__()
        self.token = token

    def route(self, rec: Recorded) -> tuple[int, dict] | None:
        if rec.path != self.TOKEN_PATH or rec.method != "GET":
            return None
        if rec.headers.get("Metadata-Flavor") != "Google":
            # The metadata server refuses a request without the header with 403 (compute/docs/metadata/
            # querying-metadata, "Query metadata"; its body is plain text there, JSON here).
            return 403, {"error": "Missing Metadata-Flavor:Google header."}
        return 200, {"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"}


class FakeSecretManager(RecordingServer):
    """Secret Manager v1 versions.access, for secrets given as {"projects/P/secrets/S": [v1, v2...]}."""

    def __init__(self, secrets: dict[str, list[str]], token: str = "ya29.fake-metadata-token"):
        super().__init__()
        self.secrets = secrets
        self.token = token

    def route(self, rec: Recorded) -> tuple[int, dict] | None:
        m = re.fullmatch(r"/v1/(projects/[^/]+/secrets/[^/]+)/versions/([^/:]+):access", rec.path)
        if not m or rec.method != "GET":
            return None
        if rec.headers.get("Authorization") != f"Bearer {self.token}":
            # A wrong token: 401 UNAUTHENTICATED (cloud.google.com/apis/design/errors, "HTTP mapping").
            return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        secret, version = m.groups()
        versions = self.secrets.get(secret)
        if not versions:
            # Unknown secret or version: 404 NOT_FOUND (Secret Manager REST reference; wording unverified).
            return error(404, "NOT_FOUND", f"Secret [{secret}] not found or has no versions.")
        number = len(versions) if version == "latest" else int(version) if version.isdigit() else 0
        if not 1 <= number <= len(versions):
            return error(404, "NOT_FOUND", f"Secret Version [{secret}/versions/{version}] not found.")
        data = versions[number - 1].encode()
        return 200, {
            "name": f"{secret}/versions/{number}",
            # dataCrc32c is a CRC32C (Castagnoli) in the reference; zlib only has CRC32, and the
            # client under test does not check it.
            "payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": str(zlib.crc32(data))},
        }
