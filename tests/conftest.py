"""Shared fixtures: a private LOOPLINE_HOME per test, the demo config, small demo batches, and the real services.

PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379): a test module gets its own uniquely named
databases and its own Redis DB number, and removes them afterwards. When a service is unreachable its tests skip
with the reason, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, NoReturn

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


PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
_CLAIM_KEY = "loopline:test-claim"


def unavailable(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere: a missing service must never let a CI run pass silently."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the services tests must run)", pytrace=False)
    pytest.skip(reason)


class PostgresDatabases:
    """Creates uniquely named databases on the test server; ``close`` drops them all WITH (FORCE)."""

    def __init__(self) -> None:
        import psycopg2

        self.admin = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3
        )
        self.admin.autocommit = True
        self.token = secrets.token_hex(4)
        self.made: list[str] = []

    def create(self, purpose: str) -> str:
        """The new empty database ``loopline_test_<id>_<purpose>``; returns its name."""
        name = f"loopline_test_{self.token}_{purpose}"
        with self.admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return name

    @staticmethod
    def url(database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"

    @staticmethod
    def query(database: str, sql: str) -> list[tuple[Any, ...]]:
        """Rows of one query against one of the databases."""
        import psycopg2

        connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def close(self) -> None:
        with self.admin.cursor() as cursor:
            for name in self.made:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.close()


@pytest.fixture(scope="module")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Databases of this module's own (``create(purpose)``), dropped WITH (FORCE) afterwards."""
    try:
        databases = PostgresDatabases()
    except Exception as exc:
        unavailable(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}".strip())
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    """An empty Redis DB number of 127.0.0.1:6379 claimed for this module; flushed afterwards."""
    import redis

    try:
        probe = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=3)
        probe.ping()
        databases = int(probe.config_get("databases").get("databases", 16))
        probe.close()
    except Exception as exc:
        unavailable(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}")
    token = secrets.token_hex(8)
    for number in range(databases - 1, 0, -1):  # DB 0 is everybody's default: never use it
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
        if client.set(_CLAIM_KEY, token, nx=True, ex=6 * 3600) and client.dbsize() == 1:
            break
        if client.get(_CLAIM_KEY) == token.encode():
            client.delete(_CLAIM_KEY)
        client.close()
    else:
        unavailable(f"no empty Redis DB number on {REDIS_HOST}:{REDIS_PORT} to claim")
    try:
        yield number
    finally:
        client.flushdb()
        client.close()
