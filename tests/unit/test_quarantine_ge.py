"""A batch the schema check refuses is still validated with the suite; its quarantine holds both verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml import demo_data, steps
from ml.cli import main
from ml.ingest import BatchRejected

BATCH = "2025-01"


@pytest.fixture
def landing(paths: Any) -> Path:
    folder = paths.landing / "loans"
    folder.mkdir(parents=True)
    return folder


def _incident(rows: int = 800) -> pd.DataFrame:
    """A broken export like the demo's incident month: a column gone, nulls, impossible values."""
    frame = demo_data.generate_month(
        demo_data.Scenario(rows_per_month=rows, incident_months=(), duplicate_rate=0), 1
    )
    frame = frame.drop(columns=["interest_rate"])
    frame.loc[frame.index % 3 == 0, "credit_score"] = np.nan
    frame.loc[frame.index % 10 == 1, "age"] = -1
    return frame


def test_incident_batch_quarantines_the_schema_error_and_the_suite_result(
    config: Any, paths: Any, landing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _incident().to_csv(landing / f"{BATCH}.csv", index=False)
    with pytest.raises(BatchRejected, match=r"missing required column\(s\) interest_rate"):
        steps.ingest_batch(config, paths, BATCH)

    entry = paths.quarantine / "loans" / BATCH
    assert sorted(p.name for p in entry.iterdir()) == [
        f"{BATCH}.csv",
        "reason.json",
        "validation_result.json",
    ]
    reason = json.loads((entry / "reason.json").read_text())
    assert "missing required column(s) interest_rate" in reason["reason"]
    failed = {(f["expectation"], f["column"]) for f in reason["gate"]["critical"]}
    assert {
        ("expect_column_to_exist", "interest_rate"),
        ("expect_column_values_to_be_between", "interest_rate"),
        ("expect_column_values_to_not_be_null", "credit_score"),
        ("expect_column_values_to_be_between", "age"),
    } <= failed
    assert not reason["gate"]["passed"] and reason["gate"]["quarantined_to"] == str(entry)
    missing = [
        line
        for line in reason["reason"].splitlines()
        if "expect_column_values_to_be_between on column interest_rate [critical]" in line
    ]
    assert len(missing) == 1 and missing[0].endswith(": column missing"), missing
    raw = json.loads((entry / "validation_result.json").read_text())
    assert raw["success"] is False and len(raw["results"]) == reason["gate"]["evaluated"]

    assert main(["quarantine", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"{BATCH} " in listed
    assert (
        "schema check failed (1 problem(s)); 4 critical expectation(s) of the data-quality suite failed"
        in (listed)
    )
    assert BATCH not in steps.lake_of(paths).batches("loans")


def test_exact_duplicates_are_not_what_the_suite_reports(config: Any, paths: Any, landing: Path) -> None:
    """The suite sees the rows as ingest would keep them: a record delivered twice is no uniqueness failure."""
    broken = _incident()
    pd.concat([broken, broken.head(30)]).to_csv(landing / f"{BATCH}.csv", index=False)
    with pytest.raises(BatchRejected):
        steps.ingest_batch(config, paths, BATCH)
    reason = json.loads((paths.quarantine / "loans" / BATCH / "reason.json").read_text())
    failed = {(f["expectation"], f["column"]) for f in reason["gate"]["critical"]}
    assert ("expect_column_values_to_not_be_null", "credit_score") in failed
    assert ("expect_column_values_to_be_unique", "loan_id") not in failed


def test_unreadable_file_says_it_was_not_validated(config: Any, paths: Any, landing: Path) -> None:
    (landing / f"{BATCH}.csv").write_bytes(b"")
    with pytest.raises(BatchRejected, match="empty"):
        steps.ingest_batch(config, paths, BATCH)
    entry = paths.quarantine / "loans" / BATCH
    reason = json.loads((entry / "reason.json").read_text())
    assert reason["gate"] is None and not (entry / "validation_result.json").exists()
    first_line = reason["reason"].splitlines()[0]
    assert first_line == (
        "schema check failed (1 problem(s)); not validated with the data-quality suite: "
        "the file is empty (0 bytes): re-export the batch"
    )
