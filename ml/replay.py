"""The backtest: walk a dataset's history batch by batch through the same functions the DAGs call.

The first ``bootstrap`` accepted batches train the first champion; then, for each batch: ingest (the quality
gate), score with the champion, monitor drift, alert, retrain under the policy (gate, evaluate, promote). Per
batch the report gives the drift verdict and top features, the alert, the retrain and its outcome, the champion
version, the champion's AUC on that batch and the AUC a static first model would have had. It runs in its own
LOOPLINE_HOME (the landing zone is linked from the real one), so it never touches the live loop's state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml import alerts, policy, registry, steps
from ml.config import LooplineConfig, Paths
from ml.evaluate import classification_metrics
from ml.ingest import discover_batches
from ml.lake import atomic_write_bytes, atomic_write_json
from ml.quality import QualityGateFailed


@dataclass
class BatchOutcome:
    """What happened to one batch in the replay."""

    batch: str
    accepted: bool
    verdict: str | None = None
    severity: str | None = None
    top_features: list[str] = field(default_factory=list)
    alert: bool = False
    retrain: bool = False
    retrain_outcome: str | None = None
    champion_version: str | None = None
    champion_roc_auc: float | None = None
    static_roc_auc: float | None = None
    note: str | None = None


def replay(
    config: LooplineConfig,
    source_paths: Paths,
    work_home: Path,
    bootstrap: int = 3,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the backtest in ``work_home`` over every batch found in ``source_paths``' landing zone."""
    paths = _prepare_home(source_paths, work_home)
    batches = discover_batches(config, paths)
    if len(batches) <= bootstrap:
        raise ValueError(f"found {len(batches)} batches; the replay needs more than bootstrap={bootstrap}")
    os.environ["LOOPLINE_HOME"] = str(paths.home)
    registry.connect(config, paths)
    outcomes: list[BatchOutcome] = []
    static_model = None
    for batch in batches:
        outcome = BatchOutcome(batch, accepted=_ingest(config, paths, batch))
        outcomes.append(outcome)
        if not outcome.accepted:
            outcome.note = "quarantined by the quality gate"
            echo(f"{batch}: quarantined")
            continue
        accepted = [o for o in outcomes if o.accepted]
        if static_model is None:
            if len(accepted) == bootstrap:
                outcome.retrain, outcome.retrain_outcome = True, _retrain(config, paths, batch, "bootstrap")
                current = registry.champion(config)
                static_model = registry.load_model(current) if current else None
                outcome.champion_version = current.version if current else None
            echo(f"{batch}: accepted (bootstrap){' -> first champion' if outcome.retrain else ''}")
            continue
        _score(config, paths, batch, outcome, static_model)
        _monitor(config, paths, batch, outcome)
        echo(_line(outcome))
    report = {
        "dataset": config.dataset.name,
        "bootstrap_batches": bootstrap,
        "batches": [asdict(o) for o in outcomes],
        "summary": _summary(outcomes),
    }
    return report


def _prepare_home(source: Paths, work_home: Path) -> Paths:
    paths = Paths(work_home.resolve())
    paths.home.mkdir(parents=True, exist_ok=True)
    if paths.landing.is_symlink() or paths.landing.exists():
        if paths.landing.resolve() != source.landing.resolve():
            raise ValueError(
                f"{paths.landing} exists and is not the source landing zone: use an empty --home"
            )
    else:
        paths.landing.symlink_to(source.landing.resolve(), target_is_directory=True)
    if paths.lake.exists() and any(paths.lake.iterdir()):
        raise ValueError(f"{paths.home} already holds a lake: use an empty --home for each replay")
    return paths


def _ingest(config: LooplineConfig, paths: Paths, batch: str) -> bool:
    from ml.ingest import BatchRejected

    try:
        steps.ingest_batch(config, paths, batch, quarantine_moves_source=False)
    except (BatchRejected, QualityGateFailed):
        return False
    return True


def _retrain(config: LooplineConfig, paths: Paths, end_batch: str, trigger: str) -> str:
    window = steps.plan_training(config, paths, end_batch, None)
    try:
        quality = steps.validate_window(config, paths, window["batches"])
    except QualityGateFailed as exc:
        return f"training window failed the quality gate: {str(exc).splitlines()[0]}"
    trained = steps.train_challenger(
        config,
        paths,
        window["batches"],
        {},
        quality,
        f"replay {end_batch} [{trigger}]",
        {"loopline.trigger": trigger},
    )
    evaluation = steps.evaluate_challenger(config, paths, window["batches"], trained["version"])
    promotion = steps.promote_challenger(
        config, paths, trained["version"], evaluation, True, f"replay:{trigger}"
    )
    verdict = "promoted" if promotion["promoted"] else "rejected"
    return f"v{trained['version']} {verdict}: {promotion['reason']}"


def _score(
    config: LooplineConfig, paths: Paths, batch: str, outcome: BatchOutcome, static_model: Any
) -> None:
    frame = steps.lake_of(paths).read(config.dataset.name, [batch])
    labelled = frame[config.dataset.target].notna().to_numpy()
    scored = steps.score_batch(config, paths, batch)
    outcome.champion_version = scored.get("champion_version")
    outcome.champion_roc_auc = scored.get("roc_auc")
    if static_model is not None and labelled.any():
        y = frame.loc[labelled, config.dataset.target].astype(int).to_numpy()
        scores = registry.predict(static_model, frame.loc[labelled])
        outcome.static_roc_auc = classification_metrics(y, scores, config.gate.decision_threshold)["roc_auc"]


def _monitor(config: LooplineConfig, paths: Paths, batch: str, outcome: BatchOutcome) -> None:
    result = steps.monitor_batch(config, paths, batch)
    outcome.verdict, outcome.severity = result["verdict"], result.get("severity")
    outcome.top_features = [f["column"] for f in result.get("top_features", [])]
    if result["verdict"] == "drift":
        outcome.alert = True
        action = "retrain requested" if result["retrain"] else result["reason"]
        document = alerts.build_alert(
            dataset=config.dataset.name,
            batch=batch,
            severity=result["severity"],
            top_features=result["top_features"],
            score_psi=result.get("score_psi"),
            action=action,
            report=result["report_html"],
            runbook=config.alerts.runbook_url,
            model=config.model_name,
            champion_version=result.get("champion_version"),
        )
        grouped = alerts.is_repeat(paths.alert_log, document, result.get("recent_batches", []))
        alerts.append_to_log(paths.alert_log, {**document, "grouped": grouped})
    if result.get("retrain"):
        policy.record_request(paths, batch, result["reason"], outcome.top_features)
        outcome.retrain = True
        outcome.retrain_outcome = _retrain(config, paths, batch, "drift")
    else:
        outcome.note = result.get("reason")


def _line(outcome: BatchOutcome) -> str:
    auc = f"{outcome.champion_roc_auc:.3f}" if outcome.champion_roc_auc is not None else "n/a"
    static = f"{outcome.static_roc_auc:.3f}" if outcome.static_roc_auc is not None else "n/a"
    line = f"{outcome.batch}: v{outcome.champion_version} AUC {auc} (static {static}); {outcome.verdict}"
    if outcome.alert:
        line += f" {outcome.severity} [{', '.join(outcome.top_features[:3])}]"
    if outcome.retrain:
        line += f" -> retrain: {outcome.retrain_outcome}"
    return line


def _summary(outcomes: list[BatchOutcome]) -> dict[str, Any]:
    scored = [o for o in outcomes if o.champion_roc_auc is not None and o.static_roc_auc is not None]
    return {
        "batches": len(outcomes),
        "quarantined": sum(not o.accepted for o in outcomes),
        "alerts": sum(o.alert for o in outcomes),
        "retrains": sum(o.retrain for o in outcomes),
        "promotions": sum(bool(o.retrain_outcome and " promoted" in o.retrain_outcome) for o in outcomes),
        "mean_roc_auc_loop": float(np.mean([o.champion_roc_auc for o in scored])) if scored else None,
        "mean_roc_auc_static": float(np.mean([o.static_roc_auc for o in scored])) if scored else None,
    }


def write_outputs(report: dict[str, Any], json_out: Path, plot_out: Path | None) -> None:
    """The JSON report, and optionally the plot of both AUC curves with alerts and promotions marked."""
    atomic_write_json(json_out, report)
    if plot_out is not None:
        atomic_write_bytes(plot_out, plot_replay(report))


def plot_replay(report: dict[str, Any]) -> bytes:
    """Champion AUC vs static-model AUC per batch; alerts as triangles, promotions as vertical lines."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [b for b in report["batches"] if b["champion_roc_auc"] is not None]
    labels = [b["batch"] for b in rows]
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 4), dpi=100)
    axis.plot(labels, [b["champion_roc_auc"] for b in rows], marker="o", label="loop (current champion)")
    axis.plot(
        labels, [b["static_roc_auc"] for b in rows], marker="s", linestyle="--", label="static first model"
    )
    for index, row in enumerate(rows):
        if row["alert"]:
            axis.scatter([index], [row["champion_roc_auc"]], marker="^", s=120, color="red", zorder=3)
        if row["retrain_outcome"] and " promoted" in row["retrain_outcome"]:
            axis.axvline(index, color="green", alpha=0.4)
    axis.set(
        ylabel="ROC AUC on the batch", title=f"Replay of {report['dataset']}: red = alert, green = promotion"
    )
    axis.tick_params(axis="x", rotation=45)
    axis.legend(loc="lower left")
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def dump(report: dict[str, Any]) -> str:
    """The report's summary as one JSON line."""
    return json.dumps(report["summary"])
