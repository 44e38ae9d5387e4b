"""Create the MLflow user the Airflow tasks log in as, or reset its password (idempotent).

Run once by the ``mlflow-users`` service of docker/compose.yaml, after the MLflow server (basic auth) is healthy:
as the admin (``MLFLOW_ADMIN_PASSWORD``) it creates ``MLFLOW_LOOPLINE_USER`` with ``MLFLOW_LOOPLINE_PASSWORD``, the
login of the Airflow connection ``mlflow_default``. The user is no admin: it owns what it creates (the experiments
and the registered model) and reads the rest. Standard library only. Refuses placeholder or short passwords.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request

PLACEHOLDER = "change-me"


def call(url: str, method: str, body: dict[str, str], password: str) -> tuple[int, str]:
    """One request to the MLflow REST API as ``admin``; returns (status, body)."""
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def main() -> int:
    server = os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow:5000").rstrip("/")
    admin_password = os.environ["MLFLOW_ADMIN_PASSWORD"]
    user = os.environ.get("MLFLOW_LOOPLINE_USER", "loopline")
    password = os.environ["MLFLOW_LOOPLINE_PASSWORD"]
    for name, value in (("MLFLOW_ADMIN_PASSWORD", admin_password), ("MLFLOW_LOOPLINE_PASSWORD", password)):
        if PLACEHOLDER in value or len(value) < 12:
            print(
                f"mlflow-users: set {name} in docker/.env (12 characters at least, no change-me)",
                file=sys.stderr,
            )
            return 1
    body = {"username": user, "password": password}
    status, text = call(f"{server}/api/2.0/mlflow/users/create", "POST", body, admin_password)
    if status == 200:
        print(f"mlflow-users: created user {user!r}")
        return 0
    if status == 401:
        print(
            "mlflow-users: the admin login was refused: MLFLOW_ADMIN_PASSWORD is not the admin's",
            file=sys.stderr,
        )
        return 1
    if "RESOURCE_ALREADY_EXISTS" not in text:
        print(f"mlflow-users: creating {user!r} failed ({status}): {text[:300]}", file=sys.stderr)
        return 1
    status, text = call(f"{server}/api/2.0/mlflow/users/update-password", "PATCH", body, admin_password)
    if status != 200:
        print(
            f"mlflow-users: resetting the password of {user!r} failed ({status}): {text[:300]}",
            file=sys.stderr,
        )
        return 1
    print(f"mlflow-users: user {user!r} exists; password set from docker/.env")
    return 0


if __name__ == "__main__":
    sys.exit(main())
