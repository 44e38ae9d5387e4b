"""The demo: a year of loan batches through the real Airflow scheduler, showing the loop close by itself.

Everything goes through Airflow's REST API: the demo triggers ``loopline_ingest`` once per month (as an
upstream system would) and ``loopline_train`` once for the first champion (as an ML engineer would); every
other run (monitor, score, drift-triggered training) is created by the scheduler from Asset events.

Beside Airflow the demo runs ``loopline serve`` on the champion: once the first champion exists, a share of
each month's applications goes through ``POST /predict`` before the month's batch is ingested, so
loopline_monitor also checks that month's captured live traffic; the outcomes of a month's live loans are
loaded into the prediction store a month later (delayed labels), and a promotion is announced to the service
(``/admin/reload``) so the next month is answered by the new champion.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ml import demo_data
from ml.airflow_client import AirflowClient
from ml.config import LooplineConfig, Paths
from ml.lake import atomic_write_json
from ml.stack import LOOPLINE_CREDENTIALS, Endpoints, Stack, free_port, start_airflow, wait_healthy

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
    "serve",
)
SERVE = "loopline-serve"


@dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs (the defaults are what ``make demo`` runs)."""

    months: int = 12
    rows_per_month: int = 4000
    shift_from_month: int = 8
    incident_month: int = 5
    bootstrap_months: int = 3
    port: int = 28080
    serve_port: int = 28600
    live_share: float = 0.25
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
        live = LiveTraffic.start(stack, config, paths, options)
        progress(f"loopline serve started at {live.url} (answers once a champion exists)")
        client = AirflowClient(endpoints.airflow_url, endpoints.username, endpoints.password)
        client.wait_for_dags(DAG_IDS)
        for dag_id in DAG_IDS:
            client.unpause(dag_id)
        progress(f"DAGs parsed and unpaused: {', '.join(DAG_IDS)}")
        timeline = _drive(client, config, scenario, options, progress, live)
        summary = build_summary(client, config, paths, scenario, timeline)
        summary["live_traffic"] = live_summary(config, paths, timeline)
        summary["serving_url"] = live.url
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


class LiveTraffic:
    """The demo's ``loopline serve``: sends a share of each month's applications, loads their labels later."""

    def __init__(
        self, stack: Stack, config: LooplineConfig, paths: Paths, url: str, token: str, share: float
    ) -> None:
        self.stack, self.config, self.paths = stack, config, paths
        self.url, self.token, self.share = url, token, share
        self.sent: dict[str, pd.DataFrame] = {}

    @classmethod
    def start(cls, stack: Stack, config: LooplineConfig, paths: Paths, options: DemoOptions) -> LiveTraffic:
        """Start ``python -m ml.serve`` under this home (stopped with the rest of the stack)."""
        port = free_port(options.serve_port)
        token = secrets.token_urlsafe(32)
        inherited = {k: v for k, v in os.environ.items() if k not in LOOPLINE_CREDENTIALS}
        env = {
            **inherited,
            "LOOPLINE_HOME": str(paths.home),
            "LOOPLINE_CONFIG": str(config.config_path),
            "LOOPLINE_SERVE_TOKEN": token,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        command = [sys.executable, "-m", "ml.serve", "--port", str(port), "--poll-interval", "2"]
        stack.start(SERVE, command, env)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", "loopline serve", stack, 120, watch=[SERVE])
        return cls(stack, config, paths, url, token, options.live_share)

    def ready(self, timeout: float = 30.0) -> str | None:
        """The version served once ``/ready`` answers 200 (None if no champion was loaded in time)."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = requests.get(f"{self.url}/ready", headers=self._headers, timeout=10)
            if answer.status_code == 200:
                return str(answer.json()["model_version"])
            time.sleep(0.5)
        return None

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def send(self, batch: str) -> dict[str, Any]:
        """POST every ``1/share``-th landed application of ``batch`` (without its outcome), 100 per request."""
        import requests

        from ml.ingest import landing_path

        dataset = self.config.dataset
        file = landing_path(self.config, self.paths, batch, extract=False)
        frame = pd.read_csv(file, on_bad_lines="skip")
        frame[dataset.time_column] = pd.to_datetime(frame[dataset.time_column], errors="coerce")
        target = dataset.target
        picked = frame.iloc[:: max(1, round(1 / self.share))]
        records = json.loads(picked.drop(columns=[target]).to_json(orient="records", date_format="iso"))
        versions: dict[str, int] = {}
        answered = []
        with requests.Session() as session:
            for start in range(0, len(records), 100):
                chunk = records[start : start + 100]
                answer = session.post(f"{self.url}/predict", json=chunk, headers=self._headers, timeout=30)
                if answer.status_code != 200:
                    continue
                version = str(answer.json()["model_version"])
                versions[version] = versions.get(version, 0) + len(chunk)
                answered.append(picked.iloc[start : start + 100])
        if answered:
            self.sent[batch] = pd.concat(answered)
        rejected = len(records) - sum(versions.values())
        return {"sent": len(records), "rejected": rejected, "versions": versions}

    def load_labels(self, batch: str, known_at: pd.Timestamp) -> dict[str, Any] | None:
        """The outcomes of ``batch``'s live applications, known at ``known_at`` (a month later)."""
        from ml.serve import labels
        from ml.serve.settings import settings_for, store_url_of

        picked = self.sent.get(batch)
        if picked is None:
            return None
        dataset = self.config.dataset
        outcomes = picked[[dataset.id_column, dataset.target]].assign(label_time=known_at.isoformat())
        store = store_url_of(settings_for(self.config), self.paths)
        return labels.load_frame(self.config, store, outcomes, source=f"demo outcomes of {batch}")

    def reload(self) -> None:
        """Tell the service the champion moved (it polls anyway)."""
        from ml.serve.notify import notify_reload

        notify_reload(self.url, self.token)


def _drive(
    client: AirflowClient,
    config: LooplineConfig,
    scenario: demo_data.Scenario,
    options: DemoOptions,
    progress: Progress,
    live: LiveTraffic,
) -> list[dict[str, Any]]:
    from ml.batches import window_of

    timeline: list[dict[str, Any]] = []
    for month in range(1, scenario.months + 1):
        batch = scenario.batch_key(month)
        known = {dag_id: _known(client, dag_id) for dag_id in DAG_IDS}
        entry: dict[str, Any] = {"month": month, "batch": batch}
        if month > options.bootstrap_months and live.ready() is not None:
            entry["live"] = live.send(batch)
            served = ", ".join(f"v{v}: {n}" for v, n in entry["live"]["versions"].items()) or "none"
            rejected = entry["live"]["rejected"]
            progress(
                f"{batch}: {entry['live']['sent']} live applications sent to loopline serve (answered by {served})"
                + (f"; {rejected} refused with 422 (malformed)" if rejected else "")
            )
        previous = scenario.batch_key(month - 1) if month > 1 else None
        if previous is not None:
            loaded = live.load_labels(previous, pd.Timestamp(window_of(batch, config.batching)[0], tz="UTC"))
            if loaded:
                entry["labels_loaded"] = {"batch": previous, "matched": loaded["matched"]}
                progress(
                    f"{batch}: outcomes of {previous}'s live loans arrive: {loaded['matched']} labels joined"
                )
        time.sleep(config.serving.capture_flush_interval_seconds * 2)  # the captures are committed
        run_id = client.trigger("loopline_ingest", {"batch": batch})
        ingest = client.wait_run("loopline_ingest", run_id)
        entry["ingest"] = ingest["state"]
        if entry["ingest"] != "success":
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
        watched = client.xcom("loopline_monitor", monitor["dag_run_id"], "monitor_live") if monitor else None
        if watched:
            entry["live_monitor"] = {
                k: watched[-1].get(k)
                for k in ("batch", "verdict", "severity", "rows", "top_features", "reason")
            }
        line = f"{batch}: ingested; monitor: {result.get('verdict', 'n/a')}"
        if result.get("verdict") == "drift":
            top = ", ".join(f"{f['column']} {f['psi']:.2f}" for f in result.get("top_features", [])[:3])
            line += f" ({result.get('severity')}: {top}) -> alert sent"
        progress(
            line + (f"; {result.get('reason')}" if result.get("verdict") not in (None, "no_drift") else "")
        )
        if "live_monitor" in entry:
            watched_live = entry["live_monitor"]
            top = ", ".join(
                f"{f['column']} {f['psi']:.2f}" for f in (watched_live.get("top_features") or [])[:3]
            )
            progress(
                f"{batch}: live traffic monitor: {watched_live['verdict']}"
                + (
                    f" ({watched_live['severity']}: {top}) -> alert sent"
                    if watched_live["verdict"] == "drift"
                    else ""
                )
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
        if (entry.get("train") or {}).get("promoted"):
            live.reload()
        timeline.append(entry)
    return timeline


def live_summary(
    config: LooplineConfig, paths: Paths, timeline: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per month with live traffic: records answered per version, the live monitor's verdict and the realised
    AUC and calibration of the captured predictions whose labels have joined."""
    from ml.batches import window_of
    from ml.serve import labels

    rows = []
    for entry in timeline:
        if "live" not in entry:
            continue
        start, end = window_of(entry["batch"], config.batching)
        joined = labels.join_report(config, paths, start, end, save=False)
        metrics = joined.get("metrics") or {}
        watched = entry.get("live_monitor") or {}
        rows.append(
            {
                "batch": entry["batch"],
                "sent": entry["live"]["sent"],
                "served_by": entry["live"]["versions"],
                "live_verdict": watched.get("verdict"),
                "live_severity": watched.get("severity"),
                "live_top_features": [f["column"] for f in watched.get("top_features") or []][:4],
                "labelled": joined["labelled_entities"],
                "realised_roc_auc": metrics.get("roc_auc"),
                "calibration_gap": metrics.get("calibration_gap"),
            }
        )
    return rows


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

    lake = lake_of(paths, config)
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
    echo("  live traffic through loopline serve (share of each month; labels joined a month later):")
    for row in summary.get("live_traffic", []):
        served = ", ".join(f"v{v}: {n}" for v, n in row["served_by"].items()) or "none"
        auc = row["realised_roc_auc"]
        drift = row["live_verdict"] or "n/a"
        if row["live_top_features"]:
            drift += f" ({row['live_severity']}: {', '.join(row['live_top_features'])})"
        echo(
            f"    {row['batch']}  {row['sent']} sent, served by {served}; live drift: {drift}; "
            f"realised AUC {'-' if auc is None else f'{auc:.3f}'} on {row['labelled']} labelled"
        )
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
