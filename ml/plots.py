"""Evaluation plots as PNG bytes: ROC and PR curves, calibration, confusion matrix, feature importance.

matplotlib is imported inside each function (it is slow to import) with the Agg backend (no display).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve


def _figure(width: float = 5.0, height: float = 4.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def roc_curves(y: np.ndarray, scores: dict[str, np.ndarray]) -> bytes:
    """ROC curve of each model (label -> scores) on the same rows."""
    figure, axis = _figure()
    for label, values in scores.items():
        fpr, tpr, _ = roc_curve(y, values)
        axis.plot(fpr, tpr, label=label)
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axis.legend(loc="lower right")
    return _png(figure)


def pr_curves(y: np.ndarray, scores: dict[str, np.ndarray]) -> bytes:
    """Precision-recall curve of each model on the same rows."""
    figure, axis = _figure()
    for label, values in scores.items():
        precision, recall, _ = precision_recall_curve(y, values)
        axis.plot(recall, precision, label=label)
    axis.axhline(float(np.mean(y)), linestyle=":", color="grey", label="base rate")
    axis.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    axis.legend(loc="upper right")
    return _png(figure)


def calibration(y: np.ndarray, scores: dict[str, np.ndarray], bins: int = 10) -> bytes:
    """Mean predicted score vs observed positive rate per score decile, for each model."""
    figure, axis = _figure()
    for label, values in scores.items():
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
        index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
        counts = np.bincount(index, minlength=len(edges) - 1)
        keep = counts > 0
        predicted = np.bincount(index, weights=values, minlength=len(edges) - 1)[keep] / counts[keep]
        observed = np.bincount(index, weights=y, minlength=len(edges) - 1)[keep] / counts[keep]
        axis.plot(predicted, observed, marker="o", label=label)
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set(xlabel="mean predicted score", ylabel="observed positive rate", title="Calibration")
    axis.legend(loc="upper left")
    return _png(figure)


def confusion(y: np.ndarray, scores: np.ndarray, threshold: float, title: str) -> bytes:
    """The confusion matrix at the decision threshold."""
    predicted = (scores >= threshold).astype(int)
    matrix = np.array([[np.sum((y == t) & (predicted == p)) for p in (0, 1)] for t in (0, 1)])
    figure, axis = _figure(4.0, 3.5)
    axis.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(column, row, str(value), ha="center", va="center")
    axis.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual", title=title)
    return _png(figure)


def importance(values: dict[str, float], top: int = 20) -> bytes:
    """Horizontal bars of the largest feature importances."""
    ranked = sorted(values.items(), key=lambda item: item[1])[-top:]
    figure, axis = _figure(5.0, max(2.5, 0.3 * len(ranked) + 1))
    axis.barh([name for name, _ in ranked], [value for _, value in ranked])
    axis.set(xlabel="share of total gain", title="Feature importance")
    return _png(figure)
