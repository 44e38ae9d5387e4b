"""Credentials of the profiles: exported values (a secrets backend, the operator's shell) win, generated per home
only when absent; Loopline's own never reach a process it starts; the MLflow server's allowed Host headers.

No service is started: ``Stack.start`` is replaced by a recorder where a command line is checked.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from ml import profiles, stack
from ml.config import Paths

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = ROOT / "loopline.yaml"
EXPORTED = {
    stack.ENV_JWT_SECRET: "fake-exported-jwt-secret-0123456789abcdefghijklmnopqrstuv",
    stack.ENV_API_SECRET_KEY: "fake-exported-api-secret-key-0123456789abcdefghijklmno",
    stack.ENV_AIRFLOW_ADMIN_PASSWORD: "fake-exported-airflow-admin-password",
    stack.ENV_MLFLOW_ADMIN_PASSWORD: "fake-exported-mlflow-admin-password",
    stack.ENV_MLFLOW_SERVICE_PASSWORD: "fake-exported-mlflow-loopline-password",
    stack.ENV_MLFLOW_SECRET_KEY: "fake-exported-mlflow-flask-secret-key-0123456789",
}
SETTINGS = profiles.ProdSettings(
    database_url="postgresql://airflow@127.0.0.1:5432/airflow",
    broker_url="redis://127.0.0.1:6379/3",
    mlflow_backend_store_uri="postgresql://mlflow@127.0.0.1:5432/mlflow",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No credential exported (whatever the shell running the tests has)."""
    for variable in (*EXPORTED, "MLFLOW_SERVER_ALLOWED_HOSTS"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def _export_all(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in EXPORTED.items():
        monkeypatch.setenv(variable, value)


def _private(file: Path) -> bool:
    return stat.S_IMODE(file.stat().st_mode) == 0o600


def test_generated_per_home_and_stable_when_nothing_is_exported(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    first, second = Paths(tmp_path / "one"), Paths(tmp_path / "two")
    env = stack.airflow_env(first, CONFIG_FILE, 28792)
    assert env == stack.airflow_env(first, CONFIG_FILE, 28792), "not stable per home"
    other = stack.airflow_env(second, CONFIG_FILE, 28792)
    for variable in (stack.ENV_JWT_SECRET, stack.ENV_API_SECRET_KEY):
        assert len(env[variable]) >= 48 and env[variable] != other[variable], variable
    assert _private(first.airflow_home / "jwt_secret")
    password = stack.airflow_password(first)
    assert len(password) >= 16 and password != stack.airflow_password(second)
    assert _private(first.airflow_home / "simple_auth_manager_passwords.json")
    auth, again = profiles.mlflow_auth(first), profiles.mlflow_auth(first)
    assert auth == again and auth.admin_password != profiles.mlflow_auth(second).admin_password


def test_exported_airflow_secrets_and_password_win(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    paths = Paths(tmp_path / "home")
    generated = stack.airflow_password(paths)  # a home that ran before the operator exported anything
    _export_all(clean_env)
    env = stack.airflow_env(paths, CONFIG_FILE, 28792)
    assert env[stack.ENV_JWT_SECRET] == EXPORTED[stack.ENV_JWT_SECRET]
    assert env[stack.ENV_API_SECRET_KEY] == EXPORTED[stack.ENV_API_SECRET_KEY]
    assert not (paths.airflow_home / "jwt_secret").exists(), "an exported secret was copied to disk"
    # Airflow reads the admin's password from its passwords file only: the exported one is written there
    passwords = paths.airflow_home / "simple_auth_manager_passwords.json"
    assert stack.airflow_password(paths) == EXPORTED[stack.ENV_AIRFLOW_ADMIN_PASSWORD] != generated
    assert json.loads(passwords.read_text()) == {"admin": EXPORTED[stack.ENV_AIRFLOW_ADMIN_PASSWORD]}
    assert _private(passwords)
    # a blank export is no export: the kept password stays
    clean_env.setenv(stack.ENV_AIRFLOW_ADMIN_PASSWORD, " ")
    assert stack.airflow_password(paths) == EXPORTED[stack.ENV_AIRFLOW_ADMIN_PASSWORD]


def test_exported_mlflow_credentials_win(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    paths = Paths(tmp_path / "home")
    generated = profiles.mlflow_auth(paths)
    _export_all(clean_env)
    auth = profiles.mlflow_auth(paths)
    assert auth.admin_password == EXPORTED[stack.ENV_MLFLOW_ADMIN_PASSWORD] != generated.admin_password
    assert auth.service_password == EXPORTED[stack.ENV_MLFLOW_SERVICE_PASSWORD]
    assert auth.secret_key == EXPORTED[stack.ENV_MLFLOW_SECRET_KEY]
    assert auth.server_env()["MLFLOW_FLASK_SERVER_SECRET_KEY"] == EXPORTED[stack.ENV_MLFLOW_SECRET_KEY]
    assert f"admin_password = {EXPORTED[stack.ENV_MLFLOW_ADMIN_PASSWORD]}" in auth.config_file.read_text()
    # the CLI reads the service password from its file (ml.registry.client_state): it holds the exported one
    assert auth.service_password_file.read_text() == EXPORTED[stack.ENV_MLFLOW_SERVICE_PASSWORD]
    assert all(_private(file) for file in auth.folder.iterdir())
    connection = json.loads(
        profiles.prod_airflow_env(paths, CONFIG_FILE, 28792, SETTINGS, "http://127.0.0.1:28793")[
            "AIRFLOW_CONN_MLFLOW_DEFAULT"
        ]
    )
    assert connection["password"] == EXPORTED[stack.ENV_MLFLOW_SERVICE_PASSWORD]


def _mlflow_command_and_env(
    paths: Paths, monkeypatch: pytest.MonkeyPatch, port: int = 28793
) -> tuple[list[str], dict[str, str]]:
    started: dict[str, tuple[list[str], dict[str, str]]] = {}

    def record(self: stack.Stack, name: str, command: list[str], env: dict[str, str]) -> int:
        started[name] = (command, env)
        return 0

    monkeypatch.setattr(stack.Stack, "start", record)
    auth = profiles.mlflow_auth(paths)
    stack.start_mlflow_server(
        stack.Stack(paths), "mlflow-server", "sqlite:///x.db", port, wait=False, auth_env=auth.server_env()
    )
    return started["mlflow-server"]


def test_loopline_credentials_reach_no_process(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    _export_all(clean_env)
    paths = Paths(tmp_path / "home")
    airflow = profiles.prod_airflow_env(paths, CONFIG_FILE, 28792, SETTINGS, "http://127.0.0.1:28793")
    _, mlflow = _mlflow_command_and_env(paths, clean_env)
    for where, env in (("airflow", airflow), ("mlflow", mlflow)):
        assert not set(stack.LOOPLINE_CREDENTIALS) & set(env), where
        values = set(env.values())
        for variable in (stack.ENV_AIRFLOW_ADMIN_PASSWORD, stack.ENV_MLFLOW_ADMIN_PASSWORD):
            assert EXPORTED[variable] not in values, f"{where}: {variable}'s value in its environment"


def test_the_mlflow_server_accepts_only_its_own_host_names(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    paths = Paths(tmp_path / "home")
    clean_env.setenv("MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE", "true")
    command, env = _mlflow_command_and_env(paths, clean_env, port=28794)
    assert command[command.index("--allowed-hosts") + 1] == "127.0.0.1:28794,localhost:28794"
    assert "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE" not in env
    assert stack.mlflow_allowed_hosts(5000, {"MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow.example, *,,"}) == [
        "127.0.0.1:5000",
        "localhost:5000",
        "mlflow.example",
    ]
