"""Shared pieces for the tests of build_and_push.sh and create_instance.sh.

- `script_env`: an environment for running a project script with the REAL gcloud pointed at
  tests/fake_gcp.py, a private Docker client config, and the BuildKit-capable docker first
  on PATH; none of the developer's own configuration (PROJECT, .env, gcloud config) leaks in.
- `Registry`: Debian's real `docker-registry` (CNCF Distribution) on 127.0.0.1:<free port>,
  with a temporary storage folder; read-only when asked (it then refuses every push).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fake_gcp import FakeGcp

# lib/common.sh's configuration names (and INSTANCE_NAME, VM_NAME's old spelling): none may leak in.
CONFIG_NAMES = (
    "LOCATION", "PROJECT", "REPO_NAME", "IMAGE_NAME", "TAG", "REGISTRY_HOST", "CONTAINER_NAME", "VOLUME",
    "ZONE", "VM_NAME", "INSTANCE_NAME", "CA_BUNDLE", "BASE_IMAGE", "CHECKPOINT_BUCKET",
)  # fmt: skip


def script_env(
    fake: FakeGcp,
    tmp: Path,
    bindir: Path,
    project: str | None = "my-project",
    token: str | None = "fake-token",
    **extra: str,
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLOUDSDK_", "DOCKER_")) and k not in CONFIG_NAMES
    }
    env.update(fake.gcloud_env(tmp / "gcloud", project, token))
    (tmp / "docker-config").mkdir(parents=True, exist_ok=True)
    env["DOCKER_CONFIG"] = str(tmp / "docker-config")
    env["CONFIG_FILE"] = str(tmp / "no.env")  # the developer's ./.env stays out
    env["PATH"] = f"{bindir}:{env['PATH']}"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(pid: int, limit: float = 30) -> None:
    """SIGTERM PID (not our child) and wait until it has exited (gone, or a zombie)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + limit
    stat = Path(f"/proc/{pid}/stat")
    while time.monotonic() < end:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)


@dataclass
class Registry:
    readonly: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hfgpu-registry-")))
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None  # a registry another process started (from_record)

    def record(self) -> dict:
        """What another process needs to use this running registry, and to stop it (from_record)."""
        assert self._proc is not None, "not started"
        return {"root": str(self.root), "port": self.port, "pid": self._proc.pid}

    @classmethod
    def from_record(cls, record: dict) -> Registry:
        """The running registry of RECORD (another process started it); stop() ends it."""
        reg = cls(root=Path(record["root"]), port=record["port"])
        reg._pid = record["pid"]
        return reg

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        exe = shutil.which("docker-registry")
        if exe is None:
            raise RuntimeError("docker-registry not installed; run: apt-get install docker-registry")
        readonly = "  maintenance:\n    readonly:\n      enabled: true\n" if self.readonly else ""
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n"
            f"  filesystem:\n    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"{readonly}http:\n  addr: {self.host}\n"
        )
        log = open(self.root / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
        self._proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return self
            except (urllib.error.URLError, ConnectionError):
                if self._proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(
            f"docker-registry did not start: {(self.root / 'registry.log').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None
        elif self._pid is not None:
            stop_process(self._pid)
            self._pid = None
        shutil.rmtree(self.root, ignore_errors=True)

    def get(self, path: str, method: str = "GET") -> tuple[int, dict, dict]:
        """(status, headers, JSON body) of a Registry v2 API call."""
        accept = ", ".join(
            [
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.oci.image.index.v1+json",
            ]
        )
        req = urllib.request.Request(
            f"http://{self.host}/v2/{path}", method=method, headers={"Accept": accept}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, dict(resp.headers), json.loads(raw) if raw else {}
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), {}

    def catalog(self) -> list[str]:
        return self.get("_catalog")[2].get("repositories") or []

    def tags(self, repo: str) -> list[str]:
        status, _, body = self.get(f"{repo}/tags/list")
        return sorted(body.get("tags") or []) if status == 200 else []

    def digest(self, repo: str, tag: str) -> str:
        status, headers, _ = self.get(f"{repo}/manifests/{tag}", method="HEAD")
        assert status == 200, f"{repo}:{tag} -> {status}"
        return headers["Docker-Content-Digest"]

    def diff_ids(self, repo: str, digest: str) -> list[str]:
        """The uncompressed layer ids (rootfs.diff_ids) of the image REPO@DIGEST."""
        status, _, manifest = self.get(f"{repo}/manifests/{digest}")
        assert status == 200, f"{repo}@{digest} -> {status}"
        status, _, config = self.get(f"{repo}/blobs/{manifest['config']['digest']}")
        assert status == 200
        return config["rootfs"]["diff_ids"]
