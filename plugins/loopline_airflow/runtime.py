"""Helpers that Loopline's tasks share: config and paths, the batch a run is about, failures not worth a retry."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ml.config import LooplineConfig, Paths

P = ParamSpec("P")
R = TypeVar("R")
MLFLOW_CONN_ID = "mlflow_default"
MLFLOW_CLIENT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
JSON_SCHEMA_DRAFT_7 = "http://json-schema.org/draft-07/schema#"


def setup() -> tuple[LooplineConfig, Paths]:
    """The config ($LOOPLINE_CONFIG) and paths ($LOOPLINE_HOME) this deployment runs with.

    When the Airflow connection ``mlflow_default`` exists, MLflow's address and login come from it.
    """
    import logging

    from ml.config import Paths, load_config

    logging.getLogger("ml").setLevel(logging.INFO)
    use_mlflow_connection()
    return load_config(), Paths.from_env()


def mlflow_client_env(conn: Any) -> dict[str, str]:
    """``MLFLOW_TRACKING_URI`` (and the login, when the connection has one) from an HTTP connection.

    The host is a URL (``https://mlflow.example``) or a name with ``schema`` (http, https) and ``port``, as for
    Airflow's HttpHook.
    """
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        raise ValueError(f"the Airflow connection {conn.conn_id} has no host: set MLflow's address there")
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}"
    if conn.port and urlsplit(host).port is None:
        host = f"{host}:{conn.port}"
    env = {"MLFLOW_TRACKING_URI": host}
    if conn.login:
        env |= {"MLFLOW_TRACKING_USERNAME": conn.login, "MLFLOW_TRACKING_PASSWORD": conn.password or ""}
    return env


def use_mlflow_connection(conn_id: str = MLFLOW_CONN_ID) -> bool:
    """Point this process's MLflow client at the connection ``conn_id``; False (nothing changed) without one.

    ``ml`` code reads the environment only, so it never needs Airflow. The password is masked in task logs.
    """
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return False
    import logging

    for name in MLFLOW_CLIENT_ENV:
        os.environ.pop(name, None)
    os.environ.update(mlflow_client_env(conn))
    logging.getLogger("loopline_airflow").info(
        "MLflow: %s as %s (Airflow connection %s)",
        os.environ["MLFLOW_TRACKING_URI"],
        conn.login or "anonymous",
        conn_id,
    )
    return True


def batch_for_run(context: Any, requested: str | None) -> str:
    """The batch a run processes: the ``batch`` param when given, else the one its data interval starts in."""
    from ml.batches import batch_key_for, check_key
    from ml.config import load_config

    batching = load_config().batching
    if requested:
        return check_key(str(requested).strip(), batching)
    moment = context.get("data_interval_start") or context.get("logical_date")
    if moment is None:
        raise ValueError(
            "this run has no logical date: set the 'batch' parameter in the trigger form (e.g. 2025-03)"
        )
    return batch_key_for(moment, batching)


def batches_from_events(context: Any, asset_name: str) -> list[str]:
    """The batches named by the asset events that triggered this run, oldest first, without repeats."""
    events = context.get("triggering_asset_events") or {}
    found: list[str] = []
    for asset, asset_events in events.items():
        if getattr(asset, "name", None) != asset_name:
            continue
        for event in asset_events:
            batch = (event.extra or {}).get("batch")
            if batch and batch not in found:
                found.append(str(batch))
    return sorted(found)


def trigger_of(context: Any) -> tuple[str, dict[str, Any]]:
    """How this run started (drift, manual, scheduled, backfill) and the extra of its triggering event, if any
    (a run triggered by hand: the ``reason`` of its conf, when it gives one)."""
    events = context.get("triggering_asset_events") or {}
    for asset_events in events.values():
        for event in asset_events:
            extra = dict(event.extra or {})
            return str(extra.get("trigger", "drift")), extra
    dag_run = context.get("dag_run")
    run_type = str(getattr(dag_run, "run_type", "manual") or "manual")
    reason = (getattr(dag_run, "conf", None) or {}).get("reason")  # `loopline retrain --reason`, or the API
    return run_type.rsplit(".", 1)[-1].lower(), {"reason": str(reason)} if reason else {}


def no_retry_on(*errors: type[BaseException]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn data errors (which a retry cannot fix) into an immediate failure, keeping the message."""

    def wrap(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            from airflow.sdk.exceptions import AirflowFailException

            try:
                return function(*args, **kwargs)
            except errors as exc:
                raise AirflowFailException(str(exc)) from exc

        return inner

    return wrap


def reviewer_of(review: dict[str, Any]) -> str:
    """Who answered an approval request (name or id), from the HITL operator's result."""
    user = review.get("responded_by_user") or review.get("responded_by") or {}
    if isinstance(user, dict):
        return str(user.get("name") or user.get("id") or "unknown")
    return str(user)


def form_param(default: Any, description: str | None = None, **schema: Any) -> Any:
    """A trigger-form field: ``airflow.sdk.Param(default, description, **schema)``, its schema in JSON Schema draft 7.

    Airflow validates each Param of a DAG and of every one of its tasks several times per parse, and jsonschema
    checks the schema against its meta-schema each time: for draft 7 that is about 3x cheaper than for the default
    draft 2020-12, and the keywords of a form field (type, minimum, maximum, exclusiveMinimum, title, enum)
    mean the same in both.
    """
    from airflow.sdk import Param

    return Param(default, description, schema={"$schema": JSON_SCHEMA_DRAFT_7, **schema})


def batch_param(description: str) -> Any:
    """The optional ``batch`` trigger-form field shared by the DAGs that work on one batch."""
    return form_param(None, description, type=["null", "string"], title="Batch")
