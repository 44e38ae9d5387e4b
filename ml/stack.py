"""Start and stop the services of a Loopline deployment as local processes, each on 127.0.0.1.

The embedded profile runs Airflow's parts separately (api-server, scheduler, dag-processor; ``airflow
standalone`` would open log servers on 0.0.0.0) with LocalExecutor on SQLite, and optionally the MLflow UI over
the SQLite store. Every process's pid is written to ``$LOOPLINE_HOME/run/<name>.pid`` and its output to
``$LOOPLINE_HOME/logs/<name>.log``; ``stop`` ends exactly those processes. ``ml.profiles`` builds the production
profile (PostgreSQL, CeleryExecutor on Redis, an MLflow tracking server) from the same pieces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ml.config import Paths

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_USER = "admin"
# Credentials an operator (or a secrets backend) may export; each is generated per home only when absent.
# Airflow's own settings, passed on to its processes:
ENV_JWT_SECRET = "AIRFLOW__API_AUTH__JWT_SECRET"
ENV_API_SECRET_KEY = "AIRFLOW__API__SECRET_KEY"
# Read by Loopline alone (the names of docker/.env.example), never passed on to a process it starts:
ENV_AIRFLOW_ADMIN_PASSWORD = "AIRFLOW_ADMIN_PASSWORD"
ENV_MLFLOW_ADMIN_PASSWORD = "MLFLOW_ADMIN_PASSWORD"
ENV_MLFLOW_SERVICE_PASSWORD = "MLFLOW_LOOPLINE_PASSWORD"
ENV_MLFLOW_SECRET_KEY = "MLFLOW_FLASK_SECRET_KEY"
LOOPLINE_CREDENTIALS = (
    ENV_AIRFLOW_ADMIN_PASSWORD,
    ENV_MLFLOW_ADMIN_PASSWORD,
    ENV_MLFLOW_SERVICE_PASSWORD,
    ENV_MLFLOW_SECRET_KEY,
)


@dataclass(frozen=True)
class Endpoints:
    """Where the started services answer."""

    airflow_url: str
    mlflow_url: str | None
    username: str
    password: str
    description: str = "api-server, scheduler, dag-processor; LocalExecutor"
    mlflow_username: str | None = None  # None: the MLflow UI asks for no login (embedded profile)
    mlflow_password: str | None = None


def free_port(preferred: int) -> int:
    """``preferred`` if nothing listens on it on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _bin(name: str) -> str:
    """An executable of this virtualenv (the one running Loopline)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def exported(variable: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of ``variable`` in ``environ`` (default: this process's), None when unset or blank."""
    value = (os.environ if environ is None else environ).get(variable, "").strip()
    return value or None


def write_private(file: Path, text: str) -> None:
    """Replace ``file`` with ``text``, 0600 from its first byte."""
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(file.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    partial.replace(file)


def secret_file(file: Path, length: int, value: str | None = None) -> str:
    """The secret kept in ``file`` (0600): ``value`` when given (the file is rewritten to it if it differs),
    else the one generated (``length`` random bytes, URL-safe) on first use."""
    if value is not None:
        if not file.exists() or file.read_text().strip() != value:
            write_private(file, value)
        return value
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process created it first: read theirs
            descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(length))
    return file.read_text().strip()


def _secret(paths: Paths, variable: str, name: str, length: int) -> str:
    """Exported ``variable``, else the secret generated once in ``AIRFLOW_HOME/name`` (not written when exported)."""
    return exported(variable) or secret_file(paths.airflow_home / name, length)


def airflow_password(paths: Paths) -> str:
    """The Airflow ``admin`` password: exported ``AIRFLOW_ADMIN_PASSWORD``, else generated once per home.

    Either way it is kept in the simple auth manager's passwords file (0600) under the home, which Airflow reads.
    """
    file = paths.airflow_home / "simple_auth_manager_passwords.json"
    chosen = exported(ENV_AIRFLOW_ADMIN_PASSWORD)
    kept = json.loads(file.read_text()).get(AIRFLOW_USER) if file.exists() else None
    if kept is None or (chosen is not None and chosen != kept):
        kept = chosen or secrets.token_urlsafe(12)
        write_private(file, json.dumps({AIRFLOW_USER: kept}))
    return str(kept)


def airflow_env(
    paths: Paths, config_file: Path, port: int, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of every Airflow process: the embedded profile's, then ``overrides`` (another profile).

    ``AIRFLOW__API_AUTH__JWT_SECRET`` and ``AIRFLOW__API__SECRET_KEY`` are the exported ones when set, else
    generated once per home; the credentials only Loopline reads (``LOOPLINE_CREDENTIALS``) are not passed on.
    """
    airflow_home = paths.airflow_home
    airflow_password(paths)
    env = dict(os.environ)
    # Authentication stays on whatever the operator's shell exports.
    for variable in ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", *LOOPLINE_CREDENTIALS):
        env.pop(variable, None)
    env.update(
        {
            "LOOPLINE_HOME": str(paths.home),
            "LOOPLINE_CONFIG": str(config_file),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "GX_ANALYTICS_ENABLED": "false",
            # XGBoost's OpenMP threads spin-wait between calls by default, stealing the other tasks' CPU.
            "OMP_WAIT_POLICY": "PASSIVE",
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                airflow_home / "simple_auth_manager_passwords.json"
            ),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}?timeout=30",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            ENV_JWT_SECRET: _secret(paths, ENV_JWT_SECRET, "jwt_secret", 48),
            ENV_API_SECRET_KEY: _secret(paths, ENV_API_SECRET_KEY, "api_secret_key", 48),
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }
    )
    env.update(overrides or {})
    return env


AIRFLOW_API_SERVER = "airflow-api-server"
MLFLOW_SERVER = "mlflow-server"
MLFLOW_UI = "mlflow-ui"
STOPPED_LAST = (AIRFLOW_API_SERVER, MLFLOW_SERVER, MLFLOW_UI)
"""Processes ``Stack.terminate`` stops after all others, in this order: the ones the others report to."""


class Stack:
    """The processes of one deployment under one home."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.run_dir = paths.home / "run"
        self.log_dir = paths.home / "logs"

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def running(self) -> dict[str, int]:
        """The processes this home started that are still alive, by name."""
        alive = {}
        for file in sorted(self.run_dir.glob("*.pid")) if self.run_dir.is_dir() else []:
            pid = int(file.read_text().split()[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                file.unlink(missing_ok=True)
                continue
            alive[file.stem] = pid
        return alive

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last lines of a process's log, with the file named (for error messages)."""
        file = self.log_dir / f"{name}.log"
        text = file.read_text(errors="replace").splitlines()[-lines:] if file.is_file() else []
        return f"last lines of {file}:\n" + "\n".join(text)

    def start(self, name: str, command: list[str], env: dict[str, str]) -> int:
        """Start one process in its own session; its output goes to logs/<name>.log."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if name in self.running():
            raise RuntimeError(
                f"{name} is already running (pid {self.running()[name]}): run `loopline down` first"
            )
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.paths.home,
            )
        self._pid_file(name).write_text(f"{process.pid}\n")
        return process.pid

    def stop(self, timeout: float = 30.0, names: Collection[str] | None = None) -> list[str]:
        """SIGTERM every process this home started (or only ``names``), each with its process group.

        SIGKILL after ``timeout``. Returns the names stopped.
        """
        return self.terminate(timeout, names).stopped

    def terminate(self, timeout: float = 30.0, names: Collection[str] | None = None) -> Stopped:
        """``stop``, saying which processes had to be killed: still running ``timeout`` seconds after SIGTERM.

        The servers the others report to stop last (``STOPPED_LAST``, in order): a Celery worker finishes its
        running tasks first, and their supervisors report the tasks' end to the api-server, which must still
        answer (a worker killed mid-task has its task retried elsewhere).
        """
        running = {k: v for k, v in self.running().items() if names is None or k in names}
        phases = [[name for name in running if name not in STOPPED_LAST]]
        phases += [[name] for name in STOPPED_LAST if name in running]
        killed: list[str] = []
        for phase in phases:
            for name in phase:
                _signal_group(running[name], signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(_alive(running[name]) for name in phase):
                time.sleep(0.2)
            for name in phase:
                if _alive(running[name]):
                    _signal_group(running[name], signal.SIGKILL)
                    killed.append(name)
                self._pid_file(name).unlink(missing_ok=True)
        return Stopped(sorted(running), sorted(killed))


@dataclass(frozen=True)
class Stopped:
    """What ``Stack.terminate`` stopped, and which of those it had to SIGKILL."""

    stopped: list[str]
    killed: list[str]


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def migrate_airflow_db(env: dict[str, str], log_file: Path) -> None:
    """Create or upgrade the Airflow metadata DB (idempotent)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        done = subprocess.run(
            [_bin("airflow"), "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise RuntimeError(f"`airflow db migrate` failed; see {log_file}")


def start_airflow(stack: Stack, config_file: Path, port: int) -> Endpoints:
    """Migrate, then start api-server, scheduler and dag-processor; returns once the API is healthy."""
    env = airflow_env(stack.paths, config_file, port)
    migrate_airflow_db(env, stack.log_dir / "airflow-db-migrate.log")
    airflow = _bin("airflow")
    url = start_airflow_processes(
        stack,
        env,
        port,
        {
            AIRFLOW_API_SERVER: [airflow, "api-server", "--port", str(port)],
            "airflow-scheduler": [airflow, "scheduler", "--skip-serve-logs"],
            "airflow-dag-processor": [airflow, "dag-processor"],
        },
    )
    return Endpoints(url, None, AIRFLOW_USER, airflow_password(stack.paths))


def start_airflow_processes(
    stack: Stack,
    env: dict[str, str],
    port: int,
    processes: Mapping[str, list[str]],
    healthy_components: Sequence[str] = (),
) -> str:
    """Start ``processes`` (name -> command) with ``env``; returns the API URL once it is healthy.

    ``healthy_components`` (e.g. ``scheduler``, ``triggerer``) must also report healthy in the health document.
    """
    for name, command in processes.items():
        stack.start(name, command, env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(
        f"{url}/api/v2/monitor/health",
        "Airflow",
        stack,
        timeout=180,
        watch=list(processes),
        check=lambda document: all(
            (document.get(part) or {}).get("status") == "healthy" for part in healthy_components
        ),
    )
    with contextlib.suppress(requests.RequestException):  # warms the Execution API (first call is slow)
        requests.get(f"{url}/execution/health", timeout=30)
    return url


def start_mlflow_ui(stack: Stack, tracking_uri: str, port: int) -> str:
    """Serve the MLflow UI over the given store on 127.0.0.1; returns its URL once healthy."""
    return start_mlflow_server(stack, MLFLOW_UI, tracking_uri, port)


def mlflow_allowed_hosts(port: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """The Host headers an MLflow server on 127.0.0.1:``port`` accepts: its own addresses, then the exported
    ``MLFLOW_SERVER_ALLOWED_HOSTS`` entries (a ``*`` there is dropped: it would switch the check off)."""
    environ = os.environ if environ is None else environ
    exported = [h.strip() for h in environ.get("MLFLOW_SERVER_ALLOWED_HOSTS", "").split(",")]
    own = [f"127.0.0.1:{port}", f"localhost:{port}"]
    return own + [h for h in exported if h and h != "*" and h not in own]


def start_mlflow_server(
    stack: Stack,
    name: str,
    backend_store_uri: str,
    port: int,
    artifacts_destination: Path | None = None,
    wait: bool = True,
    auth_env: Mapping[str, str] | None = None,
) -> str:
    """``mlflow server`` (one worker, no job runner) on 127.0.0.1; returns its URL (once healthy when ``wait``).

    With ``artifacts_destination`` the server also stores and serves the artifacts (``mlflow-artifacts:/``), so
    clients need nothing but HTTP. With ``auth_env`` (``MLFLOW_AUTH_CONFIG_PATH``,
    ``MLFLOW_FLASK_SERVER_SECRET_KEY``) it runs MLflow's basic-auth app: every request but ``/health`` needs a
    login. The admin's name and password then come from the auth config file only, never from the shell.

    Requests must name the server as ``127.0.0.1:<port>`` or ``localhost:<port>`` in their Host header (DNS
    rebinding protection; MLflow's default also takes any private IP), plus the hosts of an exported
    ``MLFLOW_SERVER_ALLOWED_HOSTS`` (comma-separated, e.g. a proxy's name); others get 403.
    """
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    for variable in (
        "MLFLOW_AUTH_CONFIG_PATH",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE",
        *LOOPLINE_CREDENTIALS,
    ):
        env.pop(variable, None)
    env.update(auth_env or {})
    command = [
        _bin("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri,
        "--allowed-hosts",
        ",".join(mlflow_allowed_hosts(port)),
    ]
    if auth_env is not None:
        command += ["--app-name", "basic-auth"]
    if artifacts_destination is not None:
        artifacts_destination.mkdir(parents=True, exist_ok=True)
        command += [
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts_destination),
            "--default-artifact-root",
            "mlflow-artifacts:/",
        ]
    stack.start(name, command, env)
    url = f"http://127.0.0.1:{port}"
    if wait:
        wait_healthy(f"{url}/health", "MLflow", stack, timeout=120, watch=[name])
    return url


def wait_healthy(
    url: str,
    what: str,
    stack: Stack,
    timeout: float,
    watch: Sequence[str] = (),
    check: Callable[[dict[str, Any]], bool] | None = None,
) -> None:
    """Poll ``url`` until it answers 200 (and its JSON passes ``check``); fail with the log named when not.

    Fails at once when one of the ``watch`` processes (names given to ``Stack.start``) has exited.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200 and (check is None or check(response.json())):
                return
        except (requests.RequestException, ValueError):
            pass
        running = stack.running()
        gone = [name for name in watch if name not in running or not _alive(running[name])]
        if gone:
            raise RuntimeError(f"{what}: {', '.join(gone)} exited during start-up\n{stack.log_tail(gone[0])}")
        time.sleep(1)
    raise RuntimeError(f"{what} did not become healthy at {url} within {timeout:.0f} s; see {stack.log_dir}")
