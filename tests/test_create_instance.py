"""create_instance.sh: the real gcloud CLI against tests/fake_gcp.py (Compute and Artifact
Registry APIs). The tests read the requests gcloud sent: what a VM would be created with."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from fake_gcp import FakeGcp, Recorded
from gcp_env import script_env

SCRIPT = ROOT / "create_instance.sh"
INSTANCES = "/compute/v1/projects/my-project/zones/us-east4-a/instances"
REPO = "projects/my-project/locations/us-east4/repositories/gpu-transformers"
SA = "trainer@my-project.iam.gserviceaccount.com"
FAMILY = "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"


@pytest.fixture
def fake() -> Iterator[FakeGcp]:
    with FakeGcp() as f:
        yield f


def run_script(fake: FakeGcp, tmp: Path, *args: str, **env_kw) -> subprocess.CompletedProcess:
    env = script_env(fake, tmp, tmp, **env_kw)
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def inserts(fake: FakeGcp) -> list[Recorded]:
    return fake.calls("POST", f"^{INSTANCES}$")


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("create_instance.sh: error:")]


def test_default_vm_is_one_h100_on_the_deep_learning_image(fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert fake.requests[0].method == "GET" and fake.requests[0].path == f"{INSTANCES}/gpu-transformers-vm"
    (insert,) = inserts(fake)
    body = insert.body
    assert body["name"] == "gpu-transformers-vm"
    assert body["machineType"].endswith("/zones/us-east4-a/machineTypes/a3-highgpu-1g")
    (acc,) = body["guestAccelerators"]
    assert acc["acceleratorCount"] == 1 and acc["acceleratorType"].endswith(
        "/acceleratorTypes/nvidia-h100-80gb"
    )
    (disk,) = body["disks"]
    assert disk["boot"] and disk["initializeParams"]["sourceImage"].endswith(FAMILY)
    assert disk["initializeParams"]["diskSizeGb"] == "200"
    assert {"key": "install-nvidia-driver", "value": "True"} in body["metadata"]["items"]
    (sa,) = body["serviceAccounts"]
    assert sa["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert "provisioningModel" not in body["scheduling"]
    assert not fake.unhandled()
    # The two lines to use next, on stdout.
    ssh, launch = proc.stdout.strip().splitlines()
    assert shlex.split(ssh) == [
        "gcloud", "compute", "ssh", "gpu-transformers-vm", "--project", "my-project", "--zone", "us-east4-a",
    ]  # fmt: skip
    image = "us-east4-docker.pkg.dev/my-project/gpu-transformers/gpu_transformers:0.1.0"
    assert shlex.split(launch) == [
        "./launch_training.sh",
        "--image",
        image,
        "--restart-on-preemption",
        "bert",
    ]
    assert "gcloud auth configure-docker us-east4-docker.pkg.dev --quiet" in proc.stderr


def test_spot_l4_with_a_service_account(fake: FakeGcp, tmp_path: Path):
    ref = "us-east4-docker.pkg.dev/my-project/gpu-transformers/gpu_transformers@sha256:" + "a" * 64
    proc = run_script(
        fake, tmp_path, "--name", "l4-box", "--spot", "--machine-type", "g2-standard-8",
        "--accelerator", "nvidia-l4,count=1", "--service-account", SA, "--boot-disk-size", "300",
        "--image-ref", ref,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    body = inserts(fake)[0].body
    assert body["machineType"].endswith("/machineTypes/g2-standard-8")
    assert body["guestAccelerators"][0]["acceleratorType"].endswith("/nvidia-l4")
    assert body["disks"][0]["initializeParams"]["diskSizeGb"] == "300"
    assert body["serviceAccounts"][0]["email"] == SA
    sched = body["scheduling"]
    assert sched["provisioningModel"] == "SPOT"
    assert sched["instanceTerminationAction"] == "STOP"
    assert sched["onHostMaintenance"] == "TERMINATE"
    assert proc.stdout.strip().splitlines()[-1].startswith(f"./launch_training.sh --image {ref} ")


def test_second_run_reports_the_vm_and_creates_nothing(fake: FakeGcp, tmp_path: Path):
    assert run_script(fake, tmp_path).returncode == 0
    fake.clear()
    proc = run_script(fake, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert inserts(fake) == []
    assert "instance: gpu-transformers-vm exists (RUNNING); not recreated" in proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 2


def test_grant_reader_binds_the_role_on_the_repository(fake: FakeGcp, tmp_path: Path):
    fake.repositories[REPO] = {"name": REPO, "format": "DOCKER"}
    proc = run_script(fake, tmp_path, "--service-account", SA, "--grant-reader")
    assert proc.returncode == 0, proc.stderr
    (set_policy,) = fake.calls("POST", f"/v1/{REPO}:setIamPolicy$")
    bindings = set_policy.body["policy"]["bindings"]
    assert {"members": [f"serviceAccount:{SA}"], "role": "roles/artifactregistry.reader"} in bindings
    # A later run without --grant-reader checks and finds it.
    fake.clear()
    proc = run_script(fake, tmp_path, "--service-account", SA)
    assert f"reader: serviceAccount:{SA} can read gpu-transformers" in proc.stderr
    assert fake.calls("POST", ":setIamPolicy") == []


def test_missing_reader_role_is_a_warning_naming_the_fix(fake: FakeGcp, tmp_path: Path):
    fake.repositories[REPO] = {"name": REPO, "format": "DOCKER"}
    proc = run_script(fake, tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The project's default Compute Engine service account, read from the Compute API.
    assert (
        "serviceAccount:123456789-compute@developer.gserviceaccount.com has no Artifact Registry role"
        in proc.stderr
    )
    assert "--grant-reader" in proc.stderr


def test_dry_run_prints_the_commands_and_sends_nothing(fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path, "--dry-run", "--spot", "--grant-reader", "--service-account", SA)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert [c[:4] for c in commands[:3]] == [
        ["gcloud", "compute", "instances", "describe"],
        ["gcloud", "compute", "instances", "create"],
        ["gcloud", "artifacts", "repositories", "add-iam-policy-binding"],
    ]
    create = commands[1]
    for flag, value in [
        ("--provisioning-model", "SPOT"),
        ("--instance-termination-action", "STOP"),
        ("--maintenance-policy", "TERMINATE"),
        ("--image-project", "deeplearning-platform-release"),
        ("--metadata", "install-nvidia-driver=True"),
        ("--accelerator", "type=nvidia-h100-80gb,count=1"),
        ("--service-account", SA),
    ]:
        assert create[create.index(flag) + 1] == value
    assert fake.requests == []


def test_create_failure_is_one_line_with_the_fix(fake: FakeGcp, tmp_path: Path):
    fake.fail_create = (
        403,
        "QUOTA_EXCEEDED",
        "Quota 'NVIDIA_H100_GPUS' exceeded. Limit: 0.0 in region us-east4.",
    )
    proc = run_script(fake, tmp_path)
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert "instance: creating gpu-transformers-vm failed:" in err and "NVIDIA_H100_GPUS" in err
    assert "--spot" in err and "g2-standard-8" in err
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "My_VM"], "invalid instance name 'My_VM'"),
        (["--zone", "us-east4"], "invalid zone 'us-east4'"),
        (["--machine-type", "A3 big"], "invalid machine type 'A3 big'"),
        (["--accelerator", "h100"], "invalid --accelerator 'h100'"),
        (["--accelerator", "nvidia-l4,count=3"], "count must be 1, 2, 4, 8 or 16"),
        (["--accelerator", "nvidia-l4,size=3"], "unknown key 'size'"),
        (["--boot-disk-size", "50GB"], "boot disk 50GB is too small"),
        (["--boot-disk-size", "lots"], "invalid boot disk size 'lots'"),
        (["--service-account", "bob"], "invalid service account 'bob'"),
        (["--project", "Nope"], "invalid project id 'Nope'"),
        (["--tag", "-bad"], "invalid tag '-bad'"),
        (["--wat"], "unknown argument '--wat'"),
    ],
)
def test_bad_input_is_one_line_and_sends_nothing(args, message, fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path, *args)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == error_lines(proc)
    assert message in error_lines(proc)[0]
    assert fake.requests == [] and proc.stdout == ""


def test_not_authenticated_and_no_project(fake: FakeGcp, tmp_path: Path):
    proc = run_script(fake, tmp_path / "a", token=None)
    assert proc.returncode == 1
    assert "preflight: gcloud is not authenticated" in error_lines(proc)[0]
    proc = run_script(fake, tmp_path / "b", project=None)
    assert proc.returncode == 1
    assert "no project set; pass --project ID" in error_lines(proc)[0]
    assert fake.requests == []


def test_help_prints_the_header():
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("Summary: create a Compute Engine GPU VM")
    for flag in ("--name", "--zone", "--machine-type", "--accelerator", "--boot-disk-size",
                 "--service-account", "--spot", "--dry-run", "g2-standard-8"):  # fmt: skip
        assert flag in proc.stdout
