from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ml.config import DriftConfig
from ml.drift import build_profile, compare
from ml.features import FeatureSpec
from ml.performance import (
    batch_performance,
    calibrate,
    calibration_table,
    estimate_performance,
    expected_calibration_error,
    expected_roc_auc,
    fit_calibration,
    join_labels,
    realised_performance,
    roc_auc,
)

pytestmark = pytest.mark.fast


def _calibrated(
    n: int, seed: int, shift: float = 0.0, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A feature, calibrated scores P(y=1 | x) and labels drawn from them (x ~ N(shift, scale))."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, scale, n)
    scores = 1 / (1 + np.exp(-(-1.5 + 1.2 * x)))
    return x, scores, (rng.random(n) < scores).astype(int)


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    scores = np.round(rng.random(3000) + 0.3 * y, 1)  # many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert roc_auc(np.ones(5), np.arange(5.0)) is None


def test_expected_calibration_error() -> None:
    _, scores, y = _calibrated(50_000, 1)
    assert expected_calibration_error(y, scores) < 0.01
    assert expected_calibration_error(y, scores**0.5) > 0.1  # over-predicts
    y_small, s_small = np.array([0, 1, 1, 0]), np.array([0.11, 0.86, 0.15, 0.82])
    # bin [0.1, 0.2): mean score 0.13, positive rate 0.5; bin [0.8, 0.9): mean score 0.84, positive rate 0.5
    assert expected_calibration_error(y_small, s_small) == pytest.approx((0.37 + 0.34) / 2)


def test_calibration_table_rows_and_rates() -> None:
    table = calibration_table(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.9]), bins=2)
    assert [row["rows"] for row in table] == [2, 2]
    assert table[0]["positive_rate"] == 0 and table[1]["positive_rate"] == 1
    assert table[1]["mean_score"] == pytest.approx(0.8)


def test_realised_performance_is_json_ready() -> None:
    _, scores, y = _calibrated(5000, 2)
    result = realised_performance(y, scores)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y, scores))
    assert result["mean_score"] == pytest.approx(result["positive_rate"], abs=0.02)
    assert abs(result["calibration_in_the_large"]) < 0.02
    json.dumps(result)
    assert realised_performance(np.array([]), np.array([]))["roc_auc"] is None


def test_late_labels_join_predictions_by_id() -> None:
    predictions = pd.DataFrame({"id": ["a", "b", "c", "d", "d"], "score": [0.9, 0.2, 0.8, 0.1, 0.3]})
    labels = pd.DataFrame(
        {"id": ["d", "a", "b", "x"], "y": [0, 1, None, 1]}
    )  # c not yet, b unknown, x unseen
    joined = join_labels(predictions, labels, "id", "y")
    assert sorted(joined["id"]) == ["a", "d"]
    assert joined.set_index("id").loc["d", "score"] == 0.3  # the last prediction for a duplicated id
    result = batch_performance(predictions, labels, "id", "y")
    assert result["rows"] == 2 and result["predicted_rows"] == 4
    assert result["label_coverage"] == pytest.approx(0.5)
    assert result["roc_auc"] == 1.0


def test_cbpe_estimates_the_realised_auc_of_calibrated_scores() -> None:
    # Covariate shift (a narrower or wider, moved population) changes the AUC; CBPE follows it.
    for seed, shift, scale in [(3, 0.0, 1.0), (4, 0.8, 0.5), (5, -0.8, 1.5)]:
        _, scores, y = _calibrated(20_000, seed, shift, scale)
        assert expected_roc_auc(scores) == pytest.approx(roc_auc(y, scores), abs=0.015)
    _, narrow, _ = _calibrated(20_000, 6, scale=0.5)
    _, wide, _ = _calibrated(20_000, 6)
    assert expected_roc_auc(narrow) < expected_roc_auc(wide) - 0.05


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_map_recovers_probabilities_and_cbpe(method: str) -> None:
    _, truth, y = _calibrated(20_000, 7)
    raw = 1 / (1 + np.exp(-2.0 * np.log(truth / (1 - truth))))  # over-confident model, same ranking
    held = slice(0, 8000)
    calibration = fit_calibration(raw[held], y[held], method)
    json.dumps(calibration)
    calibrated = calibrate(calibration, raw[8000:])
    assert np.mean(np.abs(calibrated - truth[8000:])) < 0.03
    assert expected_roc_auc(raw[8000:]) > roc_auc(y[8000:], raw[8000:]) + 0.03  # uncalibrated: too optimistic
    assert expected_roc_auc(raw[8000:], calibrated) == pytest.approx(roc_auc(y[8000:], raw[8000:]), abs=0.02)


def test_estimate_performance_reports_the_change_against_the_reference() -> None:
    _, scores, y = _calibrated(10_000, 8)
    calibration = fit_calibration(scores, y)
    reference = {
        "estimated_roc_auc": expected_roc_auc(scores, calibrate(calibration, scores)),
        "roc_auc": 0.7,
    }
    _, narrow, _ = _calibrated(5000, 9, scale=0.5)
    result = estimate_performance(narrow, calibration, reference)
    assert result["estimated_change"] < -0.05
    assert 0 < result["standard_error"] < 0.05
    assert result["reference_roc_auc"] == 0.7 and result["calibration"] == "platt"


def test_profile_with_calibration_gives_a_label_free_estimate_per_batch() -> None:
    x, scores, y = _calibrated(12_000, 10)
    frame = pd.DataFrame({"x": x})
    spec = FeatureSpec(("x",), ())
    profile = build_profile(frame[:8000], spec, scores[:8000], 10, calibration=(scores[8000:], y[8000:]))
    assert profile["performance"]["roc_auc"] == pytest.approx(roc_auc(y[8000:], scores[8000:]))
    json.dumps(profile)
    x2, scores2, y2 = _calibrated(4000, 11, scale=0.5)
    result = compare(profile, pd.DataFrame({"x": x2}), scores2, "b", DriftConfig())
    assert result.performance is not None
    assert result.performance["estimated_roc_auc"] == pytest.approx(roc_auc(y2, scores2), abs=0.03)
    assert result.performance["estimated_change"] < -0.05
    assert result.verdict == "drift" and result.to_dict()["performance"]["method"] == "cbpe"
