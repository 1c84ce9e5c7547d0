"""A local fake of the Google Cloud APIs the project's scripts call through gcloud.

The real `gcloud` CLI is pointed at it with its own endpoint-override settings (see
`FakeGcp.gcloud_env`), so the tests exercise gcloud's real argument handling, request
building, operation polling and error reporting; only Google's servers are replaced.
Each behaviour answers with the shape Google documents; the source is named in a comment.

- Artifact Registry v1: repositories get / create (a long-running operation that is not done
  at first), getIamPolicy / setIamPolicy (etag checked), operations get.
- Compute Engine v1: instances get / insert / aggregated list, zones get / list, zone
  operations get / wait (PENDING -> RUNNING -> DONE), project get.
- IAM v1: service accounts get / create.  Resource Manager v1: projects getIamPolicy /
  setIamPolicy.  Cloud Storage JSON v1: buckets get / insert, bucket IAM get / set.

Errors, as Google sends them (see the knobs on `FakeGcp`): operation errors
(ZONE_RESOURCE_POOL_EXHAUSTED, QUOTA_EXCEEDED), 400 for a machine type and accelerator that
do not go together and for on-demand or reserved A3 High 1/2/4g, 404 for an unknown zone, image family,
machine type or operation, 403 SERVICE_DISABLED and IAM_PERMISSION_DENIED, 409 ALREADY_EXISTS
(a concurrent create) and 409 ABORTED (a stale IAM policy etag).

Every request is recorded as a `Recorded` (method, path, query, JSON body) by
tests/fake_server.py's RecordingServer, so tests can assert what gcloud sent. Anything the fake
does not know answers 501 and is recorded with `unhandled=True`.

Run it by hand to watch what gcloud sends:  python3 tests/fake_gcp.py  (prints the env).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fake_server import Recorded, RecordingServer

AR_PREFIX = "/v1/"
COMPUTE_PREFIX = "/compute/v1/"
IAM_PREFIX = "/iam/v1/"
CRM_PREFIX = "/cloudresourcemanager/v1/"
STORAGE_PREFIX = "/storage/v1/"
PROJECT_NUMBER = "123456789"

# Zones per region (Compute Engine "Regions and zones" page, cloud.google.com/compute/docs/regions-zones;
# a subset). Not every region has a zone -a: us-east1's are b, c and d.
ZONES = {
    "us-east4": ["us-east4-a", "us-east4-b", "us-east4-c"],
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "us-east1": ["us-east1-b", "us-east1-c", "us-east1-d"],
    "us-west1": ["us-west1-a", "us-west1-b", "us-west1-c"],
    "europe-west4": ["europe-west4-a", "europe-west4-b", "europe-west4-c"],
    "asia-southeast1": ["asia-southeast1-a", "asia-southeast1-b", "asia-southeast1-c"],
}
# Deep Learning VM families (docs.cloud.google.com/deep-learning-vm/docs/images) and one of Debian's.
IMAGE_FAMILIES = {
    "deeplearning-platform-release": {
        "common-cu129-ubuntu-2204-nvidia-580",
        "common-cu129-ubuntu-2404-nvidia-580",
        "pytorch-2-9-cu129-ubuntu-2204-nvidia-580",
        "pytorch-2-9-cu129-ubuntu-2404-nvidia-580",
    },
    "debian-cloud": {"debian-12"},
}
# Accelerator-optimized machine types come with their GPUs attached (Compute Engine "GPU machine
# types" page): (accelerator type, count). An explicit guestAccelerators entry must match.
BUILT_IN_GPUS: dict[str, tuple[str, int]] = {
    **{f"a3-highgpu-{n}g": ("nvidia-h100-80gb", n) for n in (1, 2, 4, 8)},
    "a3-megagpu-8g": ("nvidia-h100-mega-80gb", 8),
    "a3-ultragpu-8g": ("nvidia-h200-141gb", 8),
    "a4-highgpu-8g": ("nvidia-b200", 8),
    **{f"a2-highgpu-{n}g": ("nvidia-tesla-a100", n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": ("nvidia-tesla-a100", 16),
    **{f"a2-ultragpu-{n}g": ("nvidia-a100-80gb", n) for n in (1, 2, 4, 8)},
    **{f"g2-standard-{n}": ("nvidia-l4", 1) for n in (4, 8, 12, 16, 32)},
    "g2-standard-24": ("nvidia-l4", 2),
    "g2-standard-48": ("nvidia-l4", 4),
    "g2-standard-96": ("nvidia-l4", 8),
}
# N1 takes attached GPUs of these types only (same page, "N1 machine series").
N1_GPUS = {"nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-p4"}
# Not offered on demand (standard provisioning) without a reservation: A3 High 1/2/4g (Compute
# Engine "GPU machine types", table "consumption option availability by machine type"; gpuhunt
# src/gpuhunt/providers/gcp.py filters them the same way), and A4, A3 Ultra, A3 Mega, offered
# through reservations, Flex-start or Spot (cloud.google.com/cluster-director/docs/
# choose-consumption-option; cloud.google.com/ai-hypercomputer/docs/consumption-models: "Spot: any
# GPU machine except A4X", "Flex-start: any GPU machine except A4X").
NO_ON_DEMAND = {
    "a3-highgpu-1g",
    "a3-highgpu-2g",
    "a3-highgpu-4g",
    "a3-megagpu-8g",
    "a3-ultragpu-8g",
    "a4-highgpu-8g",
}
# A3 High 1/2/4g: Spot or Flex-start only, so no reservation either (the same table).
SPOT_OR_FLEX_ONLY = {"a3-highgpu-1g", "a3-highgpu-2g", "a3-highgpu-4g"}
# Flex-start: "all accelerator-optimized machine types (except A4X and G4)", so not N1 nor
# general-purpose types (cloud.google.com/compute/docs/instances/about-flex-start-vms).
FLEX_START_SERIES = ("a2-", "a3-", "a4-", "g2-")
# Boot disks on Hyperdisk only: A4 and A3 (H200) list Hyperdisk types and no Persistent Disk
# (cloud.google.com/compute/docs/disks/hyperdisks, "Machine series support"); Hyperdisk Balanced is
# the Hyperdisk type a boot disk can be (.../disks/hd-types/hyperdisk-balanced).
HYPERDISK_ONLY = {"a3-ultragpu-8g", "a4-highgpu-8g"}
# General-purpose types the fake knows besides the GPU ones (a few per series; Compute Engine
# "machine families" pages), for machineTypes.list and inserts.
OTHER_TYPES = {f"{series}-standard-{n}" for series in ("n1", "n2", "e2", "c3") for n in (4, 8, 16, 32)}
API_HOSTS = {
    "artifactregistry": "artifactregistry.googleapis.com",
    "compute": "compute.googleapis.com",
    "iam": "iam.googleapis.com",
    "cloudresourcemanager": "cloudresourcemanager.googleapis.com",
    "storage": "storage.googleapis.com",
}


def gcloud_offline_env(config_dir: Path, project: str | None, token: str | None, overrides: dict) -> dict:
    """Environment for the real gcloud with no Google account: API NAME -> URL in OVERRIDES
    (CLOUDSDK_API_ENDPOINT_OVERRIDES_NAME), a private config folder, no prompts or reporting.

    token=None leaves gcloud unauthenticated (no access-token file, no account).
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    env = {f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}": url for api, url in overrides.items()}
    env.update(
        CLOUDSDK_CONFIG=str(config_dir),
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="1",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1",
        CLOUDSDK_METRICS_ENVIRONMENT="hfgpu-tests",
    )
    if project:
        env["CLOUDSDK_CORE_PROJECT"] = project
    if token is not None:
        token_file = config_dir / "access-token"
        token_file.write_text(token)
        env["CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"] = str(token_file)
    return env


def _error(
    code: int, status: str, message: str, details: list | None = None, reason: str = ""
) -> tuple[int, dict]:
    """google.rpc.Status in the JSON error envelope (cloud.google.com/apis/design/errors,
    "HTTP mapping"); `errors[]` is the legacy v1 list the Compute and Storage APIs still send."""
    legacy = [{"message": message, "domain": "global", "reason": reason or status.lower()}]
    body: dict = {"code": code, "message": message, "status": status, "errors": legacy}
    if details:
        body["details"] = details
    return code, {"error": body}


def _storage_error(code: int, reason: str, message: str) -> tuple[int, dict]:
    """Cloud Storage JSON API's error body: code, message and errors[] with a reason, no `status`
    (cloud.google.com/storage/docs/json_api/v1/status-codes)."""
    legacy = [{"message": message, "domain": "global", "reason": reason}]
    return code, {"error": {"code": code, "message": message, "errors": legacy}}


def _error_info(reason: str, domain: str, **metadata: str) -> dict:
    """google.rpc.ErrorInfo (cloud.google.com/apis/design/errors, "Error details")."""
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": domain,
        "metadata": metadata,
    }


def service_disabled(api: str) -> tuple[int, dict]:
    """403 with ErrorInfo reason SERVICE_DISABLED, as for any API not enabled in the project
    (cloud.google.com/service-usage/docs/troubleshoot "SERVICE_DISABLED")."""
    host = API_HOSTS[api]
    message = (
        f"{host.split('.')[0].title()} API has not been used in project {PROJECT_NUMBER} before or it is "
        f"disabled. Enable it by visiting https://console.developers.google.com/apis/api/{host}/overview"
        f"?project={PROJECT_NUMBER} then retry."
    )
    info = _error_info(
        "SERVICE_DISABLED", "googleapis.com", service=host, consumer=f"projects/{PROJECT_NUMBER}"
    )
    return _error(403, "PERMISSION_DENIED", message, [info], reason="accessNotConfigured")


def permission_denied(api: str, permission: str, resource: str) -> tuple[int, dict]:
    """403 PERMISSION_DENIED with ErrorInfo reason IAM_PERMISSION_DENIED (the reason Google's
    APIs send; cloud.google.com/apis/design/errors, "Error details")."""
    message = f"Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
    info = _error_info("IAM_PERMISSION_DENIED", API_HOSTS[api], permission=permission, resource=resource)
    return _error(403, "PERMISSION_DENIED", message, [info], reason="forbidden")


# Cleanup policies: the REST reference (artifact-registry/docs/reference/rest/v1/
# projects.locations.repositories#CleanupPolicy) and the page artifact-registry/docs/repositories/
# cleanup-policy(-overview). A policy has an id, an action (DELETE or KEEP; gcloud passes the policy
# file's "Delete"/"Keep" through, as seen) and either a condition or mostRecentVersions, which "may
# only be specified with a Keep action"; at most 10 policies per repository. A version matching a
# delete policy is deleted unless it matches a keep policy ("the artifact is kept").
CLEANUP_MAX_POLICIES = 10
TAG_STATES = {"TAGGED", "UNTAGGED", "ANY"}


def cleanup_policy_problem(policies: dict) -> str:
    """Why Artifact Registry would refuse the cleanupPolicies map, or "" when it is valid."""
    if len(policies) > CLEANUP_MAX_POLICIES:
        return f"at most {CLEANUP_MAX_POLICIES} cleanup policies per repository"
    for key, policy in policies.items():
        action = str(policy.get("action", "")).upper()
        if policy.get("id") != key:
            return f"policy {key!r}: id must equal its key"
        if action not in ("DELETE", "KEEP"):
            return f"policy {key!r}: action must be DELETE or KEEP"
        has_condition, has_recent = "condition" in policy, "mostRecentVersions" in policy
        if has_condition == has_recent:
            return f"policy {key!r}: give exactly one of condition and mostRecentVersions"
        if has_recent:
            keep = policy["mostRecentVersions"]
            if action != "KEEP":
                return f"policy {key!r}: mostRecentVersions may only be specified with a Keep action"
            if not isinstance(keep.get("keepCount"), int) or keep["keepCount"] < 0:
                return f"policy {key!r}: keepCount must be a non-negative integer"
        else:
            condition = policy["condition"]
            state = str(condition.get("tagState", "ANY")).upper()
            if state not in TAG_STATES:
                return f"policy {key!r}: tagState must be one of {sorted(TAG_STATES)}"
            if condition.get("tagPrefixes") and state != "TAGGED":
                return f"policy {key!r}: tagPrefixes apply to tagState TAGGED only"
    return ""


def cleanup_survivors(policies: dict, versions: list[dict]) -> list[dict]:
    """The versions ({"package", "tags", "createTime"}) that Artifact Registry's cleanup job keeps."""

    def matches(condition: dict, version: dict) -> bool:
        state = str(condition.get("tagState", "ANY")).upper()
        tags = version["tags"]
        if (state == "TAGGED" and not tags) or (state == "UNTAGGED" and tags):
            return False
        prefixes = condition.get("tagPrefixes") or []
        if prefixes and not any(t.startswith(p) for t in tags for p in prefixes):
            return False
        packages = condition.get("packageNamePrefixes") or []
        return not packages or version["package"].startswith(tuple(packages))

    kept_recent: set[int] = set()
    for policy in policies.values():
        recent = policy.get("mostRecentVersions")
        if recent is None:
            continue
        prefixes = tuple(recent.get("packageNamePrefixes") or [""])
        by_package: dict[str, list[int]] = {}
        for i, version in enumerate(versions):
            if version["package"].startswith(prefixes):
                by_package.setdefault(version["package"], []).append(i)
        for indices in by_package.values():
            newest = sorted(indices, key=lambda i: versions[i]["createTime"], reverse=True)
            kept_recent.update(newest[: recent["keepCount"]])
    survivors = []
    for i, version in enumerate(versions):
        conditions = {str(p["action"]).upper(): [] for p in policies.values()}
        for policy in policies.values():
            if "condition" in policy:
                conditions[str(policy["action"]).upper()].append(policy["condition"])
        deleted = any(matches(c, version) for c in conditions.get("DELETE", []))
        kept = i in kept_recent or any(matches(c, version) for c in conditions.get("KEEP", []))
        if kept or not deleted:
            survivors.append(version)
    return survivors


def _etag() -> str:
    return base64.b64encode(uuid.uuid4().bytes[:6]).decode()


@dataclass
class FakeGcp(RecordingServer):
    """The fake's state, its knobs for error tests, and its HTTP server.

    Use as a context manager or call start()/stop().
    """

    repositories: dict[str, dict] = field(default_factory=dict)
    iam_policies: dict[str, dict] = field(default_factory=dict)
    instances: dict[str, dict] = field(default_factory=dict)
    operations: dict[str, dict] = field(default_factory=dict)
    service_accounts: dict[str, dict] = field(default_factory=dict)
    buckets: dict[str, dict] = field(default_factory=dict)
    # Make every create call fail with this (code, status, message), for error tests.
    fail_create: tuple[int, str, str] | None = None
    # Zones whose inserts end in a ZONE_RESOURCE_POOL_EXHAUSTED operation error (a stockout).
    exhausted_zones: set[str] = field(default_factory=set)
    # A quota metric (e.g. "NVIDIA_H100_GPUS") whose limit is 0: inserts end in QUOTA_EXCEEDED.
    quota_exceeded: str = ""
    # Another wording for that error's message (format fields: metric, region), e.g. a translated one.
    quota_message: str = ""
    # APIs (keys of API_HOSTS) not enabled in the project: every call answers 403 SERVICE_DISABLED.
    disabled_apis: set[str] = field(default_factory=set)
    # APIs the caller has no role on: every call answers 403 IAM_PERMISSION_DENIED.
    denied_apis: set[str] = field(default_factory=set)
    # Kinds ("repository", "instance", "service_account", "bucket") that someone else creates
    # between the script's describe and its create: the create answers 409 ALREADY_EXISTS.
    race_create: set[str] = field(default_factory=set)
    # Number of setIamPolicy calls that find the policy changed since it was read (409 ABORTED).
    stale_etags: int = 0
    # Polls before an Artifact Registry create operation is done: the create answers an
    # unfinished google.longrunning.Operation (AIP-151), which gcloud polls. 1: done at the first
    # poll (each further poll costs gcloud's 2 s wait; a test that needs more sets it).
    ar_create_polls: int = 1
    # Zone -> machine types it does not offer: an insert answers 400 (see _no_machine_type).
    zones_without: dict[str, set[str]] = field(default_factory=dict)
    # Refuse every cleanup-policy change with 400 INVALID_ARGUMENT (a limit Google may have but does not
    # document; the script must push anyway).
    fail_cleanup_policy: bool = False
    # Another wording for that 400 (format fields: project, zone, machine), e.g. a translated one.
    machine_type_message: str = ""
    # Eventual consistency: IAM does not know a service account this fake created for its first N
    # policy writes naming it (400 INVALID_ARGUMENT; cloud.google.com/iam/docs/service-accounts-create:
    # a new account "might" take 60 s or more to be usable, retry with exponential backoff).
    sa_unknown_writes: int = 0
    # Eventual consistency: the first N IAM policy writes on a bucket this fake created answer 412
    # (Cloud Storage's "conditionNotMet": storage/docs/json_api/v1/status-codes#412).
    new_bucket_policy_conflicts: int = 0
    # Polls an instance insert stays RUNNING before DONE: a create that takes a while (an
    # Operation is done only when its status is DONE: compute/docs/reference/rest/v1/zoneOperations).
    insert_polls: int = 1

    def __post_init__(self) -> None:
        RecordingServer.__init__(self)
        self._new_accounts: set[str] = set()  # created through this fake: eventually consistent
        self._new_buckets: set[str] = set()

    def start(self) -> FakeGcp:
        return super().start()

    def __enter__(self) -> FakeGcp:
        return self.start()

    def gcloud_env(self, config_dir: Path, project: str | None, token: str | None = "fake-token") -> dict:
        """Environment that points the real gcloud at this fake, with no Google account."""
        overrides = {
            "ARTIFACTREGISTRY": f"{self.url}/",
            "COMPUTE": f"{self.url}{COMPUTE_PREFIX}",
            "IAM": f"{self.url}/iam/",
            "CLOUDRESOURCEMANAGER": f"{self.url}/cloudresourcemanager/",
            "STORAGE": f"{self.url}{STORAGE_PREFIX}",
        }
        return gcloud_offline_env(config_dir, project, token, overrides)

    # -- state for tests ---------------------------------------------------------------
    def add_instance(self, project: str, zone: str, name: str, status: str = "RUNNING") -> None:
        """A VM that exists already, as instances.get returns it."""
        base = f"{self.url}{COMPUTE_PREFIX}projects/{project}/zones/{zone}"
        self.instances[f"projects/{project}/zones/{zone}/instances/{name}"] = {
            "kind": "compute#instance", "name": name, "status": status, "zone": base, "id": "42",
            "selfLink": f"{base}/instances/{name}", "machineType": f"{base}/machineTypes/g2-standard-8",
        }  # fmt: skip

    def add_service_account(self, email: str) -> None:
        project = email.split("@")[1].split(".")[0]
        self.service_accounts[email] = {"name": f"projects/{project}/serviceAccounts/{email}", "email": email,
                                        "projectId": project, "uniqueId": "1"}  # fmt: skip

    # -- queries for tests -----------------------------------------------------------
    def mutations(self) -> list[Recorded]:
        """Requests that would change something at Google (creates, IAM changes)."""
        with self.lock:
            return [
                r
                for r in self.requests
                if r.method in ("POST", "PUT", "PATCH", "DELETE")
                and not re.search(r"(:getIamPolicy|/operations/[^/]+(/wait)?)$", r.path)
            ]

    # -- routing ---------------------------------------------------------------------
    def route(self, rec: Recorded) -> tuple[int, dict] | None:
        routes = [
            (COMPUTE_PREFIX, "compute", self._compute),
            (IAM_PREFIX, "iam", self._iam),
            (CRM_PREFIX, "cloudresourcemanager", self._crm),
            (STORAGE_PREFIX, "storage", self._storage),
            (AR_PREFIX, "artifactregistry", self._artifactregistry),
        ]
        result = None
        for prefix, api, handler in routes:
            if rec.path.startswith(prefix):
                path = rec.path[len(prefix) :]
                if api in self.disabled_apis:
                    return service_disabled(api)
                if api in self.denied_apis:
                    return permission_denied(api, f"{api}.resource.call", path)
                result = handler(rec, path)
                break
        return result

    def _take_failure(self) -> tuple[int, dict] | None:
        if self.fail_create is None:
            return None
        # Whatever Google answer the test names (code, status, message), in the error envelope.
        code, status, message = self.fail_create
        return _error(code, status, message)

    def _raced(self, kind: str) -> bool:
        if kind in self.race_create:
            self.race_create.discard(kind)
            return True
        return False

    def _set_policy(self, key: str, policy: dict) -> tuple[int, dict]:
        """setIamPolicy with etag concurrency control: a policy whose etag is not the current one
        is refused with 409 ABORTED (cloud.google.com/iam/docs/policies#etag, "Using etags to
        avoid race conditions": "...returns a 409 error code, and you must retry")."""
        unknown = self._unknown_account(policy)
        if unknown:
            # IAM's answer for a member it does not know (yet), as gcloud showed it on a real project
            # (docs/test-environment.md, "gcloud's wording of two Google errors"): 400 INVALID_ARGUMENT.
            return _error(
                400, "INVALID_ARGUMENT", f"Service account {unknown} does not exist.", reason="badRequest"
            )
        current = self._policy(key)
        if self.stale_etags > 0:
            self.stale_etags -= 1
            current = {**current, "etag": _etag()}  # someone else changed it meanwhile
            self.iam_policies[key] = current
        # The etag is a bytes field: gcloud (apitools) sends it back URL-safe base64-encoded, which
        # Google accepts as the same value.
        sent, now = (
            str(e or "").translate(str.maketrans("-_", "+/"))
            for e in (policy.get("etag"), current.get("etag"))
        )
        if sent and sent != now:
            return _error(
                409,
                "ABORTED",
                "There were concurrent policy changes. Please retry the whole "
                "read-modify-write with exponential backoff.",
            )
        policy = {**policy, "etag": _etag()}
        self.iam_policies[key] = policy
        return 200, policy

    def _unknown_account(self, policy: dict) -> str:
        """A new service account the policy names, while IAM still does not know it."""
        if self.sa_unknown_writes <= 0:
            return ""
        for binding in policy.get("bindings") or []:
            for member in binding.get("members") or []:
                email = member.removeprefix("serviceAccount:")
                if email in self._new_accounts:
                    self.sa_unknown_writes -= 1
                    return email
        return ""

    def _policy(self, key: str) -> dict:
        """The resource's IAM policy (version 1, no bindings, an etag until someone sets one)."""
        return self.iam_policies.setdefault(key, {"version": 1, "etag": "BwXhqDtQjSw="})

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
            if self._raced("repository"):
                self.repositories[name] = {**(rec.body or {}), "name": name}
            if name in self.repositories:
                # repositories.create on an existing id: 409 ALREADY_EXISTS (AIP-133; wording unverified).
                return _error(409, "ALREADY_EXISTS", f"the repository already exists: {name}")
            repo = {**(rec.body or {}), "name": name}
            repo.setdefault("createTime", "2026-01-01T00:00:00Z")
            self.repositories[name] = repo
            # A google.longrunning.Operation, not done at first (AIP-151); gcloud polls
            # operations.get until `done`, then reads `response`.
            op = f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
            response = {"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.Repository"} | repo
            self.operations[op] = {"polls": self.ar_create_polls, "response": response}
            return 200, {"name": op, "done": False}
        m = re.fullmatch(r"(projects/[^/]+/locations/[^/]+/operations/[^/]+)", path)
        if m and rec.method == "GET":
            op = self.operations.get(m.group(1))
            if op is None:
                # operations.get on an unknown name: 404 NOT_FOUND (AIP-151/AIP-131; wording unverified).
                return _error(404, "NOT_FOUND", f"Operation {m.group(1)} not found.")
            op["polls"] -= 1
            if op["polls"] > 0:
                return 200, {"name": m.group(1), "done": False}
            return 200, {"name": m.group(1), "done": True, "response": op["response"]}
        m = re.fullmatch(r"(projects/[^/]+/locations/[^/]+/repositories/[^/:]+)(:\w+)?", path)
        if not m:
            return None
        name, verb = m.groups()
        if name not in self.repositories:
            # repositories.get on a missing repository: 404 NOT_FOUND (AIP-131; the wording is the
            # generic one Google's gRPC APIs send, seen in gcloud's output).
            return _error(404, "NOT_FOUND", f"Requested entity was not found. ({name})")
        if verb is None and rec.method == "GET":
            return 200, self.repositories[name]
        if verb is None and rec.method == "PATCH":
            return self._patch_repository(name, rec)
        if verb == ":getIamPolicy":
            return 200, self._policy(name)
        if verb == ":setIamPolicy" and rec.method == "POST":
            return self._set_policy(name, dict((rec.body or {}).get("policy") or {}))
        return None

    def _patch_repository(self, name: str, rec: Recorded) -> tuple[int, dict]:
        """repositories.patch with an updateMask (artifact-registry/docs/reference/rest/v1/
        projects.locations.repositories/patch): only the masked fields change. cleanupPolicies is a map
        of id -> CleanupPolicy, checked as the reference and the cleanup-policy page say (below)."""
        body = dict(rec.body or {})
        mask = [f for f in ",".join(rec.query.get("updateMask") or []).split(",") if f]
        if "cleanupPolicies" in mask:
            problem = cleanup_policy_problem(body.get("cleanupPolicies") or {})
            if self.fail_cleanup_policy:
                # Google's generic 400 text (wording unverified; the script reads neither code nor text).
                problem = problem or "Request contains an invalid argument."
            if problem:
                return _error(400, "INVALID_ARGUMENT", f"Invalid cleanup policy: {problem}")
        repo = self.repositories[name]
        for key in mask:
            if key in body:
                repo[key] = body[key]
        return 200, repo

    # IAM: service accounts (cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts) ----------
    def _iam(self, rec: Recorded, path: str) -> tuple[int, dict] | None:
        m = re.fullmatch(r"projects/([^/]+)/serviceAccounts/([^/:]+)", path)
        if m and rec.method == "GET":
            sa = self.service_accounts.get(m.group(2))
            if sa is None:
                # serviceAccounts.get on a missing account: 404 NOT_FOUND (IAM REST reference; wording
                # unverified, the scripts match the code).
                return _error(404, "NOT_FOUND", f"Unknown service account {m.group(2)}")
            return 200, sa
        m = re.fullmatch(r"projects/([^/]+)/serviceAccounts", path)
        if m and rec.method == "POST":
            project = m.group(1)
            body = rec.body or {}
            account = body.get("accountId", "")
            email = f"{account}@{project}.iam.gserviceaccount.com"
            sa = {
                "name": f"projects/{project}/serviceAccounts/{email}",
                "projectId": project,
                "uniqueId": str(uuid.uuid4().int)[:21],
                "email": email,
                "displayName": (body.get("serviceAccount") or {}).get("displayName", ""),
                "etag": "MDEwMjE5MjA=",
                "oauth2ClientId": str(uuid.uuid4().int)[:21],
            }
            if self._raced("service_account"):
                self.service_accounts[email] = sa
            if email in self.service_accounts:
                # serviceAccounts.create on an existing account: 409 ALREADY_EXISTS (IAM REST reference).
                return _error(
                    409,
                    "ALREADY_EXISTS",
                    f"Service account {account} already exists within project projects/{project}.",
                )
            self.service_accounts[email] = sa
            self._new_accounts.add(email)
            return 200, sa
        return None

    # Resource Manager: project IAM policy (cloud.google.com/resource-manager/reference/rest/v1/projects) ---
    def _crm(self, rec: Recorded, path: str) -> tuple[int, dict] | None:
        m = re.fullmatch(r"projects/([^/:]+):(getIamPolicy|setIamPolicy)", path)
        if not (m and rec.method == "POST"):
            return None
        key = f"projects/{m.group(1)}"
        if m.group(2) == "getIamPolicy":
            return 200, self._policy(key)
        return self._set_policy(key, dict((rec.body or {}).get("policy") or {}))

    # Cloud Storage JSON API (cloud.google.com/storage/docs/json_api/v1/buckets) -------------------------
    def _storage(self, rec: Recorded, path: str) -> tuple[int, dict] | None:
        if path == "b" and rec.method == "POST":
            body = dict(rec.body or {})
            name = body.get("name", "")
            if self._raced("bucket"):
                self.buckets[name] = {"name": name, "location": body.get("location", "US").upper()}
            if name in self.buckets:
                # buckets.insert on a bucket you own: 409 (storage/docs/json_api/v1/status-codes).
                return _error(
                    409,
                    "CONFLICT",
                    "Your previous request to create the named bucket succeeded and you already own it.",
                    reason="conflict",
                )
            bucket = {
                "kind": "storage#bucket",
                "id": name,
                "name": name,
                "projectNumber": PROJECT_NUMBER,
                "location": str(body.get("location", "US")).upper(),
                "storageClass": "STANDARD",
                "iamConfiguration": body.get("iamConfiguration", {}),
                # Soft delete is on by default, 7 days (cloud.google.com/storage/docs/soft-delete);
                # gcloud's --soft-delete-duration=0 sends retentionDurationSeconds "0" (seen).
                "softDeletePolicy": body.get("softDeletePolicy") or {"retentionDurationSeconds": "604800"},
                "etag": "CAE=",
            }
            self.buckets[name] = bucket
            self._new_buckets.add(name)
            return 200, bucket
        m = re.fullmatch(r"b/([^/]+)(/iam)?", path)
        if not m:
            return None
        name, iam = m.groups()
        if name not in self.buckets:
            # buckets.get on a missing bucket: 404 notFound (storage/docs/json_api/v1/status-codes).
            return _error(404, "NOT_FOUND", "The specified bucket does not exist.", reason="notFound")
        key = f"projects/_/buckets/{name}"
        if iam is None and rec.method == "GET":
            return 200, self.buckets[name]
        if iam and rec.method == "GET":
            policy = self._policy(key)
            return 200, {"kind": "storage#policy", "resourceId": key, **policy}
        if iam and rec.method == "PUT" and name in self._new_buckets and self.new_bucket_policy_conflicts > 0:
            self.new_bucket_policy_conflicts -= 1
            # 412 conditionNotMet (storage/docs/json_api/v1/status-codes#412_Precondition_Failed).
            return _storage_error(
                412, "conditionNotMet", "At least one of the pre-conditions you specified did not hold."
            )
        if iam and rec.method == "PUT":
            unknown = self._unknown_account(dict(rec.body or {}))
            if unknown:
                # As for the other APIs (see _set_policy), in the Storage error shape.
                return _storage_error(400, "badRequest", f"Service account {unknown} does not exist.")
            body = {k: v for k, v in dict(rec.body or {}).items() if k not in ("kind", "resourceId")}
            code, policy = self._set_policy(key, body)
            return code, ({"kind": "storage#policy", "resourceId": key, **policy} if code == 200 else policy)
        return None

    # Compute Engine (cloud.google.com/compute/docs/reference/rest/v1) ------------------------------------
    def _compute(self, rec: Recorded, path: str) -> tuple[int, dict] | None:
        base = f"{self.url}{COMPUTE_PREFIX}"
        m = re.fullmatch(r"projects/([^/]+)", path)
        if m and rec.method == "GET":
            # projects.get: defaultServiceAccount is the bare e-mail.
            return 200, {
                "kind": "compute#project",
                "name": m.group(1),
                "defaultServiceAccount": f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com",
                "selfLink": f"{base}projects/{m.group(1)}",
            }
        m = re.fullmatch(r"projects/([^/]+)/global/images/family/([^/]+)", path)
        if m and rec.method == "GET":
            # images.getFromFamily: 404 for a family the image project does not publish.
            project, family = m.groups()
            if family not in IMAGE_FAMILIES.get(project, set()):
                return self._not_found(f"projects/{project}/global/images/family/{family}")
            image = f"{family}-v20260101"
            return 200, {
                "kind": "compute#image",
                "name": image,
                "family": family,
                "status": "READY",
                "selfLink": f"{base}projects/{project}/global/images/{image}",
            }
        m = re.fullmatch(r"projects/([^/]+)/zones", path)
        if m and rec.method == "GET":
            # zones.list (compute/docs/reference/rest/v1/zones/list): a ZoneList, {kind "compute#zoneList",
            # items: [Zone], selfLink}, and a nextPageToken only past maxResults (default 500): one page
            # here. gcloud sends its --filter as a server-side `filter` and filters again itself.
            items = [self._zone(m.group(1), z) for zones in ZONES.values() for z in zones]
            return 200, {"kind": "compute#zoneList", "items": items, "selfLink": f"{base}{path}"}
        m = re.fullmatch(r"projects/([^/]+)/zones/([^/]+)/machineTypes", path)
        if m and rec.method == "GET":
            # machineTypes.list (compute/docs/reference/rest/v1/machineTypes/list). gcloud sends its
            # --filter as `filter` and filters again itself, so answering all of the zone's is safe.
            project, zone = m.groups()
            if not self._known_zone(zone):
                return self._not_found(f"projects/{project}/zones/{zone}")
            items = [
                {"kind": "compute#machineType", "name": t, "zone": zone,
                 "selfLink": f"{base}projects/{project}/zones/{zone}/machineTypes/{t}"}
                for t in sorted(self._zone_types(zone))
            ]  # fmt: skip
            return 200, {"kind": "compute#machineTypeList", "items": items, "selfLink": f"{base}{path}"}
        m = re.fullmatch(r"projects/([^/]+)/zones/([^/]+)", path)
        if m and rec.method == "GET":
            project, zone = m.groups()
            if not self._known_zone(zone):
                return self._not_found(f"projects/{project}/zones/{zone}")
            return 200, self._zone(project, zone)
        m = re.fullmatch(r"projects/([^/]+)/aggregated/instances", path)
        if m and rec.method == "GET":
            # instances.aggregatedList: items keyed "zones/ZONE" (compute/docs/reference/rest/v1/
            # instances/aggregatedList).
            items: dict[str, dict] = {}
            for key, inst in self.instances.items():
                zone = key.split("/")[3]
                items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(inst)
            return 200, {"kind": "compute#instanceAggregatedList", "items": items}
        m = re.fullmatch(r"projects/([^/]+)/zones/([^/]+)/operations/([^/]+?)(/wait)?", path)
        if m:
            return self._poll(m.group(3))
        m = re.fullmatch(r"projects/([^/]+)/zones/([^/]+)/instances", path)
        if m and rec.method == "POST":
            return self._insert(rec, *m.groups())
        m = re.fullmatch(r"(projects/([^/]+)/zones/([^/]+)/instances/([^/]+))", path)
        if m and rec.method == "GET":
            key = m.group(1)
            if key not in self.instances:
                return self._not_found(key)
            return 200, self.instances[key]
        return None

    def _known_zone(self, zone: str) -> bool:
        return any(zone in zones for zones in ZONES.values())

    def _zone(self, project: str, zone: str) -> dict:
        # Zone resource (compute/docs/reference/rest/v1/zones): kind "compute#zone", name, status UP or
        # DOWN, region (the region's URL), selfLink.
        base = f"{self.url}{COMPUTE_PREFIX}projects/{project}"
        return {
            "kind": "compute#zone",
            "name": zone,
            "status": "UP",
            "region": f"{base}/regions/{zone.rsplit('-', 1)[0]}",
            "selfLink": f"{base}/zones/{zone}",
        }

    @staticmethod
    def _not_found(resource: str) -> tuple[int, dict]:
        # Compute's 404 (e.g. an unknown zone, image family or instance): reason "notFound".
        return _error(404, "NOT_FOUND", f"The resource '{resource}' was not found", reason="notFound")

    @staticmethod
    def _invalid(message: str) -> tuple[int, dict]:
        # Compute's 400 for a request it cannot serve as written: reason "invalid".
        return _error(400, "INVALID_ARGUMENT", message, reason="invalid")

    def _insert(self, rec: Recorded, project: str, zone: str) -> tuple[int, dict]:
        base = f"{self.url}{COMPUTE_PREFIX}"
        failure = self._take_failure()
        if failure:
            return failure
        if not self._known_zone(zone):
            return self._not_found(f"projects/{project}/zones/{zone}")
        body = dict(rec.body or {})
        key = f"projects/{project}/zones/{zone}/instances/{body.get('name')}"
        refused = self._check_insert(project, zone, body)
        if refused:
            return refused
        if self._raced("instance"):
            self.instances[key] = {**body, "status": "RUNNING"}
        if key in self.instances:
            return _error(
                409, "ALREADY_EXISTS", f"The resource '{key}' already exists", reason="alreadyExists"
            )
        error = None
        machine = body.get("machineType", "").rsplit("/", 1)[-1]
        if zone in self.exhausted_zones:
            # A stockout is an error of the finished operation, not of the insert
            # (compute/docs/troubleshooting/troubleshooting-resource-availability).
            message = (
                f"The zone 'projects/{project}/zones/{zone}' does not have enough resources available "
                "to fulfill the request.  Try a different zone, or try again later."
            )
            error = (
                {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": message}]},
                503,
                "SERVICE UNAVAILABLE",
            )
        elif self.quota_exceeded:
            region = zone.rsplit("-", 1)[0]
            metric = self.quota_exceeded
            # QUOTA_EXCEEDED with errorDetails.quotaInfo (Operation resource, error.errors[].errorDetails[]).
            detail = {
                "quotaInfo": {
                    "metricName": f"compute.googleapis.com/{metric.lower()}",
                    "limitName": f"{metric}-per-project-region",
                    "dimensions": {"region": region},
                    "limit": 0,
                }
            }
            message = (
                self.quota_message or "Quota '{metric}' exceeded.  Limit: 0.0 in region {region}."
            ).format(metric=metric, region=region)
            error = (
                {"errors": [{"code": "QUOTA_EXCEEDED", "message": message, "errorDetails": [detail]}]},
                403,
                "FORBIDDEN",
            )
        else:
            self.instances[key] = body | {
                "kind": "compute#instance",
                "status": "RUNNING",
                "zone": f"{base}projects/{project}/zones/{zone}",
                "selfLink": f"{base}{key}",
                "id": "1234567890",
            }
        op = f"operation-{uuid.uuid4().hex[:12]}-{machine}"
        self.operations[op] = {
            "project": project,
            "zone": zone,
            "target": f"{base}{key}",
            "states": ["RUNNING"] * self.insert_polls + ["DONE"],
            "error": error,
        }
        return 200, self._zone_op(op, "PENDING")

    def _check_insert(self, project: str, zone: str, body: dict) -> tuple[int, dict] | None:
        machine = body.get("machineType", "").rsplit("/", 1)[-1]
        accels = [
            (a.get("acceleratorType", "").rsplit("/", 1)[-1], int(a.get("acceleratorCount", 0)))
            for a in body.get("guestAccelerators") or []
        ]
        sched = body.get("scheduling") or {}
        model = sched.get("provisioningModel", "STANDARD")
        for disk in body.get("disks") or []:
            src = (disk.get("initializeParams") or {}).get("sourceImage", "")
            fam = re.search(
                r"projects/([^/]+)/(?:global/images/family|zones/-/imageFamilyViews)/([^/]+)$", src
            )
            if fam and fam.group(2) not in IMAGE_FAMILIES.get(fam.group(1), set()):
                return self._not_found(f"projects/{fam.group(1)}/global/images/family/{fam.group(2)}")
        if machine not in self._zone_types(zone):
            return self._no_machine_type(project, zone, machine)
        if machine in BUILT_IN_GPUS:
            want = BUILT_IN_GPUS[machine]
            if accels and accels != [want]:
                got = ", ".join(f"{n} x {t}" for t, n in accels)
                # Wording unverified (Compute's 400 "invalid" for a field it refuses).
                return self._invalid(
                    f"Invalid value for field 'resource.guestAccelerators[0].acceleratorType': machine type "
                    f"{machine} comes with {want[1]} x {want[0]} attached; got {got}."
                )
        elif accels and (not machine.startswith("n1-") or any(t not in N1_GPUS for t, _ in accels)):
            t = accels[0][0]
            # Wording unverified (Compute's 400 "invalid"; N1's GPUs: compute/docs/gpus).
            return self._invalid(
                f"Invalid value for field 'resource.guestAccelerators[0].acceleratorType': "
                f"'projects/{project}/zones/{zone}/acceleratorTypes/{t}'. Accelerator type {t} cannot be "
                f"attached to machine type {machine}."
            )
        reserved = (body.get("reservationAffinity") or {}).get(
            "consumeReservationType"
        ) == "SPECIFIC_RESERVATION"
        # The wording of the refusals below is not published; the rules are (see the tables above),
        # so the scripts check them before sending and never read these texts.
        if reserved and machine in SPOT_OR_FLEX_ONLY:
            return self._invalid(
                f"Invalid value for field 'resource.reservationAffinity': machine type {machine} is offered "
                "as Spot or Flex-start only."
            )
        if machine in NO_ON_DEMAND and model not in ("SPOT", "FLEX_START") and not reserved:
            return self._invalid(
                f"Invalid value for field 'resource.scheduling.provisioningModel': '{model}'. Machine type "
                f"{machine} is not available on demand; use SPOT, FLEX_START or a reservation."
            )
        if model == "FLEX_START" and not machine.startswith(FLEX_START_SERIES):
            return self._invalid(
                "Invalid value for field 'resource.scheduling.provisioningModel': 'FLEX_START'. "
                f"Machine type {machine} does not support Flex-start."
            )
        if model == "FLEX_START" and not sched.get("maxRunDuration"):
            return self._invalid("Flex-start VMs require scheduling.maxRunDuration.")
        for disk in body.get("disks") or []:
            disk_type = (disk.get("initializeParams") or {}).get("diskType", "").rsplit("/", 1)[-1]
            if machine in HYPERDISK_ONLY and disk_type and not disk_type.startswith("hyperdisk-"):
                return self._invalid(
                    f"Invalid value for field 'resource.disks[0].initializeParams.diskType': '{disk_type}'. "
                    f"Machine type {machine} does not support disk type {disk_type}."
                )
        return None

    def _zone_types(self, zone: str) -> set[str]:
        """The machine types ZONE offers: all the fake knows, less those in `zones_without`."""
        return (set(BUILT_IN_GPUS) | OTHER_TYPES) - self.zones_without.get(zone, set())

    def _no_machine_type(self, project: str, zone: str, machine: str) -> tuple[int, dict]:
        """400 "invalid" for a machine type the zone does not offer, in Google's wording as gcloud
        showed it (docs/test-environment.md, "gcloud's wording of two Google errors", seen on a real
        project). `machine_type_message` replaces the text, for tests that the scripts do not read it."""
        message = (
            self.machine_type_message
            or (
                "Invalid value for field 'resource.machineType': 'projects/{project}/zones/{zone}/"
                "machineTypes/{machine}'. Machine type with name '{machine}' does not exist in zone '{zone}'."
            )
        ).format(project=project, zone=zone, machine=machine)
        return self._invalid(message)

    def _poll(self, name: str) -> tuple[int, dict]:
        """zoneOperations.get / .wait: each answer moves PENDING -> RUNNING -> DONE. `wait` returns
        the operation when it is DONE *or* when its deadline passes, so gcloud must loop
        (compute/docs/reference/rest/v1/zoneOperations/wait)."""
        status = self._next_status(name, lambda op: "states" in op)
        if status is None:
            return self._not_found(f"operations/{name}")
        return 200, self._zone_op(name, status)

    def _next_status(self, name: str, ours) -> str | None:
        """Operation NAME's next status (PENDING -> RUNNING -> DONE, then DONE again), or None when
        there is no such operation or OURS(operation) says it is of another kind."""
        op = self.operations.get(name)
        if op is None or not ours(op):
            return None
        return op["states"].pop(0) if len(op["states"]) > 1 else op["states"][0]

    def _zone_op(self, name: str, status: str) -> dict:
        op = self.operations[name]
        base = f"{self.url}{COMPUTE_PREFIX}projects/{op['project']}/zones/{op['zone']}"
        out = {
            "kind": "compute#operation",
            "name": name,
            "operationType": "insert",
            "status": status,
            "progress": 100 if status == "DONE" else 0,
            "targetLink": op["target"],
            "zone": base,
            "selfLink": f"{base}/operations/{name}",
        }
        if status == "DONE" and op["error"]:
            # Operation resource: error.errors[] {code, message}, httpErrorStatusCode, httpErrorMessage.
            error, http_code, http_message = op["error"]
            out.update(error=error, httpErrorStatusCode=http_code, httpErrorMessage=http_message)
        return out


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
