"""The walking skeleton's loop on the prod profile, against real services on this machine.

PostgreSQL holds the Airflow metadata DB, the Celery result backend and the MLflow backend store (three fresh
databases); Redis (a DB number of its own) is the Celery broker; a real ``airflow celery worker`` runs every task;
the tasks reach the MLflow tracking server over HTTP only, logged in through the Airflow connection
``mlflow_default`` (the server runs MLflow's basic-auth app and refuses anonymous requests); the lake is on a
real S3-compatible object store (SeaweedFS, a bucket of its own), as in docker/compose.yaml. The assertions of
``tests/e2e`` are reused as they are (loaded from that file), then the prod-specific ones follow.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ml.airflow_client import AirflowClient
from ml.demo import DAG_IDS
from ml.stack import Stack, free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_PORT, MLFLOW_PORT = 28480, 28500
EXPECTED_PROCESSES = {
    "mlflow-server",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "celery-worker-1",
    "loopline-serve",  # the demo's live scoring service
}


def _load_e2e_module() -> Any:
    """tests/e2e/test_loop_through_scheduler.py under a private name: its OPTIONS and assertions, unchanged."""
    file = ROOT / "tests" / "e2e" / "test_loop_through_scheduler.py"
    spec = importlib.util.spec_from_file_location("loopline_e2e_loop_assertions", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_E2E = _load_e2e_module()
E2E_ASSERTIONS: dict[str, Callable[..., None]] = {
    name: value for name, value in vars(_E2E).items() if name.startswith("test_") and callable(value)
}
assert E2E_ASSERTIONS, "tests/e2e/test_loop_through_scheduler.py defines no test functions"
# Collected here again: every assertion of the embedded loop runs against the prod profile's `demo` below.
globals().update(E2E_ASSERTIONS)


@pytest.fixture(scope="module")
def prod(postgres_databases: Any, redis_db: int) -> dict[str, Any]:
    """Fresh databases, a Redis DB, and the settings of the prod profile over them."""
    from ml.profiles import ProdSettings

    pg = postgres_databases
    databases = {purpose: pg.create(purpose) for purpose in ("airflow", "celery", "mlflow")}
    settings = ProdSettings(
        database_url=pg.url(databases["airflow"]),
        broker_url=f"redis://127.0.0.1:6379/{redis_db}",
        result_backend=pg.url(databases["celery"], "db+postgresql"),
        mlflow_backend_store_uri=pg.url(databases["mlflow"]),
        celery_workers=1,
        worker_concurrency=4,
    ).normalised()
    return {"databases": databases, "settings": settings, "query": pg.query}


@pytest.fixture(scope="module")
def demo(
    prod: dict[str, Any], s3_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The e2e loop through the prod profile; the services keep running until the module's tests are done."""
    from ml.config import Paths, load_config
    from ml.demo import run_demo
    from ml.profiles import prod_starter

    home = tmp_path_factory.mktemp("prod-loop")
    mlflow_port = free_port(MLFLOW_PORT)
    options = dataclasses.replace(_E2E.OPTIONS, port=AIRFLOW_PORT, keep_running=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOOPLINE_HOME", str(home))
        env.setenv("LOOPLINE_CONFIG", str(ROOT / "loopline.yaml"))
        env.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{mlflow_port}")
        for variable, value in s3_server.env.items():  # the workers inherit them, as compose passes them
            env.setenv(variable, value)
        lake_uri = f"s3://{s3_server.create_bucket('loopline-lake')}/lake"
        env.setenv("LOOPLINE_LAKE_URI", lake_uri)
        config, paths = load_config(), Paths.from_env()
        stack = Stack(paths)
        lines: list[str] = []
        try:
            summary = run_demo(
                config,
                paths,
                options,
                echo=lines.append,
                starter=prod_starter(mlflow_port, prod["settings"]),
            )
            print("\n".join(lines))
            yield {
                "summary": summary,
                "config": config,
                "paths": paths,
                "stack": stack,
                "lake_uri": lake_uri,
                **prod,
            }
        finally:
            print("\n".join(lines))
            stack.stop()
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # set by registry.connect
                os.environ.pop(name, None)


def _client(demo: dict[str, Any]) -> AirflowClient:
    from ml.stack import AIRFLOW_USER, airflow_password

    return AirflowClient(demo["summary"]["airflow_url"], AIRFLOW_USER, airflow_password(demo["paths"]))


def test_airflow_metadata_is_in_postgresql(demo: dict[str, Any]) -> None:
    loop_dags = ", ".join(f"'{dag_id}'" for dag_id in DAG_IDS)
    runs = demo["query"](
        demo["databases"]["airflow"],
        f"SELECT dag_id, run_id, state FROM dag_run WHERE dag_id IN ({loop_dags})",
    )
    in_summary = {(r["dag_id"], r["run_id"], r["state"]) for r in demo["summary"]["dag_runs"]}
    assert set(runs) == in_summary
    assert not (demo["paths"].airflow_home / "airflow.db").exists()


def test_the_lake_is_on_the_object_store(demo: dict[str, Any]) -> None:
    from ml.steps import lake_of

    lake = lake_of(demo["paths"], demo["config"])
    assert lake.on_object_store and str(lake.root) == demo["lake_uri"]
    ingested = lake.batches("loans")
    assert len(ingested) == _E2E.OPTIONS.months - 1, ingested  # all but the incident month
    scored = lake.batches("loans__predictions")
    assert scored and set(scored) <= set(ingested)
    assert lake.partition("loans", ingested[-1]).data_file.startswith(demo["lake_uri"])
    assert not demo["paths"].lake.exists(), "the workers wrote a lake under LOOPLINE_HOME"


def test_tasks_ran_on_the_celery_worker(demo: dict[str, Any]) -> None:
    done = demo["query"](
        demo["databases"]["celery"], "SELECT status, count(*) FROM celery_taskmeta GROUP BY status"
    )
    counts = dict(done)
    task_runs = demo["query"](
        demo["databases"]["airflow"],
        "SELECT count(*) FROM task_instance WHERE state IN ('success', 'failed') AND start_date IS NOT NULL",
    )[0][0]
    # Every task that ran went through Celery: one result per attempt in the result backend.
    assert counts.get("SUCCESS", 0) >= task_runs > 0
    log = (demo["stack"].log_dir / "celery-worker-1.log").read_text(errors="replace")
    assert "loopline1@" in log and "execute_workload" in log


def test_mlflow_is_reached_over_http_only(demo: dict[str, Any]) -> None:
    import mlflow

    from ml import registry

    config, paths = demo["config"], demo["paths"]
    assert registry.connect(config, paths)
    assert mlflow.get_tracking_uri().startswith("http://127.0.0.1:")
    experiment = mlflow.get_experiment_by_name(config.experiment_name)
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    # No local store anywhere: runs and versions are in the server's PostgreSQL DB, artifacts in its folder.
    assert not paths.mlflow_db.exists() and not list(paths.home.rglob("mlruns"))
    versions = demo["query"](
        demo["databases"]["mlflow"], f"SELECT count(*) FROM model_versions WHERE name = '{config.model_name}'"
    )[0][0]
    assert versions == len(registry.versions(config)) >= 2
    assert any(paths.mlflow_artifacts.rglob("MLmodel"))
    champion = registry.champion(config)
    assert champion is not None
    model = registry.load_model(champion)
    assert model is not None


def test_mlflow_refuses_anonymous_requests(demo: dict[str, Any]) -> None:
    import requests

    from ml import registry

    url = registry.client_state(demo["paths"])["tracking_uri"]
    for path in ("/api/2.0/mlflow/registered-models/search", "/ajax-api/2.0/mlflow/experiments/search", "/"):
        assert requests.get(url + path, timeout=30).status_code == 401, path
    assert requests.get(url + "/health", timeout=30).status_code == 200
    password = (demo["paths"].mlflow_dir / "auth" / "admin_password").read_text()
    logged_in = requests.get(
        f"{url}/api/2.0/mlflow/registered-models/search", auth=("admin", password), timeout=30
    )
    assert logged_in.status_code == 200
    assert demo["config"].model_name in logged_in.text


def test_tasks_log_in_through_the_airflow_connection(demo: dict[str, Any]) -> None:
    """The Airflow parts get MLflow's address and login only from the connection; the task log says which."""
    environs = {}
    for name, pid in demo["stack"].running().items():
        if name.startswith(("airflow-", "celery-")):
            entries = Path(f"/proc/{pid}/environ").read_text(errors="replace").split("\0")
            environ = dict(entry.split("=", 1) for entry in entries if "=" in entry)
            if "AIRFLOW_HOME" in environ:  # setproctitle (Celery, the scheduler) overwrites the initial one
                environs[name] = environ
    assert "airflow-dag-processor" in environs, sorted(environs)
    for name, environ in environs.items():
        connection = json.loads(environ["AIRFLOW_CONN_MLFLOW_DEFAULT"])
        assert connection["login"] == "loopline" and connection["password"], name
        assert not {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(
            environ
        )
    log = _task_log(demo, "train")
    assert "as loopline (Airflow connection mlflow_default)" in log
    assert connection["password"] not in log, "the MLflow password leaked into a task log"


def test_status_and_history_need_no_mlflow_variable(demo: dict[str, Any]) -> None:
    from ml import registry

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    env |= {"LOOPLINE_HOME": str(demo["paths"].home), "LOOPLINE_CONFIG": str(ROOT / "loopline.yaml")}
    run = dict(env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    status = subprocess.run([sys.executable, "-m", "ml.cli", "status"], **run)
    assert status.returncode == 0, status.stderr[-2000:]
    champion = registry.champion(demo["config"])
    assert champion is not None
    assert json.loads(status.stdout)["champion"]["version"] == champion.version
    history = subprocess.run([sys.executable, "-m", "ml.cli", "history"], **run)
    assert history.returncode == 0, history.stderr[-2000:]
    assert f"-> v{champion.version}" in history.stdout


def _task_log(demo: dict[str, Any], task_id: str) -> str:
    """The first try's log of ``task_id`` in the first successful loopline_train run, through the REST API."""
    client = _client(demo)
    run_id = next(
        r["run_id"]
        for r in demo["summary"]["dag_runs"]
        if r["dag_id"] == "loopline_train" and r["state"] == "success"
    )
    response = client.session.get(
        f"{client.base_url}/api/v2/dags/loopline_train/dagRuns/{run_id}/taskInstances/{task_id}/logs/1",
        headers={"Accept": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:300]
    return response.text


def test_task_logs_are_served_by_the_api_server(demo: dict[str, Any]) -> None:
    assert "promot" in _task_log(demo, "promote").lower()


def test_every_listening_socket_is_on_loopback(demo: dict[str, Any]) -> None:
    import psutil

    running = demo["stack"].running()
    assert set(running) == EXPECTED_PROCESSES
    listening = []
    for pid in running.values():
        parent = psutil.Process(pid)
        for process in [parent, *parent.children(recursive=True)]:
            try:
                connections = process.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            listening += [(process.name(), c.laddr) for c in connections if c.status == psutil.CONN_LISTEN]
    assert listening, "no listening socket found at all"
    assert all(addr.ip in ("127.0.0.1", "::1") for _, addr in listening), listening


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_down_stops_exactly_what_was_started(demo: dict[str, Any]) -> None:
    """Runs last: what `loopline down` does."""
    import psutil

    stack: Stack = demo["stack"]
    pids = list(stack.running().values())
    family = [child.pid for pid in pids for child in psutil.Process(pid).children(recursive=True)]
    assert sorted(stack.stop()) == sorted(EXPECTED_PROCESSES)
    assert stack.running() == {}
    assert not [pid for pid in pids + family if _running(pid)]
