"""The loop's steps, one function per DAG task, each an idempotent transaction over the lake and MLflow.

DAG tasks call these with the config, the paths and what Airflow knows (the batch, params, run ids); the
replay and the CLI call the same functions. Each returns a small JSON-ready dict (the task's XCom). The
data-heavy work (the window's gate, training and its profile, drift, scoring) goes through the configured
engine (``ml.engines.engine_for``: ``local`` or ``spark``); the steps keep the transaction around it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml import quality
from ml.config import LooplineConfig, Paths
from ml.engines import engine_for
from ml.ingest import BatchRejected, landing_path, read_source, readable_rows
from ml.lake import Lake, atomic_write_json

log = logging.getLogger(__name__)


def code_version() -> str:
    """The git commit of the Loopline checkout (``+dirty`` with local changes), else the package version."""
    import subprocess
    from importlib.metadata import version
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{commit}{'+dirty' if dirty else ''}" if commit else f"loopline {version('loopline')}"


def lake_of(paths: Paths, config: LooplineConfig | None = None) -> Lake:
    """The lake of ``config`` (``lake.uri``), else $LOOPLINE_LAKE_URI's, else the folder under the home."""
    return Lake.for_config(config, paths)


def predictions_table(config: LooplineConfig) -> str:
    return f"{config.dataset.name}__predictions"


def ingest_batch(
    config: LooplineConfig, paths: Paths, batch: str, quarantine_moves_source: bool = True
) -> dict[str, Any]:
    """Landing file -> schema -> dedup -> quality gate -> one lake partition (replaced on re-run).

    A rejected batch is quarantined with the reason and the task fails; the lake is untouched. A batch the
    schema check refuses is still validated with the dataset's suite on what could be read, and the quarantine
    holds that result beside the schema error.
    """
    lake = lake_of(paths, config)
    table = config.dataset.name
    source = landing_path(config, paths, batch)
    quarantine_dir = paths.quarantine / table / batch
    if not source.is_file() and quarantine_dir.is_dir():
        raise FileNotFoundError(
            f"{source}: batch {batch} is in quarantine at {quarantine_dir} "
            f"(fix it and run `loopline quarantine release {batch}`)"
        )
    whole_file = source.stem == batch
    move = whole_file and quarantine_moves_source
    others = [b for b in lake.batches(table) if b != batch]
    engine = engine_for(config, paths)
    try:
        clean = engine.ingest(batch, source, others)
    except BatchRejected as exc:
        rejected = _naming_batches_of_known_ids(exc, lake, table, others, config.dataset.id_column)
        validation, verdict, failures = _validate_refused(config, paths, batch, source, whole_file)
        if validation is not None:
            validation.quarantined_to = str(quarantine_dir)
        # The first line is what `loopline quarantine list` shows: both checks' verdicts.
        summary = f"schema check failed ({len(rejected.problems)} problem(s)); {verdict}"
        if failures:
            failures.insert(0, "data-quality suite on the rows that could be read (validation_result.json):")
        reason = "\n".join([summary, str(rejected), *failures])
        quality.quarantine(quarantine_dir, source, reason, validation, None, move_source=move)
        if rejected is exc:
            raise
        raise rejected from None
    result = quality.validate(
        clean.frame, config.suite_path(), data_docs_dir(paths), run_name=f"ingest-{batch}"
    )
    if not result.passed:
        result.quarantined_to = str(quarantine_dir)
        # The cleaned rows go with the result when local; a Spark batch keeps its landed file instead.
        rows = clean.frame if isinstance(clean.frame, pd.DataFrame) else None
        quality.quarantine(quarantine_dir, source, "data-quality gate failed", result, rows, move)
        raise quality.QualityGateFailed(f"{source} (batch {batch})", result)
    for warning in clean.warnings:
        log.warning("%s: %s", source, warning)
    partition = engine.write_batch(batch, clean, source)
    return {
        "batch": batch,
        "rows": partition.rows,
        "rows_read": clean.rows_read,
        "duplicates_dropped": clean.duplicates_dropped,
        "sha256": partition.sha256,
        "warnings": clean.warnings + [w.describe() for w in result.warnings],
    }


def _naming_batches_of_known_ids(
    rejected: BatchRejected, lake: Lake, table: str, others: list[str], id_column: str
) -> BatchRejected:
    """``rejected`` with one more problem naming the accepted batch that holds each of its ``ids_elsewhere``.

    Only a refused batch pays for this lookup (the id columns of the other batches, read until all are found).
    """
    wanted = list(dict.fromkeys(rejected.ids_elsewhere))
    holders: dict[object, str] = {}
    for other in others:
        if len(holders) == len(wanted):
            break
        for found in lake.ids_in(table, [other], id_column) & (set(wanted) - holders.keys()):
            holders[found] = other
    if not holders:
        return rejected
    named = "; ".join(f"{value!r} is in batch {holders[value]}" for value in wanted if value in holders)
    return BatchRejected(
        rejected.source, [*rejected.problems, f"column {id_column}: {named}"], rejected.ids_elsewhere
    )


def _validate_refused(
    config: LooplineConfig, paths: Paths, batch: str, source: Path, whole_file: bool
) -> tuple[quality.GateResult | None, str, list[str]]:
    """The dataset's suite on what a batch refused by the schema check holds (``ingest.readable_rows``).

    Returns the result (None when the file cannot be read or validated), a one-line verdict, and one line per
    failed critical expectation (an expectation on a column the file lacks says "column missing").
    """
    dataset = config.dataset
    try:
        limit = dataset.max_batch_rows if whole_file else None
        frame = read_source(source, dataset.source.format, max_rows=limit)
        rows = readable_rows(config, frame, batch, whole_file)
        result = quality.validate(
            rows, config.suite_path(), data_docs_dir(paths), run_name=f"ingest-{batch}-refused"
        )
    except (BatchRejected, FileNotFoundError) as exc:
        why = exc.problems[0] if isinstance(exc, BatchRejected) else str(exc)
        return None, f"not validated with the data-quality suite: {why}", []
    # The schema error must reach the quarantine, whatever the suite makes of these rows.
    except Exception as exc:
        log.exception("%s: the data-quality suite could not validate the refused batch", source)
        return None, f"the data-quality suite could not run: {type(exc).__name__}: {exc}", []
    failures: list[str] = []
    for failure in result.critical:
        missing = failure.column is not None and failure.column not in rows.columns
        failures.append(f"  - {failure.describe()}{': column missing' if missing else ''}")
        log.warning("%s: the refused batch also fails %s", source, failures[-1].removeprefix("  - "))
    if result.passed:
        return result, "the data-quality suite passed on the rows that could be read", []
    verdict = f"{len(result.critical)} critical expectation(s) of the data-quality suite failed"
    return result, f"{verdict} on the rows that could be read", failures


def plan_training(
    config: LooplineConfig, paths: Paths, end_batch: str | None, window_batches: int | None
) -> dict[str, Any]:
    """The training window: the ``window_batches`` accepted batches ending at ``end_batch`` (default newest)."""
    available = lake_of(paths, config).batches(config.dataset.name)
    if not available:
        raise ValueError(f"the lake has no accepted batches of {config.dataset.name}: ingest some first")
    if end_batch:
        if end_batch not in available:
            raise ValueError(f"batch {end_batch} is not in the lake (accepted: {', '.join(available)})")
        available = available[: available.index(end_batch) + 1]
    size = window_batches or config.training.window_batches
    return {"batches": available[-size:], "end_batch": available[-1]}


def validate_window(config: LooplineConfig, paths: Paths, batches: list[str]) -> dict[str, Any]:
    """The data-quality gate on the whole training window; raises QualityGateFailed on a critical failure."""
    name = f"window-{batches[0]}..{batches[-1]}"
    result = engine_for(config, paths).validate(batches, name)
    result_file = paths.reports / "quality" / config.dataset.name / f"{name}.json"
    atomic_write_json(result_file, result.raw)
    if not result.passed:
        raise quality.QualityGateFailed(f"training window {batches[0]}..{batches[-1]}", result)
    return {**result.summary(), "result_file": str(result_file)}


def data_docs_dir(paths: Paths) -> Path:
    """Where the Great Expectations Data Docs site lives (open its index.html)."""
    return paths.reports / "data_docs"


def train_challenger(
    config: LooplineConfig,
    paths: Paths,
    batches: list[str],
    overrides: dict[str, Any],
    quality_summary: dict[str, Any] | None,
    run_name: str,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Fit on the window (minus the holdout), save the reference profile, log and register a version."""
    from ml import registry, train

    params = train.hyperparameters(config.training, overrides)
    lake = lake_of(paths, config)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopline-lineage") as pool:
        # What logging needs and training does not (MLflow's first connection, the partitions' content
        # hashes, the code version) is prepared while the model trains (XGBoost and Spark leave the GIL).
        prepared = pool.submit(registry.prepare_training_log, config, paths)
        hashed = pool.submit(lambda: [lake.partition(config.dataset.name, b) for b in batches])
        commit = pool.submit(code_version)
        trained = engine_for(config, paths).train(batches, params)
        experiment_id, partitions = prepared.result(), hashed.result()
    ref = registry.log_training_run(
        config,
        paths,
        booster=trained.booster,
        train=trained.example,
        train_rows=trained.train_rows,
        partitions=partitions,
        params=params,
        train_metrics=trained.train_metrics,
        profile=trained.profile,
        quality=quality_summary,
        importance=trained.importance,
        run_name=run_name,
        tags={
            **tags,
            **trained.lineage,
            "loopline.window": f"{batches[0]}..{batches[-1]}",
            "loopline.code_version": commit.result(),
        },
    )
    return {
        "version": ref.version,
        "run_id": ref.run_id,
        "experiment_id": experiment_id,
        "train_rows": trained.train_rows,
        "holdout_rows": len(trained.holdout),
    }


def evaluate_challenger(
    config: LooplineConfig, paths: Paths, batches: list[str], challenger_version: str
) -> dict[str, Any]:
    """Score challenger and champion on the same holdout and apply the promotion gate (tags the version)."""
    from ml import registry, train
    from ml.evaluate import decide

    registry.connect(config, paths)
    newest = lake_of(paths, config).read(config.dataset.name, batches[-1:])
    holdout = train.split_holdout(newest.iloc[0:0], newest, config).holdout
    y = holdout[config.dataset.target].astype(int).to_numpy()
    challenger = _version_ref(config, challenger_version)
    challenger_scores = train.predict(registry.load_booster(challenger), holdout)
    current = registry.champion(config)
    champion_scores = None
    if current is not None and current.version != challenger.version:
        champion_scores = train.predict(registry.load_booster(current), holdout)
    spec = _feature_spec(config, holdout)
    slices = {column: holdout[column].to_numpy(dtype=object) for column in spec.categorical}
    decision = decide(
        y, challenger_scores, champion_scores, config.gate, current.version if current else None, slices
    )
    registry.record_evaluation(
        config,
        challenger,
        decision,
        evaluation_plots(y, challenger_scores, champion_scores, config, challenger),
    )
    return {
        "promote": decision.promote,
        "reason": decision.reason,
        "champion_version": decision.champion_version,
        "challenger_roc_auc": decision.challenger["roc_auc"],
        "champion_roc_auc": decision.champion["roc_auc"] if decision.champion else None,
        "holdout_rows": len(holdout),
        "rules": [
            {"name": r.name, "value": r.value, "threshold": r.threshold, "passed": r.passed}
            for r in decision.rules
        ],
    }


def _feature_spec(config: LooplineConfig, frame: pd.DataFrame) -> Any:
    from ml.features import resolve_features

    return resolve_features(config, frame.columns, frame.dtypes)


def evaluation_plots(
    y: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    config: LooplineConfig,
    challenger: Any,
) -> dict[str, bytes]:
    """ROC, PR, calibration, confusion matrices and the challenger's feature importance, as PNG bytes."""
    from ml import plots, registry, train

    label = f"challenger v{challenger.version}"
    scores = {label: challenger_scores}
    if champion_scores is not None:
        scores["champion"] = champion_scores
    threshold = config.gate.decision_threshold
    found = {
        "roc_curve": plots.roc_curves(y, scores),
        "pr_curve": plots.pr_curves(y, scores),
        "calibration": plots.calibration(y, scores),
        "confusion_matrix_challenger": plots.confusion(y, challenger_scores, threshold, label),
    }
    if champion_scores is not None:
        found["confusion_matrix_champion"] = plots.confusion(y, champion_scores, threshold, "champion")
    booster = registry.load_model(challenger).unwrap_python_model().booster
    found["feature_importance"] = plots.importance(train.feature_importance(booster))
    return found


def _version_ref(config: LooplineConfig, version: str) -> Any:
    from ml import registry

    found = [v for v in registry.versions(config) if v["version"] == str(version)]
    if not found:
        raise ValueError(f"model {config.model_name} has no version {version}")
    return registry.VersionRef(config.model_name, str(version), found[0]["run_id"])


def promote_challenger(
    config: LooplineConfig,
    paths: Paths,
    challenger_version: str,
    evaluation: dict[str, Any],
    allowed: bool,
    actor: str,
) -> dict[str, Any]:
    """Move ``champion`` to a challenger that passed the gate, unless promotion is switched off."""
    from ml import registry

    registry.connect(config, paths)
    if not evaluation["promote"]:
        return {"promoted": False, "reason": evaluation["reason"]}
    challenger = _version_ref(config, challenger_version)
    if not allowed:
        reason = "passed the gate; not promoted because the run asked for promote=false"
        registry._client().set_model_version_tag(config.model_name, challenger.version, "promotion", reason)
        return {"promoted": False, "reason": reason}
    registry.promote(config, challenger, evaluation["champion_version"], evaluation["reason"], actor)
    return {"promoted": True, "reason": evaluation["reason"], "champion_version": challenger.version}


def record_monitoring(
    config: LooplineConfig,
    paths: Paths,
    result: Any,
    realised: dict[str, Any] | None,
    reference_auc: float | None,
    champion_version: str,
    *,
    report_dir: Path,
    context: dict[str, Any],
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write a monitored batch's (or live window's) drift report and log its run in ``<experiment>/monitoring``.

    Returns the result keys that lake batches and live windows share (``ml.steps.monitor_batch``'s and
    ``ml.serve.monitoring.monitor_live_window``'s), with the same metric and tag names for both.
    """
    from ml import registry, reports

    top = [
        {
            "column": f.column,
            "psi": round(f.psi, 4),
            "severity": f.severity,
            "p_value": f.p_value_adjusted,
            "new_categories": f.new_categories,
        }
        for f in result.top()
    ]
    json_path, html_path = reports.write_drift_report(
        report_dir,
        result,
        {
            "dataset": config.dataset.name,
            "model": config.model_name,
            "champion_version": champion_version,
            **context,
            "realised_roc_auc": (realised or {}).get("roc_auc"),
            "reference_roc_auc": reference_auc,
        },
    )
    logged = {"drift_share": result.drift_share, "rows": float(result.rows), **(metrics or {})}
    if (result.performance or {}).get("estimated_roc_auc") is not None:
        logged["estimated_roc_auc"] = float(result.performance["estimated_roc_auc"])
    for key in ("roc_auc", "ece", "calibration_in_the_large"):
        if realised and realised.get(key) is not None:
            logged[f"realised_{key}"] = float(realised[key])
    logged |= {f"psi/{registry.metric_safe(f.column)}": f.psi for f in result.features}
    run_id = registry.log_monitoring_run(
        config,
        paths,
        result.batch,
        logged,
        [json_path, html_path],
        {
            "loopline.batch": result.batch,
            "loopline.verdict": result.verdict,
            "loopline.severity": result.severity,
            "loopline.champion_version": champion_version,
            **(tags or {}),
        },
    )
    return {
        "batch": result.batch,
        "monitoring_run_id": run_id,
        "verdict": result.verdict,
        "drift_reason": result.reason,
        "rows": result.rows,
        "shares": result.shares,
        "performance": result.performance,
        "performance_drop": result.performance_drop,
        "realised_performance": realised,
        "reference_roc_auc": reference_auc,
        "severity": result.severity,
        "drift_share": result.drift_share,
        "score_psi": result.score_psi,
        "top_features": top,
        "champion_version": champion_version,
        "report_html": str(html_path),
        "report_json": str(json_path),
    }


def monitor_batch(config: LooplineConfig, paths: Paths, batch: str) -> dict[str, Any]:
    """Compare a new batch (and the champion's scores on it) with the champion's reference profile.

    The severity also counts a drop of the champion's AUC on the batch (``drift.with_performance``): realised
    from the batch's own target column, else estimated from its scores.
    """
    from ml import drift, policy, registry

    registry.connect(config, paths)
    current = registry.champion(config)
    if current is None:
        return {
            "batch": batch,
            "verdict": "no_champion",
            "retrain": False,
            "reason": "no champion yet: nothing to compare against (train the first model)",
        }
    profile = registry.load_profile(current)
    monitored = engine_for(config, paths).monitor(batch, registry.load_booster(current), profile)
    reference = profile.get("performance") or {}
    realised = monitored.realised
    result = drift.with_performance(monitored.drift, realised, reference, config.drift)
    reference_auc = reference.get("roc_auc")
    order = lake_of(paths, config).batches(config.dataset.name)
    decision = policy.decide_retrain(config, paths, result, order)
    recorded = record_monitoring(
        config,
        paths,
        result,
        realised,
        reference_auc,
        current.version,
        report_dir=paths.reports / "drift" / config.dataset.name,
        context={"policy": decision.reason},
    )
    return {
        **recorded,
        "retrain": decision.retrain,
        "reason": decision.reason,
        "recent_batches": order[
            max(0, order.index(batch) - config.drift.cooldown_batches) : order.index(batch)
        ]
        if batch in order
        else [],
    }


def score_batch(config: LooplineConfig, paths: Paths, batch: str) -> dict[str, Any]:
    """Score a batch with the champion and write its predictions partition (replaced on re-run)."""
    from ml import registry

    registry.connect(config, paths)
    current = registry.champion(config)
    if current is None:
        return {"batch": batch, "scored": False, "reason": "no champion yet"}
    return engine_for(config, paths).score(batch, registry.load_booster(current), current.version)


def suggest_expectations(
    config: LooplineConfig, paths: Paths, batches: list[str] | None = None
) -> dict[str, Any]:
    """A suggested GE suite profiled from accepted lake batches (default: the newest training window)."""
    lake = lake_of(paths, config)
    available = lake.batches(config.dataset.name)
    chosen = batches or available[-config.training.window_batches :]
    if not chosen:
        raise ValueError(f"the lake has no accepted batches of {config.dataset.name}: ingest some first")
    frame = lake.read(config.dataset.name, chosen)
    spec = _feature_spec(config, frame)
    dataset = config.dataset
    return quality.suggest_suite(
        frame,
        name=dataset.name,
        id_column=dataset.id_column,
        target=dataset.target,
        time_column=dataset.time_column,
        numeric=list(spec.numeric),
        categorical=list(spec.categorical),
        batch_rows=[lake.partition(dataset.name, b).rows for b in chosen],
        window_batches=config.training.window_batches,
    )
