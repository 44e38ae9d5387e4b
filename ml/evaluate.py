"""Evaluation: the same metrics for every model, and the gate that decides whether a challenger is promoted.

Metric names are fixed (``roc_auc``, ``pr_auc``, ``log_loss``, ``brier``, ``precision``, ``recall``, ``f1``) so
that runs compare side by side in the MLflow UI. Every rule of the gate is reported with its value, its
threshold and its verdict; the decision's ``reason`` is one line a reviewer can read.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ml.config import GateConfig

METRIC_NAMES = ("roc_auc", "pr_auc", "log_loss", "brier", "precision", "recall", "f1")


def classification_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """All gate metrics of ``scores`` against labels ``y`` (0/1), equal to scikit-learn's, from one sort."""
    y = np.asarray(y, dtype=int)
    scores = np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7)
    predicted = scores >= threshold
    positives = int(y.sum())
    both_classes = 0 < positives < len(y)
    roc_auc, pr_auc = _ranking_metrics(y, scores) if both_classes else (float("nan"), float("nan"))
    true_pos = int(np.count_nonzero(predicted & (y == 1)))
    flagged = int(np.count_nonzero(predicted))
    precision = true_pos / flagged if flagged else 0.0
    recall = true_pos / positives if positives else 0.0
    f1 = 2 * true_pos / (flagged + positives) if flagged + positives else 0.0
    return {
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "log_loss": float(-np.mean(np.where(y == 1, np.log(scores), np.log1p(-scores)))) if len(y) else 0.0,
        "brier": float(np.mean((scores - y) ** 2)) if len(y) else 0.0,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "rows": float(len(y)),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
    }


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC alone (as in ``classification_metrics``), NaN when the labels hold one class."""
    y = np.asarray(y, dtype=int)
    if not 0 < y.sum() < len(y):
        return float("nan")
    return _ranking_metrics(y, np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7))[0]


AUC_BINS = 100_000
"""Equal-width score bins of [0, 1] of the histogram AUC (width 1e-5; a multiple of 10, so decile bins align)."""


def score_class_histogram(y: np.ndarray, scores: np.ndarray, bins: int = AUC_BINS) -> np.ndarray:
    """Rows per (class, score bin): shape ``(2, bins)``, negatives first, scores on ``bins`` equal-width bins of
    [0, 1] (values outside go to the end bins; non-finite scores are left out).

    Fixed-size and mergeable: the histogram of disjoint chunks is the sum of theirs (``histogram_roc_auc``).
    """
    s = np.asarray(scores, dtype="float64")
    labels = np.asarray(y).astype(np.intp, copy=False)
    finite = np.isfinite(s)
    if not finite.all():
        s, labels = s[finite], labels[finite]
    index = score_bins(s, bins)
    index += labels * bins
    return np.bincount(index, minlength=2 * bins).astype(np.int64, copy=False).reshape(2, bins)


def score_bins(scores: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each finite score on ``bins`` equal-width bins of [0, 1] (values outside: the end bins)."""
    index = np.multiply(scores, bins)
    np.clip(index, 0, bins - 1, out=index)
    return index.astype(np.intp)


def histogram_roc_auc(histogram: np.ndarray) -> tuple[float, float]:
    """ROC AUC of a ``score_class_histogram`` and its largest possible error against the per-row AUC.

    Rows in one bin count as ties (half a concordant pair each): exact between bins, off by at most half the
    (positive, negative) pairs inside a bin, the bound ``sum(pos_b * neg_b) / (2 * P * N)`` returned (it
    cannot tell ties, which are exact, from distinct values sharing a bin). For ``AUC_BINS`` (width w = 1e-5)
    it is about ``w / 2`` times the overlap of the classes' score densities: 6e-6 on the benchmark's 2.5M
    scores, whose actual error was 1.5e-9 (the order inside a bin is nearly random, errors cancel). Tested
    against the per-row AUC at 1e-4. NaN (both) when one class is empty.
    """
    negatives, positives = np.asarray(histogram, dtype="float64")
    pairs = positives.sum() * negatives.sum()
    if pairs == 0:
        return float("nan"), float("nan")
    below = np.cumsum(negatives) - negatives
    within = float(np.dot(positives, negatives))
    concordant = float(np.dot(positives, below)) + within / 2
    return float(concordant / pairs), float(within / (2 * pairs))


def _ranking_metrics(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC AUC (trapezoids over the ROC curve) and average precision, as scikit-learn computes them."""
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], y[order]
    last = np.append(np.flatnonzero(np.diff(ordered)), ordered.size - 1)
    true_pos = np.cumsum(hits)[last].astype("float64")
    false_pos = (last + 1) - true_pos
    tpr = np.concatenate([[0.0], true_pos / true_pos[-1]])
    fpr = np.concatenate([[0.0], false_pos / false_pos[-1]])
    roc_auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    average_precision = float(np.sum(np.diff(tpr) * true_pos / (true_pos + false_pos)))
    return roc_auc, average_precision


def _fast_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged), vectorised for the bootstrap."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    positives = y.sum()
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def paired_bootstrap_auc_difference(
    y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, rounds: int, seed: int = 0
) -> tuple[float, float, float]:
    """The AUC difference challenger - champion on resamples of the same rows: (mean, 5th, 95th percentile)."""
    y = np.asarray(y, dtype=int)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(rounds):
        pick = rng.integers(0, len(y), len(y))
        differences.append(_fast_auc(y[pick], challenger[pick]) - _fast_auc(y[pick], champion[pick]))
    values = np.asarray([d for d in differences if d == d])
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(values.mean()), float(np.percentile(values, 5)), float(np.percentile(values, 95))


@dataclass(frozen=True)
class SliceMetric:
    """ROC AUC of both models on one slice (rows where a categorical feature has one value)."""

    feature: str
    value: str
    rows: int
    challenger_roc_auc: float
    champion_roc_auc: float | None


def slice_metrics(
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    slices: dict[str, np.ndarray],
    min_rows: int,
) -> list[SliceMetric]:
    """Per-slice AUC for every value of every slicing column with at least ``min_rows`` rows and both classes."""
    y = np.asarray(y, dtype=int)
    found = []
    for feature, values in slices.items():
        labels = np.asarray(values, dtype=object)
        for value in sorted({str(v) for v in labels if v is not None and v == v}):
            mask = labels == value
            rows = int(mask.sum())
            if rows < min_rows or not 0 < y[mask].sum() < rows:
                continue
            found.append(
                SliceMetric(
                    feature,
                    value,
                    rows,
                    _fast_auc(y[mask], challenger[mask]),
                    _fast_auc(y[mask], champion[mask]) if champion is not None else None,
                )
            )
    return found


Comparison = Literal[">=", ">", "<="]
_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


@dataclass(frozen=True)
class Rule:
    """One rule of the promotion gate: it passes when ``value <comparison> threshold`` (never on NaN)."""

    name: str
    value: float | None
    threshold: float
    passed: bool
    comparison: Comparison = ">="

    @classmethod
    def check(cls, name: str, value: float, comparison: Comparison, threshold: float) -> Rule:
        """The rule with its verdict computed."""
        return cls(name, value, threshold, bool(_COMPARE[comparison](value, threshold)), comparison)

    def describe(self) -> str:
        """Value against threshold, e.g. ``0.0123 (>= 0)``."""
        return f"{_fmt(self.value)} ({self.comparison} {self.threshold:g})"


@dataclass
class Decision:
    """Promote or not, with every rule and a one-line reason."""

    promote: bool
    reason: str
    rules: list[Rule] = field(default_factory=list)
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] | None = None
    champion_version: str | None = None
    slices: list[SliceMetric] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    y: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    gate: GateConfig,
    champion_version: str | None = None,
    slices: dict[str, np.ndarray] | None = None,
) -> Decision:
    """Apply the promotion gate to two models scored on the same holdout (no champion: minimums only).

    ``slices`` maps each categorical feature to its holdout values; no slice may lose more than
    ``gate.slice_tolerance`` AUC against the champion.
    """
    challenger = classification_metrics(y, challenger_scores, gate.decision_threshold)
    per_slice = slice_metrics(
        np.asarray(y),
        np.asarray(challenger_scores),
        None if champion_scores is None else np.asarray(champion_scores),
        slices or {},
        gate.slice_min_rows,
    )
    rules = [
        Rule.check("min_roc_auc", challenger["roc_auc"], ">=", gate.min_roc_auc),
        Rule.check("min_pr_auc", challenger["pr_auc"], ">=", gate.min_pr_auc),
    ]
    champion = None
    if champion_scores is not None:
        champion = classification_metrics(y, champion_scores, gate.decision_threshold)
        improvement = challenger["roc_auc"] - champion["roc_auc"]
        rules.append(Rule.check("min_improvement", improvement, ">=", gate.min_improvement))
        if gate.bootstrap_rounds:
            _, low, _ = paired_bootstrap_auc_difference(
                np.asarray(y),
                np.asarray(challenger_scores),
                np.asarray(champion_scores),
                gate.bootstrap_rounds,
            )
            rules.append(Rule.check("bootstrap_auc_diff_p05", low, ">", gate.bootstrap_lower_bound))
        drops = [
            m.champion_roc_auc - m.challenger_roc_auc for m in per_slice if m.champion_roc_auc is not None
        ]
        if drops:
            worst = max(drops)
            rules.append(Rule.check("max_slice_auc_drop", worst, "<=", gate.slice_tolerance))
    failed = [rule for rule in rules if not rule.passed]
    if failed:
        reason = "rejected: " + "; ".join(
            f"{rule.name} {_fmt(rule.value)} (needs {rule.comparison} {rule.threshold:g})" for rule in failed
        )
    elif champion is None:
        reason = f"promoted: first model, roc_auc {challenger['roc_auc']:.4f} meets the minimums"
    else:
        reason = (
            f"promoted: roc_auc {challenger['roc_auc']:.4f} vs champion v{champion_version} "
            f"{champion['roc_auc']:.4f} (+{challenger['roc_auc'] - champion['roc_auc']:.4f})"
        )
    return Decision(not failed, reason, rules, challenger, champion, champion_version, per_slice)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"
