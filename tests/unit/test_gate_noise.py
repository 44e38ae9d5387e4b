"""Issue 3: noise never promotes. A challenger trained on the same data with another seed (real XGBoost, real
MLflow) is a tie, and the shipped gate settings keep the champion."""

from __future__ import annotations

import math

import numpy as np

from ml import demo_data, registry, steps
from ml.config import GateConfig
from ml.evaluate import decide


def _train(config, paths, overrides: dict) -> tuple[dict, dict, dict]:
    window = steps.plan_training(config, paths, None, None)
    summary = steps.validate_window(config, paths, window["batches"])
    trained = steps.train_challenger(config, paths, window["batches"], overrides, summary, "t", {})
    evaluation = steps.evaluate_challenger(config, paths, window["batches"], trained["version"])
    promotion = steps.promote_challenger(config, paths, trained["version"], evaluation, True, "t")
    return trained, evaluation, promotion


def test_a_retrain_with_another_seed_is_not_promoted_with_the_default_gate(config, paths, scenario) -> None:
    assert config.gate.bootstrap_lower_bound == GateConfig().bootstrap_lower_bound == 0.0
    assert config.gate.min_improvement == GateConfig().min_improvement
    demo_data.write_landing(scenario, paths.landing / "loans")
    for month in (1, 2, 3):
        steps.ingest_batch(config, paths, scenario.batch_key(month))
    champion, _, first = _train(config, paths, {})
    assert first["promoted"]

    tie, evaluation, promotion = _train(config, paths, {"seed": 1})
    assert not evaluation["promote"] and not promotion["promoted"]
    assert registry.champion(config).version == champion["version"]
    rules = {rule["name"]: rule for rule in evaluation["rules"]}
    # Same data, same hyperparameters: the AUCs differ by noise only, and the bootstrap's lower bound says so.
    assert abs(rules["min_improvement"]["value"]) < 0.02
    assert not rules["bootstrap_auc_diff_p05"]["passed"] and rules["bootstrap_auc_diff_p05"]["value"] <= 0.0

    tags = {v["version"]: v["tags"] for v in registry.versions(config)}[tie["version"]]
    assert tags["gate"] == "rejected" and tags["compared_with"] == champion["version"]
    assert tags["rule.bootstrap_auc_diff_p05"] == "fail"
    assert tags["rule.bootstrap_auc_diff_p05.threshold"] == "> 0"
    assert math.isclose(
        float(tags["rule.bootstrap_auc_diff_p05.value"]),
        rules["bootstrap_auc_diff_p05"]["value"],
        rel_tol=1e-5,
    )
    assert "bootstrap_auc_diff_p05" in tags["gate_reason"] and "(needs > 0)" in tags["gate_reason"]


def _tie(seed: int, rows: int = 800) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two equally good models: the same signal, each with its own noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.2).astype(int)
    signal = y * 0.8 + rng.normal(0, 1, rows)
    challenger, champion = (1 / (1 + np.exp(-(signal + rng.normal(0, 0.3, rows)))) for _ in range(2))
    return y, challenger, champion


def test_equally_good_models_are_rarely_promoted_with_the_default_gate() -> None:
    """The bound is one-sided at 95%: about 1 tie in 20 passes at the default 0 (1 of these 20), more at the
    former -0.005 (4 of these 20; ~12-15% in longer simulations)."""
    ties = [_tie(seed) for seed in range(20)]
    promoted = sum(decide(y, a, b, GateConfig(), "1").promote for y, a, b in ties)
    former = sum(decide(y, a, b, GateConfig(bootstrap_lower_bound=-0.005), "1").promote for y, a, b in ties)
    assert promoted <= 2 and promoted < former
