"""Ingestion on Spark (``ml.steps.ingest_batch`` with ``engine.kind: spark``) vs the local ingest, same landing files.

Two homes share the landing files: month 1, month 2 (with in-file duplicates and rows whose ids are already in
month 1), a broken month that fails the GE gate and one without a required column. Each is ingested by both
engines; the accepted partitions must hold the same rows, in the same order, with the same types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.demo_data import Scenario

SCENARIO = Scenario(months=2, rows_per_month=1500, shift_from_month=None, incident_months=(), seed=5)
BROKEN, NO_COLUMN = "2025-03", "2025-04"


def _landing(folder: Path) -> None:
    """Months 1-2 (month 2 repeating 20 ids of month 1 at its own times), a broken month, a month missing a column."""
    from ml import demo_data

    first, second = (demo_data.generate_month(SCENARIO, m) for m in (1, 2))
    repeated = first.head(20).assign(applied_at=second["applied_at"].iloc[:20].to_numpy())
    second = pd.concat([repeated, second]).sort_values("applied_at", kind="stable")
    rng = np.random.default_rng(1)
    broken = demo_data.generate_month(SCENARIO, 3)
    broken.loc[rng.random(len(broken)) < 0.3, "credit_score"] = np.nan
    folder.mkdir(parents=True)
    for key, frame in [("2025-01", first), ("2025-02", second), (BROKEN, broken)]:
        frame.to_csv(folder / f"{key}.csv", index=False)
    demo_data.generate_month(SCENARIO, 4).drop(columns=["age"]).to_csv(
        folder / f"{NO_COLUMN}.csv", index=False
    )


def _ingest_all(config: Any, home: Path, landing: Path) -> dict[str, Any]:
    """Every batch through ``steps.ingest_batch``: its summary, or the exception it raised."""
    from ml import steps
    from ml.config import Paths
    from ml.ingest import BatchRejected
    from ml.quality import QualityGateFailed

    paths = Paths(home)
    paths.home.mkdir(parents=True)
    paths.landing.symlink_to(landing, target_is_directory=True)
    outcomes: dict[str, Any] = {}
    for batch in ["2025-01", "2025-02", BROKEN, NO_COLUMN]:
        try:
            outcomes[batch] = steps.ingest_batch(config, paths, batch, quarantine_moves_source=False)
        except (BatchRejected, QualityGateFailed) as exc:
            outcomes[batch] = exc
    return {"outcomes": outcomes, "paths": paths}


@pytest.fixture(scope="module")
def ingested(
    spark: Any, spark_loopline_config: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    from ml.config import EngineConfig

    root = tmp_path_factory.mktemp("spark-ingest")
    _landing(root / "landing" / "loans")
    local = spark_loopline_config.model_copy(update={"engine": EngineConfig(kind="local")})
    return {
        "local": _ingest_all(local, root / "local", root / "landing"),
        "spark": _ingest_all(spark_loopline_config, root / "spark", root / "landing"),
    }


@pytest.mark.parametrize("batch", ["2025-01", "2025-02"])
def test_partitions_equal_the_local_ingest(ingested: dict[str, Any], batch: str) -> None:
    from ml.steps import lake_of

    local, spark = (ingested[kind]["outcomes"][batch] for kind in ("local", "spark"))
    assert isinstance(spark, dict), spark
    for key in ("rows", "rows_read", "duplicates_dropped", "warnings"):
        assert spark[key] == local[key], key
    assert spark["rows"] == SCENARIO.rows_per_month and len(spark["sha256"]) == 64
    frames = [lake_of(ingested[kind]["paths"]).read("loans", [batch]) for kind in ("local", "spark")]
    pd.testing.assert_frame_equal(frames[1], frames[0])


def test_dedup_against_earlier_batches(ingested: dict[str, Any]) -> None:
    spark = ingested["spark"]["outcomes"]["2025-02"]
    assert spark["duplicates_dropped"] >= 20
    assert "dropped 20 row(s) whose id is already in another batch of the lake" in spark["warnings"]


def test_broken_batches_are_refused_and_quarantined_as_locally(ingested: dict[str, Any]) -> None:
    from ml.ingest import BatchRejected
    from ml.quality import QualityGateFailed
    from ml.steps import lake_of

    local, spark = (ingested[kind]["outcomes"] for kind in ("local", "spark"))
    assert isinstance(spark[BROKEN], QualityGateFailed) and isinstance(local[BROKEN], QualityGateFailed)
    failures = [{(f.expectation, f.column) for f in o[BROKEN].result.critical} for o in (local, spark)]
    assert (
        failures[0] == failures[1] and ("expect_column_values_to_not_be_null", "credit_score") in failures[1]
    )
    assert isinstance(spark[NO_COLUMN], BatchRejected) and str(spark[NO_COLUMN]) == str(local[NO_COLUMN])
    paths = ingested["spark"]["paths"]
    assert lake_of(paths).batches("loans") == ["2025-01", "2025-02"]
    for batch in (BROKEN, NO_COLUMN):
        assert (paths.quarantine / "loans" / batch / "reason.json").is_file()
