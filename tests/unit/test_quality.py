"""The data-quality gate with the real Great Expectations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import quality
from ml.demo_data import Scenario, generate_month

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "expectations" / "loans.json"


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    month = generate_month(Scenario(rows_per_month=1000, incident_months=()), 1)
    return month.drop_duplicates("loan_id").reset_index(drop=True)


def test_clean_batch_passes(clean: pd.DataFrame) -> None:
    result = quality.validate(clean, SUITE)
    assert result.passed, [f.describe() for f in result.critical]
    assert result.evaluated == len(json.loads(SUITE.read_text())["expectations"])


def test_incident_batch_fails_naming_columns_and_examples(clean: pd.DataFrame) -> None:
    broken = clean.copy()
    broken.loc[:300, "credit_score"] = np.nan
    broken.loc[:20, "age"] = -1
    broken.loc[5, "home_ownership"] = "CASTLE"
    result = quality.validate(broken, SUITE)
    assert not result.passed
    failed = {(f.expectation, f.column) for f in result.critical}
    assert ("expect_column_values_to_not_be_null", "credit_score") in failed
    assert ("expect_column_values_to_be_between", "age") in failed
    assert ("expect_column_values_to_be_in_set", "home_ownership") in failed
    message = str(quality.QualityGateFailed("batch 2025-05", result))
    assert "age" in message and "-1" in message and "CASTLE" in message


def test_warning_does_not_fail_the_gate(clean: pd.DataFrame) -> None:
    result = quality.validate(clean.assign(region="mars"), SUITE)
    assert result.passed
    assert [f.column for f in result.warnings] == ["region"]


def test_missing_column_fails(clean: pd.DataFrame) -> None:
    result = quality.validate(clean.drop(columns=["interest_rate"]), SUITE)
    assert not result.passed
    assert "interest_rate" in {f.column for f in result.critical}


def test_unknown_expectation_type_is_refused(tmp_path: Path, clean: pd.DataFrame) -> None:
    suite = json.loads(SUITE.read_text())
    suite["expectations"].append({"type": "expect_column_to_be_nice", "kwargs": {"column": "age"}})
    file = tmp_path / "suite.json"
    file.write_text(json.dumps(suite))
    with pytest.raises((quality.SuiteError, Exception), match="expect_column_to_be_nice"):
        quality.validate(clean, file)


def test_quarantine_keeps_file_and_reason(tmp_path: Path, clean: pd.DataFrame) -> None:
    source = tmp_path / "landing" / "2025-05.csv"
    source.parent.mkdir()
    source.write_text("a\n1\n")
    folder = quality.quarantine(tmp_path / "q" / "2025-05", source, "bad", None, None, move_source=True)
    assert not source.exists()
    assert (folder / "2025-05.csv").read_text() == "a\n1\n"
    assert json.loads((folder / "reason.json").read_text())["reason"] == "bad"


def test_streaming_gate_gives_the_whole_frame_verdicts(clean: pd.DataFrame) -> None:
    broken = pd.concat([clean, clean.head(3)], ignore_index=True)  # repeated ids across record batches
    broken.loc[100:400, "credit_score"] = np.nan
    broken.loc[700:720, "age"] = -1
    broken.loc[900, "home_ownership"] = "CASTLE"
    for frame in (clean, broken, clean.drop(columns=["interest_rate"]), clean.assign(region="mars")):
        whole = quality.validate(frame, SUITE)
        chunks = (frame.iloc[i : i + 256] for i in range(0, len(frame), 256))
        streamed = quality.validate_stream(chunks, list(frame.columns), SUITE)
        assert streamed.passed == whole.passed and streamed.evaluated == whole.evaluated

        def described(result: quality.GateResult) -> list[tuple]:
            return sorted(
                (f.expectation, f.column or "", f.severity, round(f.unexpected_percent or 0, 9))
                for f in result.critical + result.warnings
            )

        assert described(streamed) == described(whole)
        if frame is broken:
            assert ("expect_column_values_to_be_unique", "loan_id") in {
                (f.expectation, f.column) for f in streamed.critical
            }
