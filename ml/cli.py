"""``loopline``: the command line. Argument parsing and printing only; the work is done in ``ml``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ml.config import ConfigError, LooplineConfig, Paths, load_config


def _setup(args: argparse.Namespace) -> tuple[LooplineConfig, Paths]:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    config = load_config(args.config)
    return config, Paths.from_env()


def _connect(config: LooplineConfig, paths: Paths) -> None:
    """Connect to the registry: the configured store, else the MLflow server this home's profile started (with
    its login, from ``ml.registry.client_state``), else the local store."""
    from ml import registry

    state = registry.client_state(paths)
    if state and not config.registry.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = state["tracking_uri"]
    registry.connect(config, paths)


def cmd_demo(args: argparse.Namespace) -> int:
    from ml.demo import DemoOptions, print_summary, run_demo

    config, paths = _setup(args)
    options = DemoOptions(months=args.months, rows_per_month=args.rows, keep_running=args.keep_running)
    print(f"Loopline demo: state under {paths.home}, config {config.config_path}", flush=True)
    summary = run_demo(config, paths, options, echo=lambda line: print(line, flush=True))
    print_summary(summary, paths)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ml import profiles, registry
    from ml.airflow_client import record_endpoint
    from ml.stack import Stack, free_port

    config, paths = _setup(args)
    if args.profile == "embedded":
        registry.connect(config, paths)
    stack = Stack(paths)
    assert config.config_path is not None
    endpoints = profiles.start(
        args.profile,
        paths,
        config.config_path,
        airflow_port=free_port(args.airflow_port),
        mlflow_port=free_port(args.mlflow_port),
        celery_workers=args.celery_workers,
    )
    print(f"Airflow UI: {endpoints.airflow_url}  (user {endpoints.username}, password {endpoints.password})")
    login = (
        f"user {endpoints.mlflow_username}, password {endpoints.mlflow_password}"
        if endpoints.mlflow_username
        else "no login: the local store, on 127.0.0.1 only"
    )
    print(f"MLflow UI:  {endpoints.mlflow_url}  ({login})")
    print(f"            experiment {config.experiment_name}, model {config.model_name}")
    print(f"Lake:       {paths.lake_location(config)}")
    print(f"Logs: {stack.log_dir}   Stop with: make down")
    record_endpoint(paths, endpoints.airflow_url, endpoints.username)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ml import serve

    config, paths = _setup(args)
    serve.run(config, paths, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from ml.serve import labels

    config, paths = _setup(args)
    report = labels.load_file(config, paths, args.file, store_url=args.store_url)
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ml.stack import Stack

    done = Stack(Paths.from_env()).terminate(timeout=args.timeout)
    print("stopped: " + (", ".join(done.stopped) if done.stopped else "nothing was running"))
    if done.killed:
        print(
            f"killed after {args.timeout:g} s: {', '.join(done.killed)} (still busy; Airflow retries a task a "
            "killed worker was running; give busy workers longer with `loopline down --timeout SECONDS`)"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ml import registry

    config, paths = _setup(args)
    _connect(config, paths)
    current = registry.champion(config)
    document: dict[str, Any] = {"model": config.model_name, "champion": None}
    if current is not None:
        import mlflow

        run = mlflow.get_run(current.run_id)
        document["champion"] = {
            "version": current.version,
            "run_id": current.run_id,
            "window": run.data.params.get("window"),
            "metrics": {k: round(v, 4) for k, v in run.data.metrics.items() if k.startswith("holdout_")},
        }
    document["versions"] = [
        {"version": v["version"], "gate": v["tags"].get("gate"), "reason": v["tags"].get("gate_reason")}
        for v in registry.versions(config)[-10:]
    ]
    print(json.dumps(document, indent=2))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from ml import registry

    config, paths = _setup(args)
    _connect(config, paths)
    for move in registry.history(config):
        outcome = "" if move["outcome"] == registry.MOVED else f"  ({move['outcome'].upper()})"
        print(
            f"{move['at']}  {move['alias']}: v{move['from'] or '-'} -> v{move['to']}{outcome}  "
            f"by {move['by']}  {move['reason']}"
        )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    import getpass

    from ml import registry

    config, paths = _setup(args)
    _connect(config, paths)
    before, after = registry.rollback(config, args.to, actor=f"cli:{getpass.getuser()}")
    print(f"champion of {config.model_name}: v{before} -> v{after} (recorded in `loopline history`)")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from ml import policy

    if args.action is None:
        return _request_retrain(args)
    if args.end_batch or args.reason or args.airflow_url:
        raise ValueError(
            "--end-batch, --reason and --airflow-url go with a retrain now (`loopline retrain` alone)"
        )
    _, paths = _setup(args)
    flag = policy.pause_file(paths)
    if args.action == "pause":
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
        print(f"automatic retraining paused ({flag}); drift still alerts")
    elif args.action == "resume":
        flag.unlink(missing_ok=True)
        print("automatic retraining resumed")
    else:
        print("paused" if flag.exists() else "active")
    return 0


TRAIN_DAG = "loopline_train"


def _request_retrain(args: argparse.Namespace) -> int:
    """Trigger a loopline_train run through the Airflow REST API (a manual run: no cooldown, no pause)."""
    import getpass

    from ml.airflow_client import AirflowClient, AirflowUnreachable, login_settings

    _, paths = _setup(args)
    url, username, password = login_settings(paths, args.airflow_url)
    try:
        client = AirflowClient(url, username, password)
    except AirflowUnreachable as exc:
        raise AirflowUnreachable(
            f"{exc}: start Airflow (`loopline up`, or the compose stack), or point --airflow-url or "
            "$LOOPLINE_AIRFLOW_URL at its API server"
        ) from exc
    note = f"loopline retrain by {getpass.getuser()}: {args.reason or 'no reason given'}"
    # the note shows in Airflow; the reason in the conf becomes the MLflow run's loopline.reason tag
    conf = {"reason": note} | ({"end_batch": args.end_batch} if args.end_batch else {})
    run_id = client.trigger(TRAIN_DAG, conf=conf, note=note)
    print(f"{TRAIN_DAG} run {run_id} requested: {url}/dags/{TRAIN_DAG}/runs/{run_id}")
    if (client.dag(TRAIN_DAG) or {}).get("is_paused"):
        print(f"warning: the DAG {TRAIN_DAG} is paused in Airflow: the run starts once it is unpaused")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    import getpass

    from ml import alerts

    _, paths = _setup(args)
    if args.action == "ack":
        record = alerts.acknowledge(paths.alert_log, args.alert_id, args.by or getpass.getuser(), args.note)
        print(f"alert {record['id']} acknowledged by {record['by']} at {record['at']}")
        return 0
    found = alerts.logged_alerts(paths.alert_log, since=args.since, unacked_only=args.unacked)
    for alert in found:
        ack = alert["ack"]
        state = (
            f"acked by {ack['by']} at {ack['at']}" + (f": {ack['note']}" if ack.get("note") else "")
            if ack
            else "UNACKED"
        )
        grouped = " (grouped)" if alert.get("grouped") else ""
        print(f"{alert['id']}  {alert['at']}  {alert['title']}{grouped}  {state}")
        print(f"    action: {alert['action']}\n    report: {alert['report']}")
    if not found:
        print(f"no {'unacknowledged ' if args.unacked else ''}alerts in {paths.alert_log}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ml import alerts

    config, paths = _setup(args)
    html, json_path = alerts.drift_report(paths.reports / "drift" / config.dataset.name, args.batch)
    print(f"html: {html}\njson: {json_path}")
    if args.open:
        import webbrowser

        webbrowser.open(html.as_uri())
    return 0


def _since(text: str) -> datetime:
    """``--since``: an ISO date or time (UTC unless it says), or an age such as 30m, 12h, 7d."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    try:
        if text[-1:] in units and text[:-1].isdigit():
            return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected e.g. 2025-08-01, 2025-08-01T09:00 or 12h"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_quarantine(args: argparse.Namespace) -> int:
    from ml import quality
    from ml.ingest import landing_path

    config, paths = _setup(args)
    folder = paths.quarantine / config.dataset.name
    if args.action == "list":
        entries = quality.quarantined(folder)
        for entry in entries:
            first_line = str(entry["reason"]).splitlines()[0][:160]
            print(f"{entry['batch']}  {entry['quarantined_at']}  {first_line}\n    {entry['path']}")
        if not entries:
            print(f"no quarantined batches of {config.dataset.name}")
        return 0
    if not args.batch:
        raise ValueError(f"`loopline quarantine {args.action}` needs the batch, e.g. 2025-05")
    if args.action == "release":
        target = landing_path(config, paths, args.batch, extract=False)
        quality.release(folder / args.batch, target)
        print(
            f"released {args.batch} to {target}; ingest it again (trigger loopline_ingest with batch={args.batch})"
        )
    else:
        quality.drop(folder / args.batch, paths.state / "quarantine_dropped.jsonl")
        print(
            f"dropped quarantined batch {args.batch} (recorded in {paths.state / 'quarantine_dropped.jsonl'})"
        )
    return 0


def cmd_expectations(args: argparse.Namespace) -> int:
    from ml import steps
    from ml.lake import atomic_write_json

    config, paths = _setup(args)
    batches = args.batches.split(",") if args.batches else None
    suite = steps.suggest_expectations(config, paths, batches)
    target = Path(args.out) if args.out else config.suite_path()
    if target.exists() and not args.force and not args.out:
        target = target.with_suffix(".suggested.json")
    atomic_write_json(target, suite)
    print(f"wrote {len(suite['expectations'])} expectations to {target}; review them before use")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import tempfile

    from ml import replay

    config, paths = _setup(args)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="loopline-replay-"))
    print(f"replaying {config.dataset.name} from {paths.landing} in {home}", flush=True)
    report = replay.replay(
        config, paths, home, bootstrap=args.bootstrap, echo=lambda line: print(line, flush=True)
    )
    replay.write_outputs(report, Path(args.json), Path(args.plot) if args.plot else None)
    print(f"summary: {replay.dump(report)}")
    print(f"report: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
    return 0


CONFIG_HELP = "config file (default: $LOOPLINE_CONFIG or ./loopline.yaml)"


class _Commands:
    """Subcommands that all accept ``--config`` (from ``config_option``), like the top-level parser."""

    def __init__(self, subparsers: Any, config_option: argparse.ArgumentParser) -> None:
        self.subparsers = subparsers
        self.config_option = config_option

    def add(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return self.subparsers.add_parser(name, parents=[self.config_option], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopline", description="The retraining loop for tabular models.")
    parser.add_argument("--config", help=CONFIG_HELP)
    # Every subcommand takes --config too (`loopline replay --config x.yaml`); given there, it wins.
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    commands = _Commands(parser.add_subparsers(dest="command", required=True), config_option)

    demo = commands.add("demo", help="run the demo loop through a real Airflow scheduler")
    demo.add_argument("--months", type=int, default=12)
    demo.add_argument("--rows", type=int, default=4000, help="rows per monthly batch")
    demo.add_argument("--keep-running", action="store_true", help="leave Airflow running afterwards")
    demo.set_defaults(handler=cmd_demo)

    up = commands.add("up", help="serve the Airflow and MLflow UIs over the state on 127.0.0.1")
    up.add_argument("--airflow-port", type=int, default=8080)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument(
        "--profile",
        choices=["embedded", "prod"],
        default="embedded",
        help="prod: PostgreSQL + CeleryExecutor on Redis + MLflow server (URLs from the environment)",
    )
    up.add_argument(
        "--celery-workers", type=int, default=1, help="prod: Celery workers to start on this machine"
    )
    up.set_defaults(handler=cmd_up)

    down = commands.add("down", help="stop every process `up` or `demo` started")
    down.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds each process may take to exit after SIGTERM before it is killed (a Celery worker first "
        "finishes its running tasks; default 30)",
    )
    down.set_defaults(handler=cmd_down)
    serve = commands.add("serve", help="serve the champion over HTTP on 127.0.0.1 (docs/serving.md)")
    serve.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(handler=cmd_serve)
    labels = commands.add("labels", help="load delayed labels and join them to captured predictions")
    labels.add_argument("action", choices=["load"])
    labels.add_argument("file", help="CSV or Parquet file with the id, label and label time columns")
    labels.add_argument("--store-url", help="prediction store (default: SQLite under LOOPLINE_HOME)")
    labels.set_defaults(handler=cmd_labels)
    commands.add("status", help="the champion, its metrics, recent gate decisions").set_defaults(
        handler=cmd_status
    )
    commands.add("history", help="every move of the champion alias").set_defaults(handler=cmd_history)
    quarantine = commands.add("quarantine", help="list, release or drop batches that failed the gate")
    quarantine.add_argument("action", choices=["list", "release", "drop"])
    quarantine.add_argument("batch", nargs="?", help="batch key (for release and drop)")
    quarantine.set_defaults(handler=cmd_quarantine)
    expectations = commands.add("expectations", help="suggest a Great Expectations suite from the lake")
    expectations.add_argument("action", choices=["suggest"])
    expectations.add_argument(
        "--batches", help="comma-separated batch keys (default: the newest training window)"
    )
    expectations.add_argument(
        "--out", help="file to write (default: the config's suite, or <suite>.suggested.json)"
    )
    expectations.add_argument("--force", action="store_true", help="overwrite the config's suite file")
    expectations.set_defaults(handler=cmd_expectations)
    replay = commands.add("replay", help="backtest the loop over the landed history, batch by batch")
    replay.add_argument("--json", required=True, help="where to write the per-batch report")
    replay.add_argument("--plot", help="where to write the AUC-over-time plot (PNG)")
    replay.add_argument("--bootstrap", type=int, default=3, help="batches that train the first champion")
    replay.add_argument("--home", help="empty folder for the replay's own state (default: a temp folder)")
    replay.set_defaults(handler=cmd_replay)
    rollback = commands.add("rollback", help="move the champion back (previous, or --to VERSION)")
    rollback.add_argument(
        "--to", help="version to make champion (default: the newest earlier champion no rollback left)"
    )
    rollback.set_defaults(handler=cmd_rollback)
    retrain = commands.add(
        "retrain", help="retrain now through Airflow, or pause/resume automatic (drift-triggered) retraining"
    )
    retrain.add_argument(
        "action", nargs="?", choices=["pause", "resume", "status"], help="omit to trigger loopline_train now"
    )
    retrain.add_argument("--end-batch", help="last batch of the training window (default: the newest)")
    retrain.add_argument(
        "--reason", help="why: the run's note in Airflow and its loopline.reason tag in MLflow"
    )
    retrain.add_argument(
        "--airflow-url",
        help="Airflow API server (default: $LOOPLINE_AIRFLOW_URL, else what `loopline up` started, else "
        "http://127.0.0.1:8080; login: $LOOPLINE_AIRFLOW_USER/$LOOPLINE_AIRFLOW_PASSWORD)",
    )
    retrain.set_defaults(handler=cmd_retrain)
    alerts = commands.add("alerts", help="list drift alerts with their acknowledgement, or acknowledge one")
    alert_actions = _Commands(alerts.add_subparsers(dest="action", required=True), config_option)
    listing = alert_actions.add("list", help="the logged alerts, oldest first")
    listing.add_argument(
        "--since", type=_since, help="only alerts since: 2025-08-01, 2025-08-01T09:00, 12h, 7d"
    )
    listing.add_argument("--unacked", action="store_true", help="only alerts nobody acknowledged")
    ack = alert_actions.add("ack", help="acknowledge an alert by its id (`loopline alerts list`)")
    ack.add_argument("alert_id")
    ack.add_argument("--by", help="who acknowledges (default: your user name)")
    ack.add_argument("--note", help="what was done")
    alerts.set_defaults(handler=cmd_alerts)
    report = commands.add(
        "report", help="print (or --open) the drift report of a batch (default: the newest)"
    )
    report.add_argument("--batch", help="batch key, e.g. 2025-08 (live windows: live-2025-08)")
    report.add_argument("--open", action="store_true", help="open the HTML page in a browser")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (
        ConfigError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        ConnectionError,
        PermissionError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
