"""The streamed gate in bounded memory: exact repeats through spilled hash buckets, one column per pass."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml import quality
from ml.config import Paths, load_config
from ml.demo_data import Scenario, generate_month
from ml.engines.local import LocalEngine
from ml.lake import Lake

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "expectations" / "loans.json"


def _batches(values: pd.Series, rows: int) -> list[pd.Series]:
    return [values.iloc[i : i + rows] for i in range(0, len(values), rows)]


def _pandas_repeats(values: pd.Series) -> tuple[int, list]:
    """What GE reports for uniqueness on the whole column: rows of repeated values, the first five of them."""
    repeated = values.duplicated(keep=False).to_numpy()
    return int(repeated.sum()), [quality._plain(v) for v in values[repeated].head(quality.EXAMPLES)]


def _find(values: pd.Series, folder: Path, rows: int = 1000, limit: int = 1 << 20) -> tuple[int, list]:
    finder = quality._RepeatFinder(folder, limit)
    batches = _batches(values, rows)
    for batch in batches:
        finder.add(batch)
    return finder.result(lambda: iter(batches))


@pytest.mark.fast
def test_repeats_in_far_apart_batches_are_found_exactly(tmp_path: Path) -> None:
    ids = pd.Series(np.arange(50_000, dtype="int64") * 7919)
    ids.iloc[[49_990, 49_999]] = ids.iloc[[3, 11]].to_numpy()  # the last batch repeats ids of the first
    ids.iloc[25_000] = ids.iloc[3]
    count, examples = _find(ids, tmp_path / "far")
    assert (count, examples) == _pandas_repeats(ids)
    assert count == 5 and examples == [int(ids.iloc[i]) for i in (3, 11, 25_000, 49_990, 49_999)]
    assert _find(ids.drop_duplicates(), tmp_path / "unique") == (0, [])


@pytest.mark.fast
def test_oversized_buckets_are_split_by_further_hash_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = quality._hash64
    monkeypatch.setattr(quality, "_hash64", lambda values: real(values) & ~np.uint64(63))  # all in bucket 0
    rng = np.random.default_rng(3)
    ids = pd.Series(rng.integers(0, 400_000, 20_000))  # chance repeats
    found = _find(ids, tmp_path / "skewed", rows=4_000, limit=64 * 1024)
    assert found == _pandas_repeats(ids) and found[0] > 0
    assert len(list((tmp_path / "skewed" / "00").iterdir())) > 32  # bucket 0 was split by the next six bits


@pytest.mark.fast
def test_a_value_repeated_in_every_batch_spills_once_per_batch(tmp_path: Path) -> None:
    ids = pd.Series(np.where(np.arange(30_000) % 3 == 0, -1, np.arange(30_000)))
    finder = quality._RepeatFinder(tmp_path / "hot", 1 << 20)
    batches = _batches(ids, 1000)
    for batch in batches:
        finder.add(batch)
    spilled = sum(path.stat().st_size for path in (tmp_path / "hot").glob("*.bin"))
    assert spilled == quality._ENTRY.itemsize * sum(batch.nunique() for batch in batches)
    assert finder.result(lambda: iter(batches)) == _pandas_repeats(ids) == (10_000, [-1] * 5)


@pytest.mark.fast
def test_hash_collisions_never_count_as_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = quality._hash64
    monkeypatch.setattr(quality, "_hash64", lambda values: real(values) % np.uint64(3))
    ids = pd.Series([f"id-{i}" for i in range(5_000)])
    assert _find(ids, tmp_path / "distinct") == (0, [])  # every hash collides, no value repeats
    ids.iloc[4_321] = ids.iloc[17]
    assert _find(ids, tmp_path / "one") == (2, ["id-17", "id-17"])


@pytest.mark.fast
def test_many_suspects_are_compared_over_several_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = quality._hash64
    monkeypatch.setattr(quality, "_hash64", lambda values: real(values) % np.uint64(5_000))
    ids = pd.Series(np.arange(40_000, dtype="int64"))
    ids.iloc[39_000:] = ids.iloc[:1_000].to_numpy()
    finder = quality._RepeatFinder(tmp_path / "passes", limit=1 << 16)  # 1024 suspects per pass
    batches = _batches(ids, 3_000)
    for batch in batches:
        finder.add(batch)
    passes = []

    def reread() -> Iterator[pd.Series]:
        passes.append(1)
        return iter(batches)

    assert finder.result(reread) == _pandas_repeats(ids)
    assert len(passes) == 5  # 5000 suspect hashes, 1024 per pass


@pytest.mark.fast
def test_equal_numbers_of_different_dtypes_repeat(tmp_path: Path) -> None:
    """An integer id column with a gap in one record batch comes as floats there, as in a whole-window read."""
    folder = tmp_path / "dtypes"
    finder = quality._RepeatFinder(folder, 1 << 20)
    batches = [pd.Series([1, 2, 3]), pd.Series([4.0, 3.0, 0.0]), pd.Series([-0.0, 5.0])]
    for batch in batches:
        finder.add(batch)
    whole = pd.concat(batches, ignore_index=True)
    assert finder.result(lambda: iter(batches)) == _pandas_repeats(whole) == (4, [3, 3.0, 0.0, -0.0])


@pytest.mark.fast
def test_repeat_finder_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    runs = itertools.count()

    def peak(rows: int) -> int:
        values = pd.Series(np.arange(rows, dtype="int64"))
        tracemalloc.start()
        run = next(runs)
        _find(values.iloc[:0], tmp_path / f"warm-{run}")  # imports and caches outside the measure
        tracemalloc.reset_peak()
        finder = quality._RepeatFinder(tmp_path / f"n-{run}", 1 << 20)
        for start in range(0, rows, 10_000):
            finder.add(values.iloc[start : start + 10_000])
        assert finder.result(lambda: iter(())) == (0, [])
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    peak(800_000)  # a first spill may import modules lazily (their allocations are not the finder's)
    small, large = peak(100_000), peak(800_000)
    assert large < 2 * small and large < 8 * 800_000  # holding the ids would take 8 bytes per row


def _reader(frame: pd.DataFrame, rows: int, calls: list) -> quality.ChunkReader:
    def read(columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
        calls.append(None if columns is None else list(columns))
        chosen = frame if columns is None else frame.reindex(columns=list(columns))
        return (chosen.iloc[i : i + rows] for i in range(0, len(chosen), rows))

    return read


def _failures(result: quality.GateResult) -> list[tuple]:
    return sorted(
        (f.expectation, f.column or "", f.severity, f.unexpected_percent, [str(e) for e in f.examples])
        for f in result.critical + result.warnings
    )


@pytest.fixture(scope="module")
def broken() -> pd.DataFrame:
    """Demo loans with gaps, out-of-range and unknown values, and ids repeated far apart."""
    month = generate_month(Scenario(rows_per_month=1000, incident_months=()), 1)
    frame = month.drop_duplicates("loan_id").reset_index(drop=True)
    frame.loc[::3, "credit_score"] = np.nan
    frame.loc[:20:2, "age"] = -1
    frame.loc[5, "home_ownership"] = "CASTLE"
    frame.loc[[2, 7], "loan_id"] = frame.loc[0, "loan_id"]
    return pd.concat([frame, frame.iloc[[40, 3]]], ignore_index=True)  # the end repeats the beginning


@pytest.mark.parametrize(
    ("budget", "tiny_hash"), [(64 * 2**20, False), (2_048, False), (64 * 2**20, True)], ids=str
)
def test_streamed_failures_equal_the_whole_frame_run(
    broken: pd.DataFrame, monkeypatch: pytest.MonkeyPatch, budget: int, tiny_hash: bool
) -> None:
    """Verdict, failed expectations, columns, shares and examples: all equal GE on the whole frame."""
    whole = quality.validate(broken, SUITE)
    if tiny_hash:
        real: Callable[[pd.Series], np.ndarray] = quality._hash64
        monkeypatch.setattr(quality, "_hash64", lambda values: real(values) % np.uint64(7))
    calls: list = []
    streamed = quality.validate_stream(
        _reader(broken, 97, calls), list(broken.columns), SUITE, budget_bytes=budget
    )
    assert not whole.passed and streamed.passed == whole.passed and streamed.evaluated == whole.evaluated
    assert _failures(streamed) == _failures(whole)
    assert ("expect_column_values_to_be_unique", "loan_id") in {
        (f.expectation, f.column) for f in streamed.critical
    }
    assert calls[0] is None and all(len(columns) == 1 for columns in calls[1:])  # one column per pass
    assert streamed.raw["rows"] == len(broken)


@pytest.mark.fast
def test_engine_chunks_read_only_the_asked_columns_and_fill_missing_ones(tmp_path: Path) -> None:
    config = load_config(ROOT / "loopline.yaml")
    paths = Paths(home=tmp_path / "home")
    lake = Lake(paths.lake)
    table = config.dataset.name
    lake.write(table, "2025-01", pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"], "c": [0.5, 1.5, 2.5]}))
    lake.write(table, "2025-02", pd.DataFrame({"a": [4, 5], "c": [3.5, 4.5]}))  # no column b
    engine = LocalEngine(config, paths)
    frames = list(engine.chunks(["2025-01", "2025-02"], ["c", "b"]))
    assert [list(frame.columns) for frame in frames] == [["c", "b"], ["c", "b"]]
    assert frames[1]["b"].isna().all() and frames[1]["c"].tolist() == [3.5, 4.5]
    assert list(next(iter(engine.chunks(["2025-01"], None))).columns) == ["a", "b", "c"]


def _arrow_reader(table: pa.Table, objects: pd.DataFrame, rows: int) -> quality.ChunkReader:
    """Record batches as ``LocalEngine.chunks`` gives them: each converted alone, so its dtype is its own (an
    integer column with a gap comes as floats, a boolean one with a gap as objects); ``objects``' columns
    (mixed Python values Arrow cannot hold) are sliced alongside."""

    def read(columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
        names = list(columns or [*table.column_names, *objects.columns])
        stored = [name for name in names if name in table.column_names]
        start = 0
        for batch in table.select(stored).to_batches(max_chunksize=rows):
            part = objects.iloc[start : start + batch.num_rows].reset_index(drop=True)
            start += batch.num_rows
            yield pd.concat([batch.to_pandas(), part], axis=1)[names]

    return read


@pytest.mark.fast
def test_streamed_type_checks_equal_ge_on_the_whole_frame(tmp_path: Path) -> None:
    """Per record batch dtype checks give GE's whole-window verdict, observed type, share and examples."""
    numeric, boolean = quality._SUGGESTED_TYPES["numeric"], quality._SUGGESTED_TYPES["bool"]
    rows = 1000
    table = pa.table(
        {
            "amount": pa.array(range(rows), pa.int64()),  # right type
            "amount_text": [str(i) for i in range(rows)],  # numbers stored as text: wrong type
            "count_with_gaps": pa.array([None if i % 300 == 7 else i for i in range(rows)], pa.int64()),
            "flag_with_gaps": pa.array([None if i % 400 == 5 else bool(i % 2) for i in range(rows)]),
        }
    )
    objects = pd.DataFrame({"flag_mixed": [True, "yes", False, "no", *[True] * (rows - 4)]})
    kinds = {"amount": numeric, "amount_text": numeric, "count_with_gaps": numeric}
    kinds |= {"flag_with_gaps": boolean, "flag_mixed": boolean}
    suite = tmp_path / "types.json"
    suite.write_text(
        json.dumps(
            {
                "name": "types",
                "expectations": [
                    {"type": quality.TYPE_LIST, "kwargs": {"column": column, "type_list": types}}
                    for column, types in kinds.items()
                ],
            }
        )
    )
    read = _arrow_reader(table, objects, 97)
    assert {str(chunk["count_with_gaps"].dtype) for chunk in read(None)} == {"int64", "float64"}
    assert {str(chunk["flag_with_gaps"].dtype) for chunk in read(None)} == {"bool", "object"}
    whole = quality.validate(table.to_pandas().join(objects), suite)
    whole_width: list[int] = []

    def counted(columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
        for chunk in read(columns):
            whole_width.extend([1] if columns is None else [])
            yield chunk

    streamed = quality.validate_stream(counted, [*table.column_names, *objects.columns], suite)
    assert len(whole_width) == 1  # counted column by column: GE saw the first record batch only
    assert _failures(streamed) == _failures(whole)
    assert {f.column: f.examples for f in streamed.critical} == {
        "amount_text": ["observed str"],
        "flag_mixed": ["yes", "no"],
    }
    assert streamed.critical[1].unexpected_percent == pytest.approx(0.2)
