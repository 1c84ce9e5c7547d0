"""Cloud Storage on loopback for tests/ and bench/: gcp-storage-emulator, plus a proxy that fails once.

`gcp-storage-emulator` (PyPI, in tests/requirements.txt) serves Cloud Storage's JSON API in
memory. The official google-cloud-storage client talks to it, anonymously, when
STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT is set; a container reaches it with --network host.

`FailingOnce` sits in front of it and answers the first upload request with an HTTP error that
Google says a client must retry (https://cloud.google.com/storage/docs/retry-strategy: "408,
429 and 5xx" answers), then passes everything through.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("gcp-storage-emulator did not start") from None
            time.sleep(0.2)


@contextmanager
def storage_emulator(*buckets: str) -> Iterator[str]:
    """Start the emulator on a free port with BUCKETS; STORAGE_EMULATOR_HOST is set meanwhile; yield it."""
    port = free_port()
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    proc = subprocess.Popen(
        [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"http://127.0.0.1:{port}"
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        _wait_for_port(port, proc)
        from google.cloud import storage

        client = storage.Client()
        for bucket in buckets:
            client.create_bucket(bucket)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved


class FailingOnce:
    """A loopback proxy to UPSTREAM (http://127.0.0.1:PORT) whose first upload gets STATUS, once.

    `host` is what STORAGE_EMULATOR_HOST should name; `failed` counts the answers it faked.
    The failing request is read whole before the answer, as a server would.
    """

    def __init__(self, upstream: str, status: str = "503 Service Unavailable"):
        self.upstream = int(upstream.rsplit(":", 1)[1])
        self.status = status
        self.failed = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head, body = self._read_request(client)
            if not head:
                return
            if self.failed == 0 and b" /upload/" in head.split(b"\r\n", 1)[0]:
                self.failed += 1
                answer = f"HTTP/1.1 {self.status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                client.sendall(answer.encode())
                return
            with socket.create_connection(("127.0.0.1", self.upstream)) as upstream:
                upstream.sendall(head + body)
                self._pipe(client, upstream)

    @staticmethod
    def _read_request(client: socket.socket) -> tuple[bytes, bytes]:
        """The first request's head and as much of its body as Content-Length says (or has arrived)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return b"", b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        head += b"\r\n\r\n"
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                break
            body += chunk
        return head, body

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        while True:
            ready, _, _ = select.select([a, b], [], [])
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)
