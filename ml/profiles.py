"""Deployment profiles: which services ``loopline up`` starts, and how they find each other.

- ``embedded`` (the default): Airflow with LocalExecutor on SQLite and the MLflow UI over the SQLite store, all
  under ``LOOPLINE_HOME``: one machine, nothing to install.
- ``prod``: the standard production shape of the stack. The Airflow metadata DB on PostgreSQL (psycopg2, and
  asyncpg for Airflow's async engine), CeleryExecutor with Redis as the broker and PostgreSQL as the result
  backend, real ``airflow celery worker`` processes, a triggerer, and an MLflow tracking server with a PostgreSQL
  backend store that also serves the artifacts: the DAG tasks reach MLflow over HTTP only. MLflow runs its
  basic-auth app: an ``admin`` for people and a ``loopline`` user for the DAGs (0600 files under
  ``$LOOPLINE_HOME/mlflow/auth``); the tasks get theirs from the Airflow connection ``mlflow_default``
  (``AIRFLOW_CONN_MLFLOW_DEFAULT``), the CLI from ``ml.registry.client_state``.

Credentials come from the environment (a secrets backend, or the operator's shell) when exported, with the names
of ``docker/.env.example``: ``AIRFLOW_ADMIN_PASSWORD``, ``MLFLOW_ADMIN_PASSWORD``, ``MLFLOW_LOOPLINE_PASSWORD``,
``MLFLOW_FLASK_SECRET_KEY``, and Airflow's own ``AIRFLOW__API_AUTH__JWT_SECRET``, ``AIRFLOW__API__SECRET_KEY``.
Each one not exported is generated once per home. Loopline's own four never reach a process it starts.

Both run every process on 127.0.0.1 through ``ml.stack.Stack`` (pids under ``$LOOPLINE_HOME/run``), so
``Stack(paths).stop()`` (``loopline down``) ends exactly what was started. Work scales out by starting more
``airflow celery worker`` processes, on this machine or others, with the same environment (``prod_airflow_env``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from ml.config import Paths, load_config
from ml.stack import (
    AIRFLOW_API_SERVER,
    AIRFLOW_USER,
    ENV_MLFLOW_ADMIN_PASSWORD,
    ENV_MLFLOW_SECRET_KEY,
    ENV_MLFLOW_SERVICE_PASSWORD,
    MLFLOW_SERVER,
    Endpoints,
    Stack,
    _alive,
    _bin,
    airflow_env,
    airflow_password,
    exported,
    migrate_airflow_db,
    secret_file,
    start_airflow,
    start_airflow_processes,
    start_mlflow_server,
    start_mlflow_ui,
    wait_healthy,
    write_private,
)

PROFILES = ("embedded", "prod")
# The environment names the prod profile reads (docker/compose.yaml uses the same).
ENV_DATABASE_URL = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
ENV_BROKER_URL = "AIRFLOW__CELERY__BROKER_URL"
ENV_RESULT_BACKEND = "AIRFLOW__CELERY__RESULT_BACKEND"
ENV_MLFLOW_BACKEND = "MLFLOW_BACKEND_STORE_URI"
ENV_MLFLOW_AUTH_DB = "MLFLOW_AUTH_DATABASE_URI"
MLFLOW_ADMIN = "admin"
MLFLOW_SERVICE_USER = "loopline"
MLFLOW_CONN_ID = "mlflow_default"
# Variables that must not reach the Airflow processes: the tasks take MLflow's address and login from the
# connection only.
_MLFLOW_CLIENT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


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
    mlflow_auth_database_uri: str | None = None  # default: SQLite under $LOOPLINE_HOME/mlflow/auth

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
            mlflow_auth_database_uri=(
                self.mlflow_auth_database_uri
                if self.mlflow_auth_database_uri is None
                or self.mlflow_auth_database_uri.startswith("sqlite:///")
                else _psycopg2(self.mlflow_auth_database_uri, ENV_MLFLOW_AUTH_DB)
            ),
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
            "mlflow_auth_database_uri": environ.get(ENV_MLFLOW_AUTH_DB),
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


@dataclass(frozen=True)
class MlflowAuth:
    """The basic-auth set-up of the prod profile's MLflow server, under ``$LOOPLINE_HOME/mlflow/auth``.

    Every file is 0600 in a 0700 folder: the auth config (``basic_auth.ini``, with the admin's password), the
    password of the ``loopline`` user the DAGs and the CLI log in as, and the Flask secret key (CSRF) of the
    server; each secret as exported (``MLFLOW_ADMIN_PASSWORD``, ``MLFLOW_LOOPLINE_PASSWORD``,
    ``MLFLOW_FLASK_SECRET_KEY``), else generated once per home.
    """

    folder: Path
    admin_password: str
    service_password: str
    secret_key: str

    @property
    def config_file(self) -> Path:
        return self.folder / "basic_auth.ini"

    @property
    def service_password_file(self) -> Path:
        return self.folder / f"{MLFLOW_SERVICE_USER}_password"

    def server_env(self) -> dict[str, str]:
        """What ``mlflow server --app-name basic-auth`` reads from its environment."""
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(self.config_file),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
        }


def mlflow_auth(paths: Paths, database_uri: str | None = None) -> MlflowAuth:
    """Create (or read) the MLflow auth files of this home; the auth DB defaults to SQLite next to them.

    Exported credentials win over the files (which are rewritten to them). ``auth_cache_ttl_seconds = 60``:
    without the cache every request spends ~250 ms hashing the password.
    """
    folder = paths.mlflow_dir / "auth"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)

    def kept(name: str, variable: str, length: int) -> str:
        return secret_file(folder / name, length, exported(variable))

    auth = MlflowAuth(
        folder,
        admin_password=kept(f"{MLFLOW_ADMIN}_password", ENV_MLFLOW_ADMIN_PASSWORD, 24),
        service_password=kept(f"{MLFLOW_SERVICE_USER}_password", ENV_MLFLOW_SERVICE_PASSWORD, 24),
        secret_key=kept("flask_secret_key", ENV_MLFLOW_SECRET_KEY, 48),
    )
    settings = {
        "default_permission": "READ",
        "database_uri": database_uri or f"sqlite:///{folder / 'basic_auth.db'}",
        "admin_username": MLFLOW_ADMIN,
        "admin_password": auth.admin_password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": "60",
    }
    # configparser interpolation: a literal % is written %%
    text = "[mlflow]\n" + "".join(f"{k} = {v.replace('%', '%%')}\n" for k, v in settings.items())
    write_private(auth.config_file, text)
    return auth


def ensure_service_user(mlflow_url: str, auth: MlflowAuth, timeout: float = 30) -> None:
    """Create the ``loopline`` user on the MLflow server (as its admin), or reset it to the home's password.

    It is not an admin: it owns what it creates (experiments, the registered model) and reads the rest.
    """
    admin = (MLFLOW_ADMIN, auth.admin_password)
    body = {"username": MLFLOW_SERVICE_USER, "password": auth.service_password}
    created = requests.post(
        f"{mlflow_url}/api/2.0/mlflow/users/create", json=body, auth=admin, timeout=timeout
    )
    if created.status_code == 200:
        return
    if created.status_code == 401:
        raise ProfileError(
            f"the MLflow auth DB already has an admin whose password is not {auth.folder / 'admin_password'} "
            f"(or ${ENV_MLFLOW_ADMIN_PASSWORD}): export the admin's password as {ENV_MLFLOW_ADMIN_PASSWORD}, "
            "restore that file, or drop the auth DB (its users and permissions) and start again"
        )
    if "RESOURCE_ALREADY_EXISTS" not in created.text:
        raise ProfileError(f"creating the MLflow user {MLFLOW_SERVICE_USER} failed: {created.text[:300]}")
    updated = requests.patch(
        f"{mlflow_url}/api/2.0/mlflow/users/update-password", json=body, auth=admin, timeout=timeout
    )
    if updated.status_code != 200:
        raise ProfileError(f"resetting the MLflow user {MLFLOW_SERVICE_USER} failed: {updated.text[:300]}")


def mlflow_connection(mlflow_url: str, auth: MlflowAuth) -> str:
    """``AIRFLOW_CONN_MLFLOW_DEFAULT``: the HTTP connection the DAG tasks take MLflow's address and login from."""
    url = urlsplit(mlflow_url)
    return json.dumps(
        {
            "conn_type": "http",
            "host": url.hostname,
            "port": url.port,
            "schema": url.scheme,
            "login": MLFLOW_SERVICE_USER,
            "password": auth.service_password,
        }
    )


def prod_airflow_env(
    paths: Paths, config_file: Path, airflow_port: int, settings: ProdSettings, mlflow_url: str
) -> dict[str, str]:
    """The environment of every Airflow process of the prod profile (a Celery worker elsewhere needs it too).

    MLflow's address and login reach the tasks only through the ``mlflow_default`` connection.
    """
    settings = settings.normalised()
    assert settings.result_backend is not None
    env = airflow_env(
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
            f"AIRFLOW_CONN_{MLFLOW_CONN_ID.upper()}": mlflow_connection(
                mlflow_url, mlflow_auth(paths, settings.mlflow_auth_database_uri)
            ),
            "LOOPLINE_HOME": str(paths.home),
            "LOOPLINE_CONFIG": str(config_file),
        },
    )
    for name in _MLFLOW_CLIENT_ENV:
        env.pop(name, None)
    return env


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


def start_mlflow_with_auth(
    stack: Stack, backend_store_uri: str, port: int, auth_database_uri: str | None = None
) -> MlflowAuth:
    """Start the prod profile's ``mlflow server`` (basic auth, artifacts served from the home); no wait."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise ProfileError(
            "MLflow's basic-auth app needs mlflow[auth] (Flask-WTF): pip install 'loopline[prod]' in this venv"
        )
    auth = mlflow_auth(stack.paths, auth_database_uri)
    start_mlflow_server(
        stack,
        MLFLOW_SERVER,
        backend_store_uri,
        port,
        artifacts_destination=stack.paths.mlflow_artifacts,
        wait=False,
        auth_env=auth.server_env(),
    )
    return auth


def ready_mlflow_with_auth(stack: Stack, mlflow_url: str, auth: MlflowAuth) -> None:
    """Wait for that server, create the ``loopline`` user and record the server for the CLI (client state)."""
    from ml.registry import write_client_state

    wait_healthy(f"{mlflow_url}/health", "MLflow", stack, timeout=180, watch=[MLFLOW_SERVER])
    ensure_service_user(mlflow_url, auth)
    write_client_state(stack.paths, mlflow_url, MLFLOW_SERVICE_USER, auth.service_password_file)


def start_prod(
    stack: Stack, config_file: Path, airflow_port: int, mlflow_port: int, settings: ProdSettings
) -> Endpoints:
    """Start the prod profile; returns once the MLflow server, Airflow and every Celery worker are healthy.

    The MLflow server starts first, with basic auth (it migrates its DB while ``airflow db migrate`` runs); once
    it is healthy the ``loopline`` user is made and ``ml.registry.write_client_state`` records the server for
    the CLI. Every Airflow part binds to 127.0.0.1 or nothing: the scheduler, triggerer and workers skip their
    log servers (the api-server reads the task logs from ``AIRFLOW_HOME/logs``; workers on other machines need
    a shared log folder or remote logging, docs/deployment.md).
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
    auth = start_mlflow_with_auth(
        stack, settings.mlflow_backend_store_uri, mlflow_port, settings.mlflow_auth_database_uri
    )
    env = prod_airflow_env(paths, config_file, airflow_port, settings, mlflow_url)
    migrate_airflow_db(env, stack.log_dir / "airflow-db-migrate.log")
    airflow = _bin("airflow")
    # The api-server and the workers first: the scheduler only starts once the Execution API is warm, so the
    # first tasks (a scheduled DAG may start at once) do not time out on its lazy start.
    first = {AIRFLOW_API_SERVER: [airflow, "api-server", "--port", str(airflow_port)]}
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
    # before the scheduler starts: no task runs before the DAGs' MLflow login exists
    ready_mlflow_with_auth(stack, mlflow_url, auth)
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
            f"MLflow server {mlflow_url} (basic auth)"
        ),
        mlflow_username=MLFLOW_ADMIN,
        mlflow_password=auth.admin_password,
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
    ``MLFLOW_BACKEND_STORE_URI`` (and ``MLFLOW_AUTH_DATABASE_URI``, default SQLite under the home). The CLI
    (``loopline status`` etc.) finds the prod profile's MLflow server and its login in the home's client state.
    """
    stack = Stack(paths)
    if profile == "embedded":
        from ml.registry import client_state_file

        client_state_file(paths).unlink(missing_ok=True)  # the CLI uses the local store again
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
