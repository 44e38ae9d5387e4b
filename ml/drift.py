"""Drift: a reference profile saved at training time, and one pass over a new batch compared against it.

The profile holds, per numeric feature, quantile bin edges and the reference share in each bin (plus the
missing rate), per categorical feature the category shares, and the same for the model's scores. Comparing a
batch costs one histogram per column. Each feature gets a PSI and a Jensen-Shannon distance and a severity;
the batch is drifted when a configured share of features (or the scores) crosses the thresholds. Below
``drift.min_rows`` rows the verdict is ``insufficient_data``, never ``drift``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ml.config import DriftConfig
from ml.features import FeatureSpec

Severity = Literal["none", "warning", "critical"]
_EPS = 1e-4
_OTHER = "__unseen__"
SCORE = "__score__"


def _numeric_edges(values: np.ndarray, bins: int) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    return [float(e) for e in edges]


def _numeric_shares(values: np.ndarray, edges: list[float]) -> tuple[list[float], float]:
    """Shares of the non-missing values in each bin (len(edges)+1 bins) and the missing rate."""
    missing = ~np.isfinite(values)
    present = values[~missing]
    counts = np.bincount(np.searchsorted(np.asarray(edges), present, side="right"), minlength=len(edges) + 1)
    total = max(int(present.size), 1)
    return [float(c) / total for c in counts], float(missing.mean()) if values.size else 0.0


def _categorical_shares(values: pd.Series, categories: list[str] | None) -> tuple[dict[str, float], float]:
    missing = values.isna()
    present = values[~missing].astype(str)
    shares = present.value_counts(normalize=True)
    if categories is None:
        return {str(k): float(v) for k, v in shares.items()}, float(missing.mean()) if len(values) else 0.0
    known = {c: float(shares.get(c, 0.0)) for c in categories}
    known[_OTHER] = float(shares[~shares.index.isin(categories)].sum())
    return known, float(missing.mean()) if len(values) else 0.0


def build_profile(frame: pd.DataFrame, spec: FeatureSpec, scores: np.ndarray, bins: int) -> dict[str, Any]:
    """The reference profile of a training window and the model's scores on it (JSON-ready)."""
    columns: dict[str, Any] = {}
    for column in spec.numeric:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        edges = _numeric_edges(values, bins)
        shares, missing = _numeric_shares(values, edges)
        columns[column] = {"kind": "numeric", "edges": edges, "shares": shares, "missing_rate": missing}
    for column in spec.categorical:
        shares_map, missing = _categorical_shares(frame[column], None)
        columns[column] = {"kind": "categorical", "shares": shares_map, "missing_rate": missing}
    score_values = np.asarray(scores, dtype="float64")
    edges = _numeric_edges(score_values, bins)
    shares, _ = _numeric_shares(score_values, edges)
    columns[SCORE] = {"kind": "numeric", "edges": edges, "shares": shares, "missing_rate": 0.0}
    return {"rows": len(frame), "bins": bins, "columns": columns}


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


@dataclass(frozen=True)
class FeatureDrift:
    """How far one column moved from the reference."""

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

    def top(self, count: int = 5) -> list[FeatureDrift]:
        """The most drifted features (scores excluded), largest PSI first."""
        ranked = sorted((f for f in self.features if f.column != SCORE), key=lambda f: f.psi, reverse=True)
        return [f for f in ranked if f.severity != "none"][:count]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _severity(value: float, config: DriftConfig) -> Severity:
    if value >= config.psi_critical:
        return "critical"
    if value >= config.psi_warning:
        return "warning"
    return "none"


def _compare_column(
    column: str, ref: dict[str, Any], current: pd.Series, config: DriftConfig
) -> FeatureDrift:
    if ref["kind"] == "numeric":
        values = pd.to_numeric(current, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        cur_shares, missing = _numeric_shares(values, ref["edges"])
        ref_shares = ref["shares"]
        edges = ref["edges"]
        labels = [f"< {edges[0]:.4g}"] if edges else ["all"]
        labels += [f"{lo:.4g} - {hi:.4g}" for lo, hi in itertools.pairwise(edges)]
        labels += [f">= {edges[-1]:.4g}"] if edges else []
        new: list[str] = []
    else:
        categories = list(ref["shares"])
        shares_map, missing = _categorical_shares(current, categories)
        seen = current.dropna().astype(str).unique()
        new = sorted(str(c) for c in seen if c not in ref["shares"])[:20]
        labels = [*categories, _OTHER]
        ref_shares = [*ref["shares"].values(), 0.0]
        cur_shares = [shares_map[c] for c in labels]
    # Missing values count as one more bin so that a jump in the missing rate moves the PSI too.
    ref_full = np.append(np.asarray(ref_shares) * (1 - ref["missing_rate"]), ref["missing_rate"])
    cur_full = np.append(np.asarray(cur_shares) * (1 - missing), missing)
    value = psi(ref_full, cur_full)
    return FeatureDrift(
        column=column,
        kind=ref["kind"],
        psi=value,
        js_distance=js_distance(ref_full, cur_full),
        missing_rate_reference=float(ref["missing_rate"]),
        missing_rate_current=missing,
        new_categories=new,
        severity=_severity(value, config),
        reference_shares=[float(s) for s in ref_shares],
        current_shares=[float(s) for s in cur_shares],
        labels=labels,
    )


def compare(
    profile: dict[str, Any], frame: pd.DataFrame, scores: np.ndarray | None, batch: str, config: DriftConfig
) -> DriftResult:
    """Compare one batch (and the champion's scores on it) with the reference profile."""
    rows = len(frame)
    features = [
        _compare_column(column, ref, frame[column], config)
        for column, ref in profile["columns"].items()
        if column != SCORE and column in frame.columns
    ]
    score_psi = None
    if scores is not None and SCORE in profile["columns"]:
        score_drift = _compare_column(SCORE, profile["columns"][SCORE], pd.Series(scores), config)
        features.append(score_drift)
        score_psi = score_drift.psi
    per_feature = [f for f in features if f.column != SCORE]
    if rows < config.min_rows:
        return DriftResult(batch, rows, "insufficient_data", "none", 0.0, score_psi, features)
    critical_share = sum(f.severity == "critical" for f in per_feature) / max(len(per_feature), 1)
    warning_share = sum(f.severity != "none" for f in per_feature) / max(len(per_feature), 1)
    score_severity = _severity(score_psi, config) if score_psi is not None else "none"
    if critical_share >= config.drift_share or score_severity == "critical":
        severity: Severity = "critical"
    elif warning_share >= config.drift_share or score_severity == "warning":
        severity = "warning"
    else:
        severity = "none"
    verdict = "drift" if severity != "none" else "no_drift"
    return DriftResult(batch, rows, verdict, severity, warning_share, score_psi, features)
