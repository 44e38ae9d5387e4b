"""Faults of the production profile (``ml.profiles.start_prod``): the PostgreSQL metadata DB restarts while a task
runs, and a Celery worker is killed (SIGKILL) with a task in flight.

The test starts everything it needs and nothing else: a private PostgreSQL cluster (``initdb``/``pg_ctl`` in a
temporary folder, on a free port; it holds the Airflow metadata DB, the Celery result backend and the MLflow
store), a private Redis (the Celery broker), then the prod profile with two Celery workers. The scheduler's task
heartbeat timeout is lowered to 30 s so that a dead worker's task is noticed within the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    FIGURES,
    ROOT,
    Home,
    case,
    free_ports_in,
    lake_state,
    loopline_env,
    scenario_of,
)

from ml import demo_data, steps
from ml.airflow_client import AirflowClient
from ml.stack import Stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (os.environ.get("CI") or os.environ.get("LOOPLINE_PROD_FAULTS")),
        reason="the prod-profile faults add ~3 minutes: they run in CI, or locally with LOOPLINE_PROD_FAULTS=1",
    ),
]
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
WORKERS = ("celery-worker-1", "celery-worker-2")


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster this test creates, starts, restarts and removes."""

    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _tool(self, *args: str) -> None:
        """Run a PostgreSQL tool; its output (and a started server's, which inherits it) goes to a file."""
        log = self.folder / "tools.log"
        command = _as_postgres([str(PG_BINS[-1] / args[0]), *args[1:]])
        with log.open("ab") as output:
            done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=180, check=False)
        tail = log.read_text(errors="replace")[-2000:]
        assert done.returncode == 0, f"{args[0]} {args[-1]} failed:\n{tail}"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._tool(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off -c max_connections=200"
        self._tool(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "postgres.log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def restart(self) -> None:
        """A fast restart (active connections are cut), as after a failover or a crash."""
        self._tool(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "postgres.log"),
            "-m",
            "fast",
            "-w",
            "restart",
        )

    def stop(self) -> None:
        self._tool("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")

    def create(self, *names: str) -> None:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()

    def url(self, name: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"


RUNNING_POLL = 0.2
"""Seconds between looks for a running ingest task (a task of the small demo months runs for about 2 s)."""
FAULT_MONTH_ROWS = 150_000


@dataclass
class Prod:
    home: Home
    stack: Stack
    client: AirflowClient
    postgres: PrivatePostgres


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prod]:
    from ml.profiles import ProdSettings, start_prod

    if not PG_BINS or not shutil.which("redis-server"):
        reason = "needs PostgreSQL server binaries (/usr/lib/postgresql/*/bin) and redis-server"
        if os.environ.get("CI"):  # as tests/services' unavailable(): a CI run must not pass by skipping
            pytest.fail(f"{reason} (CI is set, so the prod-profile faults must run)", pytrace=False)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("prod-faults")
    postgres_port, redis_port, airflow_port, mlflow_port = free_ports_in(28700, 28799, 4)
    postgres = PrivatePostgres(Path(tempfile.mkdtemp(prefix="loopline-pg-")), postgres_port)
    redis = None
    try:
        postgres.init()
        postgres.start()
        postgres.create("airflow", "celery", "mlflow")
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_redis(redis, redis_port)
        settings = ProdSettings(
            database_url=postgres.url("airflow"),
            broker_url=f"redis://127.0.0.1:{redis_port}/0",
            result_backend="db+" + postgres.url("celery"),
            mlflow_backend_store_uri=postgres.url("mlflow"),
            celery_workers=2,
            worker_concurrency=2,
        )
        with loopline_env(
            folder / "home",
            MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
        ) as bare:
            # Months large enough that an ingest task runs for seconds: the faults must land while it runs.
            home = Home(bare.config, bare.paths, scenario_of(3, rows_per_month=FAULT_MONTH_ROWS))
            demo_data.write_landing(home.scenario, home.paths.landing / "loans")
            stack = Stack(home.paths)
            try:
                endpoints = start_prod(stack, ROOT / "loopline.yaml", airflow_port, mlflow_port, settings)
                client = AirflowClient(endpoints.airflow_url, endpoints.username, endpoints.password)
                client.wait_for_dags(["loopline_ingest"], timeout=180)
                for dag in client._call("GET", "/dags", params={"limit": 100})["dags"]:
                    if dag["dag_id"] != "loopline_ingest":  # only the DAG under test runs: less load
                        client._call("PATCH", f"/dags/{dag['dag_id']}", json={"is_paused": True})
                yield Prod(home, stack, client, postgres)
            finally:
                stack.stop(timeout=10)
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=30)
        if (postgres.data / "postmaster.pid").is_file():
            postgres.stop()
        shutil.rmtree(postgres.folder, ignore_errors=True)


def _wait_for_redis(server: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    """Return once the private Redis answers PING; fail with its exit code if it died (a taken port)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"redis-server on port {port} exited with {server.returncode}"
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.2)
    raise TimeoutError(f"redis-server on port {port} did not answer PING within {timeout:.0f} s")


def _poll(what: Any, timeout: float, every: float = 1.0) -> Any:
    """Call ``what`` every ``every`` seconds until it returns a truthy value; API errors while a service
    restarts are ridden out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = what()
            if found:
                return found
        except Exception as exc:  # the api-server answers 500 while its database restarts
            last = exc
        time.sleep(every)
    raise TimeoutError(f"gave up after {timeout:.0f} s (last error: {last})")


def _ingest_task(prod: Prod, run_id: str) -> dict[str, Any]:
    return prod.client.task_instances("loopline_ingest", run_id).get("ingest", {})


def _finished(prod: Prod, run_id: str) -> dict[str, Any] | None:
    run = prod.client.run("loopline_ingest", run_id)
    return run if run["state"] in {"success", "failed"} else None


def _dead(stack: Stack, expected: set[str]) -> set[str]:
    return expected - set(stack.running())


def _same_as_a_clean_rerun(prod: Prod, batch: str) -> None:
    """The partition the DAG wrote equals what an in-process re-run of the step writes (content hash)."""
    written = lake_state(prod.home.paths.lake)[("loans", batch)][0]
    again = steps.ingest_batch(prod.home.config, prod.home.paths, batch)
    assert again["sha256"] == written


def test_postgres_restart_while_a_task_runs(prod: Prod) -> None:
    batch = prod.home.scenario.batch_key(1)
    alive = set(prod.stack.running())
    with case("fault", "PostgreSQL metadata DB restarted while loopline_ingest runs", prod.home):
        run_id = prod.client.trigger("loopline_ingest", {"batch": batch})
        _poll(lambda: _ingest_task(prod, run_id).get("state") == "running", 300, every=RUNNING_POLL)
        prod.postgres.restart()
        run = _poll(lambda: _finished(prod, run_id), 300)
        assert not _dead(prod.stack, alive), f"services died with the database: {_dead(prod.stack, alive)}"
        tries = _ingest_task(prod, run_id).get("try_number")
        FIGURES.notes.append(
            f"PostgreSQL restart mid-task: the run ended {run['state']} (task tries: {tries})"
        )
        if run["state"] != "success":  # a clean failure is allowed: the re-run must then complete
            again = prod.client.trigger("loopline_ingest", {"batch": batch})
            run = _poll(lambda: _finished(prod, again), 300)
        assert run["state"] == "success", run
        assert batch in steps.lake_of(prod.home.paths).batches("loans")
        _same_as_a_clean_rerun(prod, batch)


def test_celery_worker_killed_with_a_task_in_flight(prod: Prod) -> None:
    import psutil

    batch = prod.home.scenario.batch_key(2)
    with case("fault", "Celery worker SIGKILLed with a task in flight", prod.home):
        run_id = prod.client.trigger("loopline_ingest", {"batch": batch})
        task = _poll(
            lambda: (t := _ingest_task(prod, run_id)).get("state") == "running" and t.get("pid") and t,
            300,
            every=RUNNING_POLL,
        )
        owners = {
            name: {p.pid for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]}
            for name, pid in prod.stack.running().items()
            if name in WORKERS
        }
        victim = next((name for name, pids in owners.items() if task["pid"] in pids), None)
        assert victim is not None, f"task pid {task['pid']} is in no worker's process tree: {owners}"
        survivor = next(name for name in WORKERS if name != victim)
        os.killpg(prod.stack.running()[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        run = _poll(lambda: _finished(prod, run_id), 360)
        FIGURES.notes.append(
            f"Celery worker killed mid-task: retried on {survivor}, run {run['state']} "
            f"{time.monotonic() - killed_at:.0f} s after the kill"
        )
        assert run["state"] == "success", run
        final = _ingest_task(prod, run_id)
        assert final["try_number"] == 2, final
        log = (prod.stack.log_dir / f"{survivor}.log").read_text(errors="replace")
        assert run_id in log, f"the retry did not run on {survivor}"
        assert batch in steps.lake_of(prod.home.paths).batches("loans")
        _same_as_a_clean_rerun(prod, batch)
