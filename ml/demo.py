"""The demo: a year of loan batches through the real Airflow scheduler, showing the loop close by itself.

Everything goes through Airflow's REST API: the demo triggers ``loopline_ingest`` once per month (as an
upstream system would) and ``loopline_train`` once for the first champion (as an ML engineer would); every
other run (monitor, score, drift-triggered training) is created by the scheduler from Asset events.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml import demo_data
from ml.airflow_client import AirflowClient
from ml.config import LooplineConfig, Paths
from ml.lake import atomic_write_json
from ml.stack import Endpoints, Stack, free_port, start_airflow

DAG_IDS = ["loopline_ingest", "loopline_monitor", "loopline_score", "loopline_train"]
_STATE_FOLDERS = (
    "airflow",
    "mlflow",
    "landing",
    "lake",
    "quarantine",
    "reports",
    "state",
    "demo",
    "logs",
    "run",
)


@dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs (the defaults are what ``make demo`` runs)."""

    months: int = 12
    rows_per_month: int = 4000
    shift_from_month: int = 8
    incident_month: int = 5
    bootstrap_months: int = 3
    port: int = 28080
    seed: int = 7
    keep_running: bool = False

    def scenario(self) -> demo_data.Scenario:
        return demo_data.Scenario(
            months=self.months,
            rows_per_month=self.rows_per_month,
            shift_from_month=self.shift_from_month,
            incident_months=(self.incident_month,),
            seed=self.seed,
        )


class Progress:
    """Timestamped progress lines."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        self.echo(f"[{time.monotonic() - self.started:6.1f}s] {message}")


def reset_state(paths: Paths) -> None:
    """Stop what this home runs and remove the demo's state, so every demo starts from nothing."""
    Stack(paths).stop()
    for name in _STATE_FOLDERS:
        shutil.rmtree(paths.home / name, ignore_errors=True)


Starter = Callable[[Stack, Path, int], Endpoints]


def run_demo(
    config: LooplineConfig,
    paths: Paths,
    options: DemoOptions,
    echo: Callable[[str], None] = print,
    starter: Starter | None = None,
) -> dict[str, Any]:
    """Run the whole demo and return (and write) its summary.

    ``starter(stack, config_file, airflow_port)`` starts the services (default: the embedded profile's
    ``start_airflow``; ``ml.profiles.prod_starter`` for the prod profile, whose MLflow server this process must
    reach through ``MLFLOW_TRACKING_URI``). Whatever it started is stopped at the end unless ``keep_running``.
    """
    from ml import registry

    progress = Progress(echo)
    scenario = options.scenario()
    reset_state(paths)
    files = demo_data.write_landing(scenario, paths.landing / config.dataset.source.path)
    progress(
        f"generated {len(files)} monthly batches of ~{options.rows_per_month} loans in {files[0].parent}"
    )
    if starter is None:
        registry.connect(config, paths)
    stack = Stack(paths)
    assert config.config_path is not None
    endpoints = (starter or start_airflow)(stack, config.config_path, free_port(options.port))
    progress(f"Airflow is up at {endpoints.airflow_url} ({endpoints.description})")
    try:
        if starter is not None:
            registry.connect(config, paths)  # the tracking server is up now
        client = AirflowClient(endpoints.airflow_url, endpoints.username, endpoints.password)
        client.wait_for_dags(DAG_IDS)
        for dag_id in DAG_IDS:
            client.unpause(dag_id)
        progress(f"DAGs parsed and unpaused: {', '.join(DAG_IDS)}")
        timeline = _drive(client, config, scenario, options, progress)
        summary = build_summary(client, config, paths, scenario, timeline)
        summary["airflow_url"] = endpoints.airflow_url
    finally:
        if not options.keep_running:
            stack.stop()
    atomic_write_json(paths.demo / "summary.json", summary)
    return summary


def _known(client: AirflowClient, dag_id: str) -> set[str]:
    return {run["dag_run_id"] for run in client.runs(dag_id, limit=100)}


def _follow(
    client: AirflowClient, dag_id: str, known: set[str], timeout: float = 600
) -> dict[str, Any] | None:
    """Wait for the next run of ``dag_id`` that the scheduler creates, then for it to finish."""
    run = client.wait_new_run(dag_id, known, timeout=60)
    if run is None:
        return None
    return client.wait_run(dag_id, run["dag_run_id"], timeout)


def _drive(
    client: AirflowClient,
    config: LooplineConfig,
    scenario: demo_data.Scenario,
    options: DemoOptions,
    progress: Progress,
) -> list[dict[str, Any]]:
    timeline: list[dict[str, Any]] = []
    for month in range(1, scenario.months + 1):
        batch = scenario.batch_key(month)
        known = {dag_id: _known(client, dag_id) for dag_id in DAG_IDS}
        run_id = client.trigger("loopline_ingest", {"batch": batch})
        ingest = client.wait_run("loopline_ingest", run_id)
        entry: dict[str, Any] = {"month": month, "batch": batch, "ingest": ingest["state"]}
        if ingest["state"] != "success":
            progress(
                f"{batch}: ingest FAILED the data-quality gate -> quarantined; lake and champion untouched"
            )
            timeline.append(entry)
            continue
        monitor = _follow(client, "loopline_monitor", known["loopline_monitor"])
        score = _follow(client, "loopline_score", known["loopline_score"])
        entry["score"] = score["state"] if score else "missing"
        results = client.xcom("loopline_monitor", monitor["dag_run_id"], "monitor") if monitor else None
        result = (results or [{}])[-1]
        entry["monitor"] = {
            k: result.get(k) for k in ("verdict", "severity", "top_features", "reason", "retrain")
        }
        line = f"{batch}: ingested; monitor: {result.get('verdict', 'n/a')}"
        if result.get("verdict") == "drift":
            top = ", ".join(f"{f['column']} {f['psi']:.2f}" for f in result.get("top_features", [])[:3])
            line += f" ({result.get('severity')}: {top}) -> alert sent"
        progress(
            line + (f"; {result.get('reason')}" if result.get("verdict") not in (None, "no_drift") else "")
        )
        if month == options.bootstrap_months:
            run_id = client.trigger("loopline_train", {})
            progress(f"{batch}: ML engineer triggers loopline_train for the first champion")
            entry["train"] = _train_outcome(client, client.wait_run("loopline_train", run_id), progress)
        elif result.get("retrain"):
            train = _follow(client, "loopline_train", known["loopline_train"])
            if train is None:
                progress(f"{batch}: expected a drift-triggered loopline_train run, none appeared")
            else:
                progress(f"{batch}: loopline_train run created by the retrain-request Asset event")
                entry["train"] = _train_outcome(client, train, progress)
        timeline.append(entry)
    return timeline


def _train_outcome(client: AirflowClient, run: dict[str, Any], progress: Progress) -> dict[str, Any]:
    run_id = run["dag_run_id"]
    evaluation = client.xcom("loopline_train", run_id, "evaluate") or {}
    promotion = client.xcom("loopline_train", run_id, "promote") or {}
    trained = client.xcom("loopline_train", run_id, "train") or {}
    outcome = {
        "run_id": run_id,
        "state": run["state"],
        "version": trained.get("version"),
        "promoted": bool(promotion.get("promoted")),
        "reason": promotion.get("reason") or evaluation.get("reason"),
    }
    verdict = "PROMOTED to champion" if outcome["promoted"] else "not promoted"
    progress(f"    model v{outcome['version']} {verdict}: {outcome['reason']}")
    return outcome


def build_summary(
    client: AirflowClient,
    config: LooplineConfig,
    paths: Paths,
    scenario: demo_data.Scenario,
    timeline: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything the demo showed, as one JSON document."""
    from ml import registry

    registry.connect(config, paths)
    runs = []
    for dag_id in DAG_IDS:
        for run in reversed(client.runs(dag_id, limit=100)):
            runs.append(
                {
                    "dag_id": dag_id,
                    "run_id": run["dag_run_id"],
                    "state": run["state"],
                    "triggered_by": _trigger_label(client, dag_id, run),
                }
            )
    alerts_file = paths.alert_log
    alerts = (
        [json.loads(line) for line in alerts_file.read_text().splitlines()] if alerts_file.is_file() else []
    )
    return {
        "dataset": config.dataset.name,
        "model": config.model_name,
        "batches_ingested": [t["batch"] for t in timeline if t["ingest"] == "success"],
        "batches_quarantined": [t["batch"] for t in timeline if t["ingest"] != "success"],
        "timeline": timeline,
        "dag_runs": runs,
        "champion_history": registry.champion_moves(config),
        "alerts": [
            {
                "batch": a["batch"],
                "severity": a["severity"],
                "features": [f["column"] for f in a["top_features"]],
                "action": a["action"],
                "grouped": a.get("grouped", False),
            }
            for a in alerts
        ],
        "champion_metrics": champion_metrics(config, paths, timeline),
        "drift_from": scenario.batch_key(scenario.shift_from_month) if scenario.shift_from_month else None,
    }


def _trigger_label(client: AirflowClient, dag_id: str, run: dict[str, Any]) -> str:
    if run["run_type"] != "asset_triggered":
        return str(run["run_type"])
    events = client.upstream_events(dag_id, run["dag_run_id"])
    sources = sorted({f"{e.get('source_dag_id')} ({(e.get('extra') or {}).get('batch')})" for e in events})
    return "asset event from " + ", ".join(sources)


def champion_metrics(
    config: LooplineConfig, paths: Paths, timeline: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per batch: the AUC of the champion when the batch arrived, and of the final champion."""
    from ml import registry
    from ml.evaluate import classification_metrics
    from ml.steps import lake_of, predictions_table

    lake = lake_of(paths)
    final = registry.champion(config)
    final_model = registry.load_model(final) if final else None
    rows = []
    for entry in timeline:
        batch = entry["batch"]
        if batch not in lake.batches(predictions_table(config)):
            continue
        frame = lake.read(config.dataset.name, [batch])
        scored = lake.read(predictions_table(config), [batch])
        y = frame[config.dataset.target].astype(int).to_numpy()
        at_arrival = classification_metrics(y, scored["score"].to_numpy(), config.gate.decision_threshold)
        row = {
            "batch": batch,
            "champion_at_arrival": str(scored["model_version"].iloc[0]),
            "roc_auc_at_arrival": round(at_arrival["roc_auc"], 4),
        }
        if final_model is not None and final is not None:
            latest = classification_metrics(
                y, registry.predict(final_model, frame), config.gate.decision_threshold
            )
            row |= {"final_champion": final.version, "roc_auc_final_champion": round(latest["roc_auc"], 4)}
        rows.append(row)
    return rows


def print_summary(summary: dict[str, Any], paths: Paths, echo: Callable[[str], None] = print) -> None:
    """The summary as a person reads it."""
    echo("")
    echo("=" * 78)
    echo(f"Loopline demo summary: dataset {summary['dataset']}, model {summary['model']}")
    echo(f"  batches ingested:    {', '.join(summary['batches_ingested'])}")
    echo(f"  batches quarantined: {', '.join(summary['batches_quarantined']) or 'none'}")
    echo("  champion history:")
    for move in summary["champion_history"]:
        echo(f"    {move['at']}  v{move['from'] or '-'} -> v{move['to']}  {move['reason']}")
    echo("  alerts:")
    for alert in summary["alerts"]:
        grouped = " (grouped)" if alert["grouped"] else ""
        features = ", ".join(alert["features"][:4])
        echo(f"    {alert['batch']} {alert['severity']}{grouped}: {features} -> {alert['action']}")
    echo("  champion ROC AUC per batch (at arrival -> final champion):")
    for row in summary["champion_metrics"]:
        echo(
            f"    {row['batch']}  v{row['champion_at_arrival']} {row['roc_auc_at_arrival']:.3f}"
            f"  ->  v{row.get('final_champion', '-')} {row.get('roc_auc_final_champion', float('nan')):.3f}"
        )
    counts: dict[str, int] = {}
    for run in summary["dag_runs"]:
        key = f"{run['dag_id']} {run['state']}"
        counts[key] = counts.get(key, 0) + 1
    echo("  DAG runs: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    echo(f"  full summary: {Path(paths.demo / 'summary.json')}")
    echo("  open the UIs over this state with: make up   (stop them with: make down)")
    echo("=" * 78)
