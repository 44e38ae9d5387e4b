from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ml.config import GateConfig
from ml.evaluate import METRIC_NAMES, _fast_auc, classification_metrics, decide

pytestmark = pytest.mark.fast
RNG = np.random.default_rng(0)
Y = (RNG.random(3000) < 0.2).astype(int)
GOOD = np.clip(Y * 0.35 + RNG.random(3000) * 0.65, 0, 1)
WEAK = np.clip(Y * 0.1 + RNG.random(3000) * 0.9, 0, 1)


def test_rank_auc_matches_sklearn_with_ties() -> None:
    scores = np.round(GOOD, 1)
    assert _fast_auc(Y, scores) == pytest.approx(roc_auc_score(Y, scores))


def test_every_metric_is_reported() -> None:
    metrics = classification_metrics(Y, GOOD, 0.5)
    assert set(METRIC_NAMES) <= set(metrics)
    assert 0.5 < metrics["roc_auc"] <= 1


def test_first_model_needs_the_minimums_only() -> None:
    assert decide(Y, GOOD, None, GateConfig(min_roc_auc=0.6)).promote
    refused = decide(Y, WEAK, None, GateConfig(min_roc_auc=0.9))
    assert not refused.promote
    assert "min_roc_auc" in refused.reason


def test_better_challenger_is_promoted_worse_is_not() -> None:
    assert decide(Y, GOOD, WEAK, GateConfig(), "1").promote
    worse = decide(Y, WEAK, GOOD, GateConfig(), "1")
    assert not worse.promote
    assert "min_improvement" in worse.reason


def test_noisy_tie_is_not_promoted_with_the_default_gate() -> None:
    noisy = np.clip(GOOD + np.random.default_rng(0).normal(0, 0.02, len(GOOD)), 0, 1)
    decision = decide(Y, noisy, GOOD, GateConfig(), "1")
    assert not decision.promote
    rules = {rule.name: rule for rule in decision.rules}
    # Its AUC is a hair above the champion's: only the bootstrap's lower bound tells the tie apart.
    assert rules["min_improvement"].passed and 0 < rules["min_improvement"].value < 0.001
    assert not rules["bootstrap_auc_diff_p05"].passed
    assert "bootstrap_auc_diff_p05" in decision.reason and "(needs > 0)" in decision.reason
    # The former default bound (-0.005) promoted this tie.
    assert decide(Y, noisy, GOOD, GateConfig(bootstrap_lower_bound=-0.005), "1").promote


def test_a_slice_much_worse_than_the_champion_blocks_promotion() -> None:
    segment = np.where(RNG.random(len(Y)) < 0.3, "broker", "online")
    better_elsewhere = GOOD.copy()
    broker = segment == "broker"
    better_elsewhere[broker] = RNG.random(int(broker.sum()))  # useless on the broker slice
    champion = np.clip(Y * 0.15 + RNG.random(len(Y)) * 0.85, 0, 1)
    gate = GateConfig(slice_min_rows=100, slice_tolerance=0.05, bootstrap_rounds=0)
    decision = decide(Y, better_elsewhere, champion, gate, "1", slices={"channel": segment})
    assert {(m.feature, m.value) for m in decision.slices} == {("channel", "broker"), ("channel", "online")}
    assert not decision.promote
    assert "max_slice_auc_drop" in decision.reason


def test_small_slices_are_skipped() -> None:
    tiny = np.array(["rare" if i < 20 else "common" for i in range(len(Y))])
    decision = decide(Y, GOOD, WEAK, GateConfig(slice_min_rows=100), "1", slices={"kind": tiny})
    assert [m.value for m in decision.slices] == ["common"]


@pytest.mark.parametrize("decimals", [1, 3, 12])
def test_metrics_equal_scikit_learn_with_and_without_ties(decimals: int) -> None:
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
    )

    scores = np.clip(np.round(GOOD, decimals), 1e-7, 1 - 1e-7)
    predicted = (scores >= 0.5).astype(int)
    expected = {
        "roc_auc": roc_auc_score(Y, scores),
        "pr_auc": average_precision_score(Y, scores),
        "log_loss": log_loss(Y, scores, labels=[0, 1]),
        "brier": brier_score_loss(Y, scores),
        "precision": precision_score(Y, predicted, zero_division=0),
        "recall": recall_score(Y, predicted, zero_division=0),
        "f1": f1_score(Y, predicted, zero_division=0),
    }
    found = classification_metrics(Y, scores, 0.5)
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_single_class_metrics_are_nan_not_errors() -> None:
    from ml.evaluate import roc_auc

    metrics = classification_metrics(np.zeros(10, dtype=int), np.linspace(0, 1, 10), 0.5)
    assert np.isnan(metrics["roc_auc"]) and np.isnan(metrics["pr_auc"]) and metrics["precision"] == 0.0
    assert np.isnan(roc_auc(np.ones(5, dtype=int), np.linspace(0, 1, 5)))
