"""Delayed labels on real SQLite and PostgreSQL: file and SQL sources, the counts, the join, live windows."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from serve_support import CONFIG_FILE, records_of

WINDOW = (datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC))


@pytest.fixture
def config():
    from ml.config import load_config

    return load_config(CONFIG_FILE)


@pytest.fixture
def paths(tmp_path):
    from ml.config import Paths

    return Paths(tmp_path / "home")


def _capture(store_url: str, config, frame: pd.DataFrame, scores: np.ndarray, version: str = "1") -> None:
    """Captured predictions for the rows of ``frame`` (entity id = loan_id, event time = applied_at)."""
    from ml.serve.capture import CaptureItem, CaptureWriter
    from ml.serve.store import now

    writer = CaptureWriter(store_url, config.dataset.name, flush_interval=0.05)
    writer.start()
    features = [
        {k: r[k] for k in (*config.dataset.numeric_features, *config.dataset.categorical_features)}
        for r in records_of(frame)
    ]
    for i, (_, row) in enumerate(frame.iterrows()):
        event = pd.Timestamp(row[config.dataset.time_column]).tz_localize("UTC").to_pydatetime()
        item = CaptureItem(
            time.monotonic(),
            uuid.uuid4().hex,
            now(),
            [features[i]],
            [row[config.dataset.id_column]],
            [event],
            [float(scores[i])],
            [bool(scores[i] >= 0.5)],
            0.5,
            config.model_name,
            version,
            1.0,
            [[]],
        )
        asyncio.run(writer.submit(item))
    writer.close()


def _traffic(config, rows: int = 10) -> pd.DataFrame:
    """``rows`` applications in the window, the last one scored twice."""
    times = pd.date_range("2025-03-01 00:10", periods=rows, freq="20min")
    from ml import demo_data

    frame = (
        demo_data.generate_month(demo_data.Scenario(rows_per_month=rows, duplicate_rate=0), 3)
        .iloc[:rows]
        .copy()
    )
    frame[config.dataset.id_column] = [f"E{i}" for i in range(rows)]
    frame[config.dataset.time_column] = times
    return pd.concat([frame, frame.tail(1)], ignore_index=True)


def _label_frame(config) -> pd.DataFrame:
    id_col, target = config.dataset.id_column, config.dataset.target
    rows = [
        ("E0", "1", "2025-03-10T08:00:00Z"),
        ("E1", "0", "2025-03-10T08:00:00Z"),
        ("E1", "0", "2025-03-10T09:00:00Z"),  # duplicate, same label
        ("E2", "1", "2025-03-10T08:00:00Z"),
        ("E2", "0", "2025-03-10T10:00:00Z"),  # duplicate, conflicting: the later one wins
        ("E3", "1", "2025-03-09T23:00:00Z"),  # late: before the window being loaded
        ("E4", "0", "2025-03-10T08:00:00Z"),
        ("E5", "1", "2025-03-10T08:00:00Z"),
        ("X99", "0", "2025-03-10T08:00:00Z"),  # no prediction captured for it
        ("", "1", "2025-03-10T08:00:00Z"),  # no id
        ("E6", None, "2025-03-10T08:00:00Z"),  # no label
    ]
    return pd.DataFrame(rows, columns=[id_col, target, "label_time"])


def test_labels_load_count_and_join(store_url: str, config, paths, tmp_path) -> None:
    from ml.serve import labels
    from ml.serve.store import FeedbackWindow, engine_for

    traffic = _traffic(config)
    _capture(store_url, config, traffic, np.linspace(0.05, 0.95, len(traffic)))
    file = tmp_path / "labels.csv"
    _label_frame(config).to_csv(file, index=False)
    load_window = (datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC))

    first = labels.load_file(config, paths, file, store_url=store_url, window=load_window)
    expected = {"rows": 11, "invalid": 2, "duplicates": 2, "conflicting": 1, "entities": 7, "late": 1}
    assert {k: first[k] for k in expected} == expected
    assert (first["inserted"], first["updated"], first["unchanged"]) == (7, 0, 0)
    assert (first["matched"], first["unmatched"]) == (6, 1)

    again = labels.load_file(config, paths, file, store_url=store_url, window=load_window)
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 7)

    newer = pd.DataFrame(
        {
            config.dataset.id_column: ["E0", "E4"],
            config.dataset.target: ["0", "1"],
            "label_time": ["2025-03-12T00:00:00Z", "2025-03-01T00:00:00Z"],
        }
    )
    parquet = tmp_path / "labels.parquet"
    newer.to_parquet(parquet)
    update = labels.load_file(config, paths, parquet, store_url=store_url)
    assert (update["updated"], update["changed"], update["stale"]) == (1, 1, 1)

    report = labels.join_report(config, paths, *WINDOW, store_url=store_url)
    assert report["predictions"] == 11 and report["entities"] == 10
    assert report["duplicate_predictions"] == 1
    assert (report["labelled_entities"], report["missing_labels"]) == (6, 4)
    assert report["metrics"]["labelled_rows"] == 6 and report["metrics"]["roc_auc"] is not None
    labels.join_report(config, paths, *WINDOW, store_url=store_url)
    engine = engine_for(store_url)
    try:
        from sqlalchemy import func, select

        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(FeedbackWindow)).scalar() == 1
    finally:
        engine.dispose()


def test_labels_from_a_sql_table_by_window_with_bound_parameters(
    store_url: str, config, paths, tmp_path
) -> None:
    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, insert

    from ml.serve import labels
    from ml.serve.store import engine_for

    source_url = store_url if store_url.startswith("postgresql") else f"sqlite:///{tmp_path / 'crm.db'}"
    table = Table(
        "loan_outcomes",
        MetaData(),
        Column("loan_id", String(64)),
        Column("defaulted", Integer),
        Column("label_time", DateTime(timezone=True)),
    )
    engine = engine_for(source_url)
    try:
        table.create(engine)
        with engine.begin() as connection:
            connection.execute(
                insert(table),
                [
                    {"loan_id": "E1", "defaulted": 1, "label_time": datetime(2025, 4, 1, 12, tzinfo=UTC)},
                    {"loan_id": "E2", "defaulted": 0, "label_time": datetime(2025, 4, 1, 13, tzinfo=UTC)},
                    {"loan_id": "E3", "defaulted": 1, "label_time": datetime(2025, 4, 2, 1, tzinfo=UTC)},
                    {
                        "loan_id": "x'; DROP TABLE loan_outcomes; --",
                        "defaulted": 0,
                        "label_time": datetime(2025, 4, 1, 14, tzinfo=UTC),
                    },
                ],
            )
    finally:
        engine.dispose()
    day = (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 4, 2, tzinfo=UTC))
    loaded = labels.load_sql(config, paths, source_url, *day, table="loan_outcomes", store_url=store_url)
    assert (loaded["entities"], loaded["inserted"], loaded["unmatched"]) == (3, 3, 3)
    query = "SELECT loan_id, defaulted, label_time FROM loan_outcomes WHERE label_time >= :start AND label_time < :end"
    again = labels.load_sql(config, paths, source_url, *day, query=query, store_url=store_url)
    assert (again["inserted"], again["unchanged"]) == (0, 3)
    with pytest.raises(labels.LabelSourceError, match="exactly one"):
        labels.load_sql(config, paths, source_url, *day, store_url=store_url)


def test_live_window_feeds_drift_and_realised_metrics(store_url: str, config, paths) -> None:
    from ml import drift
    from ml.features import resolve_features
    from ml.serve import labels
    from ml.serve.monitoring import live_window, realised_metrics

    traffic = _traffic(config, rows=40)
    scores = np.linspace(0.01, 0.99, len(traffic))
    _capture(store_url, config, traffic, scores)
    frame = live_window(config, paths, store_url, *WINDOW)
    assert len(frame) == 41 and frame["label"].isna().all()
    assert frame["score"].tolist() == pytest.approx(scores.tolist(), abs=0)
    spec = resolve_features(config, traffic.columns, traffic.dtypes)
    assert set(spec.columns) <= set(frame.columns)
    assert frame["credit_score"].dtype == "float64" and frame["region"].map(type).eq(str).all()
    profile = drift.build_profile(traffic, spec, scores, config.drift.bins)
    result = drift.compare(profile, frame, frame["score"].to_numpy(), "live 2025-03-01", config.drift)
    assert result.rows == 41 and result.score_psi is not None

    outcome = pd.DataFrame(
        {
            config.dataset.id_column: traffic[config.dataset.id_column].iloc[:40],
            config.dataset.target: (scores[:40] > 0.5).astype(int).astype(str),
            "label_time": "2025-04-01T00:00:00Z",
        }
    )
    labels.load_frame(config, store_url, outcome, source="test")
    joined = live_window(config, paths, store_url, *WINDOW)
    assert joined["label"].notna().all()
    metrics = realised_metrics(joined, config.gate.decision_threshold)
    assert metrics["roc_auc"] == 1.0 and metrics["labelled_rows"] == 41
    assert abs(metrics["calibration_gap"]) < 0.1 and 0 <= metrics["ece"] <= 1
