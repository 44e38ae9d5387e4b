"""What a training run leaves in MLflow (issue 2: the model with signature and input example) and what the gate
leaves on the version (issue 3: each rule's value, threshold and verdict as tags)."""

from __future__ import annotations

import numpy as np
import pytest

from ml import demo_data, registry, steps
from ml.evaluate import Rule


@pytest.mark.fast
def test_rule_tags_carry_verdict_value_and_threshold() -> None:
    passed = registry._rule_tags(Rule.check("min_improvement", 0.0123456789, ">=", 0.0))
    assert passed == {
        "rule.min_improvement": "pass",
        "rule.min_improvement.value": "0.0123457",
        "rule.min_improvement.threshold": ">= 0",
    }
    failed = registry._rule_tags(Rule.check("max_slice_auc_drop", 0.08, "<=", 0.05))
    assert failed["rule.max_slice_auc_drop"] == "fail"
    assert failed["rule.max_slice_auc_drop.threshold"] == "<= 0.05"
    undefined = registry._rule_tags(Rule.check("min_roc_auc", float("nan"), ">=", 0.6))
    assert undefined["rule.min_roc_auc"] == "fail" and undefined["rule.min_roc_auc.value"] == "nan"


def test_the_logged_model_has_signature_and_input_example_and_the_version_its_rules(
    config, paths, scenario
) -> None:
    import mlflow

    demo_data.write_landing(scenario, paths.landing / "loans")
    for month in (1, 2, 3):
        steps.ingest_batch(config, paths, scenario.batch_key(month))
    window = steps.plan_training(config, paths, None, None)
    trained = steps.train_challenger(config, paths, window["batches"], {}, None, "t", {})
    evaluation = steps.evaluate_challenger(config, paths, window["batches"], trained["version"])

    ref = registry.VersionRef(config.model_name, trained["version"], trained["run_id"])
    info = mlflow.models.get_model_info(ref.uri)
    assert info.saved_input_example_info is not None
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    inputs = info.signature.inputs.input_names()
    assert set(inputs) == {*config.dataset.numeric_features, *config.dataset.categorical_features}
    model = registry.load_model(ref)
    example = model.input_example
    assert list(example.columns) == inputs and 0 < len(example) <= 5
    scores = registry.predict(model, example)
    assert scores.shape == (len(example),) and np.all((scores > 0) & (scores < 1))

    tags = {v["version"]: v["tags"] for v in registry.versions(config)}[ref.version]
    for rule in evaluation["rules"]:  # the first model: the minimums only
        name = rule["name"]
        assert tags[f"rule.{name}"] == ("pass" if rule["passed"] else "fail")
        assert float(tags[f"rule.{name}.value"]) == pytest.approx(rule["value"], rel=1e-5)
        assert tags[f"rule.{name}.threshold"] == f">= {rule['threshold']:g}"
    assert {r["name"] for r in evaluation["rules"]} == {"min_roc_auc", "min_pr_auc"}
