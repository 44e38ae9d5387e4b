"""Ingestion on Spark (``ml.steps.ingest_batch`` with ``engine.kind: spark``) vs the local ingest, same landing files.

The cases (``conftest.IngestCases``): clean months, repeated records, ids already in another batch, ids repeated
with other values, an unexpected column, a broken month that fails the GE gate and one without a required column,
ingested by both engines into separate homes under each dataset policy (``conftest.POLICIES``): the accepted
partitions must hold the same rows, in the same order, with the same types; the refused batches must give the
same messages. ``test_connect.py`` checks the same cases over Spark Connect.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def ingested(spark: Any, spark_loopline_config: Any, ingest_cases: Any, policy: str) -> dict[str, Any]:
    """The cases ingested by the Spark engine on the classic session, under ``policy``."""
    return ingest_cases.run(spark_loopline_config, "spark", policy, spark)


def test_accepted_partitions_equal_the_local_ingest(ingest_cases: Any, ingested: dict[str, Any]) -> None:
    ingest_cases.assert_accepted_like_local(ingested)


def test_policies_drop_or_refuse_as_configured(ingest_cases: Any, ingested: dict[str, Any]) -> None:
    ingest_cases.assert_policy_applied(ingested)


def test_refused_batches_are_refused_and_quarantined_as_locally(
    ingest_cases: Any, ingested: dict[str, Any]
) -> None:
    ingest_cases.assert_refused_like_local(ingested)
