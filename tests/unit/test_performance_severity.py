"""A drop of the champion's AUC raises the batch's severity, reaches the alert, the policy and MLflow (issue 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from ml import alerts, policy, steps
from ml.config import DriftConfig
from ml.drift import DriftResult, build_profile, compare, with_performance
from ml.features import FeatureSpec
from ml.performance import realised_performance

pytestmark = pytest.mark.fast
SPEC = FeatureSpec(("x",), ())


def _calibrated(n: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A feature x ~ N(0, scale), calibrated scores P(y=1 | x) and labels drawn from them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, scale, n)
    scores = 1 / (1 + np.exp(-(-1.5 + 1.2 * x)))
    return x, scores, (rng.random(n) < scores).astype(int)


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    x, scores, y = _calibrated(12_000, 1)
    frame = pd.DataFrame({"x": x})
    return build_profile(frame[:8000], SPEC, scores[:8000], 10, calibration=(scores[8000:], y[8000:]))


def _stable(profile: dict[str, Any], seed: int = 2) -> tuple[DriftResult, np.ndarray, np.ndarray]:
    """A batch from the reference distribution: no feature or score drift. Returns it, its scores and labels."""
    x, scores, y = _calibrated(4000, seed)
    result = compare(profile, pd.DataFrame({"x": x}), scores, "2025-08", DriftConfig())
    assert result.verdict == "no_drift" and result.severity in ("none", "info")
    return result, scores, y


def _concept_shift(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Labels where ``share`` of the rows got a coin-flip label: same scores, a worse realised AUC."""
    rng = np.random.default_rng(seed)
    flipped = rng.random(y.size) < share
    return np.where(flipped, rng.integers(0, 2, y.size), y)


def test_labelled_auc_drop_without_feature_drift_is_critical_with_the_reason(profile: dict) -> None:
    result, scores, y = _stable(profile)
    realised = realised_performance(_concept_shift(y, 0.6, 3), scores)
    reference = profile["performance"]
    assert reference["roc_auc"] - realised["roc_auc"] > DriftConfig().performance_drop_critical

    raised = with_performance(result, realised, reference, DriftConfig())

    assert raised.severity == "critical" and raised.verdict == "drift"
    assert raised.reason.startswith(f"critical: realised AUC {realised['roc_auc']:.3f}, ")
    assert f"below the reference {reference['roc_auc']:.3f}" in raised.reason
    assert "drift.performance_drop_critical is 0.07" in raised.reason
    assert "0 of 1 features drifted significantly" in raised.reason
    drop = raised.performance_drop
    assert drop["source"] == "realised" and drop["severity"] == "critical"
    assert drop["data_severity"] == result.severity
    assert drop["drop"] == pytest.approx(reference["roc_auc"] - realised["roc_auc"])
    # The drift statistics are untouched.
    assert raised.features == result.features and raised.shares == result.shares
    assert raised.drift_share == result.drift_share and raised.score_psi == result.score_psi


def test_without_labels_an_estimated_drop_is_at_least_warning(profile: dict) -> None:
    x, scores, _ = _calibrated(4000, 4, scale=0.5)  # narrower scores: the champion ranks them less well
    wide = DriftConfig(psi_warning=50, psi_critical=60, psi_info=40)  # keep the data drift out of it
    result = compare(profile, pd.DataFrame({"x": x}), scores, "2025-09", wide)
    assert result.severity in ("none", "info") and result.performance["estimated_change"] < -0.05

    raised = with_performance(result, None, profile["performance"], wide)

    assert raised.severity in ("warning", "critical") and raised.verdict == "drift"
    assert raised.performance_drop["source"] == "estimated"
    estimate = result.performance
    assert raised.reason.startswith(f"{raised.severity}: estimated AUC {estimate['estimated_roc_auc']:.3f}, ")
    assert f"below the reference estimate {estimate['reference_estimated_roc_auc']:.3f}" in raised.reason


def test_a_stable_batch_stays_quiet_and_records_its_auc(profile: dict) -> None:
    result, scores, y = _stable(profile, seed=5)
    raised = with_performance(result, realised_performance(y, scores), profile["performance"], DriftConfig())
    assert raised.severity == result.severity and raised.verdict == "no_drift"
    assert raised.performance_drop["severity"] == "none"
    assert raised.reason.startswith(result.reason) and "realised AUC" in raised.reason
    assert alerts.for_result(_Config(), Path("/nonexistent"), _monitored(raised), "x") is None


def test_too_few_or_one_class_labels_fall_back_to_the_estimate(profile: dict) -> None:
    result, scores, y = _stable(profile, seed=6)
    few = realised_performance(_concept_shift(y[:100], 1.0, 7), scores[:100])
    one_class = realised_performance(np.zeros(y.size), scores)
    for realised in (few, one_class):
        raised = with_performance(result, realised, profile["performance"], DriftConfig())
        assert raised.performance_drop["source"] == "estimated"
        assert raised.severity == result.severity


def test_insufficient_data_and_missing_reference_are_left_alone(profile: dict) -> None:
    result, scores, y = _stable(profile, seed=8)
    bad = realised_performance(_concept_shift(y, 1.0, 9), scores)
    small = DriftResult("b", 10, "insufficient_data", "none", 0.0, None, [], performance=result.performance)
    assert with_performance(small, bad, profile["performance"], DriftConfig()) is small
    # Without the profile's reference AUC the labels cannot be compared: the estimate (its own reference) is.
    unreferenced = with_performance(result, bad, None, DriftConfig())
    assert unreferenced.performance_drop["source"] == "estimated" and unreferenced.severity == result.severity
    bare = DriftResult("b", 4000, "no_drift", "none", 0.0, None, [])
    assert with_performance(bare, None, None, DriftConfig()) is bare


def test_thresholds_are_configurable(profile: dict) -> None:
    result, scores, y = _stable(profile, seed=10)
    realised = realised_performance(_concept_shift(y, 0.6, 11), scores)
    lenient = DriftConfig(performance_drop_warning=0.5, performance_drop_critical=0.6)
    assert with_performance(result, realised, profile["performance"], lenient).verdict == "no_drift"
    strict = DriftConfig(performance_drop_warning=0.01, performance_drop_critical=0.9)
    assert with_performance(result, realised, profile["performance"], strict).severity == "warning"


def test_a_drop_within_the_noise_of_few_labels_does_not_alert(profile: dict) -> None:
    result, _, _ = _stable(profile, seed=14)
    reference = profile["performance"]
    fell = reference["roc_auc"] - 0.035  # past drift.performance_drop_warning (0.03)
    few = {"rows": 600, "positives": 150, "roc_auc": fell}
    noisy = with_performance(result, few, reference, DriftConfig())
    assert noisy.severity == result.severity and noisy.verdict == "no_drift"
    drop = noisy.performance_drop
    assert drop["effect_severity"] == "warning" and drop["severity"] == "none" and drop["p_value"] > 0.05
    assert "not significant" in noisy.reason
    many = with_performance(result, {**few, "rows": 40_000, "positives": 10_000}, reference, DriftConfig())
    assert many.severity == "warning" and many.performance_drop["p_value"] < 0.05


def test_config_rejects_warning_above_critical() -> None:
    with pytest.raises(ValidationError, match="performance_drop_warning"):
        DriftConfig(performance_drop_warning=0.1, performance_drop_critical=0.05)
    same = DriftConfig(performance_drop_warning=0.05, performance_drop_critical=0.05)
    assert same.performance_drop_warning == same.performance_drop_critical
    with pytest.raises(ValidationError):
        DriftConfig(performance_drop_warning=0)


def _dropped(severity: str = "critical", data_severity: str = "none") -> DriftResult:
    drop = {
        "source": "realised",
        "roc_auc": 0.71,
        "reference_roc_auc": 0.79,
        "drop": 0.08,
        "severity": severity,
        "data_severity": data_severity,
        "summary": "realised AUC 0.710, 0.080 below the reference 0.790",
    }
    verdict = "drift" if severity in ("warning", "critical") else "no_drift"
    return DriftResult("2025-08", 4000, verdict, severity, 0.0, None, [], performance_drop=drop)


class _Alerts:
    runbook_url = "docs/runbook.md"


class _Dataset:
    name = "loans"


class _Config:
    """The fields of ``LooplineConfig`` that ``alerts.for_result`` reads."""

    dataset = _Dataset()
    alerts = _Alerts()
    model_name = "loans_default_classifier"


def _monitored(result: DriftResult, retrain: bool = False) -> dict[str, Any]:
    """What ``steps.monitor_batch`` returns, as far as the alert reads it."""
    return {
        "batch": result.batch,
        "verdict": result.verdict,
        "severity": result.severity,
        "top_features": [],
        "score_psi": None,
        "performance_drop": result.performance_drop,
        "retrain": retrain,
        "reason": "no retrain: cooldown",
        "report_html": "/x/2025-08.html",
        "champion_version": "3",
    }


def test_the_alert_names_the_performance_drop(tmp_path: Path) -> None:
    found = alerts.for_result(_Config(), tmp_path / "alerts.jsonl", _monitored(_dropped()), "unused")
    assert found is not None
    document, grouped = found
    assert not grouped
    assert document["title"] == "[CRITICAL] performance drop in loans batch 2025-08"
    line = "Performance: realised AUC 0.710, 0.080 below the reference 0.790 (critical)"
    assert line in document["text"].splitlines()
    assert document["performance_drop"]["roc_auc"] == 0.71
    assert "Performance: realised AUC 0.710" in alerts._email_text(document)
    assert "realised AUC 0.710" in alerts._email_html(document)
    # With data drift at the same time, it is still a drift alert that names the drop too.
    both = alerts.for_result(
        _Config(), tmp_path / "alerts.jsonl", _monitored(_dropped(data_severity="critical")), "x"
    )
    assert (
        both[0]["title"].startswith("[CRITICAL] drift in") and "Performance: realised AUC" in both[0]["text"]
    )
    # A drop below the thresholds is not named.
    quiet = alerts.build_alert(
        dataset="loans",
        batch="2025-08",
        severity="critical",
        top_features=[{"column": "x", "psi": 0.4}],
        score_psi=None,
        action="a",
        report="r",
        runbook="docs/runbook.md",
        model="m",
        champion_version="1",
        performance_drop=_dropped("none").performance_drop,
    )
    assert "Performance" not in quiet["text"] and quiet["performance_drop"] is None


def test_the_policy_requests_a_retrain_for_a_performance_drop_alone(config, paths) -> None:
    decision = policy.decide_retrain(config, paths, _dropped(), ["2025-07", "2025-08"])
    assert decision.retrain
    assert decision.reason == (
        "retrain requested: critical performance drop (realised AUC 0.710, 0.080 below the reference 0.790) "
        "in batch 2025-08"
    )
    warning = policy.decide_retrain(config, paths, _dropped("warning"), ["2025-07", "2025-08"])
    assert not warning.retrain and "below drift.retrain_on=critical" in warning.reason


def test_the_monitor_step_logs_estimated_and_realised_auc(
    config, paths, profile: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml import registry, reports

    logged: dict[str, float] = {}
    monkeypatch.setattr(reports, "write_drift_report", lambda *a: (Path("r.json"), Path("r.html")))
    monkeypatch.setattr(
        registry, "log_monitoring_run", lambda _c, _p, _b, metrics, *a: logged.update(metrics)
    )
    result, scores, y = _stable(profile, seed=12)
    realised = realised_performance(_concept_shift(y, 0.6, 13), scores)
    raised = with_performance(result, realised, profile["performance"], DriftConfig())
    recorded = steps.record_monitoring(
        config, paths, raised, realised, 0.79, "3", report_dir=Path("unused"), context={}
    )
    assert logged["estimated_roc_auc"] == pytest.approx(result.performance["estimated_roc_auc"])
    assert logged["realised_roc_auc"] == pytest.approx(realised["roc_auc"])
    assert recorded["performance_drop"]["severity"] == "critical" and recorded["severity"] == "critical"
    logged.clear()
    steps.record_monitoring(config, paths, result, None, 0.79, "3", report_dir=Path("unused"), context={})
    assert "estimated_roc_auc" in logged and "realised_roc_auc" not in logged
