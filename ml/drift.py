"""Drift: a reference profile saved at training time, and one pass over a new batch compared against it.

The profile holds, per numeric column, quantile bin edges with the reference share in each bin, a finer grid of
reference quantiles with the reference CDF on it (enough for a Kolmogorov-Smirnov test without the raw data),
the row and missing counts; per categorical column the category shares; the same for the model's scores; and
optionally the feature importance and a score calibration map (for the label-free AUC estimate).

Comparing a batch costs one sorted pass per column. Each column gets an effect size (PSI and Jensen-Shannon
distance on the reference bins, missing values as one more bin) and a test: two-sample KS for numeric columns
(combined with an exact test of the missing rate), chi-square on the reference counts vs the batch counts for
categorical ones (missing and unseen values as categories). Large batches make every test significant and
many columns make some test fire by chance, so a column drifts at a severity only when its effect size reaches
that severity's threshold *and* its test stays significant after a Holm (or Benjamini-Hochberg) correction
across all columns and the scores. The batch drifts at ``warning`` or ``critical`` when at least
``drift.drift_share`` of the features (equal or importance-weighted) drift at that severity, or when the scores
do; ``info`` means something moved, too little to alert. Below ``drift.min_rows`` rows the verdict is
``insufficient_data``, never ``drift``. ``with_performance`` then raises the batch's severity when the champion's
AUC on it (realised from labels, else the label-free estimate) fell ``drift.performance_drop_*`` points below
its reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from ml.config import DriftConfig
from ml.features import FeatureSpec, is_text_like
from ml.quantiles import OrderStatistics, SortedColumn

Severity = Literal["none", "info", "warning", "critical"]
LEVELS: tuple[Severity, ...] = ("info", "warning", "critical")
RANK: dict[str, int] = {"none": 0, "info": 1, "warning": 2, "critical": 3}
PROFILE_VERSION = 2
KS_POINTS = 100
MAX_CATEGORIES = 200
PLOT_BINS = 24
_EPS = 1e-4
_OTHER = "__unseen__"
_MIN_EXPECTED = 5.0
SCORE = "__score__"
MAX_UNSEEN = 20
SCORE_BINS = 10_000
"""Equal-width score bins of a summary's histogram, for the CBPE estimate (ties within a bin count one half)."""
KS_ASYMPTOTIC_N = 10_000
"""Above this effective sample size the KS p-value uses Kolmogorov's limit distribution (scipy's exact
finite-n one costs ~1 s per call at n=500k and agrees to three significant digits there)."""


def _as_float(values: pd.Series | np.ndarray) -> np.ndarray:
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return np.asarray(values, dtype="float64")


def _sorted_quantiles(
    ordered: OrderStatistics, quantiles: np.ndarray, method: Literal["linear", "inverted_cdf"]
) -> np.ndarray:
    """``np.quantile(values, quantiles, method=method)`` from the values' order statistics, by their ranks.

    Equal to numpy's result bit for bit, without its partition and copies of the whole column.
    """
    n = ordered.size
    if method == "inverted_cdf":
        index = n * quantiles - 1
        previous = np.floor(index)
        chosen = np.where(index - previous > 0, previous + 1, previous)
        return ordered.at(np.clip(chosen, 0, n - 1).astype(np.intp))
    virtual = (n - 1) * quantiles
    previous = np.floor(virtual)
    low = ordered.at(previous.astype(np.intp))
    high = ordered.at(np.minimum(previous + 1, n - 1).astype(np.intp))
    gamma = virtual - previous
    difference = high - low
    return np.where(gamma >= 0.5, high - difference * (1 - gamma), low + difference * gamma)


def _numeric_edges(ordered: OrderStatistics, bins: int) -> list[float]:
    """Inner quantile bin edges of the present values, sorted (``np.quantile``'s linear method)."""
    if ordered.size == 0:
        return []
    edges = np.unique(_sorted_quantiles(ordered, np.linspace(0, 1, bins + 1)[1:-1], "linear"))
    return [float(e) for e in edges]


def _ks_grid(ordered: OrderStatistics, points: int) -> tuple[list[float], list[float], bool]:
    """Reference CDF P(X <= g) on a grid: every distinct value when there are few, else ``points`` quantiles."""
    if ordered.size == 0:
        return [], [], True
    distinct = ordered.distinct(points)
    exact = distinct is not None
    grid = (
        distinct
        if distinct is not None
        else np.unique(_sorted_quantiles(ordered, np.arange(1, points + 1) / points, "inverted_cdf"))
    )
    cdf = ordered.count_below(grid, "right") / ordered.size
    return [float(g) for g in grid], [round(float(c), 7) for c in cdf], exact


def category_key(value: Any) -> str:
    """A category as text; 3.0 and 3 are the same category (integer codes read back as floats)."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def numeric_profile(values: pd.Series | np.ndarray | OrderStatistics, bins: int) -> dict[str, Any]:
    """One numeric column's reference entry (quantile edges and shares, KS grid and CDF), exact on ``values``.

    ``values`` is the whole column, or its order statistics (``ml.quantiles``): the streaming path selects
    them exactly over passes of record batches (``quantiles.StreamedColumns``) in memory bounded by its budget.
    """
    ordered = values if isinstance(values, OrderStatistics) else SortedColumn.of(_as_float(values))
    edges = _numeric_edges(ordered, bins)
    counts = np.diff(ordered.count_below(np.asarray(edges), "left"), prepend=0, append=ordered.size)
    total = max(ordered.size, 1)
    grid, cdf, exact = _ks_grid(ordered, KS_POINTS)
    return {
        "kind": "numeric",
        "edges": edges,
        "shares": [float(c) / total for c in counts],
        "missing_rate": float((ordered.rows - ordered.size) / ordered.rows) if ordered.rows else 0.0,
        "rows": int(ordered.rows),
        "count": int(ordered.size),
        "grid": grid,
        "cdf": cdf,
        "exact": exact,
        "mean": ordered.mean,
        "std": ordered.std,
    }


def category_counts(values: pd.Series | np.ndarray) -> dict[str, int]:
    """Rows per category among the non-missing values, keyed as text (mergeable: add the counts)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    counts: dict[str, int] = {}
    for value, count in series.value_counts(dropna=True).items():
        if count > 0:
            key = category_key(value)
            counts[key] = counts.get(key, 0) + int(count)
    return counts


def merge_counts(*parts: dict[str, int]) -> dict[str, int]:
    """The sum of several ``category_counts`` results."""
    merged: dict[str, int] = {}
    for part in parts:
        for key, count in part.items():
            merged[key] = merged.get(key, 0) + count
    return merged


def categorical_profile(counts: dict[str, int], rows: int) -> dict[str, Any]:
    """One categorical column's reference entry from its merged category counts and row count.

    Shares among the non-missing values (the most frequent ``MAX_CATEGORIES``), the missing rate.
    """
    present = sum(counts.values())
    shares = {k: v / present for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    truncated = len(shares) > MAX_CATEGORIES
    kept = dict(itertools.islice(shares.items(), MAX_CATEGORIES))
    return {
        "kind": "categorical",
        "shares": kept,
        "other_share": float(1 - sum(kept.values())) if truncated else 0.0,
        "truncated": truncated,
        "missing_rate": 1 - present / rows if rows else 0.0,
        "rows": rows,
        "count": present,
    }


def assemble_profile(
    columns: dict[str, dict[str, Any]],
    scores: np.ndarray,
    rows: int,
    bins: int,
    *,
    importance: dict[str, float] | None = None,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
    calibration_method: Literal["platt", "isotonic"] = "platt",
) -> dict[str, Any]:
    """The profile document from per-column entries (``numeric_profile``/``categorical_profile``) and scores.

    The engines build the column entries their own way (in memory, column by column, or in Spark) and share
    this assembly, so every engine writes the same document.
    """
    from ml import performance

    profile: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "rows": rows,
        "bins": bins,
        "columns": {**columns, SCORE: numeric_profile(_as_float(scores), bins)},
    }
    if importance:
        profile["importance"] = {str(k): float(v) for k, v in importance.items()}
    if calibration is not None:
        held_scores, held_labels = (np.asarray(a, dtype="float64") for a in calibration)
        fitted = performance.fit_calibration(held_scores, held_labels, calibration_method)
        profile["calibration"] = fitted
        profile["performance"] = performance.reference_performance(held_scores, held_labels, fitted)
    return profile


def feature_profiles(
    frame: pd.DataFrame | pa.Table, spec: FeatureSpec, bins: int
) -> dict[str, dict[str, Any]]:
    """The per-column entries of ``build_profile`` for the features (they do not depend on the model).

    ``frame`` may be an Arrow table (text categoricals plain or dictionary-encoded), read without a pandas copy
    of its text: the same entries as from the same rows in a DataFrame, in the same order.
    """
    if isinstance(frame, pa.Table):
        numeric = {
            column: np.concatenate([np.zeros(0), *_float_chunks(frame[column])]) for column in spec.numeric
        }
        counts = {column: _arrow_category_counts(frame[column]) for column in spec.categorical}
    else:
        numeric = {column: frame[column] for column in spec.numeric}
        counts = {column: category_counts(frame[column]) for column in spec.categorical}
    columns: dict[str, Any] = {column: numeric_profile(values, bins) for column, values in numeric.items()}
    for column, found in counts.items():
        columns[column] = categorical_profile(found, len(frame))
    return columns


def _arrow_category_counts(values: pa.ChunkedArray) -> dict[str, int]:
    """``category_counts`` of an Arrow column, keys in its order (most rows first, ties by first occurrence).

    Text and dictionary-encoded text are counted in Arrow chunk by chunk (each chunk may have its own
    dictionary); other types go through pandas as ``category_counts`` does.
    """
    if not is_text_like(values.type):
        return category_counts(values.to_pandas())
    counts: dict[str, int] = {}
    for chunk in values.chunks:
        encoded = isinstance(chunk, pa.DictionaryArray)
        counted = pc.value_counts(chunk.indices if encoded else chunk)
        found = chunk.dictionary.take(counted.field("values")) if encoded else counted.field("values")
        for value, count in zip(found.to_pylist(), counted.field("counts").to_pylist(), strict=True):
            if value is not None:
                counts[value] = counts.get(value, 0) + count
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def build_profile(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    scores: np.ndarray,
    bins: int,
    *,
    importance: dict[str, float] | None = None,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
    calibration_method: Literal["platt", "isotonic"] = "platt",
) -> dict[str, Any]:
    """The reference profile of a training window and the model's scores on it (JSON-ready, a few 10 kB).

    ``importance`` (feature -> weight) enables the importance-weighted drift share. ``calibration`` is
    ``(scores, labels)`` on rows the model did not train on (the holdout): a calibration map is fitted on them
    and the label-free AUC estimate (CBPE) of every monitored batch is compared with theirs.
    """
    return assemble_profile(
        feature_profiles(frame, spec, bins),
        scores,
        len(frame),
        bins,
        importance=importance,
        calibration=calibration,
        calibration_method=calibration_method,
    )


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index between two share vectors (smoothed)."""
    ref = np.clip(np.asarray(reference, dtype=float), _EPS, None)
    cur = np.clip(np.asarray(current, dtype=float), _EPS, None)
    ref, cur = ref / ref.sum(), cur / cur.sum()
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two share vectors."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref, cur = ref / max(ref.sum(), _EPS), cur / max(cur.sum(), _EPS)
    mid = (ref + cur) / 2

    def _kl(p: np.ndarray, q: np.ndarray) -> float:
        mask = p > 0
        return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))

    return float(np.sqrt(max(0.5 * _kl(ref, mid) + 0.5 * _kl(cur, mid), 0.0)))


def ks_statistic(
    grid: np.ndarray, reference_cdf: np.ndarray, current: np.ndarray, strict: bool = False
) -> float:
    """Largest gap between the reference CDF on its grid and the current values' empirical CDF there.

    The reference CDF is P(X <= g), or P(X < g) when ``strict``. Exact when the grid holds every distinct
    reference value; otherwise at most one grid step low.
    """
    present = np.sort(current[np.isfinite(current)])
    if present.size == 0 or len(grid) == 0:
        return 0.0
    side = "left" if strict else "right"
    current_cdf = np.searchsorted(present, np.asarray(grid, dtype="float64"), side=side) / present.size
    return float(np.max(np.abs(np.asarray(reference_cdf, dtype="float64") - current_cdf)))


def ks_p_value(statistic: Any, reference_count: Any, current_count: Any) -> np.ndarray:
    """Smirnov's two-sided asymptotic p-value, as ``scipy.stats.ks_2samp(method="asymp")`` (vectorised).

    Kolmogorov's limit distribution above ``KS_ASYMPTOTIC_N`` effective rows, scipy's finite-n one below.
    """
    d, m, n = (
        np.atleast_1d(np.asarray(a, dtype="float64")) for a in (statistic, reference_count, current_count)
    )
    d, m, n = np.broadcast_arrays(d, m, n)
    valid = (m > 0) & (n > 0)
    effective = np.maximum(np.round(m * n / np.where(valid, m + n, 1.0)), 1.0)
    p = np.ones(d.shape)
    large = valid & (effective > KS_ASYMPTOTIC_N)
    small = valid & ~large
    if small.any():
        p[small] = np.clip(stats.kstwo.sf(d[small], effective[small]), 0.0, 1.0)
    if large.any():
        p[large] = np.clip(stats.kstwobign.sf(d[large] * np.sqrt(effective[large])), 0.0, 1.0)
    return p


def ks_from_cdf(
    grid: np.ndarray, reference_cdf: np.ndarray, reference_count: int, current: np.ndarray
) -> tuple[float, float]:
    """Two-sample KS test of current values against a reference known by its CDF on a grid: (statistic, p)."""
    statistic = ks_statistic(grid, reference_cdf, current)
    present = int(np.isfinite(current).sum())
    return statistic, float(ks_p_value(statistic, reference_count, present)[0])


def _chi_square_table(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, int]:
    table = np.vstack(
        [np.asarray(reference_counts, dtype="float64"), np.asarray(current_counts, dtype="float64")]
    )
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    sparse = expected.min(axis=0) < _MIN_EXPECTED
    if sparse.any():
        pooled, table = table[:, sparse].sum(axis=1), table[:, ~sparse]
        too_small = pooled.sum() * table.sum(axis=1).min() / (table.sum() + pooled.sum()) < _MIN_EXPECTED
        if too_small and table.shape[1] > 0:
            table[:, int(np.argmin(table.sum(axis=0)))] += pooled
        else:
            table = np.column_stack([table, pooled])
        expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    dof = table.shape[1] - 1
    if dof < 1:
        return 0.0, 0
    return float(np.sum((table - expected) ** 2 / expected)), dof


def chi_square(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float, int]:
    """Chi-square test of homogeneity on a 2 x k table (reference row vs current row): (statistic, p, dof).

    Empty columns are dropped and columns with an expected count below 5 pooled, so rare categories do not
    inflate the statistic; otherwise equal to ``scipy.stats.chi2_contingency(table, correction=False)``.
    """
    statistic, dof = _chi_square_table(reference_counts, current_counts)
    return statistic, float(stats.chi2.sf(statistic, dof)) if dof else 1.0, dof


def missing_rate_test(
    reference_missing: Any, reference_rows: Any, current_missing: Any, current_rows: Any
) -> Any:
    """Two-sided p-value of a change in the missing rate: Fisher's exact test, smaller tail doubled (vectorised)."""
    rm, rr, cm, cr = np.broadcast_arrays(
        *(
            np.atleast_1d(np.asarray(a, dtype="float64"))
            for a in (reference_missing, reference_rows, current_missing, current_rows)
        )
    )
    total_missing, total_rows = rm + cm, rr + cr
    valid = (total_missing > 0) & (total_missing < total_rows) & (cr > 0) & (rr > 0)
    p = np.ones(rm.shape)
    if valid.any():
        args = (total_rows[valid], total_missing[valid], cr[valid])
        lower = stats.hypergeom.cdf(cm[valid], *args)
        upper = stats.hypergeom.sf(cm[valid] - 1, *args)
        p[valid] = np.minimum(1.0, 2 * np.minimum(lower, upper))
    return float(p[0]) if np.ndim(reference_missing) == 0 and p.size == 1 else p


def adjust_p_values(p_values: np.ndarray, method: Literal["holm", "bh", "none"]) -> np.ndarray:
    """P-values adjusted for multiple testing: Holm (family-wise error) or Benjamini-Hochberg (false discovery)."""
    p = np.asarray(p_values, dtype="float64")
    m = p.size
    if m == 0 or method == "none":
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    else:
        adjusted = np.minimum.accumulate(np.minimum(1.0, m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    out = np.empty(m)
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class FeatureDrift:
    """How far one column moved from the reference, and whether that is more than chance."""

    column: str
    kind: str
    psi: float
    js_distance: float
    missing_rate_reference: float
    missing_rate_current: float
    new_categories: list[str]
    severity: Severity
    reference_shares: list[float] = field(repr=False)
    current_shares: list[float] = field(repr=False)
    labels: list[str] = field(repr=False)
    test: str = "none"
    statistic: float = 0.0
    p_value: float = 1.0
    missing_p_value: float | None = None
    p_value_adjusted: float = 1.0
    significant: bool = False
    effect_severity: Severity = "none"
    rows: int = 0
    plot: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class DriftResult:
    """The verdict on one batch."""

    batch: str
    rows: int
    verdict: Literal["no_drift", "drift", "insufficient_data"]
    severity: Severity
    drift_share: float
    score_psi: float | None
    features: list[FeatureDrift]
    shares: dict[str, float] = field(default_factory=dict)
    weighting: str = "equal"
    correction: str = "holm"
    alpha: float = 0.05
    reason: str = ""
    performance: dict[str, Any] | None = None
    performance_drop: dict[str, Any] | None = None
    """The champion's AUC on the batch against its reference (``with_performance``), when it could be measured."""

    def top(self, count: int = 5) -> list[FeatureDrift]:
        """The drifted features (scores excluded), most severe first, then largest PSI."""
        drifted = [f for f in self.features if f.column != SCORE and f.severity != "none"]
        return sorted(drifted, key=lambda f: (RANK[f.severity], f.psi), reverse=True)[:count]

    @property
    def score(self) -> FeatureDrift | None:
        """The prediction-score drift, when scores were compared."""
        return next((f for f in self.features if f.column == SCORE), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _effect_severity(psi_value: float, js_value: float, config: DriftConfig) -> Severity:
    for level in reversed(LEVELS):
        js_threshold = getattr(config, f"js_{level}")
        if psi_value >= getattr(config, f"psi_{level}") or (
            js_threshold is not None and js_value >= js_threshold
        ):
            return level
    return "none"


def _bin_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all"]
    return [
        f"< {edges[0]:.4g}",
        *(f"{lo:.4g} - {hi:.4g}" for lo, hi in itertools.pairwise(edges)),
        f">= {edges[-1]:.4g}",
    ]


def _reference_cdf_at(ref: dict[str, Any], points: np.ndarray) -> np.ndarray:
    """The reference CDF at arbitrary points: a step function on an exact grid, interpolated otherwise."""
    grid, cdf = np.asarray(ref["grid"], dtype="float64"), np.asarray(ref["cdf"], dtype="float64")
    if ref.get("exact"):
        index = np.searchsorted(grid, points, side="right") - 1
        return np.where(index >= 0, cdf[np.clip(index, 0, None)], 0.0)
    return np.interp(points, grid, cdf, left=0.0, right=1.0)


def _categorical_plot(labels: list[str], ref_full: np.ndarray, cur_full: np.ndarray) -> dict[str, Any]:
    """Shares of all rows per category (the 15 largest, in reference order), the rest as "(other)"."""
    names = [*("(unseen)" if label == _OTHER else label for label in labels), "(missing)"]
    largest = np.maximum(ref_full, cur_full)
    order = np.argsort(-largest, kind="stable")
    order = order[largest[order] > 0]
    keep, rest = np.sort(order[:15]), order[15:]
    reference, current = ref_full[keep], cur_full[keep]
    if rest.size:
        reference, current = (
            np.append(reference, ref_full[rest].sum()),
            np.append(current, cur_full[rest].sum()),
        )
    return {
        "type": "categories",
        "labels": [names[i] for i in keep] + (["(other)"] if rest.size else []),
        "reference": reference.tolist(),
        "current": current.tolist(),
    }


def _reference_of(ref: dict[str, Any]) -> dict[str, Any]:
    """A numeric reference entry with a KS grid: profiles saved before version 2 use their decile edges."""
    if "grid" in ref:
        return ref
    cdf = [float(c) for c in np.cumsum(ref["shares"])[:-1]]
    return {**ref, "grid": ref["edges"], "cdf": cdf, "exact": False, "strict": True}


def _plot_edges(ref: dict[str, Any]) -> np.ndarray | None:
    """The report histogram's bin edges of a numeric column (None: one bar per reference value)."""
    grid = np.asarray(ref["grid"], dtype="float64")
    if grid.size == 0 or (ref.get("exact") and grid.size <= PLOT_BINS):
        return None
    cdf = np.asarray(ref["cdf"], dtype="float64")
    lo, hi = np.interp([0.005, 0.995], cdf, grid) if not ref.get("exact") else (grid[0], grid[-1])
    if hi <= lo:
        lo, hi = grid[0], grid[-1] if grid[-1] > grid[0] else grid[0] + 1.0
    return np.linspace(lo, hi, PLOT_BINS + 1)


def _summary_points(ref: dict[str, Any]) -> np.ndarray:
    """Every value a numeric column's counts are taken at: PSI edges, the KS grid and the plot's bin edges."""
    edges = _plot_edges(ref)
    parts = [np.asarray(ref["edges"], dtype="float64"), np.asarray(ref["grid"], dtype="float64")]
    if edges is not None:
        parts.append(edges[1:-1])
    return np.unique(np.concatenate(parts))


class _Cells:
    """A monotone map of values to equal-width cells over sorted ``points``, to place values without a search.

    A value in a cell that holds no point lies strictly between the same two points as its whole cell; one in a
    cell with a single point is placed by comparing it with that point. Only values in a cell with several
    points, or in the two end cells (which also take the values outside the points' range and the non-finite
    ones; NaN lands in the first), need a binary search. Every step of the map is monotone, so the results equal
    ``np.searchsorted``'s exactly.
    """

    def __init__(self, points: np.ndarray) -> None:
        self.count = self.cells_for(points)
        self.scale = self.count / (points[-1] - points[0])
        self.offset = 1.0 - points[0] * self.scale
        self.top = float(self.count + 1)
        point_cells = self.of(points)
        self.below = np.searchsorted(point_cells, np.arange(self.count + 2), side="left")
        """Points in the cells before each cell (the index of a cell's first point)."""
        held = np.bincount(point_cells, minlength=self.count + 2)
        self.shared = held > 0
        """Cells whose values are compared with points."""
        self.shared[[0, -1]] = True
        self.point = np.full(self.count + 2, np.nan)
        """The one point of a cell that holds exactly one (NaN elsewhere: search those cells' values)."""
        single = np.flatnonzero(held == 1)
        single = single[(single > 0) & (single < self.count + 1)]
        self.point[single] = points[self.below[single]]

    @staticmethod
    def cells_for(points: np.ndarray) -> int:
        """Cells between the first and the last point: 256 per point, at most 65,536 (a cache-sized count)."""
        return min(256 * points.size, 1 << 16)

    @staticmethod
    def usable(points: np.ndarray, values: int) -> bool:
        """Whether cells pay off (enough points and values) and the map stays finite over ``points``."""
        if points.size < 8 or values < 10_000 or not points[-1] > points[0]:
            return False
        scale = _Cells.cells_for(points) / (points[-1] - points[0])
        return bool(0 < scale < np.inf and np.isfinite(points[0] * scale))

    def of(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The cell of each value (``out``: a float buffer of the values' size to reuse)."""
        found = np.multiply(values, self.scale, out=out)
        found += self.offset
        np.fmax(found, 0.0, out=found)
        np.fmin(found, self.top, out=found)
        return found.astype(np.intp)

    def tally(self, parts: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        """Values per ``searchsorted`` index (``k + 1`` of them), values equal to each point, finite values
        placed, and the values left to search (finite or not).

        One cache-sized block at a time, so that no temporary outgrows the cache (or needs fresh memory).
        """
        per_cell = np.zeros(self.count + 2, dtype=np.int64)
        per_index, equal = np.zeros(k + 1, dtype=np.int64), np.zeros(k, dtype=np.int64)
        searched, compared, buffer = [], 0, np.empty(min(_BLOCK, max(p.size for p in parts)))
        for part in parts:
            for start in range(0, part.size, _BLOCK):
                block = part[start : start + _BLOCK]
                located = self.of(block, buffer[: block.size])
                per_cell += np.bincount(located, minlength=self.count + 2)
                near = self.shared[located]
                values, cells = block[near], located[near]
                point = self.point[cells]
                single = ~np.isnan(point)
                searched.append(values[~single])
                values, point, first = values[single], point[single], self.below[cells[single]]
                per_index += np.bincount(first + (values > point), minlength=k + 1)
                equal += np.bincount(first[values == point], minlength=k)
                compared += values.size
        placed = np.where(self.shared, 0, per_cell)
        per_index += np.bincount(self.below, weights=placed, minlength=k + 1).astype(np.int64)
        return per_index, equal, int(placed.sum()) + compared, np.concatenate(searched)


def _locate(points: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(points, values, side="left")`` for unsorted values, in O(1) per value mostly."""
    if not _Cells.usable(points, values.size):
        return np.searchsorted(points, values, side="left")
    cells = _Cells(points)
    value_cells = cells.of(values)
    index = cells.below[value_cells]
    ambiguous = np.flatnonzero(cells.shared[value_cells])
    if ambiguous.size:
        index[ambiguous] = np.searchsorted(points, values[ambiguous], side="left")
    return index


_BLOCK = 1 << 16
"""Values per block of a counting pass: its temporaries stay in the CPU cache."""


@dataclass
class NumericCounts:
    """One numeric column of a batch summary: counts at the profile's points (``_summary_points``)."""

    rows: int
    present: int
    at_or_below: np.ndarray
    """Present values <= each point."""
    equal: np.ndarray
    """Present values == each point."""

    @classmethod
    def of(cls, points: np.ndarray, values: np.ndarray | list[np.ndarray]) -> NumericCounts:
        """The counts of float64 ``values`` (one array, or the chunks of a column); non-finite ones are missing.

        Values are counted per cell (``_Cells``), compared with a point only in a cell that holds one and
        searched for only in a cell with several.
        """
        parts = [values] if isinstance(values, np.ndarray) else values
        rows, k = sum(part.size for part in parts), points.size
        if _Cells.usable(points, rows):
            per_index, equal, present, rest = _Cells(points).tally(parts, k)
        else:
            rest = np.concatenate(parts) if parts else np.zeros(0)
            per_index, equal, present = np.zeros(k + 1, dtype=np.int64), np.zeros(k, dtype=np.int64), 0
        rest = rest[np.isfinite(rest)]
        index = np.searchsorted(points, rest, side="left")
        per_index += np.bincount(index, minlength=k + 1)
        equal += np.bincount(index[np.append(points, np.nan)[index] == rest], minlength=k)
        present += rest.size
        return cls(int(rows), int(present), np.cumsum(per_index)[:k].astype(np.int64), equal.astype(np.int64))

    def merge(self, other: NumericCounts) -> NumericCounts:
        return NumericCounts(
            self.rows + other.rows,
            self.present + other.present,
            self.at_or_below + other.at_or_below,
            self.equal + other.equal,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "present": self.present,
            "at_or_below": self.at_or_below.tolist(),
            "equal": self.equal.tolist(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NumericCounts:
        return cls(
            int(raw["rows"]),
            int(raw["present"]),
            np.asarray(raw["at_or_below"], dtype=np.int64),
            np.asarray(raw["equal"], dtype=np.int64),
        )


@dataclass
class CategoryCounts:
    """One categorical column of a batch summary: counts of the reference categories and of unseen ones."""

    rows: int
    known: np.ndarray
    """Rows per reference category, in the profile's order."""
    unseen_rows: int
    unseen: list[str]
    """The alphabetically first ``MAX_UNSEEN`` unseen categories (enough for the report)."""

    @classmethod
    def of(cls, categories: list[str], values: pd.Series | np.ndarray | pa.ChunkedArray) -> CategoryCounts:
        found = _category_counts_of(values)
        known = np.array([found.pop(c, 0) for c in categories], dtype=np.int64)
        return cls(len(values), known, sum(found.values()), sorted(found)[:MAX_UNSEEN])

    def merge(self, other: CategoryCounts) -> CategoryCounts:
        unseen = sorted(set(self.unseen) | set(other.unseen))[:MAX_UNSEEN]
        return CategoryCounts(
            self.rows + other.rows, self.known + other.known, self.unseen_rows + other.unseen_rows, unseen
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "known": self.known.tolist(),
            "unseen_rows": self.unseen_rows,
            "unseen": self.unseen,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CategoryCounts:
        known = np.asarray(raw["known"], dtype=np.int64)
        return cls(int(raw["rows"]), known, int(raw["unseen_rows"]), list(raw["unseen"]))


@dataclass
class ScoreHistogram:
    """The scores on ``SCORE_BINS`` equal-width bins of [0, 1]: count and sum per bin (for the CBPE estimate)."""

    counts: np.ndarray
    sums: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray) -> ScoreHistogram:
        finite = scores[np.isfinite(scores)]
        index = np.clip((finite * SCORE_BINS).astype(np.intp), 0, SCORE_BINS - 1)
        return cls(
            np.bincount(index, minlength=SCORE_BINS).astype(np.int64),
            np.bincount(index, weights=finite, minlength=SCORE_BINS),
        )

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        return ScoreHistogram(self.counts + other.counts, self.sums + other.sums)

    def to_dict(self) -> dict[str, Any]:
        used = np.flatnonzero(self.counts)
        return {"bins": used.tolist(), "counts": self.counts[used].tolist(), "sums": self.sums[used].tolist()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ScoreHistogram:
        counts, sums = np.zeros(SCORE_BINS, dtype=np.int64), np.zeros(SCORE_BINS)
        counts[raw["bins"]] = raw["counts"]
        sums[raw["bins"]] = raw["sums"]
        return cls(counts, sums)


@dataclass
class BatchSummary:
    """Everything ``compare_summary`` needs of a batch, as counts against one profile: mergeable, JSON-ready.

    Summaries of disjoint chunks of a batch (record batches, Spark partitions) merge into the summary of the
    whole batch exactly (``merge`` adds counts), so a streaming or distributed pass equals the in-memory one.
    """

    rows: int
    numeric: dict[str, NumericCounts] = field(default_factory=dict)
    categorical: dict[str, CategoryCounts] = field(default_factory=dict)
    scores: ScoreHistogram | None = None

    def merge(self, other: BatchSummary) -> BatchSummary:
        """The summary of both chunks together (both summarised against the same profile)."""
        if set(self.numeric) != set(other.numeric) or set(self.categorical) != set(other.categorical):
            raise ValueError("cannot merge summaries of different columns")
        if (self.scores is None) != (other.scores is None):
            raise ValueError("cannot merge a summary with scores and one without")
        return BatchSummary(
            self.rows + other.rows,
            {c: counts.merge(other.numeric[c]) for c, counts in self.numeric.items()},
            {c: counts.merge(other.categorical[c]) for c, counts in self.categorical.items()},
            self.scores.merge(other.scores) if self.scores and other.scores else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (``from_dict`` reads it back)."""
        return {
            "rows": self.rows,
            "numeric": {c: counts.to_dict() for c, counts in self.numeric.items()},
            "categorical": {c: counts.to_dict() for c, counts in self.categorical.items()},
            "scores": self.scores.to_dict() if self.scores else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BatchSummary:
        """The summary a ``to_dict`` document describes."""
        return cls(
            int(raw["rows"]),
            {c: NumericCounts.from_dict(v) for c, v in raw["numeric"].items()},
            {c: CategoryCounts.from_dict(v) for c, v in raw["categorical"].items()},
            ScoreHistogram.from_dict(raw["scores"]) if raw.get("scores") else None,
        )


def merge_summaries(summaries: Iterable[BatchSummary]) -> BatchSummary:
    """The merge of the summaries of disjoint chunks of one batch."""
    merged: BatchSummary | None = None
    for summary in summaries:
        merged = summary if merged is None else merged.merge(summary)
    if merged is None:
        raise ValueError("no summaries to merge")
    return merged


def _profile_columns(profile: dict[str, Any]) -> dict[str, dict[str, Any]]:
    columns = profile["columns"]
    if profile.get("version", 1) < 2:  # older profiles keep the row count only at the top
        columns = {name: {"rows": profile["rows"], **ref} for name, ref in columns.items()}
    return {name: _reference_of(ref) if ref["kind"] == "numeric" else ref for name, ref in columns.items()}


def summary_columns(profile: dict[str, Any]) -> list[str]:
    """The batch columns a summary against ``profile`` reads (the profiled features, scores excluded)."""
    return [column for column in profile["columns"] if column != SCORE]


def _float_chunks(values: pd.Series | pa.ChunkedArray) -> list[np.ndarray]:
    """A numeric column as float64 arrays (missing as NaN), as ``_as_float`` makes it; no copy of float64 data."""
    if isinstance(values, pa.ChunkedArray):
        return [_arrow_floats(chunk) for chunk in values.chunks]
    if values.dtype == np.float64:
        return [values.to_numpy()]
    return [_as_float(values)]


def _arrow_floats(chunk: pa.Array) -> np.ndarray:
    """One Arrow chunk as float64 (nulls as NaN); types other than numbers go through pandas like ``_as_float``."""
    if pa.types.is_floating(chunk.type) or pa.types.is_integer(chunk.type):
        return np.asarray(chunk.to_numpy(zero_copy_only=False), dtype="float64")
    return _as_float(chunk.to_pandas())


def _category_counts_of(values: pd.Series | np.ndarray | pa.ChunkedArray) -> dict[str, int]:
    """``category_counts`` of any column; a text (or dictionary-encoded text) Arrow column is counted in Arrow."""
    if not isinstance(values, pa.ChunkedArray):
        return category_counts(values)
    kind = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return category_counts(values.to_pandas())
    counted = pc.value_counts(values)
    found = zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True)
    return {str(value): int(count) for value, count in found if value is not None and count > 0}


def summarize_batch(
    profile: dict[str, Any], frame: pd.DataFrame | pa.Table, scores: np.ndarray | None = None
) -> BatchSummary:
    """The counts of one chunk of a batch (and the model's scores on it) against the profile.

    ``frame`` is a DataFrame or an Arrow table (counted in Arrow, without a pandas copy); the summary is the
    same. Profiled columns absent from ``frame`` are left out (as ``compare`` does); merge the chunks'
    summaries with ``BatchSummary.merge`` or ``merge_summaries``, then call ``compare_summary``.
    """
    summary = BatchSummary(len(frame))
    columns = _profile_columns(profile)
    present = set(frame.column_names if isinstance(frame, pa.Table) else frame.columns)
    for column, ref in columns.items():
        if column == SCORE or column not in present:
            continue
        if ref["kind"] == "numeric":
            summary.numeric[column] = NumericCounts.of(_summary_points(ref), _float_chunks(frame[column]))
        else:
            summary.categorical[column] = CategoryCounts.of(list(ref["shares"]), frame[column])
    if scores is not None:
        values = _as_float(scores)
        if SCORE in columns:
            summary.numeric[SCORE] = NumericCounts.of(_summary_points(columns[SCORE]), values)
        summary.scores = ScoreHistogram.of(values)
    return summary


def _numeric_plot(ref: dict[str, Any], points: np.ndarray, counts: NumericCounts) -> dict[str, Any]:
    """Reference vs current shares of the non-missing values, on value bins (or per value when few)."""
    grid = np.asarray(ref["grid"], dtype="float64")
    if grid.size == 0:
        return {}
    present = max(counts.present, 1)
    edges = _plot_edges(ref)
    if edges is None:
        reference = np.diff(np.asarray(ref["cdf"], dtype="float64"), prepend=0.0)
        hits = counts.equal[np.searchsorted(points, grid)]
        current = hits / present
        labels = [f"{g:.4g}" for g in grid]
        other = float(1 - hits.sum() / counts.present) if counts.present else 0.0
        if other > 0:  # values the reference never had
            labels, reference, current = (
                [*labels, "(other)"],
                np.append(reference, 0.0),
                np.append(current, other),
            )
        return {
            "type": "values",
            "labels": labels,
            "reference": reference.tolist(),
            "current": current.tolist(),
        }
    at_edges = _reference_cdf_at(ref, edges[1:-1])
    reference = np.diff(np.concatenate([[0.0], at_edges, [1.0]]))
    inner = counts.at_or_below[np.searchsorted(points, edges[1:-1])]
    current = np.diff(inner, prepend=0, append=counts.present) / present
    return {
        "type": "bins",
        "edges": edges.tolist(),
        "reference": reference.tolist(),
        "current": current.tolist(),
    }


def _measure_numeric(ref: dict[str, Any], counts: NumericCounts) -> dict[str, Any]:
    points = _summary_points(ref)
    below = counts.at_or_below - counts.equal
    edges_at = np.searchsorted(points, np.asarray(ref["edges"], dtype="float64"))
    bins = np.diff(below[edges_at], prepend=0, append=counts.present)
    ref_rows = int(ref.get("rows") or 0)
    ref_count = int(ref.get("count", round(ref_rows * (1 - ref["missing_rate"]))))
    statistic = 0.0
    if counts.present and len(ref["grid"]):
        at_grid = np.searchsorted(points, np.asarray(ref["grid"], dtype="float64"))
        current_cdf = (below if ref.get("strict") else counts.at_or_below)[at_grid] / counts.present
        statistic = float(np.max(np.abs(np.asarray(ref["cdf"], dtype="float64") - current_cdf)))
    missing = counts.rows - counts.present
    return {
        "labels": _bin_labels(ref["edges"]),
        "reference_shares": ref["shares"],
        "current_shares": list(bins / max(counts.present, 1)),
        "missing": missing / counts.rows if counts.rows else 0.0,
        "new": [],
        "test": "ks",
        "statistic": statistic,
        "sizes": (ref_count, counts.present),
        "missing_counts": (ref_rows - ref_count, ref_rows, missing, counts.rows),
        "rows": counts.present,
        "plot": _numeric_plot(ref, points, counts),
    }


def _measure_categorical(ref: dict[str, Any], counts: CategoryCounts) -> dict[str, Any]:
    categories = list(ref["shares"])
    cur_count, cur_rows = int(counts.known.sum()) + counts.unseen_rows, counts.rows
    cur_counts = np.append(counts.known.astype("float64"), float(counts.unseen_rows))
    ref_shares = [*ref["shares"].values(), float(ref.get("other_share", 0.0))]
    ref_rows = int(ref.get("rows") or 0)
    ref_count = int(ref.get("count", round(ref_rows * (1 - ref["missing_rate"]))))
    statistic, dof = _chi_square_table(
        np.append(np.round(np.asarray(ref_shares) * ref_count), ref_rows - ref_count),
        np.append(cur_counts, cur_rows - cur_count),
    )
    return {
        "labels": [*categories, _OTHER],
        "reference_shares": ref_shares,
        "current_shares": list(cur_counts / max(cur_count, 1)),
        "missing": 1 - cur_count / cur_rows if cur_rows else 0.0,
        "new": [] if ref.get("truncated") else counts.unseen,
        "test": "chi2",
        "statistic": statistic,
        "dof": dof,
        "missing_counts": (ref_rows - ref_count, ref_rows, cur_rows - cur_count, cur_rows),
        "rows": cur_count,
        "plot": None,
    }


def _measure(column: str, ref: dict[str, Any], counts: NumericCounts | CategoryCounts) -> dict[str, Any]:
    """Effect sizes and test statistics of one column (p-values come later, for all columns at once)."""
    numeric = isinstance(counts, NumericCounts)
    out = _measure_numeric(ref, counts) if numeric else _measure_categorical(ref, counts)
    # Missing values count as one more bin so that a jump in the missing rate moves the PSI too.
    ref_full = np.append(np.asarray(out["reference_shares"]) * (1 - ref["missing_rate"]), ref["missing_rate"])
    cur_full = np.append(np.asarray(out["current_shares"]) * (1 - out["missing"]), out["missing"])
    if out["plot"] is None:
        out["plot"] = _categorical_plot(out["labels"], ref_full, cur_full)
    out.update(
        column=column,
        kind=ref["kind"],
        psi=psi(ref_full, cur_full),
        js_distance=js_distance(ref_full, cur_full),
        missing_rate_reference=float(ref["missing_rate"]),
    )
    return out


def _p_values(parts: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Each column's p-value and missing-rate p-value, every test of a kind computed in one vectorised call.

    Numeric columns combine KS and the missing-rate test (Bonferroni over the two) when either side has
    missing values; for categorical columns the chi-square already holds missing values as a category.
    """
    missing_p = missing_rate_test(*np.array([part["missing_counts"] for part in parts], dtype="float64").T)
    p = np.ones(len(parts))
    numeric = np.array([part["kind"] == "numeric" for part in parts], dtype=bool)
    if numeric.any():
        chosen = [part for part in parts if part["kind"] == "numeric"]
        sizes = np.array([part["sizes"] for part in chosen], dtype="float64")
        ks = ks_p_value([part["statistic"] for part in chosen], sizes[:, 0], sizes[:, 1])
        has_missing = np.array([part["missing_rate_reference"] > 0 or part["missing"] > 0 for part in chosen])
        p[numeric] = np.where(has_missing, np.minimum(1.0, 2 * np.minimum(ks, missing_p[numeric])), ks)
    if (~numeric).any():
        chosen = [part for part in parts if part["kind"] != "numeric"]
        dof = np.array([part["dof"] for part in chosen], dtype="float64")
        statistic = np.array([part["statistic"] for part in chosen], dtype="float64")
        p[~numeric] = np.where(dof > 0, stats.chi2.sf(statistic, np.maximum(dof, 1)), 1.0)
    return p, missing_p


def _decide(
    part: dict[str, Any], p: float, missing_p: float, adjusted: float, config: DriftConfig
) -> FeatureDrift:
    effect = _effect_severity(part["psi"], part["js_distance"], config)
    significant = bool(adjusted <= config.alpha)
    has_missing = part["missing_rate_reference"] > 0 or part["missing"] > 0
    return FeatureDrift(
        column=part["column"],
        kind=part["kind"],
        psi=part["psi"],
        js_distance=part["js_distance"],
        missing_rate_reference=part["missing_rate_reference"],
        missing_rate_current=float(part["missing"]),
        new_categories=[str(c) for c in part["new"]],
        severity=effect if significant else "none",
        reference_shares=[float(v) for v in part["reference_shares"]],
        current_shares=[float(v) for v in part["current_shares"]],
        labels=part["labels"],
        test=f"{part['test']}+missing" if part["kind"] == "numeric" and has_missing else part["test"],
        statistic=float(part["statistic"]),
        p_value=float(p),
        missing_p_value=float(missing_p) if has_missing else None,
        p_value_adjusted=float(adjusted),
        significant=significant,
        effect_severity=effect,
        rows=int(part["rows"]),
        plot=part["plot"],
    )


def _weights(
    features: list[FeatureDrift], importance: dict[str, float] | None, config: DriftConfig
) -> tuple[np.ndarray, bool]:
    """Per-feature weights of the drifted share, and whether they are importances (else all equal)."""
    if config.weighting == "importance" and importance:
        weights = np.array([max(float(importance.get(f.column, 0.0)), 0.0) for f in features])
        if weights.sum() > 0:
            return weights, True
    return np.ones(len(features)), False


def _reason(
    severity: Severity,
    features: list[FeatureDrift],
    shares: dict[str, float],
    score: FeatureDrift | None,
    weighted: bool,
    config: DriftConfig,
) -> str:
    """One line for on-call: what drifted at which level, against which rule."""
    named = {
        level: [f.column for f in sorted(features, key=lambda f: f.psi, reverse=True) if f.severity == level]
        for level in reversed(LEVELS)
    }
    drifted = sum(len(v) for v in named.values())
    listing = "; ".join(f"{level}: {', '.join(cols[:8])}" for level, cols in named.items() if cols)
    what = "importance-weighted share" if weighted else "share"
    text = (
        f"{severity}: {drifted} of {len(features)} features drifted significantly"
        + (f" ({listing})" if listing else "")
        + f"; {what} at warning or above {shares['warning']:.0%}, at critical {shares['critical']:.0%}"
        + f" (dataset drift needs {config.drift_share:.0%})"
    )
    if score is not None:
        text += f"; prediction scores {score.severity} (PSI {score.psi:.3f})"
    return text + f"; tests {config.correction}-corrected at alpha {config.alpha}"


def compare_summary(
    profile: dict[str, Any],
    summary: BatchSummary,
    batch: str,
    config: DriftConfig,
    importance: dict[str, float] | None = None,
) -> DriftResult:
    """Compare a batch, known by its (merged) summary against ``profile``, with the reference profile.

    ``importance`` (default: the profile's) weights the drifted share when ``config.weighting`` is
    ``importance``. With scores and a calibration map in the profile, ``performance`` holds the CBPE estimate.
    """
    rows = summary.rows
    columns = _profile_columns(profile)
    parts = [
        _measure(column, ref, counts)
        for column, ref in columns.items()
        if column != SCORE
        and (counts := summary.numeric.get(column) or summary.categorical.get(column)) is not None
    ]
    if SCORE in summary.numeric and SCORE in columns:
        parts.append(_measure(SCORE, columns[SCORE], summary.numeric[SCORE]))
    p_values, missing_p = _p_values(parts) if parts else (np.ones(0), np.ones(0))
    adjusted = adjust_p_values(p_values, config.correction)
    decided = [
        _decide(part, p, mp, adj, config)
        for part, p, mp, adj in zip(parts, p_values, missing_p, adjusted, strict=True)
    ]
    per_feature = [f for f in decided if f.column != SCORE]
    score = next((f for f in decided if f.column == SCORE), None)
    weights, weighted = _weights(per_feature, importance or profile.get("importance"), config)
    ranks = np.array([RANK[f.severity] for f in per_feature], dtype=int)
    total = float(weights.sum())
    shares = {level: float(weights[ranks >= RANK[level]].sum() / total) if total else 0.0 for level in LEVELS}
    performance = None
    if summary.scores is not None and "calibration" in profile:
        from ml.performance import estimate_performance_binned

        performance = estimate_performance_binned(
            summary.scores.counts, summary.scores.sums, profile["calibration"], profile.get("performance")
        )
    common: dict[str, Any] = {
        "shares": shares,
        "weighting": "importance" if weighted else "equal",
        "correction": config.correction,
        "alpha": config.alpha,
        "performance": performance,
    }
    score_psi = score.psi if score else None
    if rows < config.min_rows:
        reason = f"insufficient_data: {rows} rows, drift.min_rows is {config.min_rows}; never drift"
        return DriftResult(
            batch, rows, "insufficient_data", "none", 0.0, score_psi, decided, **common, reason=reason
        )
    score_rank = RANK[score.severity] if score else 0
    severity: Severity = "none"
    if shares["critical"] >= config.drift_share or score_rank >= RANK["critical"]:
        severity = "critical"
    elif shares["warning"] >= config.drift_share or score_rank >= RANK["warning"]:
        severity = "warning"
    elif shares["info"] > 0 or score_rank > 0:
        severity = "info"
    verdict = "drift" if RANK[severity] >= RANK["warning"] else "no_drift"
    reason = _reason(severity, per_feature, shares, score, weighted, config)
    return DriftResult(
        batch, rows, verdict, severity, shares["warning"], score_psi, decided, **common, reason=reason
    )


@dataclass(frozen=True)
class MeasuredAuc:
    """The champion's AUC on a batch and the reference it is compared with, each with its standard error."""

    source: Literal["realised", "estimated"]
    value: float
    standard_error: float
    reference: float
    reference_standard_error: float

    @property
    def drop(self) -> float:
        return self.reference - self.value

    @property
    def p_value(self) -> float:
        """One-sided p-value of the drop (normal approximation, the two AUCs independent)."""
        spread = float(np.hypot(self.standard_error, self.reference_standard_error))
        return float(stats.norm.sf(self.drop / spread)) if spread > 0 else float(self.drop <= 0)


def _auc_standard_error(auc: float, rows: float, positive_rate: float | None) -> float:
    from ml.performance import _hanley_mcneil

    positives = rows * (positive_rate or 0.0)
    return _hanley_mcneil(auc, positives, rows - positives) if 0 < positives < rows else 0.0


def measured_auc(
    estimate: dict[str, Any] | None,
    realised: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    min_rows: int,
) -> MeasuredAuc | None:
    """The batch's AUC and the reference it is compared with; None when it cannot be measured.

    The realised AUC (from the batch's labels: at least ``min_rows`` of them, both classes) against the
    reference's realised AUC on the champion's holdout; otherwise the label-free estimate (CBPE) against the
    same estimate on the holdout, so the estimator's bias cancels. Standard errors by Hanley and McNeil.
    """
    reference = reference or {}
    ref_rows, ref_rate = float(reference.get("rows") or 0), reference.get("positive_rate")
    if realised and realised.get("roc_auc") is not None and reference.get("roc_auc") is not None:
        rows, positives = int(realised.get("rows") or 0), int(realised.get("positives") or 0)
        if rows >= min_rows and 0 < positives < rows:
            value, base = float(realised["roc_auc"]), float(reference["roc_auc"])
            return MeasuredAuc(
                "realised",
                value,
                _auc_standard_error(value, rows, positives / rows),
                base,
                _auc_standard_error(base, ref_rows, ref_rate),
            )
    estimate = estimate or {}
    value = estimate.get("estimated_roc_auc")
    base = estimate.get("reference_estimated_roc_auc", reference.get("estimated_roc_auc"))
    if value is None or base is None:
        return None
    return MeasuredAuc(
        "estimated",
        float(value),
        float(estimate.get("standard_error") or 0.0),
        float(base),
        _auc_standard_error(float(base), ref_rows, ref_rate),
    )


def _drop_severity(drop: float, config: DriftConfig) -> Severity:
    if drop >= config.performance_drop_critical:
        return "critical"
    if drop >= config.performance_drop_warning:
        return "warning"
    return "none"


def with_performance(
    result: DriftResult,
    realised: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    config: DriftConfig,
) -> DriftResult:
    """``result`` with the champion's AUC on the batch taken into its severity (call once per result).

    ``realised`` is the batch's realised performance (None without labels), ``reference`` the profile's
    ``performance`` entry. An AUC ``drift.performance_drop_warning`` (``_critical``) points below the reference
    makes the batch at least warning (critical) when the drop is also significant at ``drift.alpha`` (one-sided,
    the two AUCs' standard errors combined: a few hundred labels are noisy), so its verdict becomes ``drift``
    (an alert, and a retrain request when the policy allows). The per-column statistics, shares and drift share
    stay as they are; the reason says which AUC fell and by how much, and ``performance_drop`` records it (also
    when it did not fall).
    """
    if result.verdict == "insufficient_data":
        return result
    measured = measured_auc(result.performance, realised, reference, config.min_rows)
    if measured is None:
        return result
    drop, p_value = measured.drop, measured.p_value
    effect = _drop_severity(drop, config)
    significant = p_value <= config.alpha
    level: Severity = effect if significant else "none"
    against = "the reference" if measured.source == "realised" else "the reference estimate"
    summary = (
        f"{measured.source} AUC {measured.value:.3f}, {abs(drop):.3f} {'below' if drop >= 0 else 'above'} "
        f"{against} {measured.reference:.3f}"
    )
    severity = max(result.severity, level, key=RANK.__getitem__)
    if RANK[level] >= RANK["warning"]:
        rule = f"drift.performance_drop_{level} is {getattr(config, f'performance_drop_{level}')}"
        reason = f"{severity}: {summary} ({rule}); {result.reason.removeprefix(f'{result.severity}: ')}"
    elif effect != "none":
        reason = f"{result.reason}; {summary} (not significant: p {p_value:.2g} > alpha {config.alpha})"
    else:
        reason = f"{result.reason}; {summary}"
    return replace(
        result,
        severity=severity,
        verdict="drift" if RANK[severity] >= RANK["warning"] else result.verdict,
        reason=reason,
        performance_drop={
            "source": measured.source,
            "roc_auc": measured.value,
            "reference_roc_auc": measured.reference,
            "drop": drop,
            "p_value": p_value,
            "severity": level,
            "effect_severity": effect,
            "data_severity": result.severity,
            "summary": summary,
        },
    )


def compare(
    profile: dict[str, Any],
    frame: pd.DataFrame | pa.Table,
    scores: np.ndarray | None,
    batch: str,
    config: DriftConfig,
    *,
    importance: dict[str, float] | None = None,
) -> DriftResult:
    """Compare one batch in memory (and the champion's scores on it) with the reference profile.

    The same as ``compare_summary`` over ``summarize_batch`` of the whole batch.
    """
    return compare_summary(profile, summarize_batch(profile, frame, scores), batch, config, importance)
