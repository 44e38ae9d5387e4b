"""Spark Connect: a server started from the pip package runs ingestion, the gate, a profile and the drift pass.

The server is ``SparkConnectServer`` through the package's ``sbin/spark-daemon.sh`` (what
``start-connect-server.sh`` does; pyspark 4.1's wheel ships the jar but not that script), bound to 127.0.0.1 on
a port of this test's range, its pid and log files in a temporary folder, stopped by its pid file afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PORT = 28915
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT = 180


def _daemon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    spark_home = env["SPARK_HOME"]
    return subprocess.run(
        ["bash", f"{spark_home}/sbin/spark-daemon.sh", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def server(spark_config: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark Connect server on 127.0.0.1:PORT (local[2]), stopped afterwards; yields its sc:// URL."""
    import pyspark

    if _listening(PORT):
        pytest.fail(f"port {PORT} is already in use: another Spark Connect server of a test is still running")
    folder = tmp_path_factory.mktemp("spark-connect")
    env = {
        **os.environ,
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_PID_DIR": str(folder),
        "SPARK_LOG_DIR": str(folder),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
    }
    started = _daemon(
        env,
        "submit",
        SERVER_CLASS,
        "1",
        "--name",
        "Spark Connect server",
        "--master",
        "local[2]",
        "--conf",
        "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf",
        f"spark.connect.grpc.binding.port={PORT}",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.sql.shuffle.partitions=2",
        "--conf",
        "spark.sql.session.timeZone=UTC",
    )
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(PORT):
            logs = "".join(p.read_text(errors="replace")[-3000:] for p in folder.glob("*.out"))
            assert time.monotonic() < deadline, f"Spark Connect did not listen on {PORT}:\n{logs}"
            time.sleep(1)
        yield f"sc://127.0.0.1:{PORT}"
    finally:
        from ml.engines.spark import stop_connect_session

        stop_connect_session(f"sc://127.0.0.1:{PORT}")
        _daemon(env, "stop", SERVER_CLASS, "1")


@pytest.fixture(scope="module")
def remote_config(server: str, spark_loopline_config: Any) -> Any:
    """The Spark engine's config with ``engine.spark.connect_url`` pointing at the test's server."""
    from ml.config import EngineConfig

    spark = spark_loopline_config.engine.spark.model_copy(update={"connect_url": server})
    return spark_loopline_config.model_copy(update={"engine": EngineConfig(kind="spark", spark=spark)})


@pytest.fixture(scope="module")
def ingested(server: str, remote_config: Any, ingest_cases: Any, policy: str) -> dict[str, Any]:
    """The ingestion cases of ``conftest.IngestCases`` through ``steps.ingest_batch`` over Spark Connect."""
    from ml.engines.spark import connect_session

    return ingest_cases.run(remote_config, "connect", policy, connect_session(server))


def test_ingest_over_connect_writes_the_local_partitions(ingest_cases: Any, ingested: dict[str, Any]) -> None:
    ingest_cases.assert_accepted_like_local(ingested)


def test_ingest_over_connect_drops_or_refuses_as_configured(
    ingest_cases: Any, ingested: dict[str, Any]
) -> None:
    ingest_cases.assert_policy_applied(ingested)


def test_ingest_over_connect_refuses_and_quarantines_as_locally(
    ingest_cases: Any, ingested: dict[str, Any]
) -> None:
    ingest_cases.assert_refused_like_local(ingested)


def test_gate_profile_and_drift_over_spark_connect(
    server: str, remote_config: Any, engine: Any, trained: Any, spark_home: tuple[Any, Any], window: Any
) -> None:
    from ml.engines.base import engine_for
    from ml.engines.spark import SCORE_COLUMN, connect_session, spark_mode, with_scores
    from ml.engines.spark_profile import profile_columns

    config, paths = spark_home
    remote = engine_for(remote_config, paths)
    session = connect_session(server)
    assert type(session).__module__.startswith("pyspark.sql.connect")

    gate = remote.validate([window.broken], "connect-broken")
    assert not gate.passed
    assert {f.column for f in gate.critical} == {
        f.column for f in engine.validate([window.broken], "x").critical
    }

    with spark_mode(session):
        rows, _ = engine.split(window.batches, session)
        scored = with_scores(rows, trained.booster, trained.spec.columns)
        count, columns = profile_columns(scored, trained.spec, SCORE_COLUMN, config.drift.bins)
    assert count == trained.train_rows
    assert list(columns) == list(trained.profile["columns"])
    for name, column in columns.items():
        reference = trained.profile["columns"][name]
        assert column.keys() == reference.keys()
        for key, value in column.items():
            if key in {"mean", "std"}:
                assert value == pytest.approx(reference[key], rel=1e-9)
            else:
                assert value == reference[key], (name, key)

    monitored = remote.monitor(window.shifted, trained.booster, trained.profile)
    local = engine.monitor(window.shifted, trained.booster, trained.profile)
    assert monitored.drift.verdict == local.drift.verdict == "drift"
    assert monitored.drift.features == local.drift.features
