"""``loopline up --profile prod`` and ``loopline down`` as an operator runs them: commands in a shell.

The URLs of the prod profile come from the environment (fresh PostgreSQL databases and a Redis DB of this
module's own); the test reads the URLs and logins ``up`` prints, checks that they answer, then runs ``down`` and
checks that every process ``up`` started (with its children) is gone and nothing answers any more.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ml.config import Paths
from ml.stack import Stack, free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_PORT, MLFLOW_PORT = 28840, 28850
PRINTED = re.compile(r"(Airflow|MLflow) UI: +(http://\S+) +\(user (\S+), password (\S+)\)")
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def _loopline(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``loopline <args>`` (the console script's module) in a child process; fails with its output on error."""
    done = subprocess.run(
        [sys.executable, "-m", "ml.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"loopline {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def operator_env(
    postgres_databases: Any, redis_db: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The shell of an operator: a new home and the prod profile's URLs exported; whatever `up` leaves running
    is stopped (by pid) afterwards."""
    pg = postgres_databases
    home = tmp_path_factory.mktemp("prod-up-down")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "AIRFLOW"))}
    env |= {
        "LOOPLINE_HOME": str(home),
        "LOOPLINE_CONFIG": str(ROOT / "loopline.yaml"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url(pg.create("upairflow")),
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": pg.url(pg.create("upcelery"), "db+postgresql"),
        "MLFLOW_BACKEND_STORE_URI": pg.url(pg.create("upmlflow")),
        "LOOPLINE_LAKE_URI": "s3://loopline-lake/lake",
    }
    try:
        yield env
    finally:
        Stack(Paths(home)).stop(timeout=10)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _refused(url: str) -> bool:
    try:
        requests.get(url, timeout=5)
    except requests.ConnectionError:
        return True
    return False


def test_up_prints_urls_that_answer_and_down_stops_every_process(operator_env: dict[str, str]) -> None:
    import psutil

    from ml.airflow_client import AirflowClient

    started = time.monotonic()
    up = _loopline(
        operator_env,
        "up",
        "--profile",
        "prod",
        "--airflow-port",
        str(free_port(AIRFLOW_PORT)),
        "--mlflow-port",
        str(free_port(MLFLOW_PORT)),
        timeout=600,
    )
    up_seconds = time.monotonic() - started
    printed = {service: (url, user, password) for service, url, user, password in PRINTED.findall(up.stdout)}
    assert set(printed) == {"Airflow", "MLflow"}, up.stdout
    assert "Lake:       s3://loopline-lake/lake" in up.stdout.splitlines(), up.stdout
    airflow_url, airflow_user, airflow_password = printed["Airflow"]
    mlflow_url, mlflow_user, mlflow_password = printed["MLflow"]

    health = requests.get(f"{airflow_url}/api/v2/monitor/health", timeout=30).json()
    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[part]["status"] == "healthy", (part, health)
    client = AirflowClient(airflow_url, airflow_user, airflow_password)  # the printed login works
    client.wait_for_dags(["loopline_train"], timeout=180)
    assert requests.get(mlflow_url + SEARCH, timeout=30).status_code == 401
    assert (
        requests.get(mlflow_url + SEARCH, auth=(mlflow_user, mlflow_password), timeout=30).status_code == 200
    )

    stack = Stack(Paths(Path(operator_env["LOOPLINE_HOME"])))
    running = stack.running()
    assert {"mlflow-server", "airflow-api-server", "airflow-scheduler", "celery-worker-1"} <= set(running)
    pids = set(running.values())
    pids |= {child.pid for pid in running.values() for child in psutil.Process(pid).children(recursive=True)}

    started = time.monotonic()
    down = _loopline(operator_env, "down", timeout=120)
    down_seconds = time.monotonic() - started
    stopped, *killed = down.stdout.strip().splitlines()
    assert stopped == "stopped: " + ", ".join(sorted(running)), down.stdout
    # a process still busy 30 s after SIGTERM would be killed and named on a line of its own
    assert all(line.startswith("killed after 30 s: ") for line in killed), down.stdout
    assert stack.running() == {}
    deadline = time.monotonic() + 10  # children of a killed group may need a moment to be reaped
    while (left := sorted(pid for pid in pids if _alive(pid))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"still running after `loopline down`: {left}"
    assert _refused(f"{airflow_url}/api/v2/monitor/health") and _refused(f"{mlflow_url}/health")
    print(f"loopline up --profile prod: {up_seconds:.0f} s, loopline down: {down_seconds:.0f} s {killed}")
