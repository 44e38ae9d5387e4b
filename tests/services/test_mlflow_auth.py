"""The prod profile's MLflow server with its basic-auth app, against real PostgreSQL databases.

The server is started by the profile's own functions (``start_mlflow_with_auth``, ``ready_mlflow_with_auth``):
the backend store and the auth DB each in a fresh PostgreSQL database. Checked: anonymous and wrong logins get
401 everywhere but ``/health``; the auth files are generated per home and private; the DAGs' ``loopline`` user is
no admin yet runs the registry; the Airflow connection ``mlflow_default`` gives a task process its address and
login (``loopline_airflow.runtime``); ``loopline status``/``history`` find the server with no variable set.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from ml import profiles, registry
from ml.config import Paths, load_config
from ml.stack import Stack, free_port

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_PORT = 28810
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


@pytest.fixture(scope="module")
def server(postgres_databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The authenticated MLflow server of a fresh home; stopped (by pid) afterwards."""
    pg = postgres_databases
    home = tmp_path_factory.mktemp("mlflow-auth")
    paths = Paths(home)
    stack = Stack(paths)
    url = f"http://127.0.0.1:{free_port(MLFLOW_PORT)}"
    try:
        port = int(url.rsplit(":", 1)[1])
        auth_db = pg.url(pg.create("mlflowauth"))
        auth = profiles.start_mlflow_with_auth(stack, pg.url(pg.create("mlflow")), port, auth_db)
        profiles.ready_mlflow_with_auth(stack, url, auth)
        yield {"url": url, "auth": auth, "paths": paths, "stack": stack, "query": pg.query}
    finally:
        stack.stop()


@pytest.fixture
def home_env(server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """This process as a client of the server's home: LOOPLINE_HOME set, no MLflow variable."""
    monkeypatch.setenv("LOOPLINE_HOME", str(server["paths"].home))
    monkeypatch.setenv("LOOPLINE_CONFIG", str(ROOT / "loopline.yaml"))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")  # recorded, so that whatever connect() exports is undone afterwards
        monkeypatch.delenv(name)
    yield server


def test_anonymous_and_wrong_logins_are_refused(server: dict[str, Any]) -> None:
    url, auth = server["url"], server["auth"]
    for path in (SEARCH, "/ajax-api/2.0/mlflow/experiments/search?max_results=5", "/"):
        assert requests.get(url + path, timeout=30).status_code == 401, path
    assert requests.get(url + SEARCH, auth=("admin", "password1234"), timeout=30).status_code == 401
    assert requests.get(url + SEARCH, auth=("loopline", auth.admin_password), timeout=30).status_code == 401
    assert requests.get(url + "/health", timeout=30).status_code == 200
    for login in (("admin", auth.admin_password), ("loopline", auth.service_password)):
        assert requests.get(url + SEARCH, auth=login, timeout=30).status_code == 200, login[0]


def test_requests_naming_another_host_are_refused(server: dict[str, Any]) -> None:
    """DNS rebinding: a page of evil.example (or a private IP) that resolves to 127.0.0.1 gets a 4xx, logged in
    or not; the names the server is reached by answer."""
    url, auth = server["url"], server["auth"]
    port = url.rsplit(":", 1)[1]
    login = ("admin", auth.admin_password)
    for host in ("evil.example", f"evil.example:{port}", f"10.1.2.3:{port}", f"127.0.0.1:{int(port) + 1}"):
        for credentials in (login, None):
            refused = requests.get(url + SEARCH, auth=credentials, headers={"Host": host}, timeout=30)
            assert 400 <= refused.status_code < 500, (host, refused.status_code, refused.text[:200])
            assert "experiments" not in refused.text, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        answered = requests.get(url + SEARCH, auth=login, headers={"Host": host}, timeout=30)
        assert answered.status_code == 200, host


def test_auth_files_are_generated_per_home_and_private(server: dict[str, Any]) -> None:
    auth: profiles.MlflowAuth = server["auth"]
    assert stat.S_IMODE(auth.folder.stat().st_mode) == 0o700
    for file in auth.folder.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    ini = auth.config_file.read_text()
    assert f"admin_password = {auth.admin_password}" in ini
    assert "database_uri = postgresql+psycopg2://" in ini and "auth_cache_ttl_seconds = 60" in ini
    assert len(auth.admin_password) >= 24 and auth.admin_password not in ("password", "password1234")
    assert len({auth.admin_password, auth.service_password, auth.secret_key}) == 3
    pid = server["stack"].running()[profiles.MLFLOW_SERVER]
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"basic-auth" in command and not [c for c in command if auth.admin_password.encode() in c]
    assert not [e for e in environ if auth.admin_password.encode() in e], "the admin password is in the env"
    # the users live in the auth DB on PostgreSQL, not in a SQLite file
    assert not list(auth.folder.glob("*.db"))
    other = profiles.mlflow_auth(Paths(server["paths"].home.parent / "another-home"))
    assert other.admin_password != auth.admin_password


def test_the_service_user_is_no_admin_and_runs_the_registry(home_env: dict[str, Any]) -> None:
    url, auth = home_env["url"], home_env["auth"]
    user = requests.get(
        f"{url}/api/2.0/mlflow/users/get?username=loopline", auth=("admin", auth.admin_password), timeout=30
    ).json()["user"]
    assert user["is_admin"] is False
    os.environ["MLFLOW_TRACKING_URI"] = url  # the credentials come from the home's client state
    config = load_config(ROOT / "loopline.yaml")
    experiment = registry.connect(config, home_env["paths"])
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "loopline"
    # before the first training: no model yet (MLflow answers a non-admin 403 there, not 404)
    assert registry.champion(config) is None and registry.versions(config) == []
    client = registry._client()
    client.create_registered_model(config.model_name)
    for _ in range(2):
        run = client.create_run(experiment)
        client.create_model_version(
            config.model_name, f"{run.info.artifact_uri}/model", run.info.run_id, tags={"gate": "passed"}
        )
    registry.promote(config, registry.VersionRef(config.model_name, "1", ""), None, "first", "test")
    registry.promote(config, registry.VersionRef(config.model_name, "2", ""), "1", "better", "test")
    assert registry.champion(config).version == "2"
    assert [(m["from"], m["to"]) for m in registry.champion_moves(config)] == [(None, "1"), ("1", "2")]


def _cli(home_env: dict[str, Any], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env |= {"LOOPLINE_HOME": str(home_env["paths"].home), "LOOPLINE_CONFIG": str(ROOT / "loopline.yaml")}
    return subprocess.run(
        [sys.executable, "-m", "ml.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_status_and_history_find_the_server_without_any_variable(home_env: dict[str, Any]) -> None:
    """Runs after the registry test: the champion is v2."""
    status = _cli(home_env, "status")
    assert status.returncode == 0, status.stderr[-2000:]
    document = json.loads(status.stdout)
    assert document["champion"]["version"] == "2"
    history = _cli(home_env, "history")
    assert history.returncode == 0, history.stderr[-2000:]
    assert "champion: v1 -> v2" in history.stdout
    # without the client state the CLI would read the (empty) local store instead
    assert not home_env["paths"].mlflow_db.exists()


RUNTIME = """
import json, os, sys
sys.path.insert(0, {plugins!r})
from loopline_airflow.runtime import use_mlflow_connection
found = use_mlflow_connection()
from mlflow import MlflowClient
names = [e.name for e in MlflowClient().search_experiments()] if found else []
print(json.dumps({{"found": found, "uri": os.environ.get("MLFLOW_TRACKING_URI"),
                  "user": os.environ.get("MLFLOW_TRACKING_USERNAME"), "experiments": names}}))
"""


def _task_process(connection: str | None, tmp_path: Path) -> dict[str, Any]:
    """A fresh process that sets itself up as a Loopline task does, with ``AIRFLOW_CONN_MLFLOW_DEFAULT``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "AIRFLOW_CONN_"))}
    env |= {"AIRFLOW_HOME": str(tmp_path / "airflow"), "MLFLOW_TRACKING_URI": "sqlite:///nowhere.db"}
    if connection is not None:
        env["AIRFLOW_CONN_MLFLOW_DEFAULT"] = connection
    code = RUNTIME.format(plugins=str(ROOT / "plugins"))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_task_takes_mlflow_from_the_airflow_connection(server: dict[str, Any], tmp_path: Path) -> None:
    url, auth = server["url"], server["auth"]
    seen = _task_process(profiles.mlflow_connection(url, auth), tmp_path)
    assert seen["found"] and seen["uri"] == url and seen["user"] == "loopline"
    assert "loopline/loans" in seen["experiments"], seen
    as_url = json.dumps(
        {"conn_type": "http", "host": url, "login": "loopline", "password": "fake-wrong-password"}
    )
    with pytest.raises(AssertionError, match=r"401|not authenticated|Unauthorized"):
        _task_process(as_url, tmp_path)  # the URL form is read too, and a wrong password is refused
    assert _task_process(None, tmp_path) == {
        "found": False,
        "uri": "sqlite:///nowhere.db",
        "user": None,
        "experiments": [],
    }


def test_the_service_user_is_reset_to_the_home_password(server: dict[str, Any]) -> None:
    url, auth = server["url"], server["auth"]
    profiles.ensure_service_user(url, auth)  # a restart: the user exists already
    changed = replace(auth, service_password="test-new-password-for-loopline")
    profiles.ensure_service_user(url, changed)
    assert (
        requests.get(url + SEARCH, auth=("loopline", changed.service_password), timeout=30).status_code == 200
    )
    assert requests.get(url + SEARCH, auth=("loopline", auth.service_password), timeout=30).status_code == 401
    profiles.ensure_service_user(url, auth)
    with pytest.raises(profiles.ProfileError, match="admin_password"):
        profiles.ensure_service_user(url, replace(auth, admin_password="fake-admin-password"))
