"""The data-quality gate with the real Great Expectations."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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


def test_an_expectation_on_a_missing_column_says_so(tmp_path: Path, clean: pd.DataFrame) -> None:
    """GE 1.x nests a failed metric's error by metric id in ``exception_info``: its message is the example."""
    suite = tmp_path / "ghost.json"
    expectations = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "ghost"}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "ghost", "min_value": 0}},
    ]
    suite.write_text(json.dumps({"name": "ghost", "expectations": expectations}))
    for result in (
        quality.validate(clean, suite),
        quality.validate_stream(_reader(clean, 256), list(clean.columns), suite),
    ):
        assert [f.examples for f in result.critical] == [
            ['Error: The column "ghost" in BatchData does not exist.']
        ] * 2
    message = str(quality.QualityGateFailed("batch 2025-05", quality.validate(clean, suite)))
    assert 'The column "ghost" in BatchData does not exist' in message


def test_exception_messages_are_read_flat_or_nested_by_metric() -> None:
    flat = {"raised_exception": True, "exception_message": "boom\ntraceback", "exception_traceback": "..."}
    nested = {"MetricConfigurationID(column.mean)": {"raised_exception": True, "exception_message": "gone"}}
    quiet = {"raised_exception": False, "exception_message": None, "exception_traceback": None}
    assert quality._exception_message(flat) == "boom"
    assert quality._exception_message(nested) == "gone"
    assert quality._exception_message(quiet) is None and quality._exception_message(None) is None


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


def _reader(frame: pd.DataFrame, rows: int) -> quality.ChunkReader:
    """A ``ChunkReader`` over ``frame``: record batches of ``rows`` rows, only the columns asked for."""

    def read(columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
        chosen = frame if columns is None else frame.reindex(columns=list(columns))
        return (chosen.iloc[i : i + rows] for i in range(0, len(chosen), rows))

    return read


def test_streaming_gate_gives_the_whole_frame_verdicts(clean: pd.DataFrame) -> None:
    broken = pd.concat([clean, clean.head(3)], ignore_index=True)  # repeated ids across record batches
    broken.loc[100:400, "credit_score"] = np.nan
    broken.loc[700:720, "age"] = -1
    broken.loc[900, "home_ownership"] = "CASTLE"
    for frame in (clean, broken, clean.drop(columns=["interest_rate"]), clean.assign(region="mars")):
        whole = quality.validate(frame, SUITE)
        streamed = quality.validate_stream(_reader(frame, 256), list(frame.columns), SUITE)
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


def _with_gaps_and_failures(clean: pd.DataFrame) -> pd.DataFrame:
    """Missing values in passing and failing columns, out-of-range and unknown values, repeated ids."""
    broken = clean.copy()
    broken.loc[::7, "debt_to_income"] = np.nan  # gaps, values still in range: passes
    broken.loc[::3, "credit_score"] = np.nan  # too many gaps: not-null fails
    broken.loc[1:40:2, "age"] = np.nan
    broken.loc[:20:2, "age"] = -1  # a column with gaps AND out-of-range values
    broken.loc[5, "home_ownership"] = "CASTLE"
    broken.loc[:30, "loan_id"] = broken.loc[0, "loan_id"]
    return broken


def test_gate_results_equal_a_plain_summary_run_of_ge(clean: pd.DataFrame) -> None:
    """The two-pass gate (BOOLEAN_ONLY, then SUMMARY for failures; columns with gaps alone) is GE's own result."""
    import great_expectations as gx

    frame = _with_gaps_and_failures(clean)
    document = quality.load_suite(SUITE)
    context = gx.get_context(mode="ephemeral")
    definition = (
        context.data_sources.add_pandas("plain")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    plain = definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        quality._ge_suite(gx, document, SUITE), result_format=quality.RESULT_FORMAT
    )
    gate = quality.validate(frame, SUITE)

    def key(result: dict) -> tuple[str, str]:
        config = result["expectation_config"]
        return config["type"], json.dumps({k: v for k, v in config["kwargs"].items() if k != "batch_id"})

    expected = {key(r): r for r in plain.to_json_dict()["results"]}
    got = {key(r): r for r in gate.raw["results"]}
    assert got.keys() == expected.keys()
    assert {k for k, r in got.items() if not r["success"]} == {
        k for k, r in expected.items() if not r["success"]
    }
    for k, result in got.items():
        assert result["success"] == expected[k]["success"], k
        if not result["success"]:
            for detail in (
                "unexpected_count",
                "unexpected_percent",
                "partial_unexpected_list",
                "observed_value",
            ):
                assert result["result"].get(detail) == expected[k]["result"].get(detail), (k, detail)
    assert gate.raw["statistics"] == plain.to_json_dict()["statistics"]
    failed = {(f.expectation, f.column) for f in gate.critical}
    assert {
        ("expect_column_values_to_not_be_null", "credit_score"),
        ("expect_column_values_to_be_between", "age"),
        ("expect_column_values_to_be_in_set", "home_ownership"),
        ("expect_column_values_to_be_unique", "loan_id"),
    } <= failed
    age = next(f for f in gate.critical if f.column == "age" and "between" in f.expectation)
    assert age.examples == [-1] * 5


def test_gate_reports_in_suite_order(clean: pd.DataFrame) -> None:
    result = quality.validate(_with_gaps_and_failures(clean).drop(columns=["interest_rate"]), SUITE)
    suite = json.loads(SUITE.read_text())["expectations"]
    assert [
        (r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column"))
        for r in result.raw["results"]
    ] == [(e["type"], e["kwargs"].get("column")) for e in suite]


def test_domains_put_columns_with_gaps_alone(clean: pd.DataFrame) -> None:
    import great_expectations as gx

    frame = clean.assign(age=clean["age"].where(clean.index % 5 > 0))
    document = {
        "name": "t",
        "expectations": [
            {"type": "expect_column_to_exist", "kwargs": {"column": "age"}},
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "age", "min_value": 18}},
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "age", "mostly": 0.5}},
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "age", "min_value": 18, "row_condition": 'home_ownership=="RENT"'},
            },
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "income", "min_value": 0}},
            {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
        ],
    }
    suite = quality._ge_suite(gx, document, Path("t.json"))
    domains = quality._domains(frame, suite.expectations)
    assert [(list(data.columns), [e.expectation_type for e in items]) for data, items in domains] == [
        (
            list(frame.columns),
            [
                "expect_column_to_exist",
                "expect_column_values_to_be_between",
                "expect_column_values_to_be_between",
                "expect_table_row_count_to_be_between",
            ],
        ),
        (["age"], ["expect_column_values_to_be_between", "expect_column_values_to_not_be_null"]),
    ]
    assert domains[0][1][1].configuration.kwargs.get("row_condition")


def test_data_docs_render_the_gate_result(tmp_path: Path, clean: pd.DataFrame) -> None:
    docs = tmp_path / "docs"
    result = quality.validate(clean.assign(region="mars"), SUITE, docs, run_name="ingest-2025-05")
    assert result.data_docs == str(docs / "index.html") and (docs / "index.html").is_file()
    pages = list((docs / "validations").rglob("*.html"))
    assert len(pages) == 1 and "ingest-2025-05" in str(pages[0])
    assert "mars" in pages[0].read_text()
