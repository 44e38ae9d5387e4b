"""Loop latency on the embedded stack: a drifted batch lands -> ingest -> monitor -> retrain -> new champion.

Started exactly as ``ml.demo`` does (``ml.stack.start_airflow`` + ``ml.airflow_client.AirflowClient``), in its own
LOOPLINE_HOME. Three baseline months and a first champion are set up untimed (with the ``ml.steps`` calls the DAG
tasks make, before Airflow starts); then each round lands a month whose covariates and concept moved further,
triggers ``loopline_ingest`` (as an upstream system would) and times until the ``champion`` alias points at the new
version; every run in between is created by the scheduler from Asset events.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import data

DAG_IDS = ["loopline_ingest", "loopline_monitor", "loopline_score", "loopline_train"]


def _landing_file(paths: Any, spec: data.BatchSpec) -> Path:
    folder = paths.landing / data.DATASET
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{spec.key}.parquet"
    data.generate_batch(spec).to_parquet(target, index=False)
    return target


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _wait_idle(client: Any, timeout: float = 600) -> None:
    """Until no run of any Loopline DAG is queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [r for d in DAG_IDS for r in client.runs(d, limit=10) if r["state"] in ("queued", "running")]
        if not busy:
            return
        time.sleep(0.5)
    raise TimeoutError("Loopline DAG runs still active after the set-up")


def _champion(config: Any) -> str | None:
    from ml import registry

    current = registry.champion(config)
    return current.version if current else None


def _round(client: Any, config: Any, paths: Any, spec: data.BatchSpec, timeout: float) -> dict[str, Any]:
    """One timed round; returns the latency and where the time went."""
    _landing_file(paths, spec)
    known = {d: {r["dag_run_id"] for r in client.runs(d, limit=100)} for d in DAG_IDS}
    before = _champion(config)
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    ingest_id = client.trigger("loopline_ingest", {"batch": spec.key})
    deadline = t0 + timeout
    ingest = client.wait_run("loopline_ingest", ingest_id, timeout)
    marks["ingest done"] = time.monotonic() - t0
    out: dict[str, Any] = {"batch": spec.key, "champion_before": before, "ingest": ingest["state"]}
    if ingest["state"] != "success":
        return {**out, "ok": False, "reason": "ingest failed"}
    monitor = client.wait_new_run("loopline_monitor", known["loopline_monitor"], timeout=60)
    if monitor is None:
        return {**out, "ok": False, "reason": "no monitor run was created"}
    marks["monitor run created"] = time.monotonic() - t0
    monitor = client.wait_run("loopline_monitor", monitor["dag_run_id"], max(deadline - time.monotonic(), 1))
    marks["monitor done"] = time.monotonic() - t0
    verdict = (client.xcom("loopline_monitor", monitor["dag_run_id"], "monitor") or [{}])[-1]
    out["monitor"] = {k: verdict.get(k) for k in ("verdict", "severity", "retrain", "reason")}
    if not verdict.get("retrain"):
        return {**out, "ok": False, "reason": f"monitor did not request a retrain: {verdict.get('reason')}"}
    train = client.wait_new_run("loopline_train", known["loopline_train"], timeout=60)
    if train is None:
        return {**out, "ok": False, "reason": "no loopline_train run was created by the retrain request"}
    marks["train run created"] = time.monotonic() - t0
    after = before
    while time.monotonic() < deadline and after == before:
        state = client.run("loopline_train", train["dag_run_id"])["state"]
        after = _champion(config)
        if after == before and state in ("success", "failed"):
            break
        time.sleep(0.25)
    latency = time.monotonic() - t0
    marks["champion moved" if after != before else "train finished, champion unchanged"] = latency
    finished = client.wait_run("loopline_train", train["dag_run_id"], max(deadline - time.monotonic(), 1))
    tasks = client.task_instances("loopline_train", train["dag_run_id"])
    promotion = client.xcom("loopline_train", train["dag_run_id"], "promote") or {}
    out.update(
        ok=after != before,
        latency_seconds=latency,
        champion_after=after,
        marks={k: round(v, 2) for k, v in marks.items()},
        train_state=finished["state"],
        train_tasks={k: round(v.get("duration") or 0.0, 2) for k, v in tasks.items()},
        ingest_seconds=_seconds(ingest.get("start_date"), ingest.get("end_date")),
        monitor_seconds=_seconds(monitor.get("start_date"), monitor.get("end_date")),
        reason=None if after != before else f"not promoted: {promotion.get('reason')}",
    )
    return out


def _bootstrap(config: Any, paths: Any, rows: int) -> None:
    """Three accepted baseline months and a first champion, through the same ``ml.steps`` the DAG tasks call."""
    from ml import steps

    for spec in data.window_specs(rows * 3, seed=31):
        _landing_file(paths, spec)
        steps.ingest_batch(config, paths, spec.key)
    window = steps.plan_training(config, paths, None, None)
    quality = steps.validate_window(config, paths, window["batches"])
    trained = steps.train_challenger(
        config, paths, window["batches"], {}, quality, "bench: first champion", {"loopline.trigger": "bench"}
    )
    evaluation = steps.evaluate_challenger(config, paths, window["batches"], trained["version"])
    promoted = steps.promote_challenger(config, paths, trained["version"], evaluation, True, "bench")
    if not promoted.get("promoted"):
        raise RuntimeError(f"the first champion was not promoted: {promoted.get('reason')}")


def measure(args: dict[str, Any]) -> dict[str, Any]:
    """Set up the data and the first champion, start Airflow, time ``args['repeats']`` rounds; always stops it."""
    from ml.airflow_client import AirflowClient
    from ml.config import Paths, load_config
    from ml.stack import Stack, free_port, start_airflow

    home = Path(args["home"])
    rows = int(args["rows"])
    config_file = data.write_config(home, extra={"drift": {"cooldown_batches": 0}})
    config = load_config(config_file)
    paths = Paths(home)
    started = time.monotonic()
    # Untimed set-up, done in this process (the same ml.steps calls the DAG tasks make) to save minutes.
    _bootstrap(config, paths, rows)
    result: dict[str, Any] = {
        "rows_per_batch": rows,
        "rounds": [],
        "setup_seconds": time.monotonic() - started,
    }
    stack = Stack(paths)
    try:
        endpoints = start_airflow(stack, config_file, free_port(int(args["port"])))
        result["airflow_start_seconds"] = time.monotonic() - started - result["setup_seconds"]
        result["airflow_url"] = endpoints.airflow_url
        client = AirflowClient(endpoints.airflow_url, endpoints.username, endpoints.password)
        client.wait_for_dags(DAG_IDS, timeout=180)
        for dag_id in DAG_IDS:
            client.unpause(dag_id)
        for round_number in range(1, int(args["repeats"]) + 1):
            spec = data.BatchSpec(
                f"2025-{3 + round_number:02d}",
                rows,
                seed=40 + round_number,
                shift=1.0 * round_number,
                concept=1.0 * round_number,
            )
            result["rounds"].append(_round(client, config, paths, spec, float(args.get("timeout", 300))))
            _wait_idle(client)
        result["parse_durations"] = {
            dag_id: (client.dag(dag_id) or {}).get("last_parse_duration") for dag_id in DAG_IDS
        }
    finally:
        result["stopped"] = stack.stop()
    result["seconds"] = time.monotonic() - started
    return result
