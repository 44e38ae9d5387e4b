"""Exact order statistics in bounded memory: streamed selections equal the whole column sorted in memory."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest

from ml import drift
from ml.quantiles import StreamedColumns, StreamedSelection, key_values, order_keys

pytestmark = pytest.mark.fast
BINS = 10


def _profile(statistics: object) -> dict:
    return drift.numeric_profile(statistics, BINS)  # type: ignore[arg-type]


def _streamed(values: np.ndarray, memory_bytes: int, chunk: int = 997) -> StreamedSelection:
    selection = StreamedSelection(_profile, memory_bytes)
    while selection.pending:
        for start in range(0, values.size, chunk):
            selection.add(values[start : start + chunk])
        selection.end_pass()
    return selection


def _assert_same_profile(values: np.ndarray, memory_bytes: int = 1 << 16) -> StreamedSelection:
    """The streamed profile equals ``drift.numeric_profile`` on the whole column.

    Mean and std up to the summation order (relative to the largest magnitude: sums that cancel differ).
    """
    selection = _streamed(values, memory_bytes)
    expected, found = drift.numeric_profile(values, BINS), _profile(selection)
    assert set(found) == set(expected)
    finite = values[np.isfinite(values)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    for key, value in expected.items():
        if key in {"mean", "std"} and value is not None and math.isfinite(value):
            assert found[key] == pytest.approx(value, rel=1e-12, abs=1e-12 * scale), key
        elif key in {"mean", "std"}:
            assert (found[key] is None) == (value is None), key
        else:
            assert found[key] == value, key
    return selection


CASES = {
    "normal": lambda rng, n: rng.normal(size=n),
    "heavy ties": lambda rng, n: rng.integers(0, 7, n).astype("float64"),
    "few distinct with NaN and infinities": lambda rng, n: rng.choice(
        [np.nan, -np.inf, np.inf, 1.5, -2.0, 0.0], n
    ),
    "negative and positive zeros": lambda rng, n: (
        rng.choice([-0.0, 0.0, 1.0, -1.0], n) * rng.integers(0, 2, n)
    ),
    "constant": lambda rng, n: np.full(n, 3.25),
    "huge and tiny": lambda rng, n: (
        rng.choice([-1.7e308, 1.7e308, 5e-324, -5e-324, 1e-300, 0.0], n) * rng.random(n)
    ),
    "lognormal spread over many binades": lambda rng, n: rng.lognormal(0, 8, n) * rng.choice([-1, 1], n),
    "a dense cluster and far outliers": lambda rng, n: np.concatenate(
        [1.0 + rng.random(n - 4) * 1e-12, [-1e200, 1e200, -3.0, 3.0]]
    ),
    "integers with 150 distinct values": lambda rng, n: rng.integers(-75, 75, n).astype("float64"),
    "all missing": lambda rng, n: np.full(n, np.nan),
}


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("case", list(CASES))
def test_streamed_profile_equals_the_in_memory_profile(case: str) -> None:
    rng = np.random.default_rng(len(case))
    values = CASES[case](rng, 40_000)
    _assert_same_profile(values)


def test_a_small_budget_takes_more_passes_and_stays_exact() -> None:
    values = np.random.default_rng(1).normal(size=200_000)
    roomy = _assert_same_profile(values, memory_bytes=64 << 20)
    tight = _assert_same_profile(values, memory_bytes=1 << 16)
    assert roomy.passes == 2  # counts, then the wanted buckets collected
    assert tight.passes > roomy.passes


def test_a_single_valued_bucket_resolves_without_collecting_its_values() -> None:
    values = np.concatenate([np.full(300_000, 7.0), np.arange(1000.0)])
    selection = _assert_same_profile(values, memory_bytes=1 << 16)
    assert selection.passes <= 3
    assert sum(v.size for v in selection._collected.values()) < 10_000


def test_order_keys_keep_the_order_and_invert() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [rng.normal(size=1000) * 10.0 ** rng.integers(-300, 300, 1000), [-np.inf, np.inf]]
    )
    values = np.concatenate([values, [0.0, -0.0, 5e-324, -5e-324]])
    keys = order_keys(values)
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(keys[order].astype(object)) >= 0)
    assert order_keys(np.array([-0.0]))[0] == order_keys(np.array([0.0]))[0]
    np.testing.assert_array_equal(key_values(keys), values + 0.0)


def test_counts_below_points_equal_numpy_on_the_sorted_column() -> None:
    rng = np.random.default_rng(4)
    values = np.round(rng.normal(size=50_000), 2)
    selection = _streamed(values, 1 << 16)
    ordered = np.sort(values)
    median = ordered[(values.size - 1) // 2]  # a rank the profile reads (its middle edge)
    points = np.array([-np.inf, -9.0, median, -median, 9.0, np.inf, np.nan])
    for side in ("left", "right"):
        np.testing.assert_array_equal(
            selection.count_below(points[points != -median], side),
            np.searchsorted(ordered, points[points != -median], side=side),
        )


def test_only_the_requested_ranks_are_answered() -> None:
    values = np.random.default_rng(5).normal(size=50_000)
    selection = StreamedSelection(lambda statistics: statistics.at(np.array([0])), 1 << 16)
    while selection.pending:
        selection.add(values)
        selection.end_pass()
    assert selection.at(np.array([0]))[0] == values.min()
    with pytest.raises(ValueError, match="not selected"):
        selection.at(np.array([25_000]))
    with pytest.raises(ValueError, match="not requested"):
        selection.distinct(10)


def _chunks(frame: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    rows = len(next(iter(frame.values())))
    for start in range(0, rows, size):
        yield {column: values[start : start + size] for column, values in frame.items()}


def test_columns_share_passes_and_read_only_the_pending_ones() -> None:
    rng = np.random.default_rng(6)
    frame = {
        "constant": np.zeros(100_000),
        "normal": rng.normal(size=100_000),
        "ties": rng.integers(0, 3, 100_000),
    }
    reads: list[list[str]] = []

    def chunks(columns: list[str]) -> Iterator[dict[str, np.ndarray]]:
        reads.append(columns)
        return _chunks({column: frame[column] for column in columns}, 10_000)

    selected = StreamedColumns(list(frame), _profile, 3 << 20).run(chunks)
    assert reads[0] == list(frame) and len(reads) >= 2
    assert all(set(later) <= set(earlier) for earlier, later in itertools.pairwise(reads))
    for column, values in frame.items():
        assert _profile(selected[column])["edges"] == drift.numeric_profile(values, BINS)["edges"]


def test_an_unfinished_selection_refuses_to_answer() -> None:
    selection = StreamedSelection(_profile, 1 << 20)
    selection.add(np.arange(10.0))
    with pytest.raises(RuntimeError, match="more passes"):
        selection.at(np.array([0]))
