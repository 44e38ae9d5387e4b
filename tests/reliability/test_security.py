"""Security: no secrets in the repository, every service on 127.0.0.1, Airflow auth always on, model loading only
from the configured registry name.

The service commands are captured by starting both profiles (``ml.profiles.start``) with ``Stack.start`` and the
health waits replaced by recorders: the real functions build every command line and environment, nothing runs.
"""

from __future__ import annotations

import ast
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_support import ROOT, case, entered

from ml import profiles, stack
from ml.config import Paths

REDACTED = "change-me"
SECRET_PATTERNS: dict[str, re.Pattern[str]] = {
    "private key": re.compile("-----BEGIN (?:[A-Z0-9]+ )*PRIVATE" + " KEY-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?(?!change-me)[A-Za-z0-9/+=]{40}\b"
    ),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})"),
    "Slack token or webhook": re.compile(
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}|hooks\.slack\.com/services/T[A-Z0-9]+/"
    ),
    "API key (sk-...)": re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{32,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"<>]+:(?P<secret>[^\s@/'\"<>]+)@"),
    "hard-coded secret": re.compile(
        r"(?i)\b[\w.-]*(?:password|passwd|secret|token|api_?key|fernet_key)\b['\"]?\s*[:=]\s*"
        r"['\"](?P<secret>[^'\"\s]{8,})['\"]"
    ),
}
# What a secret slot may hold instead of a secret: interpolation, placeholders, variable names, elisions,
# and values that say they are fake (test fixtures).
PLACEHOLDER = re.compile(
    r"^(?:\$\{?[A-Za-z_][^}]*\}?|\{[^}]*\}|<[^>]*>|%[(s].*|\*+|…|\.\.\.|change-me|x+|"
    r"[A-Z][A-Z0-9_]*|[a-z]+(?:_[a-z]+)+|[a-z_]+\(.*)$"
    r"|(?i:.*(?:test|fake|dummy|example|bench|not-a-).*)"
)
# Fake credentials of test fixtures that do not say so in their value: (file, value).
KNOWN_FAKES = {("tests/docker/test_compose.py", "s3cret")}


def repository_files() -> list[Path]:
    """Every file git tracks or would add (untracked, not ignored), plus docker/.env.example."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    files = {ROOT / name for name in listed if name} | {ROOT / "docker" / ".env.example"}
    return sorted(f for f in files if f.is_file() and f.stat().st_size < 5_000_000)


def _is_secret(match: re.Match[str], where: str) -> bool:
    value = match.groupdict().get("secret")
    return value is None or not (PLACEHOLDER.match(value) or (where, value) in KNOWN_FAKES)


def secrets_in(text: str, where: str = "") -> list[tuple[int, str]]:
    """(line number, kind) of the first credential-looking string of each line that is not a placeholder."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        kinds = [
            kind
            for kind, pattern in SECRET_PATTERNS.items()
            for match in pattern.finditer(line)
            if _is_secret(match, where)
        ]
        if kinds:
            found.append((number, kinds[0]))
    return found


def find_secrets(files: list[Path]) -> list[str]:
    """``file:line: kind`` for every hit in the (text) files."""
    hits = []
    for file in files:
        payload = file.read_bytes()
        if b"\0" in payload[:8192]:
            continue
        text = payload.decode("utf-8", "replace")
        lines = text.splitlines()
        where = str(file.relative_to(ROOT))
        for number, kind in secrets_in(text, where):
            hits.append(f"{where}:{number}: {kind}: {lines[number - 1].strip()[:120]}")
    return hits


@pytest.mark.fast
def test_the_scanner_finds_planted_credentials() -> None:
    planted = "\n".join(
        [
            "-----BEGIN RSA " + "PRIVATE KEY-----",
            "aws_key = 'AKIA" + "ABCDEFGHIJKLMNOP'",
            "url = 'postgresql://airflow:" + "hunter2hunter2@db:5432/airflow'",
            "password = '" + "Tr0ub4dor&3xyz'",
            "token = 'ghp_" + "a" * 36 + "'",
            "ok = 'postgresql://airflow:${AIRFLOW_DB_PASSWORD}@db/airflow'",
            "ok = 'redis://:change-me@redis:6379/0'",
        ]
    )
    assert [kind for _, kind in secrets_in(planted)] == [
        "private key",
        "AWS access key id",
        "password in a URL",
        "hard-coded secret",
        "GitHub token",
    ]


@pytest.mark.fast
def test_no_credentials_in_the_repository() -> None:
    files = repository_files()
    with case("security", f"no credential patterns in {len(files)} repository files and docker/.env.example"):
        assert len(files) > 50
        assert find_secrets(files) == []


@pytest.mark.fast
def test_env_example_holds_placeholders_only_and_real_env_files_are_ignored() -> None:
    with case(
        "security", "docker/.env.example: every secret is change-me; docker/.env and homes git-ignored"
    ):
        secrets = {}
        for line in (ROOT / "docker" / ".env.example").read_text().splitlines():
            key, _, value = line.partition("=")
            if not line.startswith("#") and re.search(r"PASSWORD|SECRET|_KEY|TOKEN", key):
                secrets[key] = value
        assert secrets and set(secrets.values()) == {REDACTED}, secrets
        for path in ("docker/.env", ".loopline/airflow/simple_auth_manager_passwords.json"):
            ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], check=False)
            assert ignored.returncode == 0, f"{path} is not git-ignored: a secret could be committed"


@pytest.fixture
def captured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Both profiles "started" in their own homes; returns {profile: {name: (command, env)}}."""
    seen: dict[str, dict[str, tuple[list[str], dict[str, str]]]] = {}
    current: dict[str, dict[str, tuple[list[str], dict[str, str]]]] = {}

    def record_start(self: stack.Stack, name: str, command: list[str], env: dict[str, str]) -> int:
        current[name] = (list(command), dict(env))
        return 0

    monkeypatch.setattr(stack.Stack, "start", record_start)
    for module in (stack, profiles):
        monkeypatch.setattr(module, "migrate_airflow_db", lambda env, log_file: None)
        monkeypatch.setattr(module, "wait_healthy", lambda *args, **kwargs: None)
    monkeypatch.setattr(profiles, "wait_celery_workers", lambda *args, **kwargs: [])
    monkeypatch.setattr(profiles, "ensure_service_user", lambda url, auth: None)  # nothing listens
    monkeypatch.setattr(stack.requests, "get", lambda *args, **kwargs: None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config_file = ROOT / "loopline.yaml"
    for profile in ("embedded", "prod"):
        current = {}
        home = tmp_path / profile
        home.mkdir()
        kwargs: dict[str, Any] = {}
        if profile == "prod":
            kwargs = {
                "database_url": "postgresql://airflow@127.0.0.1:5432/airflow",
                "broker_url": "redis://127.0.0.1:6379/3",
                "mlflow_backend_store_uri": "postgresql://mlflow@127.0.0.1:5432/mlflow",
                "celery_workers": 2,
            }
        profiles.start(profile, Paths(home), config_file, airflow_port=28790, mlflow_port=28791, **kwargs)
        seen[profile] = current
    yield seen


@pytest.mark.fast
def test_every_service_binds_127_0_0_1(captured: dict[str, Any]) -> None:
    with case("security", "every service of both profiles binds 127.0.0.1"):
        assert set(captured["prod"]) >= {
            "airflow-api-server",
            "celery-worker-1",
            "celery-worker-2",
            "mlflow-server",
        }
        for profile, services in captured.items():
            for name, (command, env) in services.items():
                where = f"{profile}/{name}"
                added = {k: v for k, v in env.items() if os.environ.get(k) != v}
                assert not [k for k, v in added.items() if "0.0.0.0" in v], f"{where}: 0.0.0.0 in its env"
                assert "0.0.0.0" not in command and "::" not in command, f"{where}: {command}"
                if "--host" in command:
                    assert command[command.index("--host") + 1] == "127.0.0.1", f"{where}: {command}"
                if "mlflow" in Path(command[0]).name:
                    assert "--host" in command, f"{where}: mlflow server without --host binds its default"
                if name == "airflow-api-server":
                    assert env["AIRFLOW__API__HOST"] == "127.0.0.1", where
                if any(part in command for part in ("scheduler", "triggerer", "worker")):
                    assert "--skip-serve-logs" in command, f"{where}: its log server would listen on 0.0.0.0"


@pytest.mark.fast
def test_mlflow_requires_a_login_in_the_prod_profile(captured: dict[str, Any], tmp_path: Path) -> None:
    import configparser
    import json

    with case(
        "security", "prod MLflow runs basic auth (generated admin password); DAGs log in via a connection"
    ):
        command, env = captured["prod"]["mlflow-server"]
        assert command[command.index("--app-name") + 1] == "basic-auth"
        assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in env, (
            "the admin password comes from the 0600 config file only"
        )
        config_file = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
        assert config_file.is_relative_to(tmp_path / "prod")  # the profile's own home
        settings = configparser.ConfigParser()
        settings.read(config_file)
        admin_password = settings["mlflow"]["admin_password"]
        assert len(admin_password) >= 24 and admin_password not in {"password", "password1234", "admin"}
        assert settings["mlflow"]["database_uri"] == f"sqlite:///{config_file.parent / 'basic_auth.db'}"
        assert len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32
        for name, (_, airflow) in captured["prod"].items():
            if not name.startswith(("airflow", "celery")):
                continue
            connection = json.loads(airflow["AIRFLOW_CONN_MLFLOW_DEFAULT"])
            assert (connection["host"], connection["login"]) == ("127.0.0.1", "loopline"), name
            assert connection["password"] not in (admin_password, "")
            assert not {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(
                airflow
            ), f"{name}: MLflow's address or login outside the connection"
        assert "--app-name" not in captured["embedded"]["mlflow-ui"][0], "the local UI needs no login"


@pytest.mark.fast
def test_no_wildcard_address_in_loopline_code() -> None:
    """No string in ml/ (docstrings aside) is a wildcard bind address; the serving default is loopback."""
    with case("security", "no 0.0.0.0 in ml/ code; serving defaults to 127.0.0.1"):
        offenders = []
        for file in sorted((ROOT / "ml").rglob("*.py")):
            tree = ast.parse(file.read_text())
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and ("0.0.0.0" in node.value or node.value == "::")
                ):
                    offenders.append(f"{file.relative_to(ROOT)}:{node.lineno}")
        assert offenders == []
        settings = pytest.importorskip("ml.serve.settings")
        assert settings.ServeSettings.model_fields["host"].default == "127.0.0.1"


@pytest.mark.fast
def test_airflow_auth_is_on_in_every_profile(captured: dict[str, Any]) -> None:
    with case("security", "Airflow auth on in both profiles, per-home generated passwords"):
        for profile, services in captured.items():
            for name, (_, env) in services.items():
                if not name.startswith(("airflow", "celery")):
                    continue
                assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in env, f"{profile}/{name}"
                assert env.get("AIRFLOW__CORE__AUTH_MANAGER", "simple_auth_manager").endswith(
                    ("simple_auth_manager", "SimpleAuthManager")
                ), env.get("AIRFLOW__CORE__AUTH_MANAGER")
                assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
                passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
                assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
        embedded = captured["embedded"]["airflow-api-server"][1]
        prod = captured["prod"]["airflow-api-server"][1]
        for key in (
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__API__SECRET_KEY",
        ):
            assert embedded[key] != prod[key], f"{key} is the same in two homes"
        first = stack.airflow_password(Paths(Path(embedded["LOOPLINE_HOME"])))
        second = stack.airflow_password(Paths(Path(prod["LOOPLINE_HOME"])))
        assert first != second and len(first) >= 16 and first != "admin"
        assert stack.airflow_password(Paths(Path(embedded["LOOPLINE_HOME"]))) == first, "not stable per home"


@pytest.mark.fast
def test_auth_cannot_be_switched_off_anywhere_in_the_repository() -> None:
    with case("security", "SIMPLE_AUTH_MANAGER_ALL_ADMINS set nowhere (only refused)"):
        # Places that refuse or strip the switch (never set it).
        allowed = {Path("docker/airflow-init.sh"), Path("docs/deployment.md"), Path("ml/stack.py")}
        found = []
        for file in repository_files():
            relative = file.relative_to(ROOT)
            if relative.parts[0] == "tests" or relative in allowed or file.suffix in {".png", ".jpg"}:
                continue
            if "SIMPLE_AUTH_MANAGER_ALL_ADMINS" in file.read_text(errors="replace"):
                found.append(str(relative))
        assert found == []
        init = (ROOT / "docker" / "airflow-init.sh").read_text()
        assert "turns authentication off" in init and "fail(" in init


@pytest.mark.fast
def test_an_exported_all_admins_switch_does_not_reach_airflow(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    with case(
        "security",
        "ALL_ADMINS exported in the shell does not reach Airflow",
        known_defect="ml/stack.py airflow_env",
    ):
        env = stack.airflow_env(Paths(tmp_path), ROOT / "loopline.yaml", 28792)
        assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False").lower() in {"false", "0"}


@pytest.mark.fast
def test_models_load_only_through_the_configured_registry_name() -> None:
    """Only ml/registry.py calls MLflow's loaders, and only with models:/<config.model_name>/<version>."""
    with case("security", "model loading only via ml.registry with the configured model name"):
        loaders = re.compile(r"\bmlflow\.(?:\w+\.)*load_model\(|\bload_model\(\s*f?['\"]")
        callers = []
        for folder in ("ml", "dags", "plugins"):
            for file in sorted((ROOT / folder).rglob("*.py")):
                if file.name != "registry.py" and loaders.search(file.read_text()):
                    callers.append(str(file.relative_to(ROOT)))
        assert callers == []
        tree = ast.parse((ROOT / "ml" / "registry.py").read_text())
        load = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "load_model")
        assert ast.unparse(load.args) == "ref: VersionRef"
        assert "ref.uri" in ast.unparse(load)


def test_loaded_champion_is_the_configured_model(stable_champion: tuple[Path, Any]) -> None:
    from ml import registry, steps

    with entered(*stable_champion) as home, case("security", "the champion resolves to the configured model"):
        registry.connect(home.config, home.paths)
        current = registry.champion(home.config)
        assert current is not None and current.name == home.config.model_name
        assert current.uri == f"models:/{home.config.model_name}/{current.version}"
        ref = steps._version_ref(home.config, current.version)
        assert ref.name == home.config.model_name


def test_no_dag_param_takes_a_model_uri(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Trigger forms never let a user choose what model (a pickle) gets loaded."""
    if "airflow" not in sys.modules:
        os.environ["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("airflow"))
    os.environ.setdefault("LOOPLINE_CONFIG", str(ROOT / "loopline.yaml"))
    from airflow.dag_processing.dagbag import DagBag

    with case("security", "no DAG Param takes a model URI or path"):
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert bag.import_errors == {} and bag.dags
        suspicious = re.compile(r"(?i)model|uri|url|path|artifact|file")
        found = []
        for dag_id, dag in bag.dags.items():
            for name, param in dag.params.items():
                schema = {k: v for k, v in param.schema.items() if k != "$schema"}  # the JSON Schema dialect
                described = f"{name} {param.value!r} {schema} {getattr(param, 'description', '')}"
                if suspicious.search(name) or re.search(r"[a-z]+:/", described):
                    found.append(f"{dag_id}.{name}: {described[:200]}")
        assert found == [], found
