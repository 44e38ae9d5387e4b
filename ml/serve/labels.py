"""Delayed labels: load outcomes (entity id, label, label time) and join them to captured predictions.

Sources: a CSV or Parquet file (``load_file``), a SQL table or query read for a window with bound parameters
only (``load_sql``), or a frame (``load_frame``). Each load is an idempotent upsert into ``loopline_labels``,
one row per (dataset, entity id) holding the latest label by label time; loading the same source twice changes
nothing. Every load reports what it found:

- ``invalid``: rows without an id, a label or a readable label time (skipped);
- ``duplicates``: repeated ids in the source (the latest label time wins; ``conflicting``: their labels differ);
- ``inserted`` / ``updated`` (a newer label replaced a stored one; ``changed``: its value differs) /
  ``unchanged`` (already stored) / ``stale`` (older than the stored one; ignored);
- ``late``: label time before the window being loaded (loaded all the same; the join picks it up);
- ``matched`` / ``unmatched``: ids with / without a captured prediction (unmatched labels are kept).

``join_report`` joins labels to the predictions of a window by entity id and counts labelled, missing
(no label yet) and duplicated (one entity scored several times) predictions, with the realised metrics on the
latest prediction of each labelled entity; ``save=True`` stores the report per (dataset, window), replacing
an earlier run's.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from ml.config import LooplineConfig, Paths
from ml.ingest import SqlSourceError, read_sql_window, sql_engine
from ml.serve.monitoring import as_utc, captured, realised_metrics
from ml.serve.settings import LabelsSettings, ServeSettings, default_store_url, settings_for
from ml.serve.store import FeedbackWindow, Label, Prediction, engine_for, migrate, now, redact

log = logging.getLogger(__name__)

_CHUNK = 500


class LabelSourceError(ValueError):
    """A label source that cannot be read; the message names the source, the column and the fix."""


def _columns(
    config: LooplineConfig, labels: LabelsSettings, available: list[str]
) -> tuple[str, str, str | None]:
    """(id, label, time) column names: settings, else the dataset's names, else entity_id/label."""
    id_column = labels.id_column or (
        config.dataset.id_column if config.dataset.id_column in available else "entity_id"
    )
    label_column = labels.label_column or (
        config.dataset.target if config.dataset.target in available else "label"
    )
    time_column = labels.time_column if labels.time_column in available else None
    return id_column, label_column, time_column


def read_file(path: Path, file_format: str | None = None) -> pd.DataFrame:
    """A label file as a frame (CSV or Parquet, by ``file_format`` or the file's suffix)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file")
    kind = file_format or path.suffix.lstrip(".").lower()
    if kind == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    if kind == "parquet":
        return pd.read_parquet(path)
    raise LabelSourceError(f"{path}: unknown label file format {kind!r} (csv or parquet)")


def load_file(
    config: LooplineConfig,
    paths: Paths,
    path: str | Path,
    *,
    store_url: str | None = None,
    file_format: str | None = None,
    window: tuple[datetime, datetime] | None = None,
    settings: ServeSettings | None = None,
) -> dict[str, Any]:
    """Load a CSV/Parquet label file into the store (``loopline labels load FILE``)."""
    settings = settings or settings_for(config)
    file = Path(path).expanduser().resolve()
    frame = read_file(file, file_format)
    url = store_url or settings.store_url or default_store_url(paths)
    return load_frame(config, url, frame, source=str(file), window=window, labels=settings.labels)


def load_sql(
    config: LooplineConfig,
    paths: Paths,
    source_url: str,
    start: datetime | str,
    end: datetime | str,
    *,
    table: str | None = None,
    query: str | None = None,
    store_url: str | None = None,
    settings: ServeSettings | None = None,
) -> dict[str, Any]:
    """Load the labels with ``start <= label time < end`` from a SQL table or query.

    ``table`` is reflected (its columns are checked, never formatted into SQL); ``query`` is SQL text whose
    only inputs are the bound parameters ``:start`` and ``:end``.
    """
    settings = settings or settings_for(config)
    labels = settings.labels
    start_at, end_at = as_utc(start), as_utc(end)
    source = sql_engine(source_url)
    try:
        frame = read_sql_window(
            source, start_at, end_at, table=table, query=query, time_column=labels.time_column
        )
    except SqlSourceError as exc:
        raise LabelSourceError(f"label source {redact(source_url)}: {exc}") from None
    finally:
        source.dispose()
    origin = f"{redact(source_url)} {table or 'query'} [{start_at.isoformat()}, {end_at.isoformat()})"
    url = store_url or settings.store_url or default_store_url(paths)
    return load_frame(config, url, frame, source=origin, window=(start_at, end_at), labels=labels)


def load_frame(
    config: LooplineConfig,
    store_url: str,
    frame: pd.DataFrame,
    *,
    source: str,
    window: tuple[datetime, datetime] | None = None,
    labels: LabelsSettings | None = None,
) -> dict[str, Any]:
    """Upsert labels from a frame into the store; returns the counts described in the module docstring."""
    labels = labels or LabelsSettings()
    id_column, label_column, time_column = _columns(config, labels, list(frame.columns))
    missing = [c for c in (id_column, label_column) if c not in frame.columns]
    if missing:
        raise LabelSourceError(
            f"{source}: no column(s) {', '.join(missing)} (columns: {', '.join(map(str, frame.columns))}); "
            "set serving.labels.id_column / label_column"
        )
    loaded_at = now()
    ids = [None if _missing(v) else str(v).strip()[:256] or None for v in frame[id_column]]
    parsed = _binary(frame[label_column], label_column, config.dataset.positive_class, source)
    if time_column is not None:
        times = pd.to_datetime(frame[time_column], utc=True, errors="coerce", format="mixed")
    else:
        times = pd.Series(pd.Timestamp(loaded_at), index=frame.index)
    clean = pd.DataFrame(
        {"entity_id": ids, "label": parsed, "label_time": times.to_numpy()}, index=frame.index
    )
    valid = clean["entity_id"].notna() & clean["label"].notna() & clean["label_time"].notna()
    counts: dict[str, Any] = {"source": source, "rows": len(frame), "invalid": int((~valid).sum())}
    clean = clean[valid].sort_values("label_time", kind="stable")
    per_entity = clean.groupby("entity_id")["label"].nunique()
    latest = clean.drop_duplicates("entity_id", keep="last")
    counts["duplicates"] = len(clean) - len(latest)
    counts["conflicting"] = int((per_entity > 1).sum())
    counts["entities"] = len(latest)
    if window is not None:
        start_at = as_utc(window[0])
        counts["late"] = int((latest["label_time"] < pd.Timestamp(start_at)).sum())
    if time_column is None:
        counts["warning"] = f"no {labels.time_column!r} column: label time = load time"
    dataset = config.dataset.name
    rows = [
        {
            "dataset": dataset,
            "entity_id": str(entity)[:256],
            "label": int(label),
            "label_time": stamp.to_pydatetime(),
            "source": source[:1024],
            "loaded_at": loaded_at,
        }
        for entity, label, stamp in latest.itertuples(index=False)
    ]
    migrate(store_url)  # labels may arrive before the service ever ran
    engine = engine_for(store_url)
    try:
        counts |= _upsert(engine, dataset, rows)
        counts |= _matched(engine, dataset, [row["entity_id"] for row in rows])
    finally:
        engine.dispose()
    log.info("labels from %s: %s", source, {k: v for k, v in counts.items() if k != "source"})
    return counts


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _binary(values: pd.Series, column: str, positive: object, source: str) -> pd.Series:
    """Labels as 1 (the dataset's positive class) / 0 / <NA>, as ingest maps the target."""
    texts = [None if _missing(v) else str(v).strip() or None for v in values]
    texts = [
        t.removesuffix(".0") if t is not None and t.removesuffix(".0").lstrip("-").isdigit() else t
        for t in texts
    ]
    classes = sorted({t for t in texts if t is not None})
    if len(classes) > 2:
        raise LabelSourceError(
            f"{source}: column {column} has {len(classes)} classes {classes[:10]}; labels are binary"
        )
    wanted = str(positive)
    return pd.array([None if t is None else int(t == wanted) for t in texts], dtype="Int64")


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


def _upsert(engine: Engine, dataset: str, rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"inserted": 0, "updated": 0, "changed": 0, "unchanged": 0, "stale": 0}
    with engine.begin() as connection:
        stored: dict[str, tuple[int, datetime]] = {}
        for chunk in _chunks([row["entity_id"] for row in rows]):
            found = connection.execute(
                select(Label.entity_id, Label.label, Label.label_time).where(
                    Label.dataset == dataset, Label.entity_id.in_(chunk)
                )
            )
            stored |= {entity: (label, as_utc(moment)) for entity, label, moment in found}
        writes = []
        for row in rows:
            before = stored.get(row["entity_id"])
            new_time = as_utc(row["label_time"])
            if before is None:
                counts["inserted"] += 1
            elif new_time < before[1]:
                counts["stale"] += 1
                continue
            elif new_time == before[1] and row["label"] == before[0]:
                counts["unchanged"] += 1
                continue
            else:
                counts["updated"] += 1
                counts["changed"] += int(row["label"] != before[0])
            writes.append(row)
        if writes:
            statement = _dialect_insert(connection.dialect.name)(Label)
            statement = statement.on_conflict_do_update(
                index_elements=["dataset", "entity_id"],
                set_={
                    "label": statement.excluded.label,
                    "label_time": statement.excluded.label_time,
                    "source": statement.excluded.source,
                    "loaded_at": statement.excluded.loaded_at,
                },
                where=Label.label_time <= statement.excluded.label_time,
            )
            connection.execute(statement, writes)
    return counts


def _dialect_insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"prediction store on {dialect}: only SQLite and PostgreSQL are supported")
    return insert


def _matched(engine: Engine, dataset: str, entity_ids: list[str]) -> dict[str, int]:
    matched: set[str] = set()
    with engine.connect() as connection:
        for chunk in _chunks(entity_ids):
            found = connection.execute(
                select(Prediction.entity_id)
                .where(Prediction.dataset == dataset, Prediction.entity_id.in_(chunk))
                .distinct()
            )
            matched |= {row[0] for row in found}
    return {"matched": len(matched), "unmatched": len(entity_ids) - len(matched)}


def join_report(
    config: LooplineConfig,
    paths: Paths,
    start: datetime | str,
    end: datetime | str,
    *,
    store_url: str | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Labels joined to the predictions captured in ``[start, end)``: counts and realised metrics."""
    start_at, end_at = as_utc(start), as_utc(end)
    url = store_url or settings_for(config).store_url or default_store_url(paths)
    migrate(url)
    engine = engine_for(url)
    try:
        frame = captured(engine, config.dataset.name, start_at, end_at, features=False)
        with_id = frame[frame["entity_id"].notna()]
        latest = with_id.drop_duplicates("entity_id", keep="last")
        labelled = latest[latest["label"].notna()]
        report: dict[str, Any] = {
            "dataset": config.dataset.name,
            "window_start": start_at.isoformat(),
            "window_end": end_at.isoformat(),
            "predictions": len(frame),
            "without_entity_id": int(frame["entity_id"].isna().sum()),
            "entities": len(latest),
            "duplicate_predictions": len(with_id) - len(latest),
            "labelled_entities": len(labelled),
            "missing_labels": len(latest) - len(labelled),
            "labelled_predictions": int(with_id["label"].notna().sum()),
            "label_coverage": round(len(labelled) / len(latest), 4) if len(latest) else 0.0,
            "model_versions": sorted(frame["model_version"].unique().tolist()),
        }
        if len(labelled):
            delay = (labelled["label_time"] - labelled["event_time"]).dt.total_seconds() / 86400
            report["label_delay_days_p50"] = round(float(delay.median()), 3)
            report["labels_before_prediction"] = int((delay < 0).sum())
        metrics = realised_metrics(labelled, config.gate.decision_threshold)
        report["metrics"] = {k: (None if v != v else round(v, 6)) for k, v in metrics.items()}
        if save:
            row = {
                "dataset": config.dataset.name,
                "window_start": start_at,
                "window_end": end_at,
                "computed_at": now(),
                "report": report,
            }
            with engine.begin() as connection:
                statement = _dialect_insert(connection.dialect.name)(FeedbackWindow)
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["dataset", "window_start", "window_end"],
                        set_={
                            "computed_at": statement.excluded.computed_at,
                            "report": statement.excluded.report,
                        },
                    ),
                    [row],
                )
    finally:
        engine.dispose()
    return report


def load_window(
    config: LooplineConfig,
    paths: Paths,
    start: datetime | str,
    end: datetime | str,
    *,
    settings: ServeSettings | None = None,
) -> dict[str, Any]:
    """Load the labels of one feedback window from the configured source (what loopline_feedback runs).

    File source: ``serving.labels.path`` under the landing zone with ``{dataset}``, ``{ds}`` (the window's
    start date) and ``{ds_nodash}`` filled in; a missing file loads nothing (``loaded: False``).
    """
    settings = settings or settings_for(config)
    labels = settings.labels
    start_at, end_at = as_utc(start), as_utc(end)
    if labels.source == "sql":
        if not labels.sql_url:
            raise LabelSourceError("serving.labels.source is sql but serving.labels.sql_url is not set")
        result = load_sql(
            config,
            paths,
            labels.sql_url,
            start_at,
            end_at,
            table=labels.sql_table,
            query=labels.sql_query,
            settings=settings,
        )
        return {"loaded": True, **result}
    landing = paths.landing.resolve()
    relative = labels.path.format(
        dataset=config.dataset.name, ds=f"{start_at:%Y-%m-%d}", ds_nodash=f"{start_at:%Y%m%d}"
    )
    file = (landing / relative).resolve()
    if not file.is_relative_to(landing):
        raise LabelSourceError(f"{file}: serving.labels.path resolves outside the landing zone {landing}")
    if not file.is_file():
        return {"loaded": False, "reason": f"no label file at {file}", "source": str(file)}
    result = load_file(
        config, paths, file, file_format=labels.format, window=(start_at, end_at), settings=settings
    )
    return {"loaded": True, **result}
