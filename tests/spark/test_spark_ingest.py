"""Ingestion on Spark (``ml.steps.ingest_batch`` with ``engine.kind: spark``) vs the local ingest, same landing files.

The cases (``conftest.IngestCases``): month 1, month 2 (with in-file duplicates and rows whose ids are already
in month 1), a broken month that fails the GE gate and one without a required column, ingested by both engines
into separate homes; the accepted partitions must hold the same rows, in the same order, with the same types.
``test_connect.py`` checks the same cases over Spark Connect.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def ingested(spark: Any, spark_loopline_config: Any, ingest_cases: Any) -> dict[str, Any]:
    """The cases ingested by the Spark engine on the classic session."""
    return ingest_cases.run(spark_loopline_config, "spark")


@pytest.mark.parametrize("batch", ["2025-01", "2025-02"])
def test_partitions_equal_the_local_ingest(ingest_cases: Any, ingested: dict[str, Any], batch: str) -> None:
    ingest_cases.assert_partition_equal(ingested, batch)


def test_dedup_against_earlier_batches(ingest_cases: Any, ingested: dict[str, Any]) -> None:
    ingest_cases.assert_dedup(ingested)


def test_broken_batches_are_refused_and_quarantined_as_locally(
    ingest_cases: Any, ingested: dict[str, Any]
) -> None:
    ingest_cases.assert_refused_like_local(ingested)
