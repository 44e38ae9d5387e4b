"""`loopline expectations suggest` and `loopline quarantine`, with the real lake and Great Expectations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml import demo_data, quality, steps
from ml.cli import main


@pytest.fixture
def lake_with_three_months(config, paths, scenario):
    demo_data.write_landing(scenario, paths.landing / "loans")
    for month in (1, 2, 3):
        steps.ingest_batch(config, paths, scenario.batch_key(month))
    return scenario


def _corruptions(clean: pd.DataFrame) -> dict[str, pd.DataFrame]:
    with_nulls = clean.copy()
    with_nulls.loc[: len(clean) // 4, "credit_score"] = np.nan
    out_of_range = clean.copy()
    out_of_range.loc[:10, "age"] = 400
    duplicated = pd.concat([clean, clean.head(20)], ignore_index=True)
    other_class = clean.copy()
    other_class.loc[0, "defaulted"] = 7
    return {
        "nulls": with_nulls,
        "out_of_range": out_of_range,
        "missing_column": clean.drop(columns=["debt_to_income"]),
        "duplicate_ids": duplicated,
        "unknown_target_class": other_class,
        "too_few_rows": clean.head(50),
    }


def test_suggested_suite_passes_clean_and_fails_each_corruption(
    config, paths, lake_with_three_months, tmp_path
):
    out = tmp_path / "suggested.json"
    assert main(["expectations", "suggest", "--out", str(out)]) == 0
    suite = json.loads(out.read_text())
    kinds = {e["type"] for e in suite["expectations"]}
    assert {
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_table_row_count_to_be_between",
    } <= kinds
    assert all(e["meta"]["severity"] in {"critical", "warning"} for e in suite["expectations"])

    clean = steps.lake_of(paths).read("loans", [lake_with_three_months.batch_key(3)])
    assert quality.validate(clean, out).passed
    for kind, broken in _corruptions(clean).items():
        assert not quality.validate(broken, out).passed, kind


def test_suggested_suite_checks_each_columns_type(config, paths, lake_with_three_months, tmp_path) -> None:
    """Numbers, times and the target keep their kind of type (text columns cannot: see ``_suggested_types``)."""
    batches = [lake_with_three_months.batch_key(m) for m in (1, 2, 3)]
    suite = steps.suggest_expectations(config, paths, batches)
    typed = {
        e["kwargs"]["column"]: e
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_in_type_list"
    }
    dataset = config.dataset
    assert set(typed) == {*dataset.numeric_features, dataset.time_column, dataset.target}
    assert all(e["severity"] == "critical" for e in typed.values())
    assert {"float64", "DoubleType"} <= set(typed["age"]["kwargs"]["type_list"])
    assert {"datetime64[us]", "TimestampNTZType"} <= set(typed[dataset.time_column]["kwargs"]["type_list"])
    out = tmp_path / "suggested.json"
    out.write_text(json.dumps(suite))

    lake = steps.lake_of(paths)
    clean = lake.read("loans", batches[-1:])
    assert quality.validate(clean, out).passed
    as_text = clean.assign(age=clean["age"].map(lambda v: f"{v:.0f} years"))
    time_as_text = clean.assign(**{dataset.time_column: clean[dataset.time_column].astype(str)})
    for column, broken in {"age": as_text, dataset.time_column: time_as_text}.items():
        result = quality.validate(broken, out)
        assert ("expect_column_values_to_be_in_type_list", column) in {
            (f.expectation, f.column) for f in result.critical
        }, column


def test_quarantine_list_release_drop(config, paths, scenario, capsys):
    demo_data.write_landing(scenario, paths.landing / "loans")
    incident = scenario.batch_key(5)
    with pytest.raises(Exception, match="interest_rate"):
        steps.ingest_batch(config, paths, incident)
    assert main(["quarantine", "list"]) == 0
    assert incident in capsys.readouterr().out
    assert main(["quarantine", "release", incident]) == 0
    assert (paths.landing / "loans" / f"{incident}.csv").is_file()
    assert not (paths.quarantine / "loans" / incident).exists()
    with pytest.raises(Exception, match="interest_rate"):
        steps.ingest_batch(config, paths, incident)
    assert main(["quarantine", "drop", incident]) == 0
    assert not (paths.quarantine / "loans" / incident).exists()
    assert incident in (paths.state / "quarantine_dropped.jsonl").read_text()
    assert main(["quarantine", "drop", incident]) == 2
