"""Vertex AI: submit_vertex_job.sh, and the image run the way Vertex runs it.

- submit_vertex_job.sh drives the REAL `gcloud ai custom-jobs create|describe`, pointed at
  tests/fake_vertex.py with gcloud's own endpoint override (CLOUDSDK_API_ENDPOINT_OVERRIDES_AIPLATFORM);
  the tests read the request body gcloud sent, field by field.
- Vertex's runtime is emulated with the real Docker engine: two containers of the image on one
  user-defined bridge network, each with the CLUSTER_SPEC and AIP_* variables Vertex documents
  (cloud.google.com/vertex-ai/docs/training/distributed-training, .../code-requirements), a shared
  host folder mounted at /gcs standing in for the Cloud Storage FUSE mount, training together on CPU.
- Secrets: the image's fetch-secrets against tests/fake_vertex.py's metadata server and Secret
  Manager on the host's loopback (so that container runs with --network host).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, copy_tiny_models, docker
from fake_gcp import FakeGcp
from fake_vertex import FAILURE, SUCCESS, FakeMetadata, FakeSecretManager, FakeVertex
from gcp_env import script_env

SCRIPT = ROOT / "submit_vertex_job.sh"
TRAIN = ROOT / "build_image" / "bin" / "train"
JOBS = "/v1/projects/my-project/locations/us-east4/customJobs"
IMAGE = "us-east4-docker.pkg.dev/my-project/gpu-transformers/gpu_transformers:0.1.0"
SA = "trainer@my-project.iam.gserviceaccount.com"
CANARY = "hf_canary_" + uuid.uuid4().hex
PROG_ERROR = "submit_vertex_job.sh: error:"


@pytest.fixture
def fake() -> Iterator[FakeVertex]:
    with FakeVertex() as f:
        yield f


def submit(fake: FakeVertex, tmp: Path, *args: str, **env_kw: str) -> subprocess.CompletedProcess:
    env = script_env(fake, tmp, tmp, HFGPU_POLL_SECONDS="0", **env_kw)  # type: ignore[arg-type]
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(PROG_ERROR)]


def env_of(container_spec: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_spec.get("env", [])}


# ------------------------------------------------------------ the request gcloud sends


def test_two_spot_nodes_request_field_by_field(fake: FakeVertex, tmp_path: Path):
    proc = submit(
        fake,
        tmp_path,
        *shlex.split(
            "--nodes 2 --machine-type a2-highgpu-2g --accelerator nvidia-tesla-a100,count=2 --spot"
            f" --output gs://my-bucket/runs/bert/ --service-account {SA} --display-name bert-2x2"
            " --env RUN_NOTE=plain --env TOKENIZERS_PARALLELISM=false --secret HF_TOKEN=hf-token:3"
            " --secret WANDB_API_KEY=projects/other-proj/secrets/wandb/versions/latest"
            " bert -- --num_train_epochs 1 --learning_rate 3e-5"
        ),
        HF_TOKEN=CANARY,  # in the caller's environment: it must not travel
    )
    assert proc.returncode == 0, proc.stderr
    (create,) = fake.creates()
    assert create.path == JOBS
    # stdout: the job's resource name, nothing else.
    assert proc.stdout == f"{JOBS[4:]}/1234567890123456789\n"
    body = create.body
    assert body["displayName"] == "bert-2x2"
    spec = body["jobSpec"]
    assert set(spec) == {"workerPoolSpecs", "scheduling", "serviceAccount", "baseOutputDirectory"}
    chief, workers = spec["workerPoolSpecs"]
    assert chief["replicaCount"] == "1" and workers["replicaCount"] == "1"  # int64: JSON strings
    for pool in (chief, workers):
        assert pool["machineSpec"] == {
            "machineType": "a2-highgpu-2g",
            "acceleratorType": "NVIDIA_TESLA_A100",
            "acceleratorCount": 2,
        }
        container = pool["containerSpec"]
        assert container["imageUri"] == IMAGE
        assert "command" not in container  # the image's entrypoint (tini, secrets, HOME) stays
        assert container["args"] == [
            "train",
            "/app/test_training_bert_base.py",
            "--num_train_epochs",
            "1",
            "--learning_rate",
            "3e-5",
        ]
        assert env_of(container) == {
            "RUN_NOTE": "plain",
            "TOKENIZERS_PARALLELISM": "false",
            "HFGPU_SECRETS": "HF_TOKEN=projects/my-project/secrets/hf-token/versions/3,"
            "WANDB_API_KEY=projects/other-proj/secrets/wandb/versions/latest",
        }
    assert spec["scheduling"] == {"strategy": "SPOT"}
    assert spec["serviceAccount"] == SA
    assert spec["baseOutputDirectory"] == {"outputUriPrefix": "gs://my-bucket/runs/bert"}
    assert CANARY not in json.dumps(body) + proc.stdout + proc.stderr
    assert not fake.unhandled()


def test_flex_start_one_node_with_vertex_names_and_config_defaults(fake: FakeVertex, tmp_path: Path):
    proc = submit(
        fake,
        tmp_path,
        *shlex.split(
            "--flex-start --max-wait 90m --machine-type g2-standard-24 --accelerator NVIDIA_L4,count=2"
            " gs://my-bucket/code/my_train.py"
        ),
        LOCATION="europe-west4",
        REPO_NAME="repo",
        IMAGE_NAME="img",
        TAG="7",
    )
    assert proc.returncode == 0, proc.stderr
    (create,) = fake.creates()
    assert create.path == "/v1/projects/my-project/locations/europe-west4/customJobs"
    spec = create.body["jobSpec"]
    (pool,) = spec["workerPoolSpecs"]
    assert pool["replicaCount"] == "1"
    assert pool["machineSpec"] == {
        "machineType": "g2-standard-24",
        "acceleratorType": "NVIDIA_L4",
        "acceleratorCount": 2,
    }
    assert pool["containerSpec"]["imageUri"] == "europe-west4-docker.pkg.dev/my-project/repo/img:7"
    assert pool["containerSpec"]["args"] == ["train", "/gcs/my-bucket/code/my_train.py"]
    assert "env" not in pool["containerSpec"]
    assert spec["scheduling"] == {"strategy": "FLEX_START", "maxWaitDuration": "5400s"}
    assert "serviceAccount" not in spec and "baseOutputDirectory" not in spec
    assert create.body["displayName"].endswith("-my_train")
    assert "no --output" in proc.stderr  # outputs would be lost: said once, as a warning


def test_defaults_are_one_h100_on_demand(fake: FakeVertex, tmp_path: Path):
    proc = submit(fake, tmp_path, "--output", "gs://b-1/x")
    assert proc.returncode == 0, proc.stderr
    (create,) = fake.creates()
    (pool,) = create.body["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": "a3-highgpu-1g",
        "acceleratorType": "NVIDIA_H100_80GB",
        "acceleratorCount": 1,
    }
    assert pool["containerSpec"]["imageUri"] == IMAGE
    assert "scheduling" not in create.body["jobSpec"]
    assert "a3-highgpu-1g is not offered on demand on Compute Engine (lib/machines.sh)" in proc.stderr


def test_image_from_the_config_layer_and_flags_win(fake: FakeVertex, tmp_path: Path):
    def image_of(*args: str, **env: str) -> str:
        proc = submit(fake, tmp_path, "--dry-run", "--output", "gs://b-1/x", *args, **env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.partition("\n# ")[0])["workerPoolSpecs"][0]["containerSpec"]["imageUri"]

    assert image_of(REGISTRY_HOST="europe-docker.pkg.dev") == IMAGE.replace(
        "us-east4-docker", "europe-docker"
    )
    dotenv = tmp_path / "team.env"
    dotenv.write_text("CONTAINER_NAME=us-docker.pkg.dev/team/repo/trainer:5\nLOCATION=europe-west4\n")
    assert image_of(CONFIG_FILE=str(dotenv)) == "us-docker.pkg.dev/team/repo/trainer:5"
    assert image_of("--image", "eu.gcr.io/p/i:1", CONFIG_FILE=str(dotenv)) == "eu.gcr.io/p/i:1"
    proc = submit(fake, tmp_path, "--dry-run", "--region", "us-central1", CONFIG_FILE=str(dotenv))
    assert "--region us-central1" in proc.stdout
    dotenv.write_text("CONTAINER_NAME=trainer:5\n")
    proc = submit(fake, tmp_path, "--output", "gs://b-1/x", CONFIG_FILE=str(dotenv))
    (line,) = error_lines(proc)
    assert f"image 'trainer:5' (CONTAINER_NAME in {dotenv}:1) names no registry" in line
    assert not fake.requests


def test_dry_run_prints_the_spec_and_the_command_and_submits_nothing(fake: FakeVertex, tmp_path: Path):
    proc = submit(fake, tmp_path, "--dry-run", "--nodes", "3", "--spot", "--output", "gs://b-1/run", "gpt2")
    assert proc.returncode == 0, proc.stderr
    assert not fake.requests
    spec_text, _, commands = proc.stdout.partition("\n# ")
    spec = json.loads(spec_text)
    assert [p["replicaCount"] for p in spec["workerPoolSpecs"]] == [1, 2]
    assert spec["workerPoolSpecs"][0]["containerSpec"]["args"] == [
        "train",
        "/gcs/b-1/run/hfgpu-scripts/test_training_distillgpt2.py",
    ]
    upload, create = commands.splitlines()[1:]
    assert shlex.split(upload)[:3] == ["gcloud", "storage", "cp"]
    assert shlex.split(upload)[-1] == "gs://b-1/run/hfgpu-scripts/test_training_distillgpt2.py"
    assert shlex.split(create)[:4] == ["gcloud", "ai", "custom-jobs", "create"]
    assert "--config" in shlex.split(create)


def test_follow_streams_the_logs_and_states_until_success(tmp_path: Path):
    lines = ["train: nodes=1 node_rank=0 procs_per_node=1", "{'loss': 0.6931, 'epoch': 1.0}"]
    with FakeVertex(progression=SUCCESS, log_lines=lines) as fake:
        proc = submit(fake, tmp_path, "--follow", "--output", "gs://b-1/x", HFGPU_LOG_GRACE_SECONDS="2")
        gets = fake.calls("GET", "/customJobs/")
        listed = fake.calls("POST", "^/v2/entries:list$")
    assert proc.returncode == 0, proc.stderr
    # Each state change once, in Vertex's order (stream-logs reads the job too, so a state may
    # pass between two polls), ending in SUCCEEDED.
    seen = [
        line.split(": ", 1)[1]
        for line in proc.stderr.splitlines()
        if line.startswith("submit_vertex_job.sh: JOB_")
    ]
    assert seen == sorted(set(seen), key=SUCCESS.index) and seen[-1] == "JOB_STATE_SUCCEEDED", seen
    assert len(gets) >= 3
    # The job's log lines, as gcloud's stream-logs prints them (severity, time, task, message).
    for line in lines:
        assert f"workerpool0-0\t{line}" in proc.stderr.replace("  ", "\t")
    assert listed and 'resource.labels.job_id="1234567890123456789"' in listed[0].body["filter"]
    assert proc.stdout == "projects/my-project/locations/us-east4/customJobs/1234567890123456789\n"
    assert not fake.unhandled()


def test_follow_until_failure_exits_1_with_vertex_error(tmp_path: Path):
    with FakeVertex(progression=FAILURE) as fake:
        proc = submit(fake, tmp_path, "--follow", "--output", "gs://b-1/x", HFGPU_LOG_GRACE_SECONDS="0")
    assert proc.returncode == 1
    assert "JOB_STATE_FAILED" in proc.stderr
    assert (
        "ended in JOB_STATE_FAILED: The replica workerpool0-0 exited with a non-zero status of 1"
        in proc.stderr
    )


def test_vertex_refusal_is_one_line(tmp_path: Path):
    refusal = (403, "PERMISSION_DENIED", "Permission 'aiplatform.customJobs.create' denied on resource")
    with FakeVertex(fail_create=refusal) as fake:
        proc = submit(fake, tmp_path, "--output", "gs://b-1/x")
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "gcloud ai custom-jobs create failed" in line and "aiplatform.customJobs.create" in line
    assert proc.stdout == ""


BAD_INPUTS = [
    ("--nodes 0", "--nodes must be from 1 to 1000"),
    ("--accelerator nvidia-k9000,count=1", "is not a Vertex AI GPU"),
    ("--accelerator NVIDIA_L4", "--accelerator must be TYPE,count=N"),
    ("--accelerator NVIDIA_L4,count=0", "--accelerator count must be from 1 to 16"),
    ("--spot --flex-start", "--spot and --flex-start cannot be given together"),
    # Vertex AI's Flex-start takes L4, A100, H100, H200 and B200 only (lib/machines.sh, vertexdws).
    (
        "--flex-start --machine-type n1-standard-8 --accelerator nvidia-tesla-t4,count=1",
        "offered only for L4, A100, H100, H200 and B200 GPUs, not NVIDIA_TESLA_T4; use --spot",
    ),
    ("--flex-start --machine-type n2-standard-8", "--flex-start on Vertex AI needs GPUs"),
    # GPUs that do not fit the machine type (lib/machines.sh), refused before any request, in
    # create_instance.sh's words (test_a_mismatch_gets_the_same_line_as_create_instance).
    (
        "--machine-type g2-standard-8 --accelerator NVIDIA_TESLA_T4,count=1",
        "g2-standard-8 comes with 1 x NVIDIA_L4 attached",
    ),
    (
        "--machine-type g2-standard-8 --accelerator NVIDIA_H100_80GB,count=1",
        "g2-standard-8 comes with 1 x NVIDIA_L4 attached; leave out --accelerator",
    ),
    ("--machine-type a3-highgpu-1g --accelerator nvidia-h100-80gb,count=8", "a3-highgpu-1g comes with 1 x"),
    (
        "--machine-type n1-standard-8 --accelerator NVIDIA_L4,count=1",
        "NVIDIA_L4 cannot be attached to n1-standard-8",
    ),
    ("--machine-type n2-standard-8 --accelerator nvidia-tesla-t4,count=1", "n2-standard-8 takes no GPUs"),
    # A machine type that does not exist: a GPU family lib/machines.sh has no row for.
    ("--machine-type a3-highgpu-3g", "'a3-highgpu-3g' (--machine-type) is not a GPU machine type"),
    ("--machine-type A3-HIGHGPU-1G", "invalid machine type 'A3-HIGHGPU-1G' (--machine-type)"),
    ("--max-wait 2h", "--max-wait needs --flex-start"),
    ("--flex-start --max-wait soon", "--max-wait must be a duration"),
    ("--output /tmp/out", "invalid gs:// URL '/tmp/out' (--output)"),
    ("--secret HF_TOKEN", "--secret must be NAME=SECRET"),
    ("--secret HF_TOKEN=hf:v1", "must be projects/P/secrets/S/versions/V"),
    ("--env HF_TOKEN=hf_abc", "use --secret HF_TOKEN=SECRET"),
    ("--env=MY_DB_PASSWORD=x", "use --secret MY_DB_PASSWORD=SECRET"),
    ("--env 1X=2", "--env must be NAME=VALUE"),
    # A newline inside --env would end the variable's line in the job's specification.
    ("--env 'RUN_NOTE=a\nb'", "--env has a newline or another control character in $'RUN_NOTE=a\\nb'"),
    ("./my_train.py", "upload it (gcloud storage cp"),
    ("gs://my-bucket/train.txt", "must be a .py file in a bucket"),
    ("nosuch", "is not bundled in the image"),
    ("--image gpu_transformers:0.1.0", "names no registry"),
    # A malformed digest: Vertex AI would accept the job and fail to pull the image at start.
    (
        "--image us-east4-docker.pkg.dev/my-project/gpu-transformers/gpu_transformers@sha256:abc",
        "invalid image reference",
    ),
    ("--service-account bob", "invalid service account 'bob' (--service-account)"),
    ("--region Europe", "invalid location 'Europe' (--region)"),
    ("--location us", "Vertex AI runs a job in a region"),
    ("--region us-east4 --location us-east4", "--location and --region cannot be given together"),
    # An empty value is an error, never the default.
    ("--display-name=", "--display-name is empty"),
    ("--project=", "--project is empty"),
    ("--region=", "--region is empty"),
    ("--location=", "--location is empty"),
    ("--image=", "--image is empty"),
    ("--machine-type=", "--machine-type is empty"),
    ("--output=", "--output is empty"),
    # An output path after -- that is not in Cloud Storage is lost with the job's machines.
    ("-- --output_dir /tmp/x", "--output_dir '/tmp/x' (after --) is on the job's machine"),
    ("-- --logging-dir=runs", "--logging-dir 'runs' (after --) is on the job's machine"),
    ("-- --model_dir /gcs/b-1/../../tmp/m", "--model_dir '/gcs/b-1/../../tmp/m' (after --) is on the job's"),
    # argparse keeps the last of a repeated option: that one is checked (the reverse is taken).
    ("-- --output_dir /gcs/b-1/out --output_dir /tmp/x", "--output_dir '/tmp/x' (after --) is on the job's"),
    ("--display-name " + "x" * 129, "--display-name is 129 characters long; Vertex AI takes at most 128"),
    ("--spot=yes", "--spot is an on/off flag"),
    ("--gpus 1", "unknown option '--gpus'"),
    ("bert gpt2", "give one SCRIPT"),
    ("--follow --dry-run", "--follow and --dry-run cannot be given together"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[a for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_submits_nothing(fake: FakeVertex, tmp_path: Path, args: str, message: str):
    extra = [] if "--output" in args else ["--output", "gs://b-1/x"]
    proc = submit(fake, tmp_path, *extra, *shlex.split(args))
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert message in line, line
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not fake.creates() and not fake.requests
    assert proc.stdout == ""


def test_location_is_another_name_of_region(fake: FakeVertex, tmp_path: Path):
    """One vocabulary with the other scripts (--location, LOCATION); --region, gcloud's word, stays."""
    for flag in ("--location", "--region"):
        proc = submit(fake, tmp_path, "--dry-run", "--output", "gs://b-1/x", flag, "europe-west4")
        assert proc.returncode == 0, proc.stderr
        create = shlex.split(proc.stdout.splitlines()[-1])
        assert create[create.index("--region") + 1] == "europe-west4", create
    proc = submit(fake, tmp_path, "--dry-run", "--output", "gs://b-1/x", LOCATION="asia-east1")
    assert "--region asia-east1" in proc.stdout
    usage = submit(fake, tmp_path, "--help").stdout
    assert "--location REGION" in usage and "--region REGION" in usage and "(env LOCATION)" in usage
    assert not fake.requests


def test_a_mismatch_gets_the_same_line_as_create_instance(fake: FakeVertex, tmp_path: Path):
    """The machine facts and their one line live in lib/machines.sh, for both scripts (GPUs named
    as given: create_instance.sh takes Compute Engine's names, submit_vertex_job.sh both)."""
    vertex = submit(fake, tmp_path, "--output", "gs://b-1/x", "--machine-type", "g2-standard-8",
                    "--accelerator", "nvidia-h100-80gb,count=1")  # fmt: skip
    with FakeGcp() as gcp:
        env = script_env(gcp, tmp_path / "gce", tmp_path)
        gce = subprocess.run(
            [str(ROOT / "create_instance.sh"), "--machine-type", "g2-standard-8",
             "--accelerator", "nvidia-h100-80gb,count=1"],
            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert not gcp.mutations()
    assert not fake.requests
    lines = [proc.stderr.strip().partition(": error: ")[2] for proc in (vertex, gce)]
    assert lines[0] == lines[1], (vertex.stderr, gce.stderr)
    assert lines[0].startswith("g2-standard-8 comes with 1 x nvidia-l4 attached; leave out --accelerator")


def test_script_outputs_in_cloud_storage_are_taken(fake: FakeVertex, tmp_path: Path):
    """The job's folders are Cloud Storage's, through /gcs: an output path there is kept as given. Of
    a repeated option the script reads the last, as argparse does: an earlier /tmp/x does not count."""
    args = ["--output_dir", "/tmp/x", "--output_dir", "/gcs/b-1/x/out", "--logging-dir=/gcs/b-1/x/logs",
            "--save_steps", "5"]  # fmt: skip
    proc = submit(fake, tmp_path, "--dry-run", "--output", "gs://b-1/x", "bert", "--", *args)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout.partition("\n# ")[0])
    assert spec["workerPoolSpecs"][0]["containerSpec"]["args"][2:] == args


def test_bad_poll_settings_are_refused_before_submitting(fake: FakeVertex, tmp_path: Path):
    """--follow's settings are read after the job is submitted: they are checked before it."""
    for name in ("HFGPU_POLL_SECONDS", "HFGPU_LOG_GRACE_SECONDS"):
        env = script_env(fake, tmp_path, tmp_path, **{name: "soon"})  # type: ignore[arg-type]
        proc = subprocess.run([str(SCRIPT), "--follow", "--output", "gs://b-1/x"], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 1
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"{PROG_ERROR} {name} must be a whole number from 0 to"), line
    assert not fake.requests


def test_gpt2_without_output_and_no_project(fake: FakeVertex, tmp_path: Path):
    proc = submit(fake, tmp_path, "gpt2")
    (line,) = error_lines(proc)
    assert "gpt2 is not in the image: pass --output" in line
    proc = submit(fake, tmp_path / "noproj", "--output", "gs://b-1/x", project=None)  # type: ignore[arg-type]
    (line,) = error_lines(proc)
    assert "no Google Cloud project: pass --project ID" in line
    assert not fake.requests


# ------------------------------------------------------------ train reads CLUSTER_SPEC


def cluster_spec(task: str, index: int, workers: int = 2) -> str:
    return json.dumps(
        {
            "cluster": {
                "workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                "workerpool1": [f"cmle-training-workerpool1-ab-{i}:2222" for i in range(workers)],
            },
            "environment": "cloud",
            "task": {"type": task, "index": index},
            "job": '{"python_module":"","package_uris":[],"job_args":[]}',
        }
    )


def train_dry_run(**env: str) -> subprocess.CompletedProcess:
    script = Path(tempfile.gettempdir()) / "hfgpu-vertex-probe.py"
    script.write_text("")
    clean = {
        k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return subprocess.run(
        [str(TRAIN), "--dry-run", str(script), "--x"],
        env={**clean, "NPROC_PER_NODE": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("task", "index", "rank"), [("workerpool0", 0, 0), ("workerpool1", 0, 1), ("workerpool1", 1, 2)]
)
def test_train_takes_ranks_from_cluster_spec(task: str, index: int, rank: int):
    proc = train_dry_run(CLUSTER_SPEC=cluster_spec(task, index))
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout)
    assert cmd[:9] == ["torchrun", "--nnodes", "3", "--nproc_per_node", "1", "--node_rank", str(rank),
                       "--master_addr", "cmle-training-workerpool0-ab-0"]  # fmt: skip
    assert cmd[9:11] == ["--master_port", "2222"]


def test_explicit_variables_win_over_cluster_spec():
    proc = train_dry_run(
        CLUSTER_SPEC=cluster_spec("workerpool1", 1),
        NODE_RANK="1",
        MASTER_ADDR="10.0.0.2",
        MASTER_PORT="29400",
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "--nnodes 3 --nproc_per_node 1 --node_rank 1 --master_addr 10.0.0.2 --master_port 29400"
        in proc.stdout
    )
    proc = train_dry_run(CLUSTER_SPEC=cluster_spec("workerpool1", 0), WORLD_SIZE="2", RANK="0")
    assert "--nnodes 2 --nproc_per_node 1 --node_rank 0" in proc.stdout


def test_one_replica_cluster_spec_is_a_lone_process_and_bad_spec_is_one_line():
    lone = json.dumps({"cluster": {"workerpool0": ["h:2222"]}, "task": {"type": "workerpool0", "index": 0}})
    proc = train_dry_run(CLUSTER_SPEC=lone)
    assert proc.returncode == 0 and proc.stdout.startswith("python3 "), proc.stderr
    proc = train_dry_run(CLUSTER_SPEC='{"cluster": ')
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train: error: CLUSTER_SPEC is not the JSON Vertex AI documents (JSONDecodeError: "
        "Expecting value: line 1 column 13 (char 12))"
    ]


# ------------------------------------------------------------ the image, run the way Vertex runs it

UID = 4242
BUCKET = "my-bucket"
# Vertex's base output directory variables are gs:// URIs; the bucket is mounted at /gcs/BUCKET.
AIP = {
    "AIP_MODEL_DIR": f"gs://{BUCKET}/run/model/",
    "AIP_CHECKPOINT_DIR": f"gs://{BUCKET}/run/checkpoints/",
    "AIP_TENSORBOARD_LOG_DIR": f"gs://{BUCKET}/run/logs/",
}
BERT_ARGS = [
    *("--model_name_or_path", f"/gcs/{BUCKET}/assets/tiny-bert"),
    *("--train_file", f"/gcs/{BUCKET}/assets/train.csv"),
    *("--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--save_steps", "4"),
    *("--logging_steps", "2", "--max_eval_samples", "16", "--dataloader_num_workers", "0"),
    *("--report_to", "tensorboard"),
]
SECRET_PROBE = """
import glob, hashlib, json, os, sys
token = os.environ.get("HF_TOKEN", "")
seen = {"HF_TOKEN": hashlib.sha256(token.encode()).hexdigest(), "left": glob.glob("/tmp/hfgpu-secrets*"),
        "file_var": "HFGPU_SECRETS_FILE" in os.environ}
open(sys.argv[1], "w").write(json.dumps(seen))
print("probe ran")
"""


def own(path: Path, gid: int = UID) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, gid)
    return path


def tiny_rows() -> list[str]:
    """128 labelled csv rows (text,label): five filler words and one cue word (good or bad) each."""
    rng = random.Random(0)
    good, bad = ["good", "great", "fine", "superb"], ["bad", "awful", "poor", "dull"]
    filler = ["the", "a", "movie", "film", "plot", "actor", "scene", "story", "was", "is", "very"]
    rows = []
    for _ in range(128):
        label = rng.choice(["pos", "neg"])
        words = [*rng.sample(filler, 5), rng.choice(good if label == "pos" else bad)]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}")
    return rows


ROWS = tiny_rows()
# The tokenizers of the tiny models (tests/conftest.py tiny_models) learn these words.
TINY_MODEL_TEXT = "\n".join(r.split(",")[0] for r in ROWS) + "\n"


@pytest.fixture(scope="module")
def gcs_assets(image, tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Path:
    """Tiny BERT (random weights, local tokenizer) and a tiny labelled csv, as a bucket folder."""
    out = own(tmp_path_factory.mktemp("assets") / "assets")
    (out / "train.csv").write_text("\n".join(["text,label", *ROWS]) + "\n")
    (out / "text.txt").write_text(TINY_MODEL_TEXT)
    models = tiny_models(TINY_MODEL_TEXT)
    for model in sorted(models.iterdir()):
        copy_tiny_models(model, out / model.name, f"{UID}:{UID}")
    return out


def make_bucket(root: Path, assets: Path | None = None) -> Path:
    """ROOT/gcs/BUCKET, owned by the containers' user; the tiny assets copied in when given."""
    bucket = own(own(root / "gcs") / BUCKET)
    if assets is not None:
        shutil.copytree(assets, bucket / "assets")
        for path in [bucket / "assets", *(bucket / "assets").rglob("*")]:
            os.chown(path, UID, UID)
    return root / "gcs"


def test_two_replicas_train_together_and_write_outputs_once_where_aip_says(image, gcs_assets, tmp_path: Path):
    gcs = make_bucket(tmp_path, gcs_assets)
    suffix = uuid.uuid4().hex[:6]
    net, names = f"vx-net-{suffix}", [f"vx-chief-{suffix}", f"vx-worker-{suffix}"]
    # One uid (the bucket is one identity's, like the job's service account), one group per
    # replica: a file's group tells which replica created it.
    gids = [4100, 4200]
    spec = {
        "cluster": {"workerpool0": [f"{names[0]}:2222"], "workerpool1": [f"{names[1]}:2222"]},
        "environment": "cloud",
    }
    docker("network", "create", net)
    try:
        for rank, (name, gid) in enumerate(zip(names, gids, strict=True)):
            task = {"type": "workerpool0", "index": 0} if rank == 0 else {"type": "workerpool1", "index": 0}
            local = own(tmp_path / f"local{rank}")  # the machine's own disk: HF_HOME stays here
            env = {**AIP, "CLUSTER_SPEC": json.dumps({**spec, "task": task}), "HF_HUB_OFFLINE": "1"}
            docker(
                *("run", "--detach", "--name", name, "--network", net, "--user", f"{UID}:{gid}"),
                *("-v", f"{gcs}:/gcs", "-v", f"{local}:/volume"),
                *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
                *(image.tag, "train", "/app/test_training_bert_base.py", *BERT_ARGS),
            )
        codes = [int(docker("wait", name, timeout=600).stdout.strip()) for name in names]
        logs = [docker("logs", name).stderr + docker("logs", name).stdout for name in names]
    finally:
        for name in names:
            docker("rm", "--force", name, check=False)
        docker("network", "rm", net, check=False)
    assert codes == [0, 0], [log[-3000:] for log in logs]
    for rank in (0, 1):
        assert f"train: nodes=2 node_rank={rank} procs_per_node=1" in logs[rank]
    run = gcs / BUCKET / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "logs", "model"]
    # Checkpoints where AIP_CHECKPOINT_DIR says, each complete (its marker); one training of 2 ranks.
    state = json.loads((run / "model" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == 8
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "checkpoint-complete.json").is_file() for c in checkpoints)
    # The final model and its results where AIP_MODEL_DIR says; TensorBoard events in the logs dir.
    assert (run / "model" / "model.safetensors").is_file()
    assert "eval_accuracy" in json.loads((run / "model" / "all_results.json").read_text())
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    # Written once: every output file was created by the chief, except each replica's own RNG
    # state (transformers saves rng_state_<process>.pth per process, by design). Folders may be
    # made by either (mkdir -p of the same path; on a bucket a folder is only a name prefix).
    by_worker = sorted(
        str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.stat().st_gid == gids[1]
    )
    assert all(Path(p).name == "rng_state_1.pth" for p in by_worker), by_worker
    # HF_HOME stayed on each machine's disk, not in the bucket.
    assert not [p for p in gcs.rglob("*") if p.name in ("huggingface", ".cache")]


def secret_job_spec(tmp: Path, secret_ref: str) -> dict:
    """The containerSpec submit_vertex_job.sh --dry-run would submit for the probe."""
    with FakeVertex() as fake:
        proc = submit(
            fake, tmp, "--dry-run", "--secret", f"HF_TOKEN={secret_ref}", "--output", f"gs://{BUCKET}/sec",
            f"gs://{BUCKET}/code/probe.py", "--", f"/gcs/{BUCKET}/sec/seen.json",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert CANARY not in proc.stdout + proc.stderr
    spec_text = proc.stdout.partition("\n# ")[0]
    return json.loads(spec_text)["workerPoolSpecs"][0]["containerSpec"]


def run_like_vertex(image: str, gcs: Path, container: dict, metadata: FakeMetadata, sm: FakeSecretManager):
    name = f"vx-secret-{uuid.uuid4().hex[:6]}"
    env = {
        **env_of(container),
        "GCE_METADATA_HOST": metadata.hostport,
        "HFGPU_SECRETMANAGER_ENDPOINT": sm.url,
    }
    try:
        proc = docker(
            *("run", "--name", name, "--network", "host", "--user", f"{UID}:{UID}", "-v", f"{gcs}:/gcs"),
            *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
            *(image, *container["args"]),
            check=False,
            timeout=300,
        )
        inspect = docker("container", "inspect", name).stdout
    finally:
        docker("rm", "--force", name, check=False)
    return proc, inspect


def test_secret_is_fetched_at_start_and_appears_nowhere_else(image, tmp_path: Path):
    gcs = make_bucket(tmp_path)
    (own(gcs / BUCKET / "code") / "probe.py").write_text(SECRET_PROBE)
    own(gcs / BUCKET / "sec")
    container = secret_job_spec(tmp_path, "hf-token")
    assert env_of(container) == {
        "HFGPU_SECRETS": "HF_TOKEN=projects/my-project/secrets/hf-token/versions/latest"
    }
    secrets = {"projects/my-project/secrets/hf-token": ["an-old-version", CANARY + "\n"]}
    with FakeMetadata() as metadata, FakeSecretManager(secrets) as sm:
        proc, inspect = run_like_vertex(image.tag, gcs, container, metadata, sm)
        (token_call,) = metadata.calls("GET")
        (access,) = sm.calls("GET")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "probe ran" in proc.stdout
    assert token_call.headers["Metadata-Flavor"] == "Google"
    assert access.path == "/v1/projects/my-project/secrets/hf-token/versions/latest:access"
    assert access.headers["Authorization"] == f"Bearer {metadata.token}"
    seen = json.loads((gcs / BUCKET / "sec" / "seen.json").read_text())
    assert seen == {"HF_TOKEN": hashlib.sha256(CANARY.encode()).hexdigest(), "left": [], "file_var": False}
    assert CANARY not in proc.stdout + proc.stderr + inspect
    leaks = [str(p) for p in gcs.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert not leaks


def test_a_secret_that_cannot_be_read_stops_the_job_before_the_program(image, tmp_path: Path):
    gcs = make_bucket(tmp_path)
    (own(gcs / BUCKET / "code") / "probe.py").write_text(SECRET_PROBE)
    container = secret_job_spec(tmp_path, "missing:2")
    with FakeMetadata() as metadata, FakeSecretManager({}) as sm:
        proc, _ = run_like_vertex(image.tag, gcs, container, metadata, sm)
    assert proc.returncode == 1
    assert "probe ran" not in proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        "fetch-secrets: error: cannot read HF_TOKEN from projects/my-project/secrets/missing/versions/2"
    )
    assert "roles/secretmanager.secretAccessor" in line
