"""Bad input through the real path (``ml.steps.ingest_batch``, ``ml.config.load_config``, ``train_challenger``).

Every case must end in a clear error that names the file, the column or row, and the fix; the batch is
quarantined (a landed file that is wrong) or refused (a request that is wrong); the lake's accepted partitions
(content hashes), the registry's versions and history, and the champion alias stay exactly as they were. The
cases run on the suite's shared home (``stable_champion``), whose champion was trained once through ml.steps, so
"champion untouched" is checked against a real one.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from reliability_support import ROOT, Home, assert_untouched, case, entered, snapshot

from ml import demo_data, steps
from ml.batches import BatchKeyError
from ml.config import ConfigError, load_config
from ml.ingest import BatchRejected
from ml.quality import QualityGateFailed
from ml.train import TrainingDataError

BATCH = "2025-04"


@pytest.fixture(scope="module")
def home(stable_champion: tuple[Path, Any]) -> Iterator[Home]:
    """Months 1-3 ingested and champion v1 trained on them; month 4 landed, untouched, for the cases."""
    with entered(*stable_champion) as home:
        yield home


def month(home: Home, number: int = 4) -> pd.DataFrame:
    return demo_data.generate_month(home.scenario, number)


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S").encode()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def with_dataset(config: Any, **changes: Any) -> Any:
    """The config with dataset keys (and ``source_*`` keys of dataset.source) changed."""
    source = {k.removeprefix("source_"): v for k, v in changes.items() if k.startswith("source_")}
    dataset = {k: v for k, v in changes.items() if not k.startswith("source_")}
    if source:
        dataset["source"] = config.dataset.source.model_copy(update=source)
    return config.model_copy(update={"dataset": config.dataset.model_copy(update=dataset)})


def refuse(
    home: Home,
    name: str,
    payload: bytes | None,
    error: type[Exception],
    pattern: str,
    *,
    quarantined: bool,
    config: Any = None,
    batch: str = BATCH,
    fmt: str = "csv",
    known_defect: str | None = None,
) -> str:
    """Land ``payload`` as the batch file, ingest it, and check the refusal; returns the error message."""
    config = config or home.config
    folder = home.paths.landing / config.dataset.source.path
    landed = folder / f"{batch}.{fmt}"
    month_file = home.paths.landing / "loans" / f"{BATCH}.csv"
    saved = month_file.read_bytes()
    quarantine = home.paths.quarantine / config.dataset.name / batch
    before = snapshot(home)
    with case("bad_input", name, home, known_defect=known_defect):
        if payload is not None:
            landed.write_bytes(payload)
        try:
            with pytest.raises(error) as raised:
                steps.ingest_batch(config, home.paths, batch)
            message = str(raised.value)
            assert re.search(pattern, message, re.S), f"{name}: unclear error:\n{message}"
            assert_untouched(before, snapshot(home))
            assert batch not in steps.lake_of(home.paths).batches(config.dataset.name)
            if quarantined:
                assert str(landed) in message, f"{name}: the error does not name the file:\n{message}"
                assert (quarantine / "reason.json").is_file(), f"{name}: not quarantined"
                assert not landed.exists(), f"{name}: the landed file was not moved to the quarantine"
            else:
                assert not quarantine.exists(), f"{name}: a refused request must not quarantine anything"
        finally:
            shutil.rmtree(quarantine, ignore_errors=True)
            if fmt != "csv":
                landed.unlink(missing_ok=True)
            month_file.write_bytes(saved)
    return message


def _truncate_last_line(payload: bytes) -> bytes:
    """The file as a writer killed mid-line leaves it: the last line cut after a few fields, no newline."""
    head, last = payload.rstrip(b"\n").rsplit(b"\n", 1)
    return head + b"\n" + b",".join(last.split(b",")[:4])


def _extra_field(payload: bytes) -> bytes:
    lines = payload.split(b"\n")
    lines[7] += b",surplus"
    return b"\n".join(lines)


def _unterminated_quote(payload: bytes) -> bytes:
    lines = payload.split(b"\n")
    lines[7] = lines[7].replace(b",", b',"', 1)
    return b"\n".join(lines)


def _changed(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: "object"})
        frame.loc[row, column] = value
        return frame

    return change


def _id_repeated_with_other_values(frame: pd.DataFrame) -> pd.DataFrame:
    """Row 10 carries row 3's id with its own values: two different records under one id."""
    frame = frame.copy()
    frame.loc[9, "loan_id"] = frame.loc[2, "loan_id"]
    return frame


def _ids_of_an_accepted_batch(home: Home) -> pd.DataFrame:
    """Month 4 with rows 6 and 8 given ids that batch 2025-01 already holds."""
    accepted = steps.lake_of(home.paths).read("loans", ["2025-01"])["loan_id"]
    frame = month(home)
    frame.loc[[5, 7], "loan_id"] = accepted.iloc[[0, 1]].to_numpy()
    return frame


CSV_CASES: list[tuple[str, Callable[[Home], bytes], type[Exception], str]] = [
    (
        "extra unexpected column",
        lambda h: csv_bytes(month(h).assign(promo_code="X1")),
        BatchRejected,
        r"2025-04\.csv: batch rejected.*unexpected column\(s\) promo_code: add them to dataset\.numeric_features "
        r"or dataset\.categorical_features, or set dataset\.extra_columns: drop",
    ),
    (
        "duplicated id with different values within a batch",
        lambda h: csv_bytes(_id_repeated_with_other_values(month(h))),
        BatchRejected,
        r"column loan_id: 1 id\(s\): 'L004\d{6}' at row\(s\) 3, 10 with different values: fix the export so "
        r"each id has one row, or set dataset\.duplicate_ids: keep_last",
    ),
    (
        "ids already in another accepted batch",
        lambda h: csv_bytes(_ids_of_an_accepted_batch(h)),
        BatchRejected,
        r"column loan_id: 2 id\(s\): 'L001\d{6}' at row\(s\) 6; 'L001\d{6}' at row\(s\) 8 already in another "
        r"accepted batch of the lake: remove those rows.*dataset\.duplicate_ids: keep_last.*"
        r"column loan_id: 'L001\d{6}' is in batch 2025-01; 'L001\d{6}' is in batch 2025-01",
    ),
    ("empty file", lambda h: b"", BatchRejected, r"2025-04\.csv.*empty \(0 bytes\).*re-export"),
    (
        "header only",
        lambda h: csv_bytes(month(h)).split(b"\n", 1)[0] + b"\n",
        BatchRejected,
        r"header but no rows.*re-export",
    ),
    (
        "truncated last line",
        lambda h: _truncate_last_line(csv_bytes(month(h))),
        BatchRejected,
        r"1 truncated or malformed line\(s\): row \d+: 4 field\(s\) where the header has 16.*re-export",
    ),
    (
        "line with an extra field",
        lambda h: _extra_field(csv_bytes(month(h))),
        BatchRejected,
        r"malformed CSV: .*Expected 16 fields in line 8, saw 17.*fix or re-export",
    ),
    (
        "unterminated quote",
        lambda h: _unterminated_quote(csv_bytes(month(h))),
        BatchRejected,
        r"malformed CSV: .*(EOF inside string|Expected \d+ fields).*fix or re-export",
    ),
    (
        "missing required column",
        lambda h: csv_bytes(month(h).drop(columns=["credit_score"])),
        BatchRejected,
        r"missing required column\(s\) credit_score: restore them in the export",
    ),
    (
        "wrong type in a column",
        lambda h: csv_bytes(_changed("age", 3, "forty")(month(h))),
        BatchRejected,
        r"column age: non-numeric value\(s\) 'forty' at row\(s\) 4 \(fix them or leave empty\)",
    ),
    (
        "third target class",
        lambda h: csv_bytes(_changed("defaulted", 0, 2)(month(h))),
        BatchRejected,
        r"column defaulted: 3 classes \['0', '1', '2'\] found; a binary target has two",
    ),
    (
        "target coded with other labels",
        lambda h: csv_bytes(month(h).assign(defaulted=lambda f: f["defaulted"].map({0: "no", 1: "yes"}))),
        BatchRejected,
        r"column defaulted: positive class 1 never occurs \(classes seen: \['no', 'yes'\]\)",
    ),
    (
        "all-null column",
        lambda h: csv_bytes(month(h).assign(region=None)),
        BatchRejected,
        r"column region: every value is empty \(check the export\)",
    ),
    (
        "time outside the batch window",
        lambda h: csv_bytes(_changed("applied_at", 2, "2025-03-31T23:59:00")(month(h))),
        BatchRejected,
        r"column applied_at: 1 time\(s\) outside the batch window \[2025-04-01, 2025-05-01\).*row\(s\) 3.*"
        r"move those rows to their own batch file",
    ),
    (
        "unparsable time",
        lambda h: csv_bytes(_changed("applied_at", 5, "yesterday")(month(h))),
        BatchRejected,
        r"column applied_at: missing or unparsable time\(s\) 'yesterday' at row\(s\) 6 \(use ISO 8601\)",
    ),
    (
        "values the quality gate forbids",
        # by id, so that both copies of a record delivered twice stay the same record
        lambda h: csv_bytes(
            month(h).assign(age=lambda f: f["age"].where(~f["loan_id"].str.endswith("0"), -1))
        ),
        QualityGateFailed,
        r"data-quality gate failed.*expect_column_values_to_be_between on column age \[critical\].*"
        r"quarantined to",
    ),
]


@pytest.mark.parametrize(("name", "build", "error", "pattern"), CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_bad_csv_is_quarantined_and_nothing_else_changes(
    home: Home, name: str, build: Callable[[Home], bytes], error: type[Exception], pattern: str
) -> None:
    refuse(home, name, build(home), error, pattern, quarantined=True)


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("corrupt Parquet (not Parquet at all)", lambda good: b"PAR1" + b"\x00garbage" * 64),
        ("corrupt Parquet (cut in half)", lambda good: good[: len(good) // 2]),
        ("corrupt Parquet (footer damaged)", lambda good: good[:-12] + b"\xff" * 8 + good[-4:]),
    ],
)
def test_corrupt_parquet_is_quarantined(home: Home, name: str, corrupt: Callable[[bytes], bytes]) -> None:
    config = with_dataset(home.config, source_format="parquet")
    payload = corrupt(parquet_bytes(month(home)))
    refuse(
        home,
        name,
        payload,
        BatchRejected,
        r"2025-04\.parquet: batch rejected.*not a readable Parquet file: .*\(re-export the batch\)",
        quarantined=True,
        config=config,
        fmt="parquet",
    )


def test_batch_above_max_batch_rows_is_quarantined(home: Home) -> None:
    small = with_dataset(home.config, max_batch_rows=500)
    refuse(
        home,
        "batch too large for dataset.max_batch_rows",
        None,
        BatchRejected,
        r"dataset\.max_batch_rows=500.*split the batch or raise the limit",
        quarantined=True,
        config=small,
    )


def test_batch_far_above_the_limit_is_refused_before_it_is_read_whole(home: Home) -> None:
    """A runaway export must be refused after max_batch_rows rows, not parsed to its end (memory)."""
    small = with_dataset(home.config, max_batch_rows=100)
    lines = csv_bytes(month(home)).split(b"\n")
    lines[900] = lines[900].replace(b",", b',"', 1)  # far beyond the limit: only a full read meets it
    refuse(
        home,
        "far too large batch refused without reading it whole",
        b"\n".join(lines),
        BatchRejected,
        r"more than dataset\.max_batch_rows=100 rows",
        quarantined=True,
        config=small,
        known_defect="ml/steps.py ingest_batch",
    )


def test_source_path_escaping_the_landing_zone_is_refused(home: Home, tmp_path: Path) -> None:
    escaping = with_dataset(home.config, source_path="../../etc")
    refuse(
        home,
        "source path escaping the landing zone",
        None,
        BatchRejected,
        r"dataset\.source\.path resolves outside the landing zone .*move the data into it",
        quarantined=False,
        config=escaping,
    )
    absolute = with_dataset(home.config, source_path=str(tmp_path))
    (tmp_path / f"{BATCH}.csv").write_bytes(csv_bytes(month(home)))
    refuse(
        home,
        "absolute source path outside the landing zone",
        None,
        BatchRejected,
        r"resolves outside the landing zone",
        quarantined=False,
        config=absolute,
    )


def test_symlink_out_of_the_landing_zone_is_refused(home: Home, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.csv"
    outside.write_bytes(csv_bytes(month(home)))
    link = home.paths.landing / "loans" / "2025-09.csv"
    link.symlink_to(outside)
    try:
        refuse(
            home,
            "batch file symlinked out of the landing zone",
            None,
            BatchRejected,
            r"batch file resolves outside the landing zone",
            quarantined=False,
            batch="2025-09",
        )
    finally:
        link.unlink()
    assert outside.is_file(), "a refused file outside the landing zone must not be moved"


@pytest.mark.parametrize("batch", ["../../../../tmp/x", "2025-04/../../2025-01", "2025-4", "2025-04.csv"])
def test_malformed_batch_key_is_refused(home: Home, batch: str) -> None:
    refuse(
        home,
        f"malformed batch key {batch!r}",
        None,
        BatchKeyError,
        r"does not match batching\.by='month' \(expected e\.g\. 2025-03\)",
        quarantined=False,
        batch=batch,
    )


def test_extra_column_is_dropped_with_a_warning_when_configured(home: Home) -> None:
    """With ``dataset.extra_columns: drop`` the batch is accepted with the configured columns only."""
    batch = "2025-05"
    landed = home.paths.landing / "loans" / f"{batch}.csv"
    landed.write_bytes(csv_bytes(month(home, 5).assign(promo_code="X1")))
    dropping = with_dataset(home.config, extra_columns="drop")
    with case("bad_input", "extra unexpected column with dataset.extra_columns: drop", home):
        done = steps.ingest_batch(dropping, home.paths, batch)
        assert any("promo_code" in w and "add them to the config" in w for w in done["warnings"]), done
        lake = steps.lake_of(home.paths)
        columns = list(lake.read("loans", [batch]).columns)
        assert columns == list(lake.read("loans", ["2025-01"]).columns)
        assert "promo_code" not in columns


def test_duplicate_ids_within_and_across_batches_with_keep_last(home: Home) -> None:
    """With ``dataset.duplicate_ids: keep_last``: exact repeats and ids of other batches are dropped and counted,
    an id repeated with other values keeps its last row, and re-ingesting changes nothing."""
    batch = "2025-06"
    fresh = month(home, 6)
    fresh = fresh.drop_duplicates("loan_id").reset_index(drop=True)
    within = fresh.sample(25, random_state=1)
    corrected = fresh.sample(5, random_state=3).assign(age=lambda f: f["age"] + 1)
    earlier = steps.lake_of(home.paths).read("loans", ["2025-01"]).head(40)
    across = fresh.sample(40, random_state=2).assign(loan_id=earlier["loan_id"].to_numpy())
    landed = home.paths.landing / "loans" / f"{batch}.csv"
    landed.write_bytes(csv_bytes(pd.concat([fresh, within, across, corrected], ignore_index=True)))
    keep_last = with_dataset(home.config, duplicate_ids="keep_last")
    with case("bad_input", "duplicated ids within and across batches with keep_last", home):
        done = steps.ingest_batch(keep_last, home.paths, batch)
        assert done["duplicates_dropped"] == 70 and done["rows"] == len(fresh), done
        assert any("40 row(s) whose id is already in another batch" in w for w in done["warnings"]), done
        assert any("dropped 5 earlier row(s) of 5 id(s) repeated" in w for w in done["warnings"]), done
        assert any("dropped 70 duplicate id(s) in column loan_id" in w for w in done["warnings"]), done
        lake = steps.lake_of(home.paths)
        stored = lake.read("loans", lake.batches("loans"))
        assert stored["loan_id"].is_unique
        ages = lake.read("loans", [batch]).set_index("loan_id").loc[corrected["loan_id"], "age"]
        assert ages.tolist() == corrected["age"].astype(float).tolist()
    with case("bad_input", "re-ingesting the deduplicated batch changes nothing", home):
        before = snapshot(home)
        assert steps.ingest_batch(keep_last, home.paths, batch)["sha256"] == done["sha256"]
        assert_untouched(before, snapshot(home))


def test_single_class_training_window_fails_with_training_data_error(home: Home) -> None:
    """An all-positive window is accepted by ingest (a legal batch) but cannot train: no version appears."""
    single = with_dataset(home.config, name="loans_single", source_path="loans_single")
    landed = home.paths.landing / "loans_single" / f"{BATCH}.csv"
    landed.parent.mkdir(parents=True, exist_ok=True)
    landed.write_bytes(csv_bytes(month(home).assign(defaulted=1)))
    before = snapshot(home)
    with case("bad_input", "single class in a training window", home):
        steps.ingest_batch(single, home.paths, BATCH)
        with pytest.raises(
            TrainingDataError, match=r"single class \(\d+ positives in \d+ rows\).*widen the window"
        ):
            steps.train_challenger(single, home.paths, [BATCH], {}, None, "single-class", {})
        after = snapshot(home)
        assert (after.versions, after.aliases, after.history) == (
            before.versions,
            before.aliases,
            before.history,
        )


def _config_file(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    document = yaml.safe_load((ROOT / "loopline.yaml").read_text())
    change(document)
    target = tmp_path / "loopline.yaml"
    target.write_text(yaml.safe_dump(document))
    return target


CONFIG_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "config with an unknown key",
        lambda d: d["training"].update(num_boost_rounds=10),
        r"training\.num_boost_rounds: unknown key \(remove it or check its spelling\)",
    ),
    (
        "config with a wrong type",
        lambda d: d["training"].update(max_depth="deep"),
        r"training\.max_depth: .*integer.*\(got 'deep'\)",
    ),
    (
        "config with a missing required field",
        lambda d: d["dataset"].pop("id_column"),
        r"dataset\.id_column: required key is missing",
    ),
    (
        "config with a section of the wrong shape",
        lambda d: d.update(gate=["min_roc_auc", 0.7]),
        r"gate: .*\(got \['min_roc_auc', 0\.7\]\)",
    ),
]


@pytest.mark.parametrize(("name", "change", "pattern"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_names_the_key(
    home: Home, tmp_path: Path, name: str, change: Callable[[dict[str, Any]], None], pattern: str
) -> None:
    file = _config_file(tmp_path, change)
    before = snapshot(home)
    with case("bad_input", name, home):
        with pytest.raises(ConfigError) as raised:
            load_config(file)
        assert str(file) in str(raised.value) and re.search(pattern, str(raised.value)), str(raised.value)
        assert_untouched(before, snapshot(home))


def test_landing_zone_holds_no_leftovers(home: Home) -> None:
    """After every case above, month 4 is still landed as it was and nothing else was left in the lake."""
    assert (home.paths.landing / "loans" / f"{BATCH}.csv").read_bytes() == csv_bytes(month(home))
    assert BATCH not in steps.lake_of(home.paths).batches("loans")
    assert not list(home.paths.lake.rglob("*.tmp"))
    assert pq.ParquetFile(steps.lake_of(home.paths).partition("loans", "2025-01").data_file).metadata.num_rows
