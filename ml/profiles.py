"""Deployment profiles: which services ``loopline up`` starts, and how they find each other.

- ``embedded`` (the default): Airflow with LocalExecutor on SQLite and the MLflow UI over the SQLite store, all
  under ``LOOPLINE_HOME``: one machine, nothing to install.
- ``prod``: the standard production shape of the stack. The Airflow metadata DB on PostgreSQL (psycopg2, and
  asyncpg for Airflow's async engine), CeleryExecutor with Redis as the broker and PostgreSQL as the result
  backend, real ``airflow celery worker`` processes, a triggerer, and an MLflow tracking server with a PostgreSQL
  backend store that also serves the artifacts: the DAG tasks reach MLflow over HTTP only.

Both run every process on 127.0.0.1 through ``ml.stack.Stack`` (pids under ``$LOOPLINE_HOME/run``), so
``Stack(paths).stop()`` (``loopline down``) ends exactly what was started. Work scales out by starting more
``airflow celery worker`` processes, on this machine or others, with the same environment (``prod_airflow_env``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ml.config import Paths, load_config
from ml.stack import (
    AIRFLOW_USER,
    Endpoints,
    Stack,
    _alive,
    _bin,
    airflow_env,
    airflow_password,
    migrate_airflow_db,
    start_airflow,
    start_airflow_processes,
    start_mlflow_server,
    start_mlflow_ui,
    wait_healthy,
)

PROFILES = ("embedded", "prod")
MLFLOW_SERVER = "mlflow-server"
# The environment names the prod profile reads (docker/compose.yaml uses the same).
ENV_DATABASE_URL = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
ENV_BROKER_URL = "AIRFLOW__CELERY__BROKER_URL"
ENV_RESULT_BACKEND = "AIRFLOW__CELERY__RESULT_BACKEND"
ENV_MLFLOW_BACKEND = "MLFLOW_BACKEND_STORE_URI"


class ProfileError(ValueError):
    """A profile's settings are missing or unusable; the message says which and how to fix it."""


def _psycopg2(url: str, what: str, prefix: str = "") -> str:
    """``url`` with the psycopg2 driver named (SQLAlchemy 2.1 would pick psycopg 3, which is not installed)."""
    body = url.removeprefix(prefix)
    for plain in ("postgresql://", "postgres://"):
        if body.startswith(plain):
            body = "postgresql+psycopg2://" + body.removeprefix(plain)
    if not body.startswith("postgresql+psycopg2://"):
        raise ProfileError(
            f"{what} must be a PostgreSQL URL ({prefix}postgresql+psycopg2://user@host:5432/db), got {url!r}"
        )
    return prefix + body


@dataclass(frozen=True)
class ProdSettings:
    """Where the prod profile's shared services are, and how many workers it starts."""

    database_url: str
    broker_url: str
    mlflow_backend_store_uri: str
    result_backend: str | None = None
    celery_workers: int = 1
    worker_concurrency: int = 4

    def normalised(self) -> ProdSettings:
        """Checked settings with explicit drivers; the result backend defaults to the metadata DB."""
        if not self.broker_url.startswith(("redis://", "rediss://")):
            raise ProfileError(
                f"the Celery broker must be Redis (redis://host:6379/0), got {self.broker_url!r}"
            )
        if self.celery_workers < 1 or self.worker_concurrency < 1:
            raise ProfileError("celery_workers and worker_concurrency must be at least 1")
        database_url = _psycopg2(self.database_url, ENV_DATABASE_URL)
        return ProdSettings(
            database_url=database_url,
            broker_url=self.broker_url,
            mlflow_backend_store_uri=_psycopg2(self.mlflow_backend_store_uri, ENV_MLFLOW_BACKEND),
            result_backend=_psycopg2(self.result_backend or f"db+{database_url}", ENV_RESULT_BACKEND, "db+"),
            celery_workers=self.celery_workers,
            worker_concurrency=self.worker_concurrency,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ProdSettings:
        """Settings from the environment names the compose file uses; ``overrides`` (not None) win."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {
            "database_url": environ.get(ENV_DATABASE_URL),
            "broker_url": environ.get(ENV_BROKER_URL),
            "result_backend": environ.get(ENV_RESULT_BACKEND),
            "mlflow_backend_store_uri": environ.get(ENV_MLFLOW_BACKEND),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [
            name
            for name, key in (
                (ENV_DATABASE_URL, "database_url"),
                (ENV_BROKER_URL, "broker_url"),
                (ENV_MLFLOW_BACKEND, "mlflow_backend_store_uri"),
            )
            if not values.get(key)
        ]
        if missing:
            raise ProfileError("the prod profile needs " + ", ".join(missing) + " (or the matching options)")
        return cls(**values).normalised()  # type: ignore[arg-type]


def prod_airflow_env(
    paths: Paths, config_file: Path, airflow_port: int, settings: ProdSettings, mlflow_url: str
) -> dict[str, str]:
    """The environment of every Airflow process of the prod profile (a Celery worker elsewhere needs it too)."""
    settings = settings.normalised()
    assert settings.result_backend is not None
    return airflow_env(
        paths,
        config_file,
        airflow_port,
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            ENV_DATABASE_URL: settings.database_url,
            ENV_BROKER_URL: settings.broker_url,
            ENV_RESULT_BACKEND: settings.result_backend,
            # Tasks on a busy machine: the Execution API may answer slower than the 5 s default.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.worker_concurrency),
            # Longer than any Loopline task may run, else the broker redelivers it (Airflow's default, explicit).
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            "AIRFLOW__CORE__PARALLELISM": str(max(4, settings.celery_workers * settings.worker_concurrency)),
            "MLFLOW_TRACKING_URI": mlflow_url,
            "LOOPLINE_HOME": str(paths.home),
            "LOOPLINE_CONFIG": str(config_file),
        },
    )


def celery_hostname(index: int) -> str:
    """The Celery node name of the ``index``-th worker this profile starts (``%h``: this machine)."""
    return f"loopline{index}@%h"


def wait_celery_workers(broker_url: str, count: int, stack: Stack, timeout: float = 120) -> list[str]:
    """Wait until ``count`` Celery workers answer a ping over the broker; returns their node names."""
    from celery import Celery

    app = Celery("loopline-ping", broker=broker_url)
    names = [f"celery-worker-{i}" for i in range(1, count + 1)]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            answered = sorted(name for reply in app.control.ping(timeout=1.0) or [] for name in reply)
            if len([n for n in answered if n.startswith("loopline")]) >= count:
                return answered
            running = stack.running()
            gone = [name for name in names if name not in running or not _alive(running[name])]
            if gone:
                raise RuntimeError(f"{', '.join(gone)} exited during start-up\n{stack.log_tail(gone[0])}")
            time.sleep(1)
    finally:
        app.close()
    raise RuntimeError(
        f"{count} Celery worker(s) did not answer a ping within {timeout:.0f} s; see {stack.log_dir}"
    )


def start_prod(
    stack: Stack, config_file: Path, airflow_port: int, mlflow_port: int, settings: ProdSettings
) -> Endpoints:
    """Start the prod profile; returns once the MLflow server, Airflow and every Celery worker are healthy.

    The MLflow server starts first (it migrates its DB while ``airflow db migrate`` runs). Every Airflow part
    binds to 127.0.0.1 or nothing: the scheduler, triggerer and workers skip their log servers (the api-server
    reads the task logs from ``AIRFLOW_HOME/logs``; workers on other machines need a shared log folder or
    remote logging).
    """
    settings = settings.normalised()
    config = load_config(config_file)
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    if config.registry.tracking_uri not in (None, mlflow_url):
        raise ProfileError(
            f"{config_file} sets registry.tracking_uri={config.registry.tracking_uri!r}; the prod profile's "
            f"tasks use its MLflow server ({mlflow_url}): remove the key"
        )
    before = set(stack.running())
    try:
        return _start_prod(stack, config_file, airflow_port, mlflow_url, mlflow_port, settings)
    except BaseException:
        stack.stop(names=set(stack.running()) - before)  # leave nothing half-started behind
        raise


def _start_prod(
    stack: Stack,
    config_file: Path,
    airflow_port: int,
    mlflow_url: str,
    mlflow_port: int,
    settings: ProdSettings,
) -> Endpoints:
    paths = stack.paths
    start_mlflow_server(
        stack,
        MLFLOW_SERVER,
        settings.mlflow_backend_store_uri,
        mlflow_port,
        artifacts_destination=paths.mlflow_artifacts,
        wait=False,
    )
    env = prod_airflow_env(paths, config_file, airflow_port, settings, mlflow_url)
    migrate_airflow_db(env, stack.log_dir / "airflow-db-migrate.log")
    airflow = _bin("airflow")
    # The api-server and the workers first: the scheduler only starts once the Execution API is warm, so the
    # first tasks (a scheduled DAG may start at once) do not time out on its lazy start.
    first = {"airflow-api-server": [airflow, "api-server", "--port", str(airflow_port)]}
    for index in range(1, settings.celery_workers + 1):
        first[f"celery-worker-{index}"] = [
            airflow,
            "celery",
            "worker",
            "--skip-serve-logs",
            "--concurrency",
            str(settings.worker_concurrency),
            "--celery-hostname",
            celery_hostname(index),
            "--without-mingle",
            "--without-gossip",
        ]
    start_airflow_processes(stack, env, airflow_port, first)
    wait_healthy(f"{mlflow_url}/health", "MLflow", stack, timeout=180, watch=[MLFLOW_SERVER])
    url = start_airflow_processes(
        stack,
        env,
        airflow_port,
        {
            "airflow-scheduler": [airflow, "scheduler", "--skip-serve-logs"],
            "airflow-dag-processor": [airflow, "dag-processor"],
            "airflow-triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        },
        healthy_components=("metadatabase", "scheduler", "triggerer", "dag_processor"),
    )
    wait_celery_workers(settings.broker_url, settings.celery_workers, stack)
    return Endpoints(
        url,
        mlflow_url,
        AIRFLOW_USER,
        airflow_password(paths),
        description=(
            "api-server, scheduler, dag-processor, triggerer, "
            f"{settings.celery_workers} Celery worker(s); CeleryExecutor on PostgreSQL + Redis; "
            f"MLflow server {mlflow_url}"
        ),
    )


def prod_starter(mlflow_port: int, settings: ProdSettings) -> Callable[[Stack, Path, int], Endpoints]:
    """A ``starter`` for ``ml.demo.run_demo``: the demo's loop on the prod profile."""

    def starter(stack: Stack, config_file: Path, airflow_port: int) -> Endpoints:
        return start_prod(stack, config_file, airflow_port, mlflow_port, settings)

    return starter


def start(
    profile: str,
    paths: Paths,
    config_file: Path,
    *,
    airflow_port: int = 8080,
    mlflow_port: int = 5000,
    database_url: str | None = None,
    broker_url: str | None = None,
    result_backend: str | None = None,
    mlflow_backend_store_uri: str | None = None,
    celery_workers: int = 1,
    worker_concurrency: int = 4,
) -> Endpoints:
    """Start a profile's services under ``paths.home`` on the given (free) ports; ``Stack(paths).stop()`` ends them.

    ``prod`` takes its URLs from the arguments, else from ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``,
    ``AIRFLOW__CELERY__BROKER_URL``, ``AIRFLOW__CELERY__RESULT_BACKEND`` (default: the metadata DB) and
    ``MLFLOW_BACKEND_STORE_URI``. Clients of the prod profile's MLflow (``loopline status`` etc.) need
    ``MLFLOW_TRACKING_URI`` set to the returned ``mlflow_url``.
    """
    stack = Stack(paths)
    if profile == "embedded":
        config = load_config(config_file)
        endpoints = start_airflow(stack, config_file, airflow_port)
        mlflow_url = start_mlflow_ui(stack, paths.tracking_uri(config), mlflow_port)
        return Endpoints(endpoints.airflow_url, mlflow_url, endpoints.username, endpoints.password)
    if profile == "prod":
        settings = ProdSettings.from_env(
            database_url=database_url,
            broker_url=broker_url,
            result_backend=result_backend,
            mlflow_backend_store_uri=mlflow_backend_store_uri,
            celery_workers=celery_workers,
            worker_concurrency=worker_concurrency,
        )
        return start_prod(stack, config_file, airflow_port, mlflow_port, settings)
    raise ProfileError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
