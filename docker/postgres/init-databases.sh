#!/usr/bin/env bash
# Runs once, when the postgres-data volume is first initialised (the official postgres image runs every
# script in /docker-entrypoint-initdb.d/ on an empty data directory only; see docs/deployment.md to rotate).
# One role and one database per consumer, each owning only its own database:
#   airflow: the Airflow metadata DB and the Celery result backend;
#   mlflow:  the MLflow tracking and model-registry store.
set -euo pipefail

for name in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD; do
  if [[ -z "${!name:-}" ]]; then
    echo "init-databases: ${name} is empty: set it in docker/.env" >&2
    exit 1
  fi
done

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB:-${POSTGRES_USER}}" \
  -v airflow_password="${AIRFLOW_DB_PASSWORD}" -v mlflow_password="${MLFLOW_DB_PASSWORD}" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
SQL
echo "init-databases: created roles and databases airflow, mlflow"
