"""Live traffic as frames: the captured requests of a window, their scores and (once known) their labels.

``live_window`` returns the frame the monitor compares with the champion's reference profile
(``ml.drift.compare(profile, frame, frame["score"].to_numpy(), window_name, config.drift)``) and, for the
rows whose label has arrived, what ``ml.evaluate.classification_metrics`` takes (``frame["label"]``,
``frame["score"]``). Windows are by event time (the record's time column when the client sent it, else the
time of the request), half-open: ``start <= event_time < end``. Every query uses bound parameters.

``monitor_live_window`` is what loopline_monitor runs for live traffic: the drift of the captured requests
and their served scores against the champion's reference profile (``ml.drift.compare``, the lake batches'
thresholds), the realised AUC and calibration once labels have joined, an HTML and JSON report under
``$LOOPLINE_HOME/reports/drift/<dataset>/live/`` and a run in ``<experiment>/monitoring``. A window without
captured requests gives the verdict ``no_traffic`` and touches nothing. ``ml.alerts.for_result`` turns a
monitor result (lake batch or live window) into the alert the notifier delivers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, inspect, select

from ml.config import LooplineConfig, Paths
from ml.serve.settings import default_store_url, settings_for
from ml.serve.store import Label, Prediction, engine_for, migrate, utc


def as_utc(moment: datetime | str | pd.Timestamp) -> datetime:
    """A window bound as an aware UTC datetime (naive values are UTC)."""
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def captured(
    engine: Engine,
    dataset: str,
    start: datetime,
    end: datetime,
    *,
    features: bool = True,
    labels: bool = True,
) -> pd.DataFrame:
    """Captured predictions of ``dataset`` with ``start <= event_time < end``, oldest first (raw columns)."""
    columns: list[Any] = [
        Prediction.request_id,
        Prediction.record_index,
        Prediction.entity_id,
        Prediction.event_time,
        Prediction.requested_at,
        Prediction.score,
        Prediction.decision,
        Prediction.model_version,
        Prediction.latency_ms,
    ]
    if features:
        columns.append(Prediction.features)
    query = select(*columns)
    if labels:
        query = query.add_columns(Label.label, Label.label_time).outerjoin(
            Label, and_(Label.dataset == Prediction.dataset, Label.entity_id == Prediction.entity_id)
        )
    query = query.where(
        Prediction.dataset == dataset,
        Prediction.event_time >= as_utc(start),
        Prediction.event_time < as_utc(end),
    ).order_by(Prediction.event_time, Prediction.id)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    frame = pd.DataFrame([dict(row) for row in rows], columns=[c.key for c in query.selected_columns])
    for column in ("event_time", "requested_at", "label_time"):
        if column in frame:
            frame[column] = pd.to_datetime([utc(v) for v in frame[column]], utc=True)
    if "label" in frame:
        frame["label"] = pd.array(
            [None if v is None or v != v else int(v) for v in frame["label"]], dtype="Int64"
        )
    frame["score"] = frame["score"].astype("float64")
    frame["decision"] = frame["decision"].astype(bool)
    return frame


def live_window(
    config: LooplineConfig,
    paths: Paths,
    store_url: str | None,
    start: datetime | str,
    end: datetime | str,
    *,
    with_labels: bool = True,
) -> pd.DataFrame:
    """Captured requests of the window as a frame of the dataset's columns plus score, decision and labels.

    Columns: the id column (entity id), the time column (event time) when configured, every feature the
    requests carried (numerics float64, categoricals text, missing as NaN/None), ``score``, ``decision``,
    ``model_version``, ``request_id``, ``requested_at``, ``latency_ms`` and, with labels, ``label`` (Int64,
    <NA> until the label arrives) and ``label_time``.
    """
    url = store_url or default_store_url(paths)
    engine = engine_for(url)
    try:
        if not inspect(engine).has_table(Prediction.__tablename__):
            migrate(url)  # an empty window (not an error) before the service has captured anything
        raw = captured(engine, config.dataset.name, as_utc(start), as_utc(end), labels=with_labels)
    finally:
        engine.dispose()
    features = (
        pd.DataFrame.from_records(list(raw["features"]), index=raw.index) if len(raw) else pd.DataFrame()
    )
    dataset = config.dataset
    numeric = set(dataset.numeric_features) if isinstance(dataset.numeric_features, list) else set()
    categorical = (
        set(dataset.categorical_features) if isinstance(dataset.categorical_features, list) else set()
    )
    for column in features.columns:
        if column in numeric or (column not in categorical and _looks_numeric(features[column])):
            features[column] = pd.to_numeric(features[column], errors="coerce").astype("float64")
        else:
            values = features[column].astype("object")
            features[column] = values.where(values.notna(), None).map(lambda v: None if v is None else str(v))
    out = pd.DataFrame(index=raw.index)
    out[dataset.id_column] = raw["entity_id"]
    if dataset.time_column:
        out[dataset.time_column] = raw["event_time"]
    out = pd.concat([out, features], axis=1)
    for column in ("score", "decision", "model_version", "request_id", "requested_at", "latency_ms"):
        out[column] = raw[column]
    if with_labels:
        out["label"] = raw["label"]
        out["label_time"] = raw["label_time"]
    return out.reset_index(drop=True)


def _looks_numeric(values: pd.Series) -> bool:
    present = values.dropna()
    return bool(len(present)) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


def realised_metrics(frame: pd.DataFrame, threshold: float, bins: int = 10) -> dict[str, float]:
    """Performance on the labelled rows of a live window: the gate's metrics plus calibration.

    ``calibration_gap`` is the mean score minus the observed positive rate; ``ece`` the expected calibration
    error over ``bins`` equal-width score bins. Empty (``labelled_rows`` 0) until labels arrive.
    """
    from ml.evaluate import classification_metrics

    labelled = frame[frame["label"].notna()] if "label" in frame else frame.iloc[0:0]
    out: dict[str, float] = {"labelled_rows": float(len(labelled)), "rows": float(len(frame))}
    if labelled.empty:
        return out
    y = labelled["label"].astype(int).to_numpy()
    scores = labelled["score"].to_numpy(dtype="float64")
    out |= classification_metrics(y, scores, threshold)
    out["mean_score"] = float(scores.mean())
    out["calibration_gap"] = float(scores.mean() - y.mean())
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(scores[mask].mean() - y[mask].mean())
    out["ece"] = float(ece)
    return out


LIVE_PREFIX = "live-"


def live_windows(
    config: LooplineConfig, batches: list[str], until: datetime | str | None = None
) -> list[tuple[str, datetime, datetime]]:
    """The live windows to monitor: (name, start, end) per batch (``serving.monitoring.window: batch``) or
    the last ``window_days`` days up to ``until`` (``days``, also when batches have no time window)."""
    from ml.batches import window_of

    settings = config.serving.monitoring
    if settings.window == "batch" and config.batching.by != "rows":
        return [
            (f"{LIVE_PREFIX}{batch}", as_utc(start), as_utc(end))
            for batch in batches
            for start, end in [window_of(batch, config.batching)]
        ]
    end = as_utc(until if until is not None else pd.Timestamp.now(tz="UTC"))
    start = end - pd.Timedelta(days=settings.window_days).to_pytimedelta()
    return [(f"{LIVE_PREFIX}{start:%Y%m%d}-{end:%Y%m%d}", start, end)]


def monitor_live_window(
    config: LooplineConfig,
    paths: Paths,
    name: str,
    start: datetime | str,
    end: datetime | str,
    *,
    store_url: str | None = None,
    recent_windows: list[str] | None = None,
) -> dict[str, Any]:
    """Drift and realised performance of the live traffic captured in ``[start, end)``.

    The result has the keys of ``ml.steps.monitor_batch``'s (``batch`` is the window's name) plus ``source``
    (``live``), ``window_start``/``window_end``, ``served_versions`` and ``scores`` (``served``: the scores
    the service answered, all by the champion; ``rescored``: other versions served part of the window, so the
    champion scored the captured features again). Live traffic alerts but never requests a retrain.
    """
    from ml import drift, performance, registry
    from ml.steps import record_monitoring

    start_at, end_at = as_utc(start), as_utc(end)
    url = store_url or settings_for(config).store_url or default_store_url(paths)
    base: dict[str, Any] = {
        "batch": name,
        "source": "live",
        "window_start": start_at.isoformat(),
        "window_end": end_at.isoformat(),
        "retrain": False,
        "recent_batches": list(recent_windows or []),
    }
    frame = live_window(config, paths, url, start_at, end_at)
    if frame.empty:
        reason = f"no live traffic in window [{start_at:%Y-%m-%d %H:%M}, {end_at:%Y-%m-%d %H:%M}) UTC"
        return {**base, "verdict": "no_traffic", "rows": 0, "reason": reason}
    registry.connect(config, paths)
    current = registry.champion(config)
    if current is None:
        reason = "no champion yet: nothing to compare live traffic against"
        return {**base, "verdict": "no_champion", "rows": len(frame), "reason": reason}
    served = sorted({str(v) for v in frame["model_version"]})
    if served == [current.version]:
        scores, how = frame["score"].to_numpy(dtype="float64"), "served"
    else:
        scores, how = registry.predict(registry.load_model(current), frame), "rescored"
    profile = registry.load_profile(current)
    result = drift.compare(profile, frame, scores, name, config.drift)
    latest = frame[frame["label"].notna()]
    latest = latest.drop_duplicates(config.dataset.id_column, keep="last")
    realised = (
        performance.realised_performance(latest["label"].astype(int).to_numpy(), latest["score"].to_numpy())
        if len(latest)
        else None
    )
    result = drift.with_performance(result, realised, profile.get("performance"), config.drift)
    reference_auc = (profile.get("performance") or {}).get("roc_auc")
    reason = (
        f"live traffic {result.verdict}: alert only (retraining follows the lake batches)"
        if result.verdict == "drift"
        else f"live traffic {result.verdict}"
    )
    recorded = record_monitoring(
        config,
        paths,
        result,
        realised,
        reference_auc,
        current.version,
        report_dir=paths.reports / "drift" / config.dataset.name / "live",
        context={
            "source": "live traffic captured by loopline serve",
            "window": f"[{start_at.isoformat()}, {end_at.isoformat()})",
            "served_versions": ", ".join(served),
            "scores": how,
            "policy": reason,
            "labelled_rows": len(latest),
        },
        metrics={"labelled_rows": float(len(latest))},
        tags={"loopline.source": "live"},
    )
    return {**base, **recorded, "served_versions": served, "scores": how, "reason": reason}


def monitor_live(
    config: LooplineConfig,
    paths: Paths,
    batches: list[str],
    until: datetime | str | None = None,
    *,
    store_url: str | None = None,
) -> list[dict[str, Any]]:
    """``monitor_live_window`` for each live window of ``batches`` (what loopline_monitor's task runs).

    Each window's ``recent_batches`` (for grouping repeated alerts) are the live windows of the
    ``drift.cooldown_batches`` lake batches before it.
    """
    from ml.lake import Lake

    order = Lake.for_config(config, paths).batches(config.dataset.name)
    results = []
    for name, start, end in live_windows(config, batches, until):
        batch = name.removeprefix(LIVE_PREFIX)
        earlier = (
            order[max(0, order.index(batch) - config.drift.cooldown_batches) : order.index(batch)]
            if batch in order
            else []
        )
        results.append(
            monitor_live_window(
                config,
                paths,
                name,
                start,
                end,
                store_url=store_url,
                recent_windows=[f"{LIVE_PREFIX}{b}" for b in earlier],
            )
        )
    return results
