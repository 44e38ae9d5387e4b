"""A small client of Airflow's REST API v2 (each CLI call costs seconds; a REST call ~20 ms)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import requests

from ml.config import Paths

TERMINAL = {"success", "failed"}
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_USER = "admin"
ENV_URL, ENV_USER, ENV_PASSWORD = "LOOPLINE_AIRFLOW_URL", "LOOPLINE_AIRFLOW_USER", "LOOPLINE_AIRFLOW_PASSWORD"


class AirflowUnreachable(ConnectionError):
    """Nothing answers at the Airflow API server's URL (the message names it)."""


class AirflowLoginFailed(PermissionError):
    """The API server refused the login."""


def endpoint_file(paths: Paths) -> Path:
    """Where ``loopline up`` records the URL of the Airflow it started (``record_endpoint``)."""
    return paths.state / "airflow_endpoint.json"


def record_endpoint(paths: Paths, url: str, username: str) -> None:
    """Remember the started Airflow's URL and user, so that later commands find it (no secret is written)."""
    from ml.lake import atomic_write_json

    atomic_write_json(endpoint_file(paths), {"url": url, "username": username})


def login_settings(paths: Paths, url: str | None = None) -> tuple[str, str, str]:
    """(URL, user, password) of the Airflow API server for the CLI.

    URL: ``url``, else ``$LOOPLINE_AIRFLOW_URL``, else the one ``loopline up`` recorded, else 127.0.0.1:8080.
    User: ``$LOOPLINE_AIRFLOW_USER``, else the recorded one, else admin. Password: ``$LOOPLINE_AIRFLOW_PASSWORD``,
    else the one the home's own Airflow keeps (read only); ``ValueError`` when neither exists.
    """
    file = endpoint_file(paths)
    recorded = json.loads(file.read_text()) if file.is_file() else {}
    base_url = url or os.environ.get(ENV_URL) or recorded.get("url") or DEFAULT_URL
    username = os.environ.get(ENV_USER) or recorded.get("username") or DEFAULT_USER
    password = os.environ.get(ENV_PASSWORD)
    kept = paths.airflow_home / "simple_auth_manager_passwords.json"  # ml.stack.airflow_password's file
    if password is None and kept.is_file():
        password = json.loads(kept.read_text()).get(username)
    if password is None:
        raise ValueError(
            f"no password for the Airflow user {username} at {base_url}: set ${ENV_PASSWORD} "
            "(the embedded profile's own is found under LOOPLINE_HOME)"
        )
    return base_url.rstrip("/"), username, password


class AirflowClient:
    """Token-authenticated calls to one Airflow API server."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        try:
            response = self.session.post(
                f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=30
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise AirflowUnreachable(
                f"the Airflow API server at {self.base_url} is not reachable ({type(exc).__name__})"
            ) from exc
        if response.status_code not in (200, 201):
            raise AirflowLoginFailed(
                f"Airflow login as {username} at {self.base_url} failed: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(4):
            response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=60, **kwargs)
            # A "Database error" (e.g. SQLite busy under load) rolled the request back: safe to try again.
            if (
                response.status_code not in (500, 503)
                or "Database error" not in response.text
                or attempt == 3
            ):
                break
            time.sleep(1 + 2 * attempt)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG, or None while the dag-processor has not parsed it yet."""
        response = self.session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=30)
        return response.json() if response.status_code == 200 else None

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/importErrors")["import_errors"])

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        """Wait until every DAG is parsed; fail fast with the import errors if a file is broken."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = [d for d in dag_ids if self.dag(d) is None]
            if not missing:
                return
            errors = self.import_errors()
            if errors:
                raise RuntimeError(
                    "DAG import errors:\n" + "\n".join(f"{e['filename']}: {e['stack_trace']}" for e in errors)
                )
            time.sleep(1)
        raise RuntimeError(f"DAGs {missing} were not parsed within {timeout:.0f} s")

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def pause(self, dag_id: str) -> None:
        """Pause the DAG in Airflow: no new run starts (Loopline's own ``retrain pause`` is another switch)."""
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": True})

    def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        logical_date: str | None = None,
        note: str | None = None,
    ) -> str:
        """Create a manual run (``note`` shows on the run in the UI); returns its run_id."""
        body: dict[str, Any] = {"logical_date": logical_date, "conf": conf or {}}
        if note:
            body["note"] = note
        run = self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))

    def runs(self, dag_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Runs of a DAG, newest first."""
        found = self._call(
            "GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": limit}
        )
        return list(found["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        found = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in found["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """A task's return value (deserialised), or None."""
        response = self.session.get(
            f"{self.base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            params={"deserialize": "true"},
            timeout=30,
        )
        return response.json().get("value") if response.status_code == 200 else None

    def upstream_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        found = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/upstreamAssetEvents")
        return list(found["asset_events"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        """Poll a run until it succeeds or fails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                return run
            time.sleep(0.5)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout:.0f} s")

    def wait_new_run(self, dag_id: str, known: set[str], timeout: float = 60) -> dict[str, Any] | None:
        """The first run of ``dag_id`` not in ``known`` to appear within ``timeout``, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs(dag_id, limit=20):
                if run["dag_run_id"] not in known:
                    return run
            time.sleep(0.3)
        return None

    def pending_reviews(self) -> list[dict[str, Any]]:
        """Human-in-the-loop requests that nobody has answered yet."""
        found = self._call("GET", "/dags/~/dagRuns/~/hitlDetails", params={"response_received": "false"})
        return list(found.get("hitl_details", []))

    def answer_review(self, dag_id: str, run_id: str, task_id: str, option: str) -> dict[str, Any]:
        """Answer a human-in-the-loop request (e.g. "Approve" or "Reject")."""
        return dict(
            self._call(
                "PATCH",
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                json={"chosen_options": [option]},
            )
        )

    def wait_task_state(
        self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float
    ) -> str:
        """Poll one task instance until it reaches one of ``states``; returns the state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.task_instances(dag_id, run_id).get(task_id, {}).get("state")
            if state in states:
                return str(state)
            if self.run(dag_id, run_id)["state"] in TERMINAL:
                raise RuntimeError(
                    f"{dag_id} run {run_id} ended before {task_id} reached {states} (it is {state})"
                )
            time.sleep(0.5)
        raise TimeoutError(f"{dag_id}.{task_id} did not reach {states} within {timeout:.0f} s")

    def extra_links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, str | None]:
        """The extra links (name -> URL) of a task instance."""
        found = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links")
        return dict(found.get("extra_links", {}))
