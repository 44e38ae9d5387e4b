"""Reference profiles as Spark aggregations, in the document format of ``ml.drift.build_profile``.

One aggregation gives per column the present count, mean, population standard deviation and an approximate
distinct count. Columns with at most ``exact_limit`` distinct values (every categorical column, discrete numeric
columns such as counts or ages) then have their value counts collected in one ``groupBy``; edges, bin shares and
the KS grid follow on the driver with NumPy's own quantile definitions, so they equal the local profile. Numeric
columns with more distinct values take ``approxQuantile`` edges and KS grid (rank error at most
``relative_error`` x rows) and ``Bucketizer`` + ``groupBy`` counts for the bin shares and the CDF on the grid.

Tolerance against the local profile on the same rows: counts, missing rates and category shares are exact;
on the approximate path an edge is the value at a rank within ``relative_error`` of NumPy's, so a bin share or
a CDF point differs by at most ``2 * relative_error`` plus the share of rows tied at that edge (measured: below
0.005 on the demo data with ``relative_error=1e-3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ml import drift
from ml.features import FeatureSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

EXACT_LIMIT = 10_000
"""Columns with at most this many distinct values are profiled exactly from their value counts."""
RELATIVE_ERROR = 1e-3
"""approxQuantile's relative rank error on the other numeric columns."""
TOP_CATEGORIES = 10 * drift.MAX_CATEGORIES
"""Value counts kept of a categorical column with more than ``exact_limit`` values (the profile keeps 200)."""


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str
    present: int
    mean: float | None
    std: float | None
    distinct: int


def _missing_as_null(frame: DataFrame, numeric: list[str]) -> DataFrame:
    """Numeric columns as doubles with NaN and infinities turned into null (missing, as in the local path)."""
    from pyspark.sql import functions as F

    def clean(name: str) -> Any:
        value = F.col(name).cast("double")
        finite = value.isNotNull() & ~F.isnan(value) & (F.abs(value) != F.lit(float("inf")))
        return F.when(finite, value).alias(name)

    others = [c for c in frame.columns if c not in numeric]
    return frame.select(*[clean(c) for c in numeric], *others)


def _summaries(frame: DataFrame, numeric: list[str], categorical: list[str]) -> tuple[int, list[_Column]]:
    from pyspark.sql import functions as F

    aggregates = [F.count(F.lit(1)).alias("rows")]
    for i, name in enumerate(numeric):
        aggregates += [
            F.count(name).alias(f"n{i}"),
            F.avg(name).alias(f"m{i}"),
            F.stddev_pop(name).alias(f"s{i}"),
            F.approx_count_distinct(name, 0.02).alias(f"d{i}"),
        ]
    for i, name in enumerate(categorical):
        aggregates += [F.count(name).alias(f"cn{i}"), F.approx_count_distinct(name, 0.02).alias(f"cd{i}")]
    row = frame.agg(*aggregates).collect()[0]
    columns = [
        _Column(name, "numeric", row[f"n{i}"], row[f"m{i}"], row[f"s{i}"], row[f"d{i}"])
        for i, name in enumerate(numeric)
    ] + [
        _Column(name, "categorical", row[f"cn{i}"], None, None, row[f"cd{i}"])
        for i, name in enumerate(categorical)
    ]
    return int(row["rows"]), columns


def _value_counts(frame: DataFrame, columns: list[_Column]) -> dict[str, tuple[list[Any], np.ndarray]]:
    """Per column, its distinct non-missing values and their counts, from one groupBy over all the columns."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    if not columns:
        return {}
    numeric_typed = {f.name for f in frame.schema.fields if isinstance(f.dataType, NumericType)}
    cells = [
        F.struct(
            F.lit(i).alias("i"),
            (F.col(c.name).cast("double") if c.name in numeric_typed else F.lit(None).cast("double")).alias(
                "d"
            ),
            (F.lit(None) if c.name in numeric_typed else F.col(c.name)).cast("string").alias("s"),
        )
        for i, c in enumerate(columns)
    ]
    long = frame.select(F.explode(F.array(*cells)).alias("c")).select("c.*")
    rows = (
        long.where(F.col("d").isNotNull() | F.col("s").isNotNull()).groupBy("i", "d", "s").count().collect()
    )
    found: dict[str, tuple[list[Any], list[int]]] = {c.name: ([], []) for c in columns}
    for row in rows:
        values, counts = found[columns[row["i"]].name]
        values.append(row["s"] if row["d"] is None else row["d"])
        counts.append(int(row["count"]))
    return {name: (values, np.asarray(counts, dtype="int64")) for name, (values, counts) in found.items()}


def _linear_quantiles(values: np.ndarray, counts: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """``np.quantile(data, quantiles)`` (method linear) of data given as sorted distinct values and counts."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    virtual = (n - 1) * quantiles
    previous = np.floor(virtual)
    following = np.minimum(previous + 1, n - 1)
    gamma = virtual - previous
    low = values[np.searchsorted(cumulative, previous, side="right")]
    high = values[np.searchsorted(cumulative, following, side="right")]
    difference = high - low
    return np.where(gamma >= 0.5, high - difference * (1 - gamma), low + difference * gamma)


def _inverted_cdf_quantiles(values: np.ndarray, counts: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """``np.quantile(data, quantiles, method="inverted_cdf")`` of data given as sorted distinct values and counts."""
    cumulative = np.cumsum(counts)
    index = int(cumulative[-1]) * quantiles - 1
    previous = np.floor(index)
    order = np.clip(np.where(index - previous == 0, previous, previous + 1), 0, None)
    return values[np.searchsorted(cumulative, order, side="right")]


def _exact_numeric(column: _Column, rows: int, values: list[Any], counts: np.ndarray, bins: int) -> dict:
    order = np.argsort(np.asarray(values, dtype="float64"))
    distinct, counts = np.asarray(values, dtype="float64")[order], counts[order]
    present = int(counts.sum())
    inner = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.unique(_linear_quantiles(distinct, counts, inner)) if present else np.array([])
    if distinct.size <= drift.KS_POINTS:
        grid = distinct
    else:
        points = np.arange(1, drift.KS_POINTS + 1) / drift.KS_POINTS
        grid = np.unique(_inverted_cdf_quantiles(distinct, counts, points))
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    cdf = cumulative[np.searchsorted(distinct, grid, side="right")] / max(present, 1)
    shares = np.bincount(
        np.searchsorted(edges, distinct, side="right"), weights=counts, minlength=edges.size + 1
    )
    return _numeric_document(
        column, rows, list(edges), shares, list(grid), list(cdf), bool(distinct.size <= drift.KS_POINTS)
    )


def _numeric_document(
    column: _Column,
    rows: int,
    edges: list[float],
    bin_counts: np.ndarray,
    grid: list[float],
    cdf: list[float],
    exact: bool,
) -> dict[str, Any]:
    present = column.present
    return {
        "kind": "numeric",
        "edges": [float(e) for e in edges],
        "shares": [float(c) / max(present, 1) for c in bin_counts],
        "missing_rate": (rows - present) / rows if rows else 0.0,
        "rows": rows,
        "count": present,
        "grid": [float(g) for g in grid],
        "cdf": [round(float(c), 7) for c in cdf],
        "exact": exact,
        "mean": float(column.mean) if present else None,
        "std": float(column.std) if present else None,
    }


def _categorical(rows: int, values: list[Any], counts: np.ndarray) -> dict[str, Any]:
    """``drift.categorical_profile`` of the collected value counts (keys as ``drift.category_counts`` makes them)."""
    merged: dict[str, int] = {}
    for value, count in zip(values, counts, strict=True):
        key = drift.category_key(value)
        merged[key] = merged.get(key, 0) + int(count)
    return drift.categorical_profile(merged, rows)


def _approximate_numeric(
    frame: DataFrame, columns: list[_Column], rows: int, bins: int, relative_error: float
) -> dict[str, dict[str, Any]]:
    """approxQuantile edges and KS grid, then Bucketizer + groupBy counts of the bins and the grid."""
    from pyspark.ml.feature import Bucketizer
    from pyspark.sql import functions as F

    columns = [c for c in columns if c.present]
    if not columns:
        return {}
    inner = list(np.linspace(0, 1, bins + 1)[1:-1])
    points = list(np.arange(1, drift.KS_POINTS + 1) / drift.KS_POINTS)
    quantiles = frame.approxQuantile([c.name for c in columns], inner + points, relative_error)
    edges = [np.unique(q[: len(inner)]) for q in quantiles]
    grids = [np.unique(q[len(inner) :]) for q in quantiles]
    # Bucket b of splits [-inf, s1, .., sk, inf] holds s_b <= v < s_b+1; a grid point g splits at the next
    # double above it, so buckets 0..j count the values <= g_j (the CDF). Missing values land in bucket k+1.
    splits, inputs, outputs = [], [], []
    for i, column in enumerate(columns):
        for kind, points_of in (("e", edges[i]), ("g", np.nextafter(grids[i], np.inf))):
            splits.append([-np.inf, *map(float, points_of), np.inf])
            inputs.append(column.name)
            outputs.append(f"__{kind}{i}")
    filled = frame.select(*[F.coalesce(F.col(c.name), F.lit(float("nan"))).alias(c.name) for c in columns])
    bucketed = Bucketizer(splitsArray=splits, inputCols=inputs, outputCols=outputs, handleInvalid="keep")
    cells = [F.struct(F.lit(name).alias("k"), F.col(name).cast("int").alias("b")) for name in outputs]
    counted = (
        bucketed.transform(filled)
        .select(F.explode(F.array(*cells)).alias("c"))
        .groupBy("c.k", "c.b")
        .count()
        .collect()
    )
    found = {(row["k"], row["b"]): int(row["count"]) for row in counted}
    documents = {}
    for i, column in enumerate(columns):
        bin_counts = np.array([found.get((f"__e{i}", b), 0) for b in range(edges[i].size + 1)])
        grid_counts = np.array([found.get((f"__g{i}", b), 0) for b in range(grids[i].size)])
        cdf = np.cumsum(grid_counts) / column.present
        documents[column.name] = _numeric_document(
            column, rows, list(edges[i]), bin_counts, list(grids[i]), list(cdf), False
        )
    return documents


def profile_columns(
    frame: DataFrame,
    spec: FeatureSpec,
    score_column: str | None,
    bins: int,
    *,
    exact_limit: int = EXACT_LIMIT,
    relative_error: float = RELATIVE_ERROR,
) -> tuple[int, dict[str, dict[str, Any]]]:
    """The row count and the ``columns`` part of a reference profile, as Spark jobs (classic or Connect).

    ``score_column`` (a column of ``frame``) is profiled as ``drift.SCORE``.
    """
    numeric = [*spec.numeric, *([score_column] if score_column else [])]
    categorical = list(spec.categorical)
    prepared = _missing_as_null(frame.select(*numeric, *categorical), numeric)
    rows, columns = _summaries(prepared, numeric, categorical)
    exact = [c for c in columns if c.distinct <= exact_limit]
    approximate = [c for c in columns if c.kind == "numeric" and c.distinct > exact_limit]
    counts = _value_counts(prepared, exact)
    documents: dict[str, dict[str, Any]] = {}
    for column in exact:
        values, found = counts[column.name]
        if column.kind == "categorical":
            documents[column.name] = _categorical(rows, values, found)
        elif not values:
            documents[column.name] = _numeric_document(column, rows, [], np.zeros(1), [], [], True)
        else:
            documents[column.name] = _exact_numeric(column, rows, values, found, bins)
    documents |= _approximate_numeric(prepared, approximate, rows, bins, relative_error)
    for column in columns:
        if column.kind == "categorical" and column.name not in documents:
            documents[column.name] = _top_categories(prepared, column, rows)
    ordered = {name: documents[name] for name in [*spec.numeric, *spec.categorical]}
    if score_column:
        ordered[drift.SCORE] = documents[score_column]
    return rows, ordered


def _top_categories(frame: DataFrame, column: _Column, rows: int) -> dict[str, Any]:
    """A categorical column with more than ``exact_limit`` values: its ``TOP_CATEGORIES`` most frequent.

    The profile keeps the ``drift.MAX_CATEGORIES`` most frequent; its missing rate counts the values past
    ``TOP_CATEGORIES`` as missing (a column with that many categories is an id, not a feature).
    """
    from pyspark.sql import functions as F

    top = (
        frame.where(F.col(column.name).isNotNull())
        .groupBy(column.name)
        .count()
        .orderBy(F.col("count").desc())
        .limit(TOP_CATEGORIES)
        .collect()
    )
    return _categorical(rows, [r[0] for r in top], np.array([int(r[1]) for r in top]))
