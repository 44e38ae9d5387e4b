"""Shared fixtures: a private LOOPLINE_HOME per test, the demo config, small demo batches."""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True, scope="session")
def _default_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test that picks no home of its own writes under the session's tmp folder, never the checkout's."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOOPLINE_HOME", str(tmp_path_factory.mktemp("default-home")))
        yield


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LOOPLINE_HOME and the default config, for this test only."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("LOOPLINE_HOME", str(folder))
    monkeypatch.setenv("LOOPLINE_CONFIG", str(ROOT / "loopline.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


@pytest.fixture
def config(home: Path):
    from ml.config import load_config

    return load_config(ROOT / "loopline.yaml")


@pytest.fixture
def paths(home: Path):
    from ml.config import Paths

    return Paths.from_env()


@pytest.fixture(scope="session")
def scenario():
    from ml.demo_data import Scenario

    return Scenario(months=10, rows_per_month=1500, shift_from_month=7, incident_months=(5,))


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database for this test (dropped after); skipped when PostgreSQL is
    unreachable, failed under $CI."""
    from sqlalchemy import create_engine, text

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError as exc:
        problem = f"PostgreSQL not reachable at 127.0.0.1:5432 ({exc})"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    name = f"loopline_test_{request.node.module.__name__.rsplit('.', 1)[-1]}_{uuid.uuid4().hex[:12]}"[:63]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def http_server() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    """Starts local HTTP servers answered by the given handler class (127.0.0.1, a free port): their base URLs."""
    servers: list[HTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = HTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3-compatible object store (SeaweedFS) on loopback, shared by the session's tests."""
    from object_store import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_lake(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, the AWS variables pointing at it, and LOOPLINE_LAKE_URI=s3://<bucket>/lake."""
    for variable, value in s3_server.env.items():
        monkeypatch.setenv(variable, value)
    uri = f"s3://{s3_server.create_bucket()}/lake"
    monkeypatch.setenv("LOOPLINE_LAKE_URI", uri)
    return uri
