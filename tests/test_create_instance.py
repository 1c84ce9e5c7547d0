"""create_instance.sh: the real gcloud CLI against tests/fake_gcp.py (Compute Engine, Artifact
Registry, IAM, Resource Manager and Cloud Storage APIs, answering as Google documents). The tests
read the requests gcloud sent: what a VM would be created with, which roles were granted where."""

from __future__ import annotations

import os
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from fake_gcp import FakeGcp, Recorded
from gcp_env import script_env

SCRIPT = ROOT / "create_instance.sh"
ZONE_PATH = "/compute/v1/projects/my-project/zones/{zone}/instances"
INSTANCES = ZONE_PATH.format(zone="us-east4-a")
REPO = "projects/my-project/locations/us-east4/repositories/gpu-transformers"
VM_SA = "hfgpu-vm@my-project.iam.gserviceaccount.com"
SA = "trainer@my-project.iam.gserviceaccount.com"
FAMILY = "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
PREFIX = "create_instance.sh: error:"


@pytest.fixture
def fake() -> Iterator[FakeGcp]:
    with FakeGcp() as f:
        f.repositories[REPO] = {"name": REPO, "format": "DOCKER"}
        yield f


def run_script(fake: FakeGcp, tmp: Path, *args: str, **env_kw) -> subprocess.CompletedProcess:
    env = script_env(fake, tmp, tmp, **env_kw)
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def inserts(fake: FakeGcp, zone: str = "us-east4-a") -> list[Recorded]:
    return fake.calls("POST", f"^{ZONE_PATH.format(zone=zone)}$")


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(PREFIX)]


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one error line, the last line on stderr; nothing on stdout."""
    assert proc.returncode == 1, proc.stderr
    (err,) = error_lines(proc)
    assert proc.stderr.rstrip("\n").splitlines()[-1] == err
    assert proc.stdout == ""
    return err


def bindings(fake: FakeGcp, path_re: str) -> list[dict]:
    (call,) = fake.calls(None, path_re)
    policy = call.body.get("policy", call.body)
    return policy["bindings"]


def test_default_vm_is_a_spot_h100_run_as_its_own_service_account(fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path)
    assert proc.returncode == 0, proc.stderr
    # a3-highgpu-1g is not offered on demand: Spot, and the user is told.
    assert (
        "a3-highgpu-1g (A3 High) is not offered on demand (offered: spot, flex-start): creating a Spot VM"
        in (proc.stderr)
    )
    (insert,) = inserts(fake)
    body = insert.body
    assert body["name"] == "hfgpu-vm"
    assert body["machineType"].endswith("/zones/us-east4-a/machineTypes/a3-highgpu-1g")
    assert "guestAccelerators" not in body, "A3 comes with its H100; no accelerator is sent"
    sched = body["scheduling"]
    assert sched["provisioningModel"] == "SPOT" and sched["instanceTerminationAction"] == "STOP"
    assert sched["onHostMaintenance"] == "TERMINATE"
    (disk,) = body["disks"]
    assert disk["boot"] and disk["initializeParams"]["sourceImage"].endswith(FAMILY)
    assert disk["initializeParams"]["diskSizeGb"] == "200"
    assert disk["initializeParams"]["diskType"].endswith("/diskTypes/pd-balanced")
    assert {"key": "install-nvidia-driver", "value": "True"} in body["metadata"]["items"]
    # Least privilege: a dedicated service account, not the project's default one.
    (sa,) = body["serviceAccounts"]
    assert sa["email"] == VM_SA
    assert sa["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    (create_sa,) = fake.calls("POST", "^/iam/v1/projects/my-project/serviceAccounts$")
    assert create_sa.body["accountId"] == "hfgpu-vm"
    member = f"serviceAccount:{VM_SA}"
    assert {"role": "roles/artifactregistry.reader", "members": [member]} in bindings(
        fake, f"/v1/{REPO}:setIamPolicy$"
    )
    assert {"role": "roles/logging.logWriter", "members": [member]} in bindings(
        fake, "^/cloudresourcemanager/v1/projects/my-project:setIamPolicy$"
    )
    # gcloud waited on the operation (PENDING -> RUNNING -> DONE): at least two /wait calls.
    assert len(fake.calls("POST", "/operations/[^/]+/wait$")) >= 2
    assert not fake.unhandled()
    ssh, launch = proc.stdout.strip().splitlines()
    assert shlex.split(ssh) == [
        "gcloud", "compute", "ssh", "hfgpu-vm", "--project", "my-project", "--zone", "us-east4-a",
    ]  # fmt: skip
    image = "us-east4-docker.pkg.dev/my-project/gpu-transformers/gpu_transformers:0.1.0"
    assert shlex.split(launch) == [
        "./launch_training.sh",
        "--image",
        image,
        "--restart-on-preemption",
        "bert",
    ]

    # A second run finds everything and changes nothing.
    fake.clear()
    proc = run_script(fake, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert fake.mutations() == []
    assert "instance: hfgpu-vm exists in us-east4-a (RUNNING); not recreated" in proc.stderr


def test_zone_fallback_after_a_stockout(fake: FakeGcp, tmp_path: Path):
    fake.exhausted_zones = {"us-east4-a"}
    proc = run_script(fake, tmp_path, "--vm-name", "l4-box", "--machine-type", "g2-standard-8", "--spot")
    assert proc.returncode == 0, proc.stderr
    assert len(inserts(fake, "us-east4-a")) == 1 and len(inserts(fake, "us-east4-b")) == 1
    assert inserts(fake, "us-east4-c") == []
    assert (
        "instance: us-east4-a has no g2-standard-8 capacity now (stockout); trying the next zone"
        in proc.stderr
    )
    assert "instance: l4-box created in us-east4-b" in proc.stderr
    assert "projects/my-project/zones/us-east4-b/instances/l4-box" in fake.instances
    assert "--zone us-east4-b" in proc.stdout.splitlines()[0]


def test_every_zone_out_of_stock_is_one_line_naming_them(fake: FakeGcp, tmp_path: Path):
    fake.exhausted_zones = {"us-east4-a", "us-east4-c"}
    proc = run_script(fake, tmp_path, "--zones", "us-east4-c,us-east4-a", "--machine-type", "g2-standard-8")
    err = one_error(proc)
    assert "no capacity for g2-standard-8 in any zone tried (us-east4-c us-east4-a)" in err
    assert "--zones" in err
    assert [r.path.split("/")[6] for r in fake.calls("POST", "/instances$")] == ["us-east4-c", "us-east4-a"]
    assert fake.instances == {}


# Google's wording, and another text: the script reads the quotaInfo details gcloud prints, not the text.
@pytest.mark.parametrize(
    "message", ["", "Kontingent {metric} erschöpft ({region})."], ids=["google", "other"]
)
def test_quota_error_names_the_quota_and_how_to_ask(message, fake: FakeGcp, tmp_path: Path):
    fake.quota_exceeded = "NVIDIA_L4_GPUS"
    fake.quota_message = message
    err = one_error(run_script(fake, tmp_path, "--machine-type", "g2-standard-8", "--on-demand"))
    assert "quota NVIDIA_L4_GPUS exceeded in us-east4-a (Limit: 0.0 in region us-east4)" in err
    assert "console.cloud.google.com/iam-admin/quotas" in err
    # Spot VMs use the standard quota unless PREEMPTIBLE_ quota is granted (create-use-spot page).
    assert "Spot VMs use it too unless PREEMPTIBLE_NVIDIA_L4_GPUS is granted" in err


def test_bucket_created_in_the_region_and_bound_to_the_vm_only(fake: FakeGcp, tmp_path: Path):
    fake.add_service_account(SA)
    proc = run_script(
        fake, tmp_path, "--checkpoint-bucket", "gs://my-ckpt/run1", "--service-account", SA,
        "--machine-type", "g2-standard-8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (create,) = fake.calls("POST", "^/storage/v1/b$")
    assert create.body["name"] == "my-ckpt" and create.body["location"] == "us-east4"
    assert create.body["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is True
    (put,) = fake.calls("PUT", "^/storage/v1/b/my-ckpt/iam$")
    assert {"role": "roles/storage.objectUser", "members": [f"serviceAccount:{SA}"]} in put.body["bindings"]
    # --service-account: that identity, no account created; no storage role on the project.
    assert fake.calls("POST", "/serviceAccounts$") == []
    project_roles = bindings(fake, "^/cloudresourcemanager/v1/projects/my-project:setIamPolicy$")
    assert [b["role"] for b in project_roles] == ["roles/logging.logWriter"]
    assert inserts(fake)[0].body["serviceAccounts"][0]["email"] == SA
    assert proc.stdout.splitlines()[-1].endswith("--checkpoint-bucket gs://my-ckpt/run1 bert")
    assert "provisioningModel" not in inserts(fake)[0].body["scheduling"], "g2 runs on demand"


def test_races_and_stale_etags_are_retried_not_fatal(fake: FakeGcp, tmp_path: Path):
    fake.race_create = {"service_account", "bucket", "instance"}
    fake.stale_etags = 1
    proc = run_script(
        fake, tmp_path, "--checkpoint-bucket", "gs://my-ckpt", "--machine-type", "g2-standard-8"
    )
    assert proc.returncode == 0, proc.stderr
    assert "was created meanwhile; using it" in proc.stderr  # service account
    assert "bucket: gs://my-ckpt was created meanwhile" in proc.stderr
    assert "instance: hfgpu-vm was created in us-east4-a meanwhile; not recreated" in proc.stderr
    assert "changed meanwhile (attempt 1); reading it again" in proc.stderr
    assert [r.status for r in fake.calls(None, ":setIamPolicy$")][:2] == [409, 200]


def test_a_policy_that_keeps_changing_is_one_line(fake: FakeGcp, tmp_path: Path):
    fake.add_service_account(SA)
    fake.stale_etags = 3
    err = one_error(run_script(fake, tmp_path, "--service-account", SA, "--machine-type", "g2-standard-8"))
    assert "granting roles/artifactregistry.reader on repository gpu-transformers failed: ABORTED" in err
    assert "run the script again in a minute" in err
    assert [r.status for r in fake.calls("POST", ":setIamPolicy$")] == [409, 409, 409]
    assert fake.instances == {}


def test_flex_start_and_reservation(fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path / "a", "--flex-start", "--max-run-duration", "1d12h")
    assert proc.returncode == 0, proc.stderr
    sched = inserts(fake)[0].body["scheduling"]
    assert sched["provisioningModel"] == "FLEX_START"
    assert sched["maxRunDuration"]["seconds"] == str(36 * 3600)
    assert sched["instanceTerminationAction"] == "DELETE"
    fake.clear()
    proc = run_script(fake, tmp_path / "b", "--vm-name", "h200", "--machine-type", "a3-ultragpu-8g",
                      "--reservation", "my-h200s")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    affinity = inserts(fake)[0].body["reservationAffinity"]
    assert affinity["consumeReservationType"] == "SPECIFIC_RESERVATION"
    assert affinity["values"] == ["my-h200s"]
    # A3 Ultra takes no Persistent Disk (the fake refuses one, as Google's table says).
    (disk,) = inserts(fake)[0].body["disks"]
    assert disk["initializeParams"]["diskType"].endswith("/diskTypes/hyperdisk-balanced")


def test_a_new_account_and_a_new_bucket_are_waited_for_and_soft_delete_is_off(fake: FakeGcp, tmp_path: Path):
    """Google's eventual consistency, injected: IAM does not know the new account for its first two
    policy writes, and the new bucket's first policy write answers 412. The run completes."""
    fake.sa_unknown_writes = 2
    fake.new_bucket_policy_conflicts = 1
    args = ["--checkpoint-bucket", "gs://my-ckpt", "--machine-type", "g2-standard-8"]
    proc = run_script(fake, tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert f"IAM does not know {VM_SA} yet (a new service account can take a minute or more); waiting 1s" in (
        proc.stderr
    )
    granted = "granted roles/artifactregistry.reader on repository gpu-transformers after waiting 3s"
    assert granted in proc.stderr
    assert [r.status for r in fake.calls("POST", ":setIamPolicy$")] == [400, 400, 200, 200]
    assert [r.status for r in fake.calls("PUT", "^/storage/v1/b/my-ckpt/iam$")] == [412, 200]
    (create,) = fake.calls("POST", "^/storage/v1/b$")
    assert create.body["softDeletePolicy"] == {"retentionDurationSeconds": "0"}
    assert "bucket: gs://my-ckpt created in us-east4, soft delete off" in proc.stderr
    assert len(inserts(fake)) == 1


@pytest.mark.parametrize("wait", ["3", "0"])
def test_the_wait_for_a_new_service_account_is_bounded(wait: str, fake: FakeGcp, tmp_path: Path):
    fake.sa_unknown_writes = 100
    err = one_error(
        run_script(fake, tmp_path, "--machine-type", "g2-standard-8", HFGPU_IAM_WAIT_SECONDS=wait)
    )
    assert f"failed: INVALID_ARGUMENT: Service account {VM_SA} does not exist.;" in err
    assert "binding with condition" not in err, "gcloud's generic first line is not the cause"
    fix = f"waited {wait}s for IAM to know {VM_SA}; run the script again in a few minutes"
    assert err.endswith(f"{fix} (HFGPU_IAM_WAIT_SECONDS={wait})")
    assert len(fake.calls("POST", ":setIamPolicy$")) == (3 if wait == "3" else 1)
    assert inserts(fake) == []


def test_an_existing_bucket_with_soft_delete_is_one_line_naming_the_fix(fake: FakeGcp, tmp_path: Path):
    # Google's default for a bucket made elsewhere: 7 days (storage/docs/soft-delete).
    fake.buckets["old-ckpt"] = {"name": "old-ckpt", "location": "US-EAST4",
                                "softDeletePolicy": {"retentionDurationSeconds": "604800"}}  # fmt: skip
    proc = run_script(
        fake, tmp_path, "--checkpoint-bucket", "gs://old-ckpt", "--machine-type", "n2-standard-8"
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "soft delete" in x]
    assert "gs://old-ckpt keeps deleted objects 7 days (soft delete)" in line
    assert line.endswith("to turn it off: gcloud storage buckets update gs://old-ckpt --clear-soft-delete")
    assert fake.calls("POST", "^/storage/v1/b$") == []


def test_a_zone_without_the_machine_type_is_skipped_before_anything_is_made(fake: FakeGcp, tmp_path: Path):
    """The first zone does not offer the type: its machineTypes.list (read-only) says so before the
    account, roles and bucket are made, and no insert is sent there."""
    fake.zones_without = {"us-east4-a": {"g2-standard-8"}}
    proc = run_script(fake, tmp_path, "--machine-type", "g2-standard-8")
    assert proc.returncode == 0, proc.stderr
    assert "create_instance.sh: us-east4-a do not offer g2-standard-8; trying us-east4-b first" in proc.stderr
    assert inserts(fake, "us-east4-a") == []
    assert "instance: hfgpu-vm created in us-east4-b" in proc.stderr


# Google's wording, as gcloud showed it, and another text: the script reads the zone's list, not the text.
@pytest.mark.parametrize(
    "message", ["", "Le type de machine {machine} est absent de {zone}."], ids=["google", "other"]
)
def test_a_zone_lacking_the_type_after_a_stockout_is_skipped_like_one(message, fake: FakeGcp, tmp_path: Path):
    """A later zone (tried after a stockout) that lacks the type is found by its insert's 400."""
    fake.zones_without = {"us-east4-b": {"g2-standard-8"}}
    fake.exhausted_zones = {"us-east4-a"}
    fake.machine_type_message = message
    proc = run_script(fake, tmp_path, "--machine-type", "g2-standard-8")
    assert proc.returncode == 0, proc.stderr
    assert [r.status for r in inserts(fake, "us-east4-b")] == [400]
    assert "instance: us-east4-b does not offer g2-standard-8; trying the next zone" in proc.stderr
    assert "instance: hfgpu-vm created in us-east4-c" in proc.stderr


def test_no_zone_offering_the_machine_type_is_one_line_and_creates_nothing(fake: FakeGcp, tmp_path: Path):
    """Issue 19 (left from issue 20): the zones' machineTypes.list (read-only) is read before the
    service account, its roles and the bucket are made; they used to be made first."""
    fake.zones_without = {z: {"g2-standard-8"} for z in ("us-east4-a", "us-east4-b", "us-east4-c")}
    proc = run_script(
        fake, tmp_path, "--machine-type", "g2-standard-8", "--checkpoint-bucket", "gs://my-ckpt"
    )
    err = one_error(proc)
    assert proc.stderr.splitlines() == [err]
    assert "no zone tried offers g2-standard-8 (us-east4-a us-east4-b us-east4-c)" in err
    assert "gcloud compute machine-types list --filter name=g2-standard-8" in err
    assert fake.mutations() == []


@pytest.mark.parametrize(
    ("args", "model"),
    [(["--machine-type", "a4-highgpu-8g", "--spot"], "SPOT"),
     (["--machine-type", "a3-megagpu-8g", "--flex-start"], "FLEX_START"),
     (["--machine-type", "a3-ultragpu-8g"], "SPOT")],
    ids=["a4-spot", "a3-mega-flex-start", "a3-ultra-default-spot"],
)  # fmt: skip
def test_offers_google_makes_are_accepted(args, model, fake: FakeGcp, tmp_path: Path):
    """Spot and Flex-start for A3 Mega/Ultra and A4 (ai-hypercomputer consumption options)."""
    proc = run_script(fake, tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    (insert,) = inserts(fake)
    assert insert.body["scheduling"]["provisioningModel"] == model


def test_existing_vm_in_another_zone_is_found_not_duplicated(fake: FakeGcp, tmp_path: Path):
    """After a zone fallback, or from an older release (default name gpu-transformers-vm)."""
    fake.add_instance("my-project", "us-east4-b", "gpu-transformers-vm", "TERMINATED")
    fake.add_instance("my-project", "us-east4-c", "someone-else", "RUNNING")
    proc = run_script(fake, tmp_path, "--machine-type", "g2-standard-8")
    assert proc.returncode == 0, proc.stderr
    assert fake.calls("POST", "/instances$") == []
    assert "instance: using gpu-transformers-vm (the old default name)" in proc.stderr
    assert "instance: gpu-transformers-vm exists in us-east4-b (TERMINATED); not recreated" in proc.stderr
    assert shlex.split(proc.stdout.splitlines()[0])[3:] == [
        "gpu-transformers-vm", "--project", "my-project", "--zone", "us-east4-b",
    ]  # fmt: skip


# Each error Google sends gives one line that names the fix, and changes nothing it should not.
@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        (lambda f: f.disabled_apis.add("artifactregistry"), [],
         "enable the API: gcloud services enable artifactregistry.googleapis.com --project my-project"),
        (lambda f: f.disabled_apis.add("compute"), [],
         "enable the API: gcloud services enable compute.googleapis.com --project my-project"),
        (lambda f: f.denied_apis.add("iam"), [], "ask a project owner for roles/iam.serviceAccountAdmin"),
        (lambda f: f.repositories.clear(), [], "repository: gpu-transformers in us-east4 (project "
         "my-project) was not found; run ./build_and_push.sh first"),
        (lambda f: None, ["--zone", "us-east4-z"],
         "unknown zone 'us-east4-z' (--zone); pick one from: gcloud compute zones list"),
        (lambda f: None, ["--image-family", "common-cu118-old"],
         "unknown image family 'common-cu118-old' (--image-family); pick a current one: gcloud compute"),
    ],
    ids=["service-disabled-ar", "service-disabled-compute", "permission-denied", "no-repository",
         "unknown-zone", "unknown-image-family"],
)  # fmt: skip
def test_google_errors_before_any_change_are_one_line(setup, args, expected, fake: FakeGcp, tmp_path: Path):
    setup(fake)
    err = one_error(run_script(fake, tmp_path, *args))
    assert expected in err
    assert fake.mutations() == []


def test_refused_insert_is_one_line_naming_the_fix(fake: FakeGcp, tmp_path: Path):
    """A GPU that lib/machines.sh says N1 takes, refused by the Compute API's insert all the same (a zone
    without it; the 400's wording is unverified): one line naming the fix; the existing account and
    the roles are in place (idempotent), no VM exists."""
    fake.add_service_account(SA)
    fake.fail_create = (
        400, "INVALID_ARGUMENT",
        "Invalid value for field 'resource.guestAccelerators[0].acceleratorType': 'projects/my-project/zones/"
        "us-east4-a/acceleratorTypes/nvidia-tesla-p4'. Accelerator type nvidia-tesla-p4 is not available.",
    )  # fmt: skip
    err = one_error(
        run_script(fake, tmp_path, "--service-account", SA, "--machine-type", "n1-standard-8",
                   "--accelerator", "nvidia-tesla-p4,count=1")
    )  # fmt: skip
    assert "Accelerator type nvidia-tesla-p4 is not available" in err
    assert "N1 takes T4/V100/P100/P4: gcloud compute accelerator-types list --filter zone:us-east4-a" in err
    assert fake.instances == {}


def test_the_fake_refuses_what_google_refuses(fake: FakeGcp, tmp_path: Path):
    """What the script checks before calling, the fake refuses too: straight from gcloud."""
    env = {**os.environ, **fake.gcloud_env(tmp_path / "gcloud", "my-project")}
    base = ["gcloud", "compute", "instances", "create", "vm1", "--zone", "us-east4-a",
            "--image-family", "debian-12", "--image-project", "debian-cloud"]  # fmt: skip
    for extra, message in [
        (["--machine-type", "a3-highgpu-1g"], "a3-highgpu-1g is not available on demand"),
        (["--machine-type", "g2-standard-8", "--accelerator", "type=nvidia-tesla-t4,count=1"],
         "comes with 1 x nvidia-l4 attached"),
        (["--machine-type", "a3-ultragpu-8g", "--provisioning-model", "SPOT",
          "--boot-disk-type", "pd-balanced"], "does not support disk type pd-balanced"),
        (["--machine-type", "a4-highgpu-8g"], "a4-highgpu-8g is not available on demand"),
    ]:  # fmt: skip
        proc = subprocess.run([*base, *extra], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert fake.instances == {}
    # An operation the API does not know is a 404; an Artifact Registry create is not done at once.
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{fake.url}/compute/v1/projects/my-project/zones/us-east4-a/operations/nope")
    assert info.value.code == 404
    fake.ar_create_polls = 2  # still unfinished at the first poll
    proc = subprocess.run(
        ["gcloud", "artifacts", "repositories", "create", "r2", "--repository-format", "docker",
         "--location", "us-east4"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    polls = [r.status for r in fake.calls("GET", "/v1/projects/my-project/locations/us-east4/operations/")]
    assert polls == [200, 200], "gcloud polled the operation until it was done"


def test_operation_error_yaml_becomes_one_line():
    """gcloud prints an operation's error as YAML over several lines (seen; test-environment.md)."""
    out = (
        "ERROR: (gcloud.compute.instances.create) Could not fetch resource:\n---\n"
        "code: ZONE_RESOURCE_POOL_EXHAUSTED\nmessage: The zone 'projects/p/zones/us-east4-a' does not have"
        " enough resources\n  available to fulfill the request.  Try a different zone, or try again later.\n"
    )
    proc = subprocess.run(
        ["bash", "-c", 'source lib/common.sh; source lib/gcp.sh; gcloud_error "$1"', "-", out],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert proc.stdout == (
        "ZONE_RESOURCE_POOL_EXHAUSTED: The zone 'projects/p/zones/us-east4-a' does not have enough resources "
        "available to fulfill the request. Try a different zone, or try again later.\n"
    )


BAD_INPUTS = [
    (["--dry-run=1"], {}, "--dry-run is an on/off flag and takes no value"),
    (["--spot=true"], {}, "--spot is an on/off flag and takes no value"),
    (["--boot-disk-size", "090GB"], {}, "boot disk '090GB' (--boot-disk-size) is too small"),
    (["--boot-disk-size", "99TB"], {}, "boot disk '99TB' (--boot-disk-size) is too large: give at most 64TB"),
    (["--boot-disk-size", "lots"], {}, "invalid boot disk size 'lots' (--boot-disk-size)"),
    (["--on-demand"], {}, "a3-highgpu-1g (A3 High) is not offered as on-demand on Compute Engine (offered:"),
    (["--machine-type", "a4-highgpu-8g", "--on-demand"], {}, "a4-highgpu-8g (A4) is not offered as on-"),
    (["--machine-type", "n1-standard-8", "--accelerator", "nvidia-tesla-t4,count=1", "--flex-start"], {},
     "Compute Engine does not offer n1-standard-8 (N1) as Flex-start (offered: on-demand, spot, reservation"),
    (["--machine-type", "n2-standard-8", "--flex-start"], {}, "Compute Engine does not offer n2-standard-8"),
    (["--machine-type", "g2-standard-8", "--accelerator", "nvidia-tesla-t4"], {},
     "g2-standard-8 comes with 1 x nvidia-l4 attached; leave out --accelerator"),
    # GPUs and machine types that do not go together, refused from lib/machines.sh before any request.
    (["--machine-type", "n1-standard-8", "--accelerator", "nvidia-l4,count=1"], {},
     "nvidia-l4 cannot be attached to n1-standard-8: N1 takes nvidia-tesla-t4, nvidia-tesla-v100,"),
    (["--machine-type", "n2-standard-8", "--accelerator", "nvidia-tesla-t4"], {},
     "n2-standard-8 takes no GPUs: --accelerator attaches GPUs to N1 types only"),
    (["--machine-type", "a3-highgpu-3g"], {}, "'a3-highgpu-3g' (--machine-type) is not a GPU machine"),
    (["--machine-type", "g4-standard-48", "--spot"], {}, "'g4-standard-48' (--machine-type) is not a GPU"),
    (["--reservation", "my-h100s"], {},
     "a3-highgpu-1g (A3 High) is not offered as reservation on Compute Engine (offered: spot, flex-start)"),
    ([], {"HFGPU_IAM_WAIT_SECONDS": "abc"}, "HFGPU_IAM_WAIT_SECONDS must be a whole number from 0 to 3600"),
    ([], {"HFGPU_IAM_WAIT_SECONDS": "-5"}, "HFGPU_IAM_WAIT_SECONDS must be a whole number from 0 to 3600"),
    (["--spot", "--flex-start"], {},
     "--spot and --flex-start cannot be given together: each picks how the VM is provisioned (Spot,"),
    (["--flex-start", "--max-run-duration", "9d"], {}, "duration '9d' (--max-run-duration) must be from"),
    (["--max-run-duration", "1d"], {},
     "--max-run-duration needs --flex-start: it is how long a Flex-start VM runs before it is deleted"),
    (["--vm-name", "My_VM"], {}, "invalid VM name 'My_VM' (--vm-name)"),
    ([], {"VM_NAME": "Bad Name"}, "invalid VM name 'Bad Name' (VM_NAME from the environment)"),
    ([], {"ZONE": "us-east4"}, "invalid zone 'us-east4' (ZONE from the environment)"),
    (["--zones", "us-east4-a,nope"], {}, "invalid zone 'nope' (--zones)"),
    (["--accelerator", "nvidia-tesla-t4,count=3"], {}, "count must be 1, 2, 4, 8 or 16"),
    (["--accelerator", "nvidia-tesla-k80"], {}, "invalid accelerator 'nvidia-tesla-k80' (--accelerator)"),
    (["--checkpoint-bucket", "s3://b/p"], {}, "invalid gs:// URL 's3://b/p' (--checkpoint-bucket)"),
    ([], {"CHECKPOINT_BUCKET": "gs://Bad_Bucket/x"},
     "invalid gs:// URL 'gs://Bad_Bucket/x' (CHECKPOINT_BUCKET from the environment)"),
    (["--service-account", "bob"], {}, "invalid service account 'bob' (--service-account)"),
    (["--project", "Nope"], {}, "invalid project id 'Nope'"),
    (["--tag", "-bad"], {}, "invalid tag '-bad'"),
    (["--wat"], {}, "unknown option '--wat'"),
    (["--image", "UPPER:1"], {}, "invalid image reference 'UPPER:1' (--image)"),
    (["extra"], {}, "unexpected argument 'extra': create_instance.sh takes options only"),
    (["--vm-name"], {}, "--vm-name needs a value"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "env", "message"), BAD_INPUTS, ids=[m[:40] for *_, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_sends_nothing(args, env, message, fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path, *args, **env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == error_lines(proc), "one line, and nothing else"
    assert message in error_lines(proc)[0]
    assert fake.requests == [] and proc.stdout == ""


# Issue 19: an empty value was taken as "use the default" (--reservation= sent SPECIFIC_RESERVATION with
# values [""] after making the account and its roles; --vm-name= and --project= fell back).
@pytest.mark.parametrize(
    "args",
    [["--machine-type", "a3-ultragpu-8g", "--reservation="], ["--vm-name="], ["--project="],
     ["--vm-name", ""], ["--checkpoint-bucket="]],
    ids=["reservation", "vm-name", "project", "vm-name-separate", "checkpoint-bucket"],
)  # fmt: skip
def test_an_empty_value_is_an_error_never_a_default(args, fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path, *args)
    flag = args[-1].split("=")[0] if args[-1] else args[-2]
    assert proc.stderr.splitlines() == [
        f"create_instance.sh: error: {flag} is empty; give {flag_meta(flag)}, or leave it out for the default"
        " (see --help)"
    ]
    assert proc.returncode == 1 and fake.requests == []


def flag_meta(flag: str) -> str:
    return {"--reservation": "NAME", "--vm-name": "NAME", "--project": "ID",
            "--checkpoint-bucket": "gs://BUCKET/PATH"}[flag]  # fmt: skip


# Issue 19: --zone with --zones was accepted (--zones won), and a zone outside LOCATION's region made
# the VM there while the bucket went to the zone's region and the image stayed in LOCATION's.
@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--zone", "us-east4-a", "--zones", "us-east4-b,us-east4-c"], {},
         "--zone and --zones cannot be given together: --zones is the whole list of zones to try, in order,"
         " its first one tried first; put your zone first in --zones, or give --zone alone (the region's"
         " other zones follow it)"),
        (["--zone", "europe-west4-a"], {},
         "zone 'europe-west4-a' (--zone) is not in LOCATION's region us-east4 (the default LOCATION); pick a "
         "zone of us-east4, or pass --location europe-west4 too"),
        ([], {"ZONE": "us-central1-a", "LOCATION": "us-east4"},
         "zone 'us-central1-a' (ZONE from the environment) is not in LOCATION's region us-east4 (LOCATION "
         "from the environment)"),
        (["--zones", "us-east4-a,us-central1-a"], {}, "zone 'us-central1-a' (--zones) is not in LOCATION's"),
        (["--location", "us", "--zone", "europe-west4-a"], {},
         "zone 'europe-west4-a' (--zone) is not in LOCATION's multi-region us (--location)"),
        (["--location", "us"], {}, "LOCATION 'us' (--location) is a multi-region: a VM needs a zone; pass"),
    ],
    ids=["zone-and-zones", "zone-elsewhere", "env-zone-elsewhere", "zones-elsewhere", "multi-region",
         "multi-region-no-zone"],
)  # fmt: skip
def test_zones_conflict_or_outside_the_region_are_one_line_before_anything(
    args, env, line, fake: FakeGcp, tmp_path: Path
):
    proc = run_script(fake, tmp_path, *args, **env)
    assert proc.returncode == 1
    (err,) = proc.stderr.splitlines()
    assert err.startswith(f"{PREFIX} {line}")
    assert fake.requests == []


def test_n1_without_an_accelerator_is_refused(fake: FakeGcp, tmp_path: Path):
    """Issue 19: an N1 type without --accelerator made a VM without a GPU. N1 gets its GPUs only from
    --accelerator, so its absence is a forgotten flag: refused (a type without GPUs at all, e.g. N2,
    is a deliberate CPU VM: one warning, created; test_an_existing_bucket_with_soft_delete_...)."""
    proc = run_script(fake, tmp_path, "--machine-type", "n1-standard-8")
    assert proc.stderr.splitlines() == [
        f"{PREFIX} n1-standard-8 (N1) has no GPU without --accelerator, and launch_training.sh needs one; add"
        " e.g. --accelerator nvidia-tesla-t4,count=1, or pick a GPU machine type (g2-standard-8)"
    ]
    assert proc.returncode == 1 and fake.requests == []


def machine_gpu_mismatch(*args: str) -> str:
    """lib/machines.sh's line for GPUs a machine type cannot take (submit_vertex_job.sh's too)."""
    return subprocess.run(
        ["bash", "-c", 'source lib/common.sh; source lib/machines.sh; machine_gpu_mismatch "$@"', "-", *args],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


# Issue 19: the same mismatch gives the same line from create_instance.sh and submit_vertex_job.sh:
# both read lib/machines.sh's machine_gpu_mismatch.
@pytest.mark.parametrize(
    ("machine", "gpu", "count"),
    [("n1-standard-8", "nvidia-l4", "1"), ("g2-standard-8", "nvidia-tesla-t4", "1"),
     ("g2-standard-8", "nvidia-l4", "2"), ("n2-standard-8", "nvidia-tesla-t4", "1"),
     ("a3-highgpu-8g", "nvidia-h100-80gb", "4")],
    ids=["l4-on-n1", "t4-on-g2", "two-l4-on-g2-8", "t4-on-n2", "four-h100-on-a3-8g"],
)  # fmt: skip
def test_machine_and_gpu_mismatches_are_the_shared_line(machine, gpu, count, fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path, "--machine-type", machine, "--accelerator", f"{gpu},count={count}")
    assert proc.stderr.splitlines() == [f"{PREFIX} {machine_gpu_mismatch(machine, gpu, count)}"]
    assert proc.returncode == 1 and fake.requests == []
    if machine.startswith("n1-"):
        assert (
            "N1 takes nvidia-tesla-t4, nvidia-tesla-v100, nvidia-tesla-p100, nvidia-tesla-p4 only"
            in (proc.stderr)
            and "(G2: docs/spot-and-zones.md)" in proc.stderr
        )


def test_a_location_without_zones_is_one_line_naming_location(fake: FakeGcp, tmp_path: Path):
    """Issue 19: LOCATION=us-east99 gave 4 lines and suggested running build_and_push.sh (the repository
    check came first). The zones are read first, read-only; nothing else is said."""
    proc = run_script(fake, tmp_path, LOCATION="us-east99")
    assert proc.stderr.splitlines() == [
        f"{PREFIX} LOCATION 'us-east99' (LOCATION from the environment) is not a Compute Engine region: it"
        " has no zones; pick a region from: gcloud compute regions list"
    ]
    assert proc.returncode == 1 and fake.mutations() == []


def test_an_open_quote_in_dotenv_names_the_file_and_line(fake: FakeGcp, tmp_path: Path):
    """Issue 19: an unterminated quote in .env was blamed on "the default ZONE"."""
    dotenv = tmp_path / "my.env"
    dotenv.write_text('VM_NAME=box\nZONE="us-east4-b\n')
    proc = run_script(fake, tmp_path, CONFIG_FILE=str(dotenv))
    assert proc.stderr.splitlines() == [
        f"{PREFIX} {dotenv}:2: the value of ZONE opens a quote it does not close; close it on the same line"
    ]
    assert proc.returncode == 1 and fake.requests == []


def test_old_flags_still_work_with_a_deprecation_line(fake: FakeGcp, tmp_path: Path):
    proc = run_script(
        fake, tmp_path, "--dry-run", "--name", "old-vm", "--image", "other_image", "--grant-reader"
    )
    assert proc.returncode == 0, proc.stderr
    assert "--name is deprecated" in proc.stderr and "use --vm-name" in proc.stderr
    assert "use --image-name NAME" in proc.stderr
    assert "--grant-reader is deprecated" in proc.stderr
    assert "gcloud compute instances create old-vm " in proc.stdout
    assert "/gpu-transformers/other_image:0.1.0" in proc.stderr


def test_dry_run_prints_the_commands_and_sends_nothing(fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path, "--dry-run", "--checkpoint-bucket", "gs://b-1/p")
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert [c[1:4] for c in commands] == [
        ["artifacts", "repositories", "describe"],
        ["iam", "service-accounts", "describe"],
        ["iam", "service-accounts", "create"],
        ["artifacts", "repositories", "add-iam-policy-binding"],
        ["projects", "add-iam-policy-binding", "my-project"],
        ["storage", "buckets", "describe"],
        ["storage", "buckets", "create"],
        ["storage", "buckets", "add-iam-policy-binding"],
        ["compute", "instances", "list"],
        ["compute", "instances", "create"],
    ]
    create = commands[-1]
    for flag, value in [
        ("--provisioning-model", "SPOT"),
        ("--instance-termination-action", "STOP"),
        ("--maintenance-policy", "TERMINATE"),
        ("--image-project", "deeplearning-platform-release"),
        ("--service-account", VM_SA),
        ("--boot-disk-size", "200GB"),
    ]:
        assert create[create.index(flag) + 1] == value
    assert "--accelerator" not in create
    assert fake.requests == []


def test_not_authenticated_and_no_project(fake: FakeGcp, tmp_path: Path):
    err = one_error(run_script(fake, tmp_path / "a", token=None))
    assert "preflight: gcloud is not authenticated" in err
    err = one_error(run_script(fake, tmp_path / "b", project=None))
    assert "no project set; pass --project ID" in err
    assert fake.requests == []


def test_help_prints_the_header():
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("Summary: create a Compute Engine GPU VM")
    for flag in ("--vm-name", "--zone", "--zones", "--machine-type", "--accelerator", "--boot-disk-size",
                 "--service-account", "--spot", "--flex-start", "--reservation", "--checkpoint-bucket",
                 "--dry-run", "g2-standard-8"):  # fmt: skip
        assert flag in proc.stdout
