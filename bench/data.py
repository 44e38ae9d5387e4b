"""The bench dataset: seeded, 30 features (26 numeric, 4 categorical), a binary target, an id and an event time.

Batches are monthly (``2025-01`` ...). A planted shift moves ``DRIFTED_NUMERIC`` by ``shift`` standard deviations
and reweights ``DRIFTED_CATEGORICAL``; every other column keeps its distribution, so a drift detector should
flag exactly ``DRIFTED_COLUMNS``. ``concept`` changes how the features relate to the target (the loop needs it
for a challenger to beat the champion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DATASET = "bench"
ID_COLUMN = "row_id"
TIME_COLUMN = "event_time"
TARGET = "label"
NUMERIC = [f"num_{i:02d}" for i in range(1, 27)]
CATEGORICAL = ["cat_a", "cat_b", "cat_c", "cat_d"]
FEATURES = NUMERIC + CATEGORICAL
DRIFTED_NUMERIC = NUMERIC[:5]
DRIFTED_CATEGORICAL = ["cat_a"]
DRIFTED_COLUMNS = DRIFTED_NUMERIC + DRIFTED_CATEGORICAL
_CARDINALITY = {"cat_a": 3, "cat_b": 6, "cat_c": 12, "cat_d": 40}
_KINDS = ("normal", "lognormal", "gamma", "counts", "uniform", "beta")
_WITH_GAPS = {"num_03", "num_09", "num_14", "num_20", "num_25"}
SUITE_FILE = Path(__file__).resolve().parent / "expectations" / "bench.json"


@dataclass(frozen=True)
class BatchSpec:
    """One batch to generate: its key, rows, seed and planted shifts."""

    key: str
    rows: int
    seed: int
    shift: float = 0.0
    concept: float = 0.0


def _kind(column: str) -> str:
    return _KINDS[(int(column[-2:]) - 1) % len(_KINDS)]


def _numeric(rng: np.random.Generator, column: str, n: int) -> np.ndarray:
    """A column of one of six shapes, its parameters fixed by the column's number."""
    i = int(column[-2:])
    kind = _kind(column)
    if kind == "normal":
        return rng.normal(10.0 * i, 2.0 + i % 5, n)
    if kind == "lognormal":
        return rng.lognormal(8.0 + i % 3, 0.5, n).round(2)
    if kind == "gamma":
        return rng.gamma(2.0 + i % 4, 3.0, n).round(3)
    if kind == "counts":
        return rng.poisson(1.0 + i % 7, n).astype("float64")
    if kind == "uniform":
        return rng.uniform(0.0, 100.0 + i, n).round(3)
    return rng.beta(2.0, 5.0 + i % 3, n).round(5)


def _categories(column: str) -> list[str]:
    return [f"{column[-1]}{k:02d}" for k in range(_CARDINALITY[column])]


def _category_probabilities(column: str, shift: float) -> np.ndarray:
    k = _CARDINALITY[column]
    weights = 1.0 / np.arange(1, k + 1) ** 0.8
    if column in DRIFTED_CATEGORICAL and shift:
        weights = weights * np.exp(shift * np.linspace(0.0, 3.0, k))
    return weights / weights.sum()


def generate_batch(spec: BatchSpec) -> pd.DataFrame:
    """One batch as the lake stores it after ingest: int ids, datetime64[us], float64 numerics, str categories."""
    rng = np.random.default_rng([spec.seed, spec.rows])
    n = spec.rows
    period = pd.Period(spec.key, freq="M")
    seconds = int((period.end_time - period.start_time).total_seconds())
    times = period.start_time + pd.to_timedelta(np.sort(rng.integers(0, seconds, n)), unit="s")
    data: dict[str, Any] = {
        ID_COLUMN: np.arange(n, dtype="int64") + (period.ordinal * 10_000_000_000),
        TIME_COLUMN: times.astype("datetime64[us]"),
    }
    standardised: dict[str, np.ndarray] = {}
    for column in NUMERIC:
        values = _numeric(rng, column, n)
        centre, scale = float(values.mean()), float(values.std()) or 1.0
        if column in DRIFTED_NUMERIC and spec.shift:
            values = values + spec.shift * scale
        if column in NUMERIC[:8]:
            standardised[column] = (values - centre) / scale
        if column in _WITH_GAPS:
            values = values.copy()
            values[rng.random(n) < 0.02] = np.nan
        data[column] = values
    codes = {}
    for column in CATEGORICAL:
        labels = np.asarray(_categories(column), dtype=object)
        codes[column] = rng.choice(len(labels), n, p=_category_probabilities(column, spec.shift))
        data[column] = pd.array(labels[codes[column]], dtype="str")
    weights = np.array([0.9, -0.7, 0.6, 0.5, -0.4, 0.3, 0.3, -0.2])
    weights = weights + spec.concept * np.array([-1.2, 1.0, -0.8, 0.0, 0.6, -0.5, 0.0, 0.4])
    logit = -1.9 + sum(w * standardised[c] for w, c in zip(weights, NUMERIC[:8], strict=True))
    logit = logit + 0.25 * (codes["cat_b"] % 3) - 0.15 * (codes["cat_a"] == 0)
    logit = logit + spec.concept * 0.8 * (codes["cat_a"] == 2)
    data[TARGET] = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype("int64")
    return pd.DataFrame(data)


def window_specs(rows: int, seed: int = 11) -> list[BatchSpec]:
    """The training window: three baseline months holding ``rows`` rows in all."""
    third = rows // 3
    sizes = [third, third, rows - 2 * third]
    return [BatchSpec(f"2025-0{m}", size, seed + m) for m, size in enumerate(sizes, start=1)]


def new_batch_spec(rows: int, shift: float = 0.5, seed: int = 11) -> BatchSpec:
    """The batch that lands after the window, with the planted shift."""
    return BatchSpec("2025-04", rows, seed + 4, shift=shift)


def write_config(
    folder: Path, *, source_format: str = "parquet", extra: dict[str, Any] | None = None
) -> Path:
    """A Loopline config for the bench dataset (YAML is a superset of JSON); returns its path."""
    config: dict[str, Any] = {
        "dataset": {
            "name": DATASET,
            "source": {"path": DATASET, "format": source_format},
            "id_column": ID_COLUMN,
            "time_column": TIME_COLUMN,
            "target": TARGET,
            "positive_class": 1,
            "numeric_features": NUMERIC,
            "categorical_features": CATEGORICAL,
            "expectation_suite": str(SUITE_FILE),
            "max_batch_rows": 50_000_000,
        },
        "batching": {"by": "month"},
        "training": {"window_batches": 3, "holdout_fraction": 0.3, "num_boost_round": 200},
    }
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "loopline.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _expectation(kind: str, severity: str = "critical", **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "severity": severity, "meta": {"severity": severity}}


def make_suite() -> dict[str, Any]:
    """The bench dataset's expectation suite, written like ``expectations/loans.json``."""
    columns = [ID_COLUMN, TIME_COLUMN, *FEATURES, TARGET]
    items = [_expectation("expect_table_row_count_to_be_between", min_value=200, max_value=50_000_000)]
    items += [_expectation("expect_column_to_exist", column=c) for c in columns]
    items.append(_expectation("expect_column_values_to_be_unique", column=ID_COLUMN))
    not_null = [ID_COLUMN, TIME_COLUMN, *NUMERIC[::2], *CATEGORICAL]
    items += [
        _expectation(
            "expect_column_values_to_not_be_null",
            "warning" if c in _WITH_GAPS else "critical",
            column=c,
            mostly=0.95 if c in _WITH_GAPS else 0.99,
        )
        for c in not_null
    ]
    reference = pd.concat([generate_batch(s) for s in window_specs(60_000, seed=101)])
    shifted = generate_batch(BatchSpec("2025-05", 20_000, 202, shift=3.0))
    for column in NUMERIC:
        both = pd.concat([reference[column], shifted[column]])
        low, high = float(both.min()), float(both.max())
        span = high - low
        low = 0.0 if low >= 0 else round(low - span, 0)
        items.append(
            _expectation(
                "expect_column_values_to_be_between",
                column=column,
                min_value=low,
                max_value=round(high + span, 0),
                mostly=0.999,
            )
        )
    for column in CATEGORICAL:
        severity = "critical" if column in ("cat_a", "cat_b") else "warning"
        items.append(
            _expectation(
                "expect_column_values_to_be_in_set", severity, column=column, value_set=_categories(column)
            )
        )
    items.append(_expectation("expect_column_values_to_be_in_set", column=TARGET, value_set=[0, 1]))
    items.append(
        _expectation(
            "expect_column_mean_to_be_between", "warning", column=TARGET, min_value=0.02, max_value=0.6
        )
    )
    return {
        "name": DATASET,
        "expectations": items,
        "meta": {
            "dataset": DATASET,
            "notes": "Benchmark suite (python -c 'import bench.data as d; d.write_suite()' regenerates it).",
        },
    }


def write_suite(path: Path = SUITE_FILE) -> Path:
    """Write the suite JSON (committed as data; regenerate only when the generator changes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_suite(), indent=2) + "\n")
    return path
