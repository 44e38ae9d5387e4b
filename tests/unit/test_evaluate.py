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


def test_noisy_tie_is_not_promoted() -> None:
    noisy = np.clip(GOOD + RNG.normal(0, 0.02, len(GOOD)), 0, 1)
    decision = decide(Y, noisy, GOOD, GateConfig(min_improvement=0.0, bootstrap_lower_bound=0.0), "1")
    assert not decision.promote
    assert {rule.name for rule in decision.rules if not rule.passed} & {
        "bootstrap_auc_diff_p05",
        "min_improvement",
    }
