"""Security: no secrets in the repository, every service on 127.0.0.1, Airflow auth always on, model loading only
from the configured registry name.

Both profiles run for real (``ml.profiles.start``; the prod one on PostgreSQL, Redis and Celery): what they listen
on is read off the running processes, and their logins are tried over HTTP.
"""

from __future__ import annotations

import ast
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from reliability_support import ROOT, case, entered, free_ports_in, loopline_env

from ml import profiles, stack
from ml.airflow_client import AirflowClient
from ml.config import Paths

REDACTED = "change-me"
MLFLOW_SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
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


@dataclass
class Started:
    """One profile running for real in its own home."""

    paths: Paths
    endpoints: stack.Endpoints
    stack: stack.Stack
    settings: profiles.ProdSettings | None = None


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, postgres_databases: Any, redis_db: int
) -> Iterator[dict[str, Started]]:
    """Both profiles started for real (the prod one on fresh PostgreSQL databases, a Redis DB of its own and
    two Celery workers), each in its own home; stopped by pid afterwards."""
    pg = postgres_databases
    ports = iter(free_ports_in(28700, 28799, 4))
    started: dict[str, Started] = {}
    try:
        for profile in ("embedded", "prod"):
            paths = Paths(tmp_path_factory.mktemp(profile))
            settings: dict[str, Any] = {}
            if profile == "prod":
                settings = {
                    "database_url": pg.url(pg.create("security_airflow")),
                    "broker_url": f"redis://127.0.0.1:6379/{redis_db}",
                    "result_backend": "db+" + pg.url(pg.create("security_celery")),
                    "mlflow_backend_store_uri": pg.url(pg.create("security_mlflow")),
                    "celery_workers": 2,
                    "worker_concurrency": 1,
                }
            with loopline_env(paths.home):
                endpoints = profiles.start(
                    profile,
                    paths,
                    ROOT / "loopline.yaml",
                    airflow_port=next(ports),
                    mlflow_port=next(ports),
                    **settings,
                )
            prod = profiles.ProdSettings.from_env(**settings) if settings else None
            started[profile] = Started(paths, endpoints, stack.Stack(paths), prod)
        yield started
    finally:
        for each in started.values():
            each.stack.stop(timeout=10)


def _listening(pid: int) -> list[tuple[str, int]]:
    """The (address, port) of every TCP socket the process ``pid`` or any of its children listens on."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:  # a short-lived child (a task runner) ended meanwhile
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return sorted(found)


@pytest.mark.e2e
def test_every_service_binds_127_0_0_1(running: dict[str, Started]) -> None:
    """Read off the running processes: every socket any of them (or their children) listens on is on loopback."""
    with case("security", "every service of both profiles binds 127.0.0.1"):
        processes = {profile: each.stack.running() for profile, each in running.items()}
        assert set(processes["prod"]) >= {
            "airflow-api-server",
            "airflow-scheduler",
            "celery-worker-1",
            "celery-worker-2",
            "mlflow-server",
        }
        listeners: dict[str, list[tuple[str, int]]] = {}
        for profile, services in processes.items():
            for name, pid in services.items():
                listeners[f"{profile}/{name}"] = _listening(pid)
        wildcard = {
            where: found for where, found in listeners.items() if any(ip != "127.0.0.1" for ip, _ in found)
        }
        assert wildcard == {}, f"listening beyond loopback: {wildcard}"
        for profile, each in running.items():  # the check saw the UIs' sockets: it could have failed
            ports = {
                port for where, found in listeners.items() if where.startswith(profile) for _, port in found
            }
            for url in (each.endpoints.airflow_url, each.endpoints.mlflow_url):
                assert url and urlsplit(url).port in ports, (
                    f"{profile}: nothing listens at {url}: {listeners}"
                )
        workers = [
            found
            for where, found in listeners.items()
            if any(part in where for part in ("celery-worker", "scheduler", "triggerer"))
        ]
        assert all(found == [] for found in workers), f"a worker or scheduler serves logs: {listeners}"


def _mlflow_status(url: str, auth: tuple[str, str] | None) -> int:
    return requests.get(f"{url}{MLFLOW_SEARCH}", auth=auth, timeout=30).status_code


@pytest.mark.e2e
def test_mlflow_requires_a_login_in_the_prod_profile(running: dict[str, Started]) -> None:
    import configparser
    import json

    with case(
        "security", "prod MLflow runs basic auth (generated admin password); DAGs log in via a connection"
    ):
        prod = running["prod"]
        url = prod.endpoints.mlflow_url
        assert url and prod.settings
        auth = profiles.mlflow_auth(prod.paths)
        assert stat.S_IMODE(auth.config_file.stat().st_mode) == 0o600
        assert auth.config_file.is_relative_to(prod.paths.home)  # the profile's own home
        settings = configparser.ConfigParser()
        settings.read(auth.config_file)
        admin_password = settings["mlflow"]["admin_password"]
        assert len(admin_password) >= 24 and admin_password not in {"password", "password1234", "admin"}
        assert _mlflow_status(url, None) == 401
        assert _mlflow_status(url, ("admin", "password1234")) == 401  # MLflow's default admin is not there
        assert _mlflow_status(url, (settings["mlflow"]["admin_username"], admin_password)) == 200
        # the DAGs' login: the Airflow connection the prod profile gives every Airflow process
        airflow_env = profiles.prod_airflow_env(
            prod.paths,
            ROOT / "loopline.yaml",
            urlsplit(prod.endpoints.airflow_url).port or 0,
            prod.settings,
            url,
        )
        connection = json.loads(airflow_env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
        assert (connection["host"], connection["login"]) == ("127.0.0.1", "loopline")
        assert connection["password"] not in (admin_password, "")
        assert _mlflow_status(url, (connection["login"], connection["password"])) == 200
        assert not {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(
            airflow_env
        ), "MLflow's address or login outside the connection"
        embedded = running["embedded"].endpoints
        assert embedded.mlflow_url and _mlflow_status(embedded.mlflow_url, None) == 200, (
            "the local UI asks no login"
        )


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


@pytest.mark.e2e
def test_airflow_auth_is_on_in_every_profile(running: dict[str, Started]) -> None:
    with case("security", "Airflow auth on in both profiles, per-home generated passwords"):
        for profile, each in running.items():
            api = f"{each.endpoints.airflow_url}/api/v2/dags"
            assert requests.get(api, timeout=30).status_code == 401, (
                f"{profile}: the API answers without a login"
            )
            refused = requests.post(
                f"{each.endpoints.airflow_url}/auth/token",
                json={"username": "admin", "password": "admin"},
                timeout=30,
            )
            assert refused.status_code in (401, 403), f"{profile}: admin/admin logs in"
            client = AirflowClient(
                each.endpoints.airflow_url, each.endpoints.username, each.endpoints.password
            )
            assert "dags" in client._call("GET", "/dags", params={"limit": 1})
            env = stack.airflow_env(
                each.paths, ROOT / "loopline.yaml", urlsplit(each.endpoints.airflow_url).port or 0
            )
            assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in env, profile
            passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
            assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
        homes = [each.paths for each in running.values()]
        envs = [stack.airflow_env(paths, ROOT / "loopline.yaml", 8080) for paths in homes]
        for key in (
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__API__SECRET_KEY",
        ):
            assert envs[0][key] != envs[1][key], f"{key} is the same in two homes"
        first, second = (stack.airflow_password(paths) for paths in homes)
        assert first != second and len(first) >= 16 and first != "admin"
        assert stack.airflow_password(homes[0]) == first, "not stable per home"


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
