"""Model performance per batch: realised when labels arrive (late), estimated from scores before they do.

Realised: labels are joined to the stored predictions by id, then AUC and calibration (expected calibration
error, mean score vs positive rate, a reliability table). Estimated: confidence-based performance estimation
(CBPE) reads each score as the probability of a positive once calibrated, and returns the AUC expected if labels
were drawn from those probabilities; the calibration map is fitted at training time on held-out rows and
stored in the reference profile. CBPE sees drops caused by covariate shift (scores moving to where the model
ranks less well); it cannot see concept shift (the same scores meaning something else), only labels can.
Pure functions over arrays and DataFrames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from ml.evaluate import AUC_BINS, histogram_roc_auc, score_bins, score_class_histogram

_CLIP = 1e-6


def _pairwise_auc(
    scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None
) -> float | None:
    """AUC of ``scores`` where row i is a positive with probability ``positive[i]`` (ties count one half).

    With 0/1 labels this is the Mann-Whitney AUC; with probabilities it is the expected share of concordant
    (positive, negative) pairs, pairs of a row with itself excluded. ``weights`` counts each row that many
    times (rows sharing a score and a probability).
    """
    scores = np.asarray(scores, dtype="float64")
    w = np.ones(scores.size) if weights is None else np.asarray(weights, dtype="float64")
    pos = np.asarray(positive, dtype="float64") * w
    neg = w - pos
    own = pos * (1.0 - np.asarray(positive, dtype="float64"))
    _, group = np.unique(scores, return_inverse=True)
    pos_g = np.bincount(group, weights=pos)
    neg_g = np.bincount(group, weights=neg)
    self_g = np.bincount(group, weights=own)
    neg_below = np.cumsum(neg_g) - neg_g
    concordant = np.sum(pos_g * neg_below) + 0.5 * np.sum(pos_g * neg_g - self_g)
    pairs = pos.sum() * neg.sum() - np.sum(own)
    return float(concordant / pairs) if pairs > 0 else None


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC (ties count one half); None when the labels hold a single class."""
    return _pairwise_auc(scores, np.asarray(labels, dtype="float64"))


def _bin_index(scores: np.ndarray, bins: int, strategy: Literal["uniform", "quantile"]) -> np.ndarray:
    if strategy == "quantile":
        inner = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1]))
    else:
        inner = np.linspace(0, 1, bins + 1)[1:-1]
    return np.searchsorted(inner, scores, side="right")


def calibration_table(
    labels: np.ndarray,
    scores: np.ndarray,
    bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "quantile",
) -> list[dict[str, float]]:
    """Reliability table: per score bin its rows, mean score and positive rate (empty bins left out)."""
    y = np.asarray(labels, dtype="float64")
    s = np.asarray(scores, dtype="float64")
    index = _bin_index(s, bins, strategy)
    count = np.bincount(index, minlength=bins)
    mean_score = np.bincount(index, weights=s, minlength=bins)
    positives = np.bincount(index, weights=y, minlength=bins)
    keep = count > 0
    return [
        {"rows": int(n), "mean_score": float(ms / n), "positive_rate": float(p / n)}
        for n, ms, p in zip(count[keep], mean_score[keep], positives[keep], strict=True)
    ]


def expected_calibration_error(
    labels: np.ndarray,
    scores: np.ndarray,
    bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> float:
    """Expected calibration error: the row-weighted mean |mean score - positive rate| over score bins."""
    table = calibration_table(labels, scores, bins, strategy)
    total = sum(row["rows"] for row in table)
    if total == 0:
        return 0.0
    return float(sum(row["rows"] * abs(row["mean_score"] - row["positive_rate"]) for row in table) / total)


def realised_performance(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """AUC and calibration of scores against labels that arrived (JSON-ready)."""
    y = np.asarray(labels, dtype="float64")
    s = np.asarray(scores, dtype="float64")
    if y.size == 0:
        return {"rows": 0, "positives": 0, "roc_auc": None}
    clipped = np.clip(s, _CLIP, 1 - _CLIP)
    return {
        "rows": int(y.size),
        "positives": int(y.sum()),
        "positive_rate": float(y.mean()),
        "mean_score": float(s.mean()),
        "calibration_in_the_large": float(s.mean() - y.mean()),
        "roc_auc": roc_auc(y, s),
        "ece": expected_calibration_error(y, s, bins),
        "brier": float(np.mean((s - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "calibration": calibration_table(y, s, bins, "quantile"),
    }


@dataclass
class LabelledScores:
    """Labelled rows as fixed-size state that merges across chunks: ``realised_performance`` in bounded memory.

    Per score bin (``evaluate.AUC_BINS`` equal-width bins of [0, 1]) the rows of each class and the sum of the
    scores, plus the Brier and log-loss sums: a few MiB whatever the number of rows. ``performance`` gives
    ``realised_performance``'s document from it; see there for what is exact and what is binned.
    """

    counts: np.ndarray
    """Rows per (class, bin): shape (2, bins), negatives first (``evaluate.score_class_histogram``)."""
    sums: np.ndarray
    """Sum of the scores per bin."""
    squared_error: float
    log_loss: float

    @classmethod
    def of(cls, labels: np.ndarray, scores: np.ndarray, bins: int = AUC_BINS) -> LabelledScores:
        """The state of one chunk's 0/1 labels and scores (non-finite scores are left out)."""
        y = np.asarray(labels, dtype="float64")
        s = np.asarray(scores, dtype="float64")
        finite = np.isfinite(s)
        if not finite.all():
            y, s = y[finite], s[finite]
        clipped = np.clip(s, _CLIP, 1 - _CLIP)
        return cls(
            score_class_histogram(y, s, bins),
            np.bincount(score_bins(s, bins), weights=s, minlength=bins),
            float(np.sum((s - y) ** 2)),
            float(-np.sum(np.where(y > 0, np.log(clipped), np.log1p(-clipped)))),
        )

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: LabelledScores) -> LabelledScores:
        """The state of both chunks together."""
        return LabelledScores(
            self.counts + other.counts,
            self.sums + other.sums,
            self.squared_error + other.squared_error,
            self.log_loss + other.log_loss,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document of the used bins (``from_dict`` reads it back)."""
        used = np.flatnonzero(self.counts.sum(axis=0))
        return {
            "bins": self.counts.shape[1],
            "used": used.tolist(),
            "negatives": self.counts[0, used].tolist(),
            "positives": self.counts[1, used].tolist(),
            "sums": self.sums[used].tolist(),
            "squared_error": self.squared_error,
            "log_loss": self.log_loss,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LabelledScores:
        bins, used = int(raw["bins"]), np.asarray(raw["used"], dtype=np.intp)
        counts, sums = np.zeros((2, bins), dtype=np.int64), np.zeros(bins)
        counts[0, used], counts[1, used], sums[used] = raw["negatives"], raw["positives"], raw["sums"]
        return cls(counts, sums, float(raw["squared_error"]), float(raw["log_loss"]))

    def performance(self, bins: int = 10) -> dict[str, Any]:
        """``realised_performance``'s document, from the binned state.

        Exact (up to the order of float sums): rows, positives, rates, mean score, calibration in the large,
        Brier, log loss, and the ECE when ``bins`` divides the state's bins (its uniform bins are unions of
        them; a float32 score is never close enough to an edge to land on the other side). Binned: the ROC AUC,
        within ``evaluate.histogram_roc_auc``'s bound of the per-row one (6e-6 on the benchmark's scores,
        tested at 1e-4), and the quantile calibration table, whose bin edges move to the nearest
        state bin edge (each table bin's rows may differ from the per-row table's by the rows of one state bin;
        its mean score and positive rate are those of the rows it holds).
        """
        positives = self.counts[1]
        rows = int(self.counts.sum())
        if rows == 0:
            return {"rows": 0, "positives": 0, "roc_auc": None}
        positive_count, score_sum = int(positives.sum()), float(self.sums.sum())
        auc = histogram_roc_auc(self.counts)[0]
        return {
            "rows": rows,
            "positives": positive_count,
            "positive_rate": positive_count / rows,
            "mean_score": score_sum / rows,
            "calibration_in_the_large": (score_sum - positive_count) / rows,
            "roc_auc": None if np.isnan(auc) else auc,
            "ece": _binned_ece(self._grouped(self._uniform_groups(bins))),
            "brier": self.squared_error / rows,
            "log_loss": self.log_loss / rows,
            "calibration": _table(self._grouped(self._quantile_groups(bins))),
        }

    def _uniform_groups(self, bins: int) -> np.ndarray:
        """The table bin of each state bin for ``bins`` equal-width bins of [0, 1]."""
        total = self.counts.shape[1]
        return np.minimum(np.arange(total) * bins // total, bins - 1)

    def _quantile_groups(self, bins: int) -> np.ndarray:
        """The table bin of each state bin for ``bins`` quantile bins: each edge at the state bin edge whose
        cumulative rows are nearest the quantile's."""
        rows = self.counts.sum(axis=0)
        cumulative = np.cumsum(rows)
        targets = np.arange(1, bins) * cumulative[-1] / bins
        after = np.clip(np.searchsorted(cumulative, targets), 0, cumulative.size - 1)
        before = np.maximum(after - 1, 0)
        nearer = np.abs(cumulative[before] - targets) <= np.abs(cumulative[after] - targets)
        edges = np.unique(np.where(nearer, before, after))
        return np.searchsorted(edges, np.arange(rows.size), side="left")

    def _grouped(self, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, score sums and positives per table bin."""
        size = int(groups.max()) + 1
        return (
            np.bincount(groups, weights=self.counts.sum(axis=0), minlength=size),
            np.bincount(groups, weights=self.sums, minlength=size),
            np.bincount(groups, weights=self.counts[1], minlength=size),
        )


def _table(grouped: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[dict[str, float]]:
    """``calibration_table``'s rows from rows, score sums and positives per bin (empty bins left out)."""
    count, score_sum, positives = grouped
    keep = count > 0
    return [
        {"rows": int(n), "mean_score": float(ms / n), "positive_rate": float(p / n)}
        for n, ms, p in zip(count[keep], score_sum[keep], positives[keep], strict=True)
    ]


def _binned_ece(grouped: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """``expected_calibration_error`` from rows, score sums and positives per bin."""
    count, score_sum, positives = grouped
    total = count.sum()
    return float(np.abs(score_sum - positives).sum() / total) if total else 0.0


def join_labels(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    id_column: str,
    label_column: str,
    score_column: str = "score",
) -> pd.DataFrame:
    """Predictions with the labels that arrived, joined by id: columns id, score, label (labelled rows only).

    Duplicate ids keep their last row on either side; rows whose label is missing are dropped.
    """
    left = predictions[[id_column, score_column]].drop_duplicates(id_column, keep="last")
    right = labels[[id_column, label_column]].dropna(subset=[label_column])
    right = right.drop_duplicates(id_column, keep="last")
    joined = left.merge(right, on=id_column, how="inner", validate="one_to_one")
    return joined.rename(columns={score_column: "score", label_column: "label"})


def batch_performance(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    id_column: str,
    label_column: str,
    score_column: str = "score",
    bins: int = 10,
) -> dict[str, Any]:
    """Realised performance of a batch's predictions once (some of) its labels arrived.

    ``labels`` holds the id and the 0/1 label (positive class already mapped to 1). The result adds
    ``predicted_rows`` and ``label_coverage`` (labelled share of the predictions) to ``realised_performance``.
    """
    joined = join_labels(predictions, labels, id_column, label_column, score_column)
    result = realised_performance(joined["label"].astype(float).to_numpy(), joined["score"].to_numpy(), bins)
    predicted = int(predictions[id_column].nunique())
    return {
        **result,
        "predicted_rows": predicted,
        "label_coverage": len(joined) / predicted if predicted else 0.0,
    }


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype="float64"), _CLIP, 1 - _CLIP)
    return np.log(clipped / (1 - clipped))


def _fit_platt(x: np.ndarray, y: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Logistic regression of y on x (slope, intercept) by Newton's method with a tiny ridge."""
    design = np.column_stack([x, np.ones_like(x)])
    beta = np.array([1.0, 0.0])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(design @ beta)))
        gradient = design.T @ (y - p) - 1e-6 * beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + 1e-6 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-9:
            break
    return float(beta[0]), float(beta[1])


def fit_calibration(
    scores: np.ndarray, labels: np.ndarray, method: Literal["platt", "isotonic"] = "platt"
) -> dict[str, Any]:
    """A JSON-ready map from raw scores to calibrated probabilities, fitted on held-out (score, label) rows.

    ``platt``: a logistic regression on the score's logit (two numbers, stable on small holdouts);
    ``isotonic``: a monotone step function (flexible, needs a few thousand rows).
    """
    s = np.asarray(scores, dtype="float64")
    y = np.asarray(labels, dtype="float64")
    if y.size == 0 or y.min() == y.max():
        return {"method": "identity", "rows": int(y.size)}
    if method == "platt":
        slope, intercept = _fit_platt(_logit(s), y)
        return {"method": "platt", "slope": slope, "intercept": intercept, "rows": int(y.size)}
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    return {
        "method": "isotonic",
        "x": [round(float(v), 7) for v in iso.X_thresholds_],
        "y": [round(float(v), 7) for v in iso.y_thresholds_],
        "rows": int(y.size),
    }


def calibrate(calibration: dict[str, Any] | None, scores: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of raw scores (the scores themselves without a calibration map)."""
    s = np.asarray(scores, dtype="float64")
    method = (calibration or {}).get("method", "identity")
    if method == "platt":
        return 1 / (1 + np.exp(-(calibration["slope"] * _logit(s) + calibration["intercept"])))
    if method == "isotonic":
        return np.interp(s, calibration["x"], calibration["y"])
    return np.clip(s, 0.0, 1.0)


def expected_roc_auc(scores: np.ndarray, probabilities: np.ndarray | None = None) -> float | None:
    """CBPE: the AUC expected when each row is positive with its (calibrated) probability.

    The model ranks rows by ``scores``; ``probabilities`` (default: the scores) are the calibrated chances
    of a positive. The estimate is the expected share of concordant (positive, negative) pairs.
    """
    return _pairwise_auc(scores, scores if probabilities is None else probabilities)


def _hanley_mcneil(auc: float, positives: float, negatives: float) -> float:
    """Standard error of an AUC with these class sizes (Hanley and McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / max(
        positives * negatives, 1e-12
    )
    return float(np.sqrt(max(variance, 0.0)))


def _estimate(
    s: np.ndarray,
    w: np.ndarray | None,
    calibration: dict[str, Any] | None,
    reference: dict[str, Any] | None,
) -> dict[str, Any]:
    weights = np.ones(s.size) if w is None else w
    rows = float(weights.sum())
    p = calibrate(calibration, s)
    estimate = _pairwise_auc(s, p, w)
    positives = float((p * weights).sum())
    result: dict[str, Any] = {
        "method": "cbpe",
        "calibration": (calibration or {}).get("method", "identity"),
        "rows": int(rows),
        "estimated_roc_auc": estimate,
        "standard_error": _hanley_mcneil(estimate, positives, rows - positives)
        if estimate is not None
        else None,
        "expected_positive_rate": positives / rows if rows else None,
        "mean_score": float((s * weights).sum() / rows) if rows else None,
    }
    if reference:
        base = reference.get("estimated_roc_auc")
        result["reference_estimated_roc_auc"] = base
        result["reference_roc_auc"] = reference.get("roc_auc")
        result["estimated_change"] = estimate - base if estimate is not None and base is not None else None
    return result


def estimate_performance(
    scores: np.ndarray, calibration: dict[str, Any] | None = None, reference: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Label-free estimate of a batch's AUC (CBPE) and expected positive rate; JSON-ready.

    ``reference`` is the profile's ``performance`` entry (the same estimate on the reference rows, and the
    realised AUC there); the change is reported against its estimate, so the estimator's bias cancels.
    """
    s = np.asarray(scores, dtype="float64")
    return _estimate(s[np.isfinite(s)], None, calibration, reference)


def estimate_performance_binned(
    counts: np.ndarray,
    sums: np.ndarray,
    calibration: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``estimate_performance`` from a score histogram (rows and score sum per bin, mergeable across chunks).

    Each bin's rows count at the bin's mean score, as ties: with bins of width 1e-4 the AUC estimate moves by
    well under 1e-3 from the per-row one (the mean score and row count are exact).
    """
    n = np.asarray(counts, dtype="float64")
    used = n > 0
    means = np.asarray(sums, dtype="float64")[used] / n[used]
    result = _estimate(means, n[used], calibration, reference)
    if used.any():
        result["mean_score"] = float(np.asarray(sums, dtype="float64").sum() / n.sum())
    return result


def reference_performance(
    scores: np.ndarray, labels: np.ndarray, calibration: dict[str, Any] | None
) -> dict[str, Any]:
    """The reference entry stored in the profile: realised and CBPE-estimated AUC on the held-out rows."""
    s = np.asarray(scores, dtype="float64")
    y = np.asarray(labels, dtype="float64")
    return {
        "rows": int(y.size),
        "roc_auc": roc_auc(y, s),
        "estimated_roc_auc": expected_roc_auc(s, calibrate(calibration, s)),
        "positive_rate": float(y.mean()) if y.size else None,
        "ece": expected_calibration_error(y, s) if y.size else None,
    }
