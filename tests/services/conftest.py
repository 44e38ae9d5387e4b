"""Real PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) for the services tests.

Each test module gets its own uniquely named databases and its own Redis DB number, and removes them afterwards.
When a service is unreachable the tests skip with the reason, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

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
