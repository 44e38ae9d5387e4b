from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ml import demo_data
from ml.demo_data import Scenario, generate_month
from ml.ingest import BatchRejected, clean_batch, landing_path, read_source, readable_rows

pytestmark = pytest.mark.fast
BATCH = "2025-01"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def month() -> pd.DataFrame:
    return generate_month(Scenario(rows_per_month=600, incident_months=()), 1)


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = f"{BATCH}.csv") -> Path:
    file = tmp_path / name
    frame.to_csv(file, index=False)
    return file


def test_clean_month_passes_and_drops_duplicates(config, tmp_path: Path, month: pd.DataFrame) -> None:
    source = _csv(tmp_path, month)
    clean = clean_batch(config, read_source(source, "csv"), BATCH, source)
    assert clean.frame["loan_id"].is_unique
    assert clean.duplicates_dropped == len(month) - month["loan_id"].nunique() > 0
    assert set(clean.frame["defaulted"].unique()) <= {0, 1}


def _with_dataset(config: Any, **changes: Any) -> Any:
    return config.model_copy(update={"dataset": config.dataset.model_copy(update=changes)})


def test_ids_already_in_another_batch_are_refused_by_default(
    config, tmp_path: Path, month: pd.DataFrame
) -> None:
    source = _csv(tmp_path, month)
    known = set(month["loan_id"].iloc[[4, 7]])
    with pytest.raises(BatchRejected) as raised:
        clean_batch(config, read_source(source, "csv"), BATCH, source, known)
    first, second = month["loan_id"].iloc[4], month["loan_id"].iloc[7]
    assert (
        f"column loan_id: 2 id(s): {first!r} at row(s) 5; {second!r} at row(s) 8 already in another accepted "
        "batch of the lake: remove those rows from the export (a record is ingested once), or set "
        "dataset.duplicate_ids: keep_last to drop them from this batch"
    ) in str(raised.value)
    assert raised.value.ids_elsewhere == [first, second]


def test_keep_last_drops_this_batchs_rows_whose_id_another_batch_holds(
    config, tmp_path: Path, month: pd.DataFrame
) -> None:
    source = _csv(tmp_path, month)
    known = set(month["loan_id"].head(10))
    keep_last = _with_dataset(config, duplicate_ids="keep_last")
    clean = clean_batch(keep_last, read_source(source, "csv"), BATCH, source, known)
    assert not clean.frame["loan_id"].isin(known).any()
    assert len(clean.frame) == month["loan_id"].nunique() - 10
    assert "dropped 10 row(s) whose id is already in another batch of the lake" in clean.warnings


def _conflicting(month: pd.DataFrame) -> pd.DataFrame:
    """Month with row 3's id given to row 10 too, whose values differ (a correction re-sent in the file)."""
    changed = month.copy()
    changed.loc[9, "loan_id"] = changed.loc[2, "loan_id"]
    changed.loc[9, "age"] = 77
    return changed


def test_same_id_with_different_values_is_refused_naming_id_and_rows(
    config, tmp_path: Path, month: pd.DataFrame
) -> None:
    changed = _conflicting(month)
    source = _csv(tmp_path, changed)
    with pytest.raises(BatchRejected) as raised:
        clean_batch(config, read_source(source, "csv"), BATCH, source)
    assert (
        f"column loan_id: 1 id(s): {changed.loc[2, 'loan_id']!r} at row(s) 3, 10 with different values: fix the "
        "export so each id has one row, or set dataset.duplicate_ids: keep_last to keep each id's last row"
    ) in str(raised.value)
    assert str(source) in str(raised.value)


def test_keep_last_keeps_the_last_row_of_an_id(config, tmp_path: Path, month: pd.DataFrame) -> None:
    changed = _conflicting(month)
    source = _csv(tmp_path, changed)
    keep_last = _with_dataset(config, duplicate_ids="keep_last")
    clean = clean_batch(keep_last, read_source(source, "csv"), BATCH, source)
    kept = clean.frame[clean.frame["loan_id"] == changed.loc[2, "loan_id"]]
    assert kept["age"].tolist() == [77.0]
    assert clean.frame["loan_id"].is_unique
    exact = len(month) - month["loan_id"].nunique()
    assert clean.duplicates_dropped == exact + 1
    assert any(
        "dropped 1 earlier row(s) of 1 id(s) repeated with different values" in w for w in clean.warnings
    )


def test_exact_duplicate_rows_are_dropped_whatever_the_policy(
    config, tmp_path: Path, month: pd.DataFrame
) -> None:
    source = _csv(tmp_path, pd.concat([month, month.head(5)], ignore_index=True))
    clean = clean_batch(config, read_source(source, "csv"), BATCH, source)
    assert clean.frame["loan_id"].is_unique
    assert clean.duplicates_dropped == len(month) + 5 - month["loan_id"].nunique()


def test_reingesting_with_the_batchs_own_ids_unknown_is_idempotent(
    config, tmp_path: Path, month: pd.DataFrame
) -> None:
    """The caller leaves the batch's own partition out of ``known_ids``: a re-run gives the same rows."""
    source = _csv(tmp_path, month)
    first = clean_batch(config, read_source(source, "csv"), BATCH, source, set())
    again = clean_batch(config, read_source(source, "csv"), BATCH, source, {"L999999999"})
    pd.testing.assert_frame_equal(first.frame, again.frame)


@pytest.mark.parametrize("month_number", range(1, 13))
def test_demo_months_hold_only_exact_duplicates_and_no_other_months_ids(month_number: int) -> None:
    """The demo's batches pass the default policies (its incident month is refused for its missing column)."""
    scenario = Scenario()
    frame = generate_month(scenario, month_number)
    schema = {demo_data.ID_COLUMN, demo_data.TIME_COLUMN, demo_data.TARGET}
    assert set(frame.columns) <= schema | {*demo_data.NUMERIC_FEATURES, *demo_data.CATEGORICAL_FEATURES}
    if month_number not in scenario.incident_months:
        assert frame.drop_duplicates()["loan_id"].is_unique
    assert frame["loan_id"].str[1:4].astype(int).eq(month_number).all()


def test_missing_column_names_it_and_the_fix(config, tmp_path: Path, month: pd.DataFrame) -> None:
    source = _csv(tmp_path, month.drop(columns=["credit_score"]))
    with pytest.raises(BatchRejected, match=r"missing required column\(s\) credit_score.*restore"):
        clean_batch(config, read_source(source, "csv"), BATCH, source)


def test_non_numeric_value_names_column_rows_and_value(config, tmp_path: Path, month: pd.DataFrame) -> None:
    broken = month.astype({"age": "object"})
    broken.loc[3, "age"] = "forty"
    source = _csv(tmp_path, broken)
    with pytest.raises(BatchRejected, match=r"column age: non-numeric value\(s\) 'forty' at row\(s\) 4"):
        clean_batch(config, read_source(source, "csv"), BATCH, source)


def test_rows_outside_the_batch_window_are_refused(config, tmp_path: Path, month: pd.DataFrame) -> None:
    shifted = month.copy()
    shifted.loc[0, "applied_at"] = pd.Timestamp("2024-12-31")
    source = _csv(tmp_path, shifted)
    with pytest.raises(BatchRejected, match="outside the batch window"):
        clean_batch(config, read_source(source, "csv"), BATCH, source)


def test_unparsable_time_is_named(config, tmp_path: Path, month: pd.DataFrame) -> None:
    broken = month.astype({"applied_at": "object"})
    broken.loc[1, "applied_at"] = "yesterday"
    source = _csv(tmp_path, broken)
    with pytest.raises(BatchRejected, match=r"column applied_at: missing or unparsable time.*'yesterday'"):
        clean_batch(config, read_source(source, "csv"), BATCH, source)


def test_third_class_in_target_is_refused(config, tmp_path: Path, month: pd.DataFrame) -> None:
    broken = month.copy()
    broken.loc[0, "defaulted"] = 2
    source = _csv(tmp_path, broken)
    with pytest.raises(BatchRejected, match="3 classes"):
        clean_batch(config, read_source(source, "csv"), BATCH, source)


def test_all_null_column_is_refused(config, tmp_path: Path, month: pd.DataFrame) -> None:
    source = _csv(tmp_path, month.assign(region=None))
    with pytest.raises(BatchRejected, match="column region: every value is empty"):
        clean_batch(config, read_source(source, "csv"), BATCH, source)


def test_extra_column_is_refused_by_default(config, tmp_path: Path, month: pd.DataFrame) -> None:
    source = _csv(tmp_path, month.assign(surprise=1, other="x"))
    with pytest.raises(BatchRejected) as raised:
        clean_batch(config, read_source(source, "csv"), BATCH, source)
    assert str(raised.value) == (
        f"{source}: batch rejected:\n  - unexpected column(s) surprise, other: add them to "
        "dataset.numeric_features or dataset.categorical_features, or set dataset.extra_columns: drop to "
        "ignore them"
    )


def test_extra_column_is_dropped_with_a_warning_when_configured(
    config, tmp_path: Path, month: pd.DataFrame
) -> None:
    source = _csv(tmp_path, month.assign(surprise=1))
    dropping = _with_dataset(config, extra_columns="drop")
    clean = clean_batch(dropping, read_source(source, "csv"), BATCH, source)
    assert "surprise" not in clean.frame.columns
    assert any("surprise" in w for w in clean.warnings)


def test_readable_rows_keep_what_parses_and_leave_missing_columns_missing(
    config, month: pd.DataFrame
) -> None:
    broken = pd.concat([month, month.head(3)], ignore_index=True).drop(columns=["interest_rate"])
    broken = broken.astype({"age": "object"})
    broken.loc[10, "age"] = "forty"
    rows = readable_rows(config, broken, BATCH, whole_file=True)
    assert "interest_rate" not in rows.columns
    assert len(rows) == len(month.drop_duplicates())
    assert pd.isna(rows.loc[10, "age"]) and rows["age"].dtype == "float64"
    assert rows["applied_at"].dtype == "datetime64[us]"


def test_too_many_rows_are_refused(config, tmp_path: Path, month: pd.DataFrame) -> None:
    small = config.model_copy(update={"dataset": config.dataset.model_copy(update={"max_batch_rows": 10})})
    source = _csv(tmp_path, month)
    with pytest.raises(BatchRejected, match="max_batch_rows"):
        clean_batch(small, read_source(source, "csv"), BATCH, source)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"loan_id,applied_at\n", "header but no rows"),
        (b'a,b\n1,2\n3,"4\n', "malformed CSV"),
    ],
)
def test_unreadable_csv_files(tmp_path: Path, content: bytes, message: str) -> None:
    file = tmp_path / "x.csv"
    file.write_bytes(content)
    with pytest.raises(BatchRejected, match=message):
        read_source(file, "csv")


def test_corrupt_parquet(tmp_path: Path) -> None:
    file = tmp_path / "x.parquet"
    file.write_bytes(b"PAR1 not really")
    with pytest.raises(BatchRejected, match="not a readable Parquet file"):
        read_source(file, "parquet")


def test_source_outside_the_landing_zone_is_refused(config, paths) -> None:
    escaping = config.model_copy(
        update={
            "dataset": config.dataset.model_copy(
                update={"source": config.dataset.source.model_copy(update={"path": "../../etc"})}
            )
        }
    )
    with pytest.raises(BatchRejected, match="outside the landing zone"):
        landing_path(escaping, paths, BATCH)


def test_missing_target_stays_unlabelled_not_negative(config, tmp_path: Path, month: pd.DataFrame) -> None:
    with_gaps = month.astype({"defaulted": "object"})
    with_gaps.loc[[0, 1, 2], "defaulted"] = None
    source = _csv(tmp_path, with_gaps)
    clean = clean_batch(config, read_source(source, "csv"), BATCH, source)
    first_ids = set(with_gaps.loc[[0, 1, 2], "loan_id"])
    targets = clean.frame.set_index("loan_id").loc[sorted(first_ids), "defaulted"]
    assert targets.isna().all()
    assert set(clean.frame["defaulted"].dropna().unique()) <= {0, 1}


def _sql_config(tmp_path: Path, source: dict[str, str]) -> Any:
    import yaml

    from ml.config import load_config

    raw = yaml.safe_load((ROOT / "loopline.yaml").read_text())
    raw["dataset"]["source"] = source
    raw["dataset"]["expectation_suite"] = str(ROOT / raw["dataset"]["expectation_suite"])
    file = tmp_path / "sql.yaml"
    file.write_text(yaml.safe_dump(raw))
    return load_config(file)


def test_sql_source_windows_ingest_into_the_lake_on_postgresql(
    pg_url: str, paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import create_engine, text

    from ml import steps
    from ml.ingest import discover_batches

    scenario = Scenario(rows_per_month=600, incident_months=())
    months = pd.concat([generate_month(scenario, 1), generate_month(scenario, 2)], ignore_index=True)
    engine = create_engine(pg_url)
    months.to_sql("loan_applications", engine, schema="public", index=False)
    with engine.begin() as connection:  # a row whose text would break formatted SQL stays plain data
        connection.execute(
            text("UPDATE loan_applications SET purpose = :evil WHERE loan_id = :id"),
            {"evil": "car'); DROP TABLE loan_applications; --", "id": months["loan_id"].iloc[0]},
        )
    engine.dispose()
    password_free = pg_url.replace("postgres@", "${LOOPLINE_TEST_PG_USER}@")
    monkeypatch.setenv("LOOPLINE_TEST_PG_USER", "postgres")
    by_table = _sql_config(
        tmp_path, {"format": "sql", "url": password_free, "table": "public.loan_applications"}
    )

    assert discover_batches(by_table, paths) == ["2025-01", "2025-02"]
    january = steps.ingest_batch(by_table, paths, "2025-01")
    stored = steps.lake_of(paths).read("loans", ["2025-01"])
    expected = months[months["applied_at"] < pd.Timestamp("2025-02-01")]
    assert january["rows"] == len(stored) == expected["loan_id"].nunique()
    assert set(stored["loan_id"]) == set(expected["loan_id"])
    assert (paths.landing / "loans" / "2025-01.parquet").is_file()  # the window's snapshot
    assert "DROP TABLE" in stored.loc[stored["loan_id"] == months["loan_id"].iloc[0], "purpose"].iloc[0]

    by_query = _sql_config(
        tmp_path,
        {
            "format": "sql",
            "url": pg_url,
            "query": "SELECT * FROM loan_applications WHERE applied_at >= :start AND applied_at < :end",
        },
    )
    february = steps.ingest_batch(by_query, paths, "2025-02")
    assert february["rows"] == months.loc[len(months) // 2 :, "loan_id"].nunique() > 0
    assert steps.lake_of(paths).batches("loans") == ["2025-01", "2025-02"]
    with pytest.raises(FileNotFoundError, match=r"no rows with applied_at in \[2025-03-01, 2025-04-01\)"):
        steps.ingest_batch(by_table, paths, "2025-03")


def test_sql_source_config_needs_bound_window_parameters(tmp_path: Path) -> None:
    from ml.config import ConfigError

    url = "postgresql://postgres@127.0.0.1/x"
    with pytest.raises(ConfigError, match=r"bound parameters :start and :end \(missing: :end\)"):
        _sql_config(tmp_path, {"format": "sql", "url": url, "query": "SELECT * FROM t WHERE at >= :start"})
    with pytest.raises(ConfigError, match=r"exactly one of dataset\.source\.table or query"):
        _sql_config(tmp_path, {"format": "sql", "url": url})
    with pytest.raises(ConfigError, match=r"dataset\.source\.path is required"):
        _sql_config(tmp_path, {"format": "csv"})
