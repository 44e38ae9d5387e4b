"""Static checks of docker/: the compose file, .env.example, the Dockerfiles and the images' entry commands.

No Docker engine runs here, so nothing is built or started. The compose file is parsed with PyYAML and held to
the deployment contract of docs/deployment.md; the entry commands are checked against the real ``airflow`` and
``mlflow`` command lines of this virtualenv (the same pinned versions the images install); the two start-up
scripts run for real against stand-ins (a fake ``airflow``, a throwaway PostgreSQL cluster).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"
MLFLOW_DOCKERFILE = DOCKER / "mlflow" / "Dockerfile"
MLFLOW_AUTH_INI = DOCKER / "mlflow" / "basic_auth.ini"
CREATE_USER = DOCKER / "mlflow" / "create_user.py"
INIT_SCRIPT = DOCKER / "airflow-init.sh"
POSTGRES_INIT = DOCKER / "postgres" / "init-databases.sh"
BIN = Path(sys.executable).parent

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
OTHER_SERVICES = ("postgres", "redis", "minio", "create-bucket", "mlflow", "mlflow-users")
ONE_SHOT = {"airflow-init", "create-bucket", "mlflow-users"}
# keys an Airflow service may add to the shared environment, and why
EXTRA_ENV = {
    "airflow-init": {"AIRFLOW_ADMIN_PASSWORD"},  # only the init container writes the passwords file
    "airflow-worker": {"DUMB_INIT_SETSID"},  # Celery warm shutdown
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|JWT|ACCESS_KEY|TOKEN", re.IGNORECASE)
PLACEHOLDER = "change-me"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}; not $${escaped}
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
AIRFLOW_GROUPS = {"celery", "db", "jobs", "dags", "tasks", "config", "connections", "variables", "pools"}

# ----------------------------------------------------------------------------------------------- helpers


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads an .env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a KEY=VALUE line: {line!r}"
        values[key.strip()] = value.strip()
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation of one string, with ``env`` as the .env file."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        current = env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and not current):
                raise KeyError(f"{name}: {arg}")
            return current
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return arg if current is not None else ""
        return current or ""

    return VARIABLE.sub(substitute, value).replace("$$", "$")


def resolve(node: object, env: dict[str, str]) -> object:
    """The compose model with every string interpolated."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes (short syntax)."""
    found = {}
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax: {entry!r}"
        source, target = entry.split(":")[:2]
        found[target] = source
    return found


def command_of(service: dict) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), "commands are lists (exec form), so no shell re-splits them"
    return [str(part) for part in command]


def healthcheck_command(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    assert test[0] == "CMD", test
    return list(test[1:])


def flags(argv: list[str]) -> list[str]:
    return [part.split("=", 1)[0] for part in argv if part.startswith("-")]


def option_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def airflow_subcommand(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``[airflow] sub [sub2] args`` into the subcommand path and its arguments."""
    if argv and argv[0] == "airflow":
        argv = argv[1:]
    depth = 2 if argv and argv[0] in AIRFLOW_GROUPS else 1
    return argv[:depth], argv[depth:]


def airflow_invocations(compose: dict) -> dict[str, list[list[str]]]:
    """Every airflow command line the images run, by where it comes from."""
    found: dict[str, list[list[str]]] = {}
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        command = command_of(service)
        if command[0] == "bash":
            script = DOCKER / Path(command[1]).relative_to("/opt/loopline/docker")
            lines = [line.strip() for line in script.read_text().splitlines()]
            found[f"{name} ({script.name})"] = [
                shlex.split(line) for line in lines if line.startswith("airflow ")
            ]
        else:
            assert command[0] == "airflow", f"{name}: start the service with an airflow command"
            found[name] = [command]
        if "healthcheck" in service:
            check = healthcheck_command(service)
            if check[0] == "airflow":
                found[f"{name} healthcheck"] = [check]
    return found


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict)
    return loaded


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(raw_compose: dict, env_example: dict[str, str]) -> dict:
    """The compose model as `docker compose config` would see it with .env copied from .env.example."""
    return resolve(raw_compose, env_example)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(requirements: list[str], name: str) -> str:
    for requirement in requirements:
        match = re.fullmatch(rf"{re.escape(name)}==([\w.]+)", requirement.strip())
        if match:
            return match[1]
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


# ------------------------------------------------------------------------------------ services and wiring


@pytest.mark.fast
def test_every_expected_service_exists(raw_compose: dict) -> None:
    missing = set(AIRFLOW_SERVICES + OTHER_SERVICES) - set(raw_compose["services"])
    assert not missing, f"services missing from docker/compose.yaml: {sorted(missing)}"


@pytest.mark.fast
def test_every_service_has_an_image_or_a_build_that_exists(raw_compose: dict) -> None:
    for name, service in raw_compose["services"].items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "build" in service:
            build = service["build"]
            context = (DOCKER / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
            assert "image" in service, (
                f"{name}: name the built image (image:), so that other hosts can pull it"
            )


@pytest.mark.fast
def test_depends_on_names_existing_services_with_the_right_condition(raw_compose: dict) -> None:
    services = raw_compose["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: use the long depends_on syntax, with conditions"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on {target}, which is not a service"
            assert target != name, f"{name} depends on itself"
            condition = spec.get("condition")
            if "healthcheck" in services[target]:
                expected = "service_healthy"
            elif target in ONE_SHOT:
                expected = "service_completed_successfully"
            else:
                expected = "service_started"
            assert condition == expected, (
                f"{name} -> {target}: condition {condition!r}, expected {expected!r}"
            )


@pytest.mark.fast
def test_long_running_services_have_health_checks_and_restart(raw_compose: dict) -> None:
    for name, service in raw_compose["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} runs once: restart must be 'no'"
            assert "healthcheck" not in service, f"{name} runs once and needs no health check"
            continue
        check = service.get("healthcheck")
        assert check, f"{name}: no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, f"{name}: {check['test']}"
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{name}: health check without {key}"
        assert service.get("restart") in ("always", "unless-stopped"), f"{name}: restart policy"


@pytest.mark.fast
def test_published_ports_bind_to_loopback_by_default(raw_compose: dict, env_example: dict[str, str]) -> None:
    published = 0
    for name, service in raw_compose["services"].items():
        assert "container_name" not in service, (
            f"{name}: container_name prevents --scale and parallel projects"
        )
        for entry in service.get("ports", []):
            assert isinstance(entry, str), f"{name}: use the short port syntax with a host address: {entry!r}"
            for env in ({}, env_example):  # compose's own defaults, and the shipped example
                host_ip = interpolate(entry, env).split(":")[0]
                assert host_ip == "127.0.0.1", f"{name}: {entry!r} publishes on {host_ip!r}, not 127.0.0.1"
            published += 1
    assert published >= 2, "the Airflow and MLflow UIs are published on the host"
    assert "ports" not in raw_compose["services"]["airflow-worker"], "a published port breaks --scale"


@pytest.mark.fast
def test_every_variable_used_in_compose_is_in_env_example(env_example: dict[str, str]) -> None:
    used = {match["name"] for match in VARIABLE.finditer(COMPOSE_FILE.read_text())}
    assert used, "compose.yaml reads nothing from .env?"
    assert not used - set(env_example), (
        f"used in compose.yaml, missing from .env.example: {sorted(used - set(env_example))}"
    )
    assert not set(env_example) - used, f"in .env.example, used nowhere: {sorted(set(env_example) - used)}"


def strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [text for item in node for text in strings(item)]
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    return []


@pytest.mark.fast
def test_secrets_are_required_from_env(raw_compose: dict, compose: dict) -> None:
    """Every secret in compose is a ${VAR:?...} reference: no literal secret, no silent empty default."""
    text = COMPOSE_FILE.read_text()
    for match in VARIABLE.finditer(text):
        if SECRET_NAME.search(match["name"]):
            assert match["op"] == ":?", (
                f"${{{match['name']}}} must fail when unset: use ${{{match['name']}:?...}}"
            )
    for name, service in raw_compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert "${" in str(value), f"{name}: {key} is a literal: take it from .env"
    # with .env.example as .env, every password inside a URL must be the placeholder
    urls = [url for value in strings(compose) for url in re.findall(r"[a-z0-9+]+://\S+", value)]
    with_credentials = [re.match(r"[a-z0-9+]+://([^/@]+)@", url) for url in urls]
    passwords = [found[1].split(":", 1)[1] for found in with_credentials if found and ":" in found[1]]
    assert len(passwords) >= 3 and set(passwords) == {PLACEHOLDER}, f"literal password in a URL: {passwords}"
    assert "SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in text, "ALL_ADMINS turns Airflow authentication off"


@pytest.mark.fast
def test_env_example_ships_placeholders_only(env_example: dict[str, str]) -> None:
    for key, value in env_example.items():
        if SECRET_NAME.search(key):
            assert value == PLACEHOLDER, f".env.example: {key} must be the placeholder {PLACEHOLDER!r}"
            continue
        for token in re.split(r"[,:/@*=.]+", value):
            looks_random = len(token) >= 16 and re.search(r"\d", token) and re.search(r"[A-Za-z]", token)
            assert not looks_random, f".env.example: {key} holds a secret-looking value {token!r}"
    assert env_example["LOOPLINE_BIND"] == "127.0.0.1"


@pytest.mark.fast
def test_environment_values_are_strings(raw_compose: dict) -> None:
    """Compose refuses booleans in environment maps (True must be written "True")."""
    for name, service in raw_compose["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: use the map form of environment"
        for key, value in environment.items():
            assert isinstance(value, str), f"{name}: {key}={value!r} is not a string"


@pytest.mark.fast
def test_volumes_are_declared_and_bind_mounts_exist(raw_compose: dict) -> None:
    declared = set(raw_compose.get("volumes") or {})
    assert {"postgres-data", "minio-data", "loopline-home"} <= declared
    used = set()
    for name, service in raw_compose["services"].items():
        for target, source in mounts(service).items():
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            assert target.startswith("/"), f"{name}: {target}"
    assert declared == used, f"declared but never mounted: {sorted(declared - used)}"


# ------------------------------------------------------------------------------ the Airflow environment


@pytest.mark.fast
def test_airflow_services_share_one_image_and_environment(raw_compose: dict) -> None:
    common = raw_compose["x-airflow-common"]
    for name in AIRFLOW_SERVICES:
        service = raw_compose["services"][name]
        assert service["image"] == common["image"] and service["build"] == common["build"], name
        environment = service["environment"]
        for key, value in common["environment"].items():
            assert environment.get(key) == value, f"{name}: {key} differs from x-airflow-common"
        extra = set(environment) - set(common["environment"])
        assert extra <= EXTRA_ENV.get(name, set()), f"{name}: unexpected extra variables {sorted(extra)}"


@pytest.mark.fast
def test_airflow_environment_contract(compose: dict) -> None:
    env = compose["x-airflow-common"]["environment"]
    services = compose["services"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__BASE_URL"].startswith("http")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/"
    api_server = command_of(services["airflow-api-server"])
    assert "--port" not in api_server or option_value(api_server, "--port") == "8080"
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"):
        assert env[key] == PLACEHOLDER, f"{key} comes from .env"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/loopline/dags"
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/loopline/plugins"
    # MLflow's address and login reach the tasks through the Airflow connection only
    assert not {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(env)
    connection = json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert connection == {
        "conn_type": "http",
        "host": "mlflow",
        "port": 5000,
        "schema": "http",
        "login": "loopline",
        "password": PLACEHOLDER,
    }
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["LOOPLINE_HOME"] == "/opt/loopline/home"
    assert env["LOOPLINE_CONFIG"] == "/opt/loopline/loopline.yaml"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == PLACEHOLDER


@pytest.mark.fast
def test_the_lake_is_on_the_object_store_and_its_bucket_is_made_first(compose: dict) -> None:
    """Workers on other hosts share the lake: it lives in its own bucket of the object store, made before any
    Airflow service starts (docs/deployment.md)."""
    from ml.config import LakeConfig

    env = compose["x-airflow-common"]["environment"]
    bucket = compose["services"]["create-bucket"]["environment"]["LOOPLINE_LAKE_BUCKET"]
    assert bucket and bucket != compose["services"]["create-bucket"]["environment"]["MLFLOW_ARTIFACTS_BUCKET"]
    assert env["LOOPLINE_LAKE_URI"] == f"s3://{bucket}/lake"
    LakeConfig(uri=env["LOOPLINE_LAKE_URI"])  # a URI the config accepts
    assert env["AWS_ENDPOINT_URL_S3"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for name in AIRFLOW_SERVICES:
        if name == "airflow-init":
            continue
        condition = compose["services"][name]["depends_on"].get("create-bucket")
        assert condition == {"condition": "service_completed_successfully"}, (
            f"{name}: starts before the buckets"
        )


@pytest.mark.fast
def test_state_volumes_of_the_airflow_services(compose: dict) -> None:
    env = compose["x-airflow-common"]["environment"]
    passwords_dir = str(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).parent)
    for name in AIRFLOW_SERVICES:
        volumes = mounts(compose["services"][name])
        assert volumes.get(env["LOOPLINE_HOME"]) == "loopline-home", (
            f"{name}: LOOPLINE_HOME not on loopline-home"
        )
        has_passwords = volumes.get(passwords_dir) == "airflow-auth"
        # the passwords file: written by airflow-init, read (and locked) by the api-server, seen by nobody else
        assert has_passwords == (name in ("airflow-init", "airflow-api-server")), (
            f"{name}: airflow-auth mount"
        )
    assert "AIRFLOW_ADMIN_PASSWORD" not in env


@pytest.mark.fast
def test_one_shot_commands_run_what_the_images_carry(raw_compose: dict) -> None:
    init = command_of(raw_compose["services"]["airflow-init"])
    assert init == ["bash", "/opt/loopline/docker/airflow-init.sh"]
    assert command_of(raw_compose["services"]["create-bucket"]) == ["python", "/opt/mlflow/create_bucket.py"]
    assert command_of(raw_compose["services"]["mlflow-users"]) == ["python", "/opt/mlflow/create_user.py"]


@pytest.mark.fast
def test_worker_scales(raw_compose: dict) -> None:
    worker = raw_compose["services"]["airflow-worker"]
    assert command_of(worker)[1:3] == ["celery", "worker"]
    assert "hostname" not in worker and "container_name" not in worker
    assert worker["environment"].get("DUMB_INIT_SETSID") == "0"


# ------------------------------------------------------------------------------------------------ images


@pytest.mark.fast
def test_dockerfile_builds_from_the_pinned_airflow_image(pyproject: dict) -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert bases == [
        f"apache/airflow:{pinned(pyproject['project']['dependencies'], 'apache-airflow')}-python3.11"
    ]
    minimum = re.search(r">=\s*3\.(\d+)", pyproject["project"]["requires-python"])
    assert minimum and int(minimum[1]) <= 11, "the image's Python must satisfy requires-python"
    assert re.search(r'pip install [^\n]*"\.\[prod\]"', text), "install Loopline with its prod extra"
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in text, "keep pip from changing the image's Airflow"


@pytest.mark.fast
def test_dockerfile_copies_the_project_and_bakes_in_no_secret() -> None:
    text = DOCKERFILE.read_text()
    copied = {}
    for line in re.findall(r"^COPY\s+(.+)$", text, re.MULTILINE):
        *sources, target = [token for token in line.split() if not token.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            copied[source.rstrip("/")] = target
    for needed in ("ml", "dags", "plugins", "expectations", "loopline.yaml", "pyproject.toml"):
        assert needed in copied, f"the image does not copy {needed}"
    assert copied["dags"].rstrip("/") == "./dags" and "WORKDIR /opt/loopline" in text
    # airflow-init's command runs the script from where the image puts it
    assert copied["docker/airflow-init.sh"] == "./docker/airflow-init.sh"
    mlflow_copy = re.search(r"^COPY create_bucket.py (\S+)$", MLFLOW_DOCKERFILE.read_text(), re.MULTILINE)
    assert mlflow_copy and mlflow_copy[1] == "/opt/mlflow/create_bucket.py"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for source in copied:
        assert source in allowed, f"{source} is copied but excluded from the build context"
    for name in re.findall(r"^\s*(?:ENV|ARG)\s+(\w+)[= ]", text, re.MULTILINE):
        assert not SECRET_NAME.search(name), f"the Dockerfile sets {name}: secrets come from .env at run time"
    for name in re.findall(r"^\s+(\w+)=", text, re.MULTILINE):  # continuation lines of ENV
        assert not SECRET_NAME.search(name), f"the Dockerfile sets {name}"


@pytest.mark.fast
def test_image_versions_follow_pyproject(
    raw_compose: dict, env_example: dict[str, str], pyproject: dict
) -> None:
    project = pyproject["project"]
    prod = project["optional-dependencies"]["prod"]
    mlflow_text = MLFLOW_DOCKERFILE.read_text()
    assert f'"mlflow[auth]=={pinned(project["dependencies"], "mlflow")}"' in mlflow_text
    assert f'"psycopg2-binary=={pinned(prod, "psycopg2-binary")}"' in mlflow_text
    assert re.search(r'"boto3==[\d.]+"', mlflow_text), "pin boto3 too"
    celery = re.search(r'"celery\[redis\]==([\d.]+)"', DOCKERFILE.read_text())
    assert celery, "docker/Dockerfile holds celery below 5.7 (see its comment)"
    declared = [req.replace("[redis]", "") for req in prod if re.match(r"celery\b", req)]
    if any("==" in req for req in declared):
        assert pinned(declared, "celery") == celery[1], (
            "docker/Dockerfile and pyproject.toml pin different celery"
        )
    airflow_image = interpolate(raw_compose["x-airflow-common"]["image"], {})
    assert airflow_image == env_example["LOOPLINE_IMAGE"] == f"loopline-airflow:{project['version']}"
    mlflow_image = interpolate(raw_compose["services"]["mlflow"]["image"], {})
    assert mlflow_image == env_example["LOOPLINE_MLFLOW_IMAGE"]
    assert mlflow_image == f"loopline-mlflow:{pinned(project['dependencies'], 'mlflow')}"


@pytest.mark.fast
def test_mlflow_server_command_follows_the_contract(compose: dict) -> None:
    mlflow = compose["services"]["mlflow"]
    argv = command_of(mlflow)
    assert argv[:2] == ["mlflow", "server"]
    assert option_value(argv, "--backend-store-uri").startswith("postgresql+psycopg2://mlflow:")
    assert "@postgres:5432/mlflow" in option_value(argv, "--backend-store-uri")
    assert "--serve-artifacts" in argv
    assert option_value(argv, "--artifacts-destination").startswith("s3://")
    assert option_value(argv, "--workers") == "1"
    assert option_value(argv, "--host") == "0.0.0.0"
    port = option_value(argv, "--port")
    allowed = option_value(argv, "--allowed-hosts").split(",")
    assert f"mlflow:{port}" in allowed, "the workers reach MLflow as mlflow:5000"
    assert {"localhost:*", "127.0.0.1:*"} <= set(allowed), "the published UI is opened on 127.0.0.1"
    connection = json.loads(compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert (connection["host"], str(connection["port"])) == ("mlflow", port)
    users = compose["services"]["mlflow-users"]
    assert users["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    assert users["environment"]["MLFLOW_LOOPLINE_USER"] == connection["login"]
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    bucket = compose["services"]["create-bucket"]["environment"]["MLFLOW_ARTIFACTS_BUCKET"]
    assert option_value(argv, "--artifacts-destination").startswith(f"s3://{bucket}/")


@pytest.mark.fast
def test_mlflow_runs_basic_auth_with_secrets_from_env(raw_compose: dict, compose: dict) -> None:
    import configparser

    mlflow = compose["services"]["mlflow"]
    argv = command_of(mlflow)
    assert option_value(argv, "--app-name") == "basic-auth"
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == PLACEHOLDER
    ini_path = env["MLFLOW_AUTH_CONFIG_PATH"]
    dockerfile = MLFLOW_DOCKERFILE.read_text()
    assert re.search(rf"^COPY basic_auth.ini {re.escape(ini_path)}$", dockerfile, re.MULTILINE)
    assert "!basic_auth.ini" in (DOCKER / "mlflow" / "Dockerfile.dockerignore").read_text().splitlines()
    settings = configparser.ConfigParser()
    settings.read(MLFLOW_AUTH_INI)
    auth = settings["mlflow"]
    assert "admin_password" not in auth, "the admin password comes from docker/.env, never from the image"
    assert auth["admin_username"] == "admin" and int(auth["auth_cache_ttl_seconds"]) > 0
    # the users survive a container re-creation: the auth DB is on the mlflow-auth volume, owned by uid mlflow
    database = Path(auth["database_uri"].removeprefix("sqlite:///"))
    assert auth["database_uri"].startswith("sqlite:////")
    assert mounts(mlflow)[str(database.parent)] == "mlflow-auth"
    assert f"install -d -o mlflow -m 700 {database.parent}" in dockerfile
    # the tasks' login: one variable feeds the connection and the job that creates the user
    raw = raw_compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_MLFLOW_DEFAULT"]
    assert "${MLFLOW_LOOPLINE_PASSWORD:?" in raw
    users = raw_compose["services"]["mlflow-users"]["environment"]
    assert users["MLFLOW_LOOPLINE_PASSWORD"].startswith("${MLFLOW_LOOPLINE_PASSWORD:?")
    assert users["MLFLOW_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert compose["services"]["airflow-worker"]["depends_on"]["mlflow-users"] == {
        "condition": "service_completed_successfully"
    }
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mlflow.server.auth.config import read_auth_config as r; print(r()._asdict())",
        ],
        env={**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(MLFLOW_AUTH_INI)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert read.returncode == 0, read.stderr
    assert "'admin_password': None" in read.stdout and "'auth_cache_ttl_seconds': 60" in read.stdout


def test_task_logs_are_shared_by_the_workers_and_the_api_server(compose: dict) -> None:
    """No worker log server (its host name would not resolve): the api-server reads the shared log volume."""
    env = compose["x-airflow-common"]["environment"]
    folder = env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]
    for name in ("airflow-api-server", "airflow-worker", "airflow-scheduler", "airflow-triggerer"):
        assert mounts(compose["services"][name]).get(folder) == "airflow-logs", name
    assert "--skip-serve-logs" in command_of(compose["services"]["airflow-worker"])


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``mlflow server --app-name basic-auth`` with docker/mlflow/basic_auth.ini (the auth DB moved to
    ``tmp_path``) and the admin password from the environment, as compose runs it; yields (url, admin password)."""
    import requests

    from ml.stack import free_port

    ini = tmp_path / "basic_auth.ini"
    ini.write_text(
        MLFLOW_AUTH_INI.read_text().replace("/var/lib/mlflow-auth/", f"{tmp_path}/"), encoding="utf-8"
    )
    admin_password = "test-admin-password-0123"
    port = free_port(28830)
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret-key-0123456789",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1"]
    command += [
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    ]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            pytest.fail(
                f"the MLflow auth server did not start:\n{(tmp_path / 'server.log').read_text()[-2000:]}"
            )
        yield url, admin_password
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def test_mlflow_users_job_makes_the_tasks_login(auth_server: tuple[str, str], compose: dict) -> None:
    """docker/mlflow/create_user.py against a real basic-auth server: refuses placeholders, creates, resets."""
    import requests
    from airflow.sdk import Connection

    from loopline_airflow.runtime import mlflow_client_env

    url, admin_password = auth_server
    password = "test-loopline-password-0123"

    def job(**overrides: str) -> subprocess.CompletedProcess:
        env = {
            "PATH": os.environ["PATH"],
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_ADMIN_PASSWORD": admin_password,
            "MLFLOW_LOOPLINE_USER": "loopline",
            "MLFLOW_LOOPLINE_PASSWORD": password,
            **overrides,
        }
        return subprocess.run(
            [sys.executable, str(CREATE_USER)], env=env, capture_output=True, text=True, timeout=60
        )

    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    refused = job(MLFLOW_LOOPLINE_PASSWORD=PLACEHOLDER)
    assert refused.returncode == 1 and "MLFLOW_LOOPLINE_PASSWORD" in refused.stderr
    assert requests.get(search, auth=("loopline", PLACEHOLDER), timeout=30).status_code == 401
    first = job()
    assert first.returncode == 0 and "created" in first.stdout, first.stderr
    again = job()
    assert again.returncode == 0 and "exists" in again.stdout, again.stderr
    wrong_admin = job(MLFLOW_ADMIN_PASSWORD="test-not-the-admin-password")
    assert wrong_admin.returncode == 1 and "refused" in wrong_admin.stderr
    assert requests.get(search, timeout=30).status_code == 401, "anonymous requests must be refused"
    assert requests.get(search, auth=("loopline", password), timeout=30).status_code == 200
    # the connection compose gives the tasks turns into this server's address and that login
    value = compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_MLFLOW_DEFAULT"].replace(
        PLACEHOLDER, password
    )
    client_env = mlflow_client_env(Connection.from_json(value, conn_id="mlflow_default"))
    assert client_env == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_TRACKING_USERNAME": "loopline",
        "MLFLOW_TRACKING_PASSWORD": password,
    }


@pytest.mark.fast
def test_scripts_parse() -> None:
    for script in (INIT_SCRIPT, POSTGRES_INIT):
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    compile((DOCKER / "mlflow" / "create_bucket.py").read_text(), "create_bucket.py", "exec")


def test_create_bucket_makes_both_buckets_on_a_real_object_store(s3_server, compose: dict) -> None:
    """The create-bucket job's script, run as the image runs it, against SeaweedFS: both buckets, idempotent."""
    import pyarrow.fs as pafs

    job = compose["services"]["create-bucket"]["environment"]
    token = os.urandom(3).hex()
    buckets = {"MLFLOW_ARTIFACTS_BUCKET": f"artifacts-{token}", "LOOPLINE_LAKE_BUCKET": f"lake-{token}"}
    assert set(buckets) <= set(job)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **buckets,
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    script = str(DOCKER / "mlflow" / "create_bucket.py")
    first = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created bucket") == 2
    again = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("already exists") == 2, again.stdout + again.stderr
    store = pafs.S3FileSystem(
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        endpoint_override=s3_server.endpoint.removeprefix("http://"),
        scheme="http",
    )
    assert all(store.get_file_info(b).type == pafs.FileType.Directory for b in buckets.values())


# ------------------------------------------------------------------ entry commands against the real CLIs


@pytest.fixture(scope="module")
def cli_env(compose: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Airflow containers' environment (from .env.example), on a scratch AIRFLOW_HOME."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update(compose["x-airflow-common"]["environment"])
    env["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("airflow_home"))
    return env


@pytest.fixture(scope="module")
def airflow_help(
    compose: dict, cli_env: dict[str, str]
) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """``airflow <sub> --help`` for every subcommand the images use, run in parallel (each costs ~5 s)."""
    subcommands = {
        tuple(airflow_subcommand(argv)[0])
        for invocations in airflow_invocations(compose).values()
        for argv in invocations
    }

    def run(sub: tuple[str, ...]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "airflow"), *sub, "--help"], env=cli_env, capture_output=True, text=True, timeout=180
        )

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
        return dict(zip(subcommands, pool.map(run, subcommands), strict=True))


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_commands_are_real_subcommands(service: str, compose: dict, airflow_help: dict) -> None:
    invocations = {
        key: value for key, value in airflow_invocations(compose).items() if key.startswith(service)
    }
    assert any(invocations.values()), f"{service}: no airflow command found"
    for source, argvs in invocations.items():
        for argv in argvs:
            sub, args = airflow_subcommand(argv)
            done = airflow_help[tuple(sub)]
            assert done.returncode == 0, (
                f"{source}: `airflow {' '.join(sub)}` is not a command:\n{done.stderr}"
            )
            for flag in flags(args):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", done.stdout), (
                    f"{source}: `airflow {' '.join(sub)}` has no option {flag}"
                )
            if "--job-type" in args:
                assert option_value(args, "--job-type") in done.stdout, f"{source}: unknown job type"


def test_mlflow_server_flags_are_accepted(compose: dict) -> None:
    argv = command_of(compose["services"]["mlflow"])
    done = subprocess.run(
        [str(BIN / "mlflow"), *argv[1:2], "--help"], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    options = set(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)(?: / (--[\w-]+))?", done.stdout, re.MULTILINE))
    known = {flag for pair in options for flag in pair if flag}
    unknown = set(flags(argv[2:])) - known
    assert not unknown, f"`mlflow server` has no option(s) {sorted(unknown)}"
    assert "--app-name [basic-auth]" in done.stdout, "the basic-auth option of docs/deployment.md exists"


def test_worker_health_check_names_a_real_celery_app(compose: dict, cli_env: dict[str, str]) -> None:
    check = healthcheck_command(compose["services"]["airflow-worker"])
    app = option_value(check, "--app")
    module, attribute = app.rsplit(".", 1)
    done = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; print(type(getattr(m, {attribute!r})).__name__)"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if "celery.backends.database" in done.stderr:
        from importlib.metadata import version

        pytest.fail(
            f"celery {version('celery')} breaks apache-airflow-providers-celery "
            f"{version('apache-airflow-providers-celery')} (the scheduler and the workers cannot load the "
            'CeleryExecutor): pin "celery[redis]==5.6.3" (as docker/Dockerfile does) in pyproject\'s prod extra.\n'
            + done.stderr[-600:]
        )
    assert done.returncode == 0, done.stderr
    assert "Celery" in done.stdout


# ----------------------------------------------------------------------------- the start-up scripts, run


@pytest.fixture
def init_run(tmp_path: Path, compose: dict):
    """Run docker/airflow-init.sh with the containers' environment and a stand-in `airflow` that logs calls."""
    from cryptography.fernet import Fernet

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "airflow-calls"
    fake = fake_bin / "airflow"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    passwords = tmp_path / "auth" / "passwords.json"
    base = dict(compose["services"]["airflow-init"]["environment"])
    base.update(
        PATH=f"{fake_bin}:{BIN}:/usr/bin:/bin",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:s3cret@postgres:5432/airflow",
        AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql://airflow:s3cret@postgres:5432/airflow",
        AIRFLOW__API_AUTH__JWT_SECRET="j" * 48,
        AIRFLOW__API__SECRET_KEY="api-key",
        AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
        AIRFLOW_ADMIN_PASSWORD='pa"ss word',
        AWS_ACCESS_KEY_ID="access",
        AWS_SECRET_ACCESS_KEY="secret-key",
        AIRFLOW_CONN_MLFLOW_DEFAULT=base["AIRFLOW_CONN_MLFLOW_DEFAULT"].replace(
            PLACEHOLDER, "test-mlflow-login"
        ),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        LOOPLINE_HOME=str(tmp_path / "home"),
    )

    def run(**overrides: str) -> subprocess.CompletedProcess:
        env = {**base, **overrides}
        return subprocess.run(
            ["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=120
        )

    run.passwords = passwords
    run.calls = calls
    return run


@pytest.mark.fast
def test_init_writes_the_admin_password_and_migrates(init_run) -> None:
    init_run.passwords.parent.mkdir()
    init_run.passwords.write_text(json.dumps({"viewer1": "kept", "admin": "old"}))
    done = init_run(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer1:viewer")
    assert done.returncode == 0, done.stderr
    assert json.loads(init_run.passwords.read_text()) == {"viewer1": "kept", "admin": 'pa"ss word'}
    assert stat.S_IMODE(init_run.passwords.stat().st_mode) == 0o600
    assert init_run.calls.read_text().split("\n")[0] == "db migrate"
    assert 'pa"ss word' not in done.stdout + done.stderr, "the password is never printed"


@pytest.mark.fast
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"AIRFLOW__API_AUTH__JWT_SECRET": "change-me"}, "AIRFLOW_JWT_SECRET"),
        ({"AIRFLOW_ADMIN_PASSWORD": ""}, "AIRFLOW_ADMIN_PASSWORD"),
        (
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:change-me@postgres/airflow"
            },
            "AIRFLOW_DB_PASSWORD",
        ),
        ({"AIRFLOW__API_AUTH__JWT_SECRET": "short"}, "32 characters"),
        ({"AIRFLOW__CORE__FERNET_KEY": "not-a-fernet-key"}, "Fernet"),
        ({"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}, "authentication off"),
        ({"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,ops:op"}, "no password for ops"),
        ({"AIRFLOW_CONN_MLFLOW_DEFAULT": '{"password": "change-me"}'}, "MLFLOW_LOOPLINE_PASSWORD"),
    ],
)
def test_init_refuses_placeholders_and_unsafe_settings(init_run, overrides: dict, message: str) -> None:
    done = init_run(**overrides)
    assert done.returncode != 0
    assert message in done.stderr
    assert not init_run.calls.exists(), "nothing is migrated before the secrets are right"


def test_postgres_init_creates_one_role_and_database_per_consumer() -> None:
    """Runs docker/postgres/init-databases.sh as the postgres image would, on a throwaway local cluster."""
    initdb = shutil.which("initdb") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None
    )
    if not initdb:
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    bindir = Path(initdb).resolve().parent
    as_user: list[str] = []
    # pytest's tmp_path lies under a 0700 folder that the postgres user could not enter
    workdir = Path(tempfile.mkdtemp(prefix="loopline-pg-"))
    if os.geteuid() == 0:  # initdb refuses root
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root without runuser")
        as_user = [runuser, "-u", "postgres", "--"]
        shutil.chown(workdir, "postgres")
    data, socket_dir = workdir / "data", workdir
    quiet = {"capture_output": True, "text": True, "timeout": 120}

    def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *argv], env=env, **quiet)

    done = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    assert done.returncode == 0, done.stderr
    # Unix socket only: no TCP port is opened on this machine
    options = f"-c listen_addresses='' -k {socket_dir}"
    done = run(
        str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(workdir / "log"), "start"
    )
    try:
        assert done.returncode == 0, done.stderr
        env = {
            "PATH": f"{bindir}:/usr/bin:/bin",
            "PGHOST": str(socket_dir),
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": "postgres",
            "AIRFLOW_DB_PASSWORD": "it's-a-secret",
            "MLFLOW_DB_PASSWORD": "another",
        }
        done = run("bash", str(POSTGRES_INIT), env=env)
        assert done.returncode == 0, done.stderr
        query = (
            "select datname || '=' || pg_get_userbyid(datdba) from pg_database "
            "where datname in ('airflow', 'mlflow') order by 1"
        )
        psql = shutil.which("psql") or str(bindir / "psql")
        done = run(psql, "-h", str(socket_dir), "-U", "postgres", "-Atc", query, env=env)
        assert done.stdout.split() == ["airflow=airflow", "mlflow=mlflow"], done.stderr
        done = run("bash", str(POSTGRES_INIT), env={**env, "MLFLOW_DB_PASSWORD": ""})
        assert done.returncode != 0 and "MLFLOW_DB_PASSWORD" in done.stderr
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(workdir, ignore_errors=True)
