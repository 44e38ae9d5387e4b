#!/usr/bin/env bash
# airflow-init: the one-shot set-up that runs before the Airflow services start (on every `docker compose up`).
#
#  1. Refuses to go on while a secret from docker/.env is empty or still the `change-me` placeholder, or when
#     authentication would be off (AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS).
#  2. Writes the Simple auth manager's passwords file from AIRFLOW_ADMIN_PASSWORD: the operator's own secret,
#     nothing is generated here. Users added to the file by hand are kept; every user named in
#     AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS must have a password there (else Airflow would invent one and
#     print it to its log).
#  3. Creates LOOPLINE_HOME and creates or upgrades the Airflow metadata DB (`airflow db migrate`, idempotent).
set -euo pipefail

# each variable this container sees, and the docker/.env entry it comes from
secrets=(
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:AIRFLOW_DB_PASSWORD
  AIRFLOW__CELERY__RESULT_BACKEND:AIRFLOW_DB_PASSWORD
  AIRFLOW__API_AUTH__JWT_SECRET:AIRFLOW_JWT_SECRET
  AIRFLOW__API__SECRET_KEY:AIRFLOW_API_SECRET_KEY
  AIRFLOW__CORE__FERNET_KEY:AIRFLOW_FERNET_KEY
  AIRFLOW_ADMIN_PASSWORD:AIRFLOW_ADMIN_PASSWORD
  AWS_ACCESS_KEY_ID:AWS_ACCESS_KEY_ID
  AWS_SECRET_ACCESS_KEY:AWS_SECRET_ACCESS_KEY
  AIRFLOW_CONN_MLFLOW_DEFAULT:MLFLOW_LOOPLINE_PASSWORD
)
for pair in "${secrets[@]}"; do
  name="${pair%%:*}"
  value="${!name:-}"
  if [[ -z "${value}" || "${value}" == *change-me* ]]; then
    echo "airflow-init: ${name} is empty or still holds a 'change-me' placeholder: set ${pair#*:} in docker/.env" >&2
    exit 1
  fi
done

python - <<'PY'
import json
import os
import sys
from pathlib import Path

from cryptography.fernet import Fernet


def fail(message: str) -> None:
    print(f"airflow-init: {message}", file=sys.stderr)
    sys.exit(1)


if os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "").strip().lower() in {"true", "1", "t"}:
    fail("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS turns authentication off: remove it")
if len(os.environ["AIRFLOW__API_AUTH__JWT_SECRET"]) < 32:
    fail("AIRFLOW_JWT_SECRET is shorter than 32 characters: generate a longer one (see docker/.env.example)")
try:
    Fernet(os.environ["AIRFLOW__CORE__FERNET_KEY"])
except ValueError:
    fail("AIRFLOW_FERNET_KEY is not a Fernet key: generate one as docker/.env.example shows")

file = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
passwords = {}
if file.is_file() and file.read_text().strip():
    try:
        passwords = json.loads(file.read_text())
    except json.JSONDecodeError:
        fail(f"{file} is not valid JSON: fix or delete it")
passwords["admin"] = os.environ["AIRFLOW_ADMIN_PASSWORD"]
users = [entry.split(":")[0].strip() for entry in os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
missing = [user for user in users if user and user not in passwords]
if missing:
    fail(f"no password for {', '.join(missing)} in {file}: add them to the file or to the users list")

file.parent.mkdir(parents=True, exist_ok=True)
partial = file.with_name(file.name + ".partial")
descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(descriptor, "w") as out:
    out.write(json.dumps(passwords) + "\n")
os.chmod(partial, 0o600)
os.replace(partial, file)
print(f"airflow-init: passwords file {file} holds {len(passwords)} user(s)")
PY

mkdir -p "${LOOPLINE_HOME:?}"
airflow db migrate
echo "airflow-init: metadata DB ready"
