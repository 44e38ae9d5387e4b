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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml import alerts, policy, registry, steps
from ml.config import LakeConfig, LooplineConfig, Paths
from ml.evaluate import classification_metrics
from ml.ingest import BatchRejected, discover_batches
from ml.lake import atomic_write_bytes, atomic_write_json
from ml.quality import QualityGateFailed

PHASES = ("ingest", "score", "monitor", "retrain")
"""The timed phases of a batch, in order; ``BatchOutcome.seconds`` has one entry per phase that ran."""


@dataclass
class BatchOutcome:
    """What happened to one batch in the replay."""

    batch: str
    accepted: bool = False
    rows: int | None = None
    verdict: str | None = None
    severity: str | None = None
    drift_share: float | None = None
    score_psi: float | None = None
    top_features: list[str] = field(default_factory=list)
    alert: bool = False
    alert_grouped: bool = False
    report: str | None = None
    retrain: bool = False
    retrain_outcome: str | None = None
    champion_version: str | None = None
    champion_roc_auc: float | None = None
    static_roc_auc: float | None = None
    note: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``seconds[phase]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + elapsed, 3)


def replay(
    config: LooplineConfig,
    source_paths: Paths,
    work_home: Path,
    bootstrap: int = 3,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the backtest in ``work_home`` over every batch found in ``source_paths``' landing zone.

    Works for time batching (one file per batch, or one file cut by its time column) and for ``batching.by:
    rows`` (one file cut into blocks of ``rows_per_batch`` rows, no time column needed).
    """
    started = time.perf_counter()
    paths = _prepare_home(source_paths, work_home)
    # The replay's own lake, under its home: never the configured (maybe shared, production) lake.
    config = config.model_copy(update={"lake": LakeConfig(uri=str(paths.lake))})
    batches = discover_batches(config, paths)
    if len(batches) <= bootstrap:
        raise ValueError(f"found {len(batches)} batches; the replay needs more than bootstrap={bootstrap}")
    os.environ["LOOPLINE_HOME"] = str(paths.home)
    registry.connect(config, paths)
    outcomes: list[BatchOutcome] = []
    static_model = None
    for batch in batches:
        outcome = BatchOutcome(batch)
        outcomes.append(outcome)
        with outcome.timed("ingest"):
            _ingest(config, paths, outcome)
        if not outcome.accepted:
            echo(f"{batch}: {outcome.note}")
            continue
        accepted = [o for o in outcomes if o.accepted]
        if static_model is None:
            if len(accepted) == bootstrap:
                with outcome.timed("retrain"):
                    outcome.retrain = True
                    outcome.retrain_outcome = _retrain(config, paths, batch, "bootstrap")
                    current = registry.champion(config)
                    static_model = registry.load_model(current) if current else None
                outcome.champion_version = current.version if current else None
            echo(f"{batch}: accepted (bootstrap){' -> first champion' if outcome.retrain else ''}")
            continue
        with outcome.timed("score"):
            _score(config, paths, batch, outcome, static_model)
        with outcome.timed("monitor"):
            result = _monitor(config, paths, batch, outcome)
        if result.get("retrain"):
            with outcome.timed("retrain"):
                policy.record_request(paths, batch, result["reason"], outcome.top_features)
                outcome.retrain = True
                outcome.retrain_outcome = _retrain(config, paths, batch, "drift")
        echo(_line(outcome))
    return {
        "dataset": config.dataset.name,
        "batching": config.batching.by,
        "bootstrap_batches": bootstrap,
        "batches": [asdict(o) for o in outcomes],
        "summary": _summary(outcomes),
        "timing": _timing(outcomes, time.perf_counter() - started),
    }


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


def _ingest(config: LooplineConfig, paths: Paths, outcome: BatchOutcome) -> None:
    """Ingest the batch into the replay's lake; a refused batch gets the reason in ``note``."""
    try:
        ingested = steps.ingest_batch(config, paths, outcome.batch, quarantine_moves_source=False)
    except BatchRejected as exc:
        outcome.note = "quarantined: " + "; ".join(exc.problems)
    except QualityGateFailed as exc:
        failed = ", ".join(
            f"{f.expectation}" + (f" on {f.column}" if f.column else "") for f in exc.result.critical
        )
        outcome.note = f"quarantined by the quality gate: {failed}"
    else:
        outcome.accepted, outcome.rows = True, ingested["rows"]


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
    frame = steps.lake_of(paths, config).read(config.dataset.name, [batch])
    labelled = frame[config.dataset.target].notna().to_numpy()
    scored = steps.score_batch(config, paths, batch)
    outcome.champion_version = scored.get("champion_version")
    outcome.champion_roc_auc = scored.get("roc_auc")
    if static_model is not None and labelled.any():
        y = frame.loc[labelled, config.dataset.target].astype(int).to_numpy()
        scores = registry.predict(static_model, frame.loc[labelled])
        outcome.static_roc_auc = classification_metrics(y, scores, config.gate.decision_threshold)["roc_auc"]


def _monitor(config: LooplineConfig, paths: Paths, batch: str, outcome: BatchOutcome) -> dict[str, Any]:
    """Drift of the batch, and its alert in the replay's own alert log (never sent anywhere)."""
    result = steps.monitor_batch(config, paths, batch)
    outcome.verdict, outcome.severity = result["verdict"], result.get("severity")
    outcome.drift_share, outcome.score_psi = result.get("drift_share"), result.get("score_psi")
    outcome.report = result.get("report_html")
    outcome.top_features = [f["column"] for f in result.get("top_features", [])]
    outcome.note = result.get("reason")
    alert = alerts.for_result(
        config, paths.alert_log, result, "retrain requested (the replay retrains at once)"
    )
    if alert is not None:
        document, outcome.alert_grouped = alert
        outcome.alert = True
        alerts.append_to_log(paths.alert_log, {**document, "grouped": outcome.alert_grouped})
    return result


def _line(outcome: BatchOutcome) -> str:
    auc = f"{outcome.champion_roc_auc:.3f}" if outcome.champion_roc_auc is not None else "n/a"
    static = f"{outcome.static_roc_auc:.3f}" if outcome.static_roc_auc is not None else "n/a"
    line = f"{outcome.batch}: v{outcome.champion_version} AUC {auc} (static {static}); {outcome.verdict}"
    if outcome.alert:
        line += f" {outcome.severity} [{', '.join(outcome.top_features[:3])}]"
        line += " (alert grouped)" if outcome.alert_grouped else ""
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


def _timing(outcomes: list[BatchOutcome], wall: float) -> dict[str, Any]:
    """Total seconds per phase over all batches, the replay's wall time and its row throughput."""
    rows = sum(o.rows or 0 for o in outcomes)
    return {
        "wall_seconds": round(wall, 3),
        "phase_seconds": {p: round(sum(o.seconds.get(p, 0.0) for o in outcomes), 3) for p in PHASES},
        "rows_accepted": rows,
        "rows_per_second": round(rows / wall, 1) if wall > 0 else None,
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
    """The report's summary and wall time as one JSON line."""
    return json.dumps({**report["summary"], "wall_seconds": report["timing"]["wall_seconds"]})
