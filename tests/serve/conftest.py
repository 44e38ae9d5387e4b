"""Fixtures of the serving tests: a real champion in a private home, a real uvicorn, real SQLite and PostgreSQL.

Homes are built with ``ml.steps`` on demo batches (ingest, quality gate, train, evaluate, promote) and a
SQLite MLflow store; the service runs as ``python -m ml.serve`` on a free port in 28600-28699 on 127.0.0.1.
PostgreSQL (127.0.0.1:5432, user postgres, trust auth) gets a uniquely named database per use, dropped after;
when it is unreachable the tests that need it fail if ``$CI`` is set and are skipped otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_support import Home, Server, build_home


@pytest.fixture(scope="session")
def champion_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """One home with champion v1 (months 1-3) and month 4 scored by the batch path (loopline_score's step)."""
    from ml import steps

    home = build_home(tmp_path_factory.mktemp("serve-home"))
    with home.active():
        scored = steps.score_batch(home.config, home.paths, home.scenario.batch_key(4))
    assert scored["scored"] and scored["champion_version"] == "1"
    return home


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers for one test; any still running at the end are killed."""
    started: list[Server] = []

    def start(home: Home, **options: Any) -> Server:
        server = Server(home, tmp_path, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty prediction store on SQLite and on PostgreSQL."""
    from ml.serve.store import migrate

    url = (
        f"sqlite:///{tmp_path / 'store.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    migrate(url)
    return url
