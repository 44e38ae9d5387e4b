from __future__ import annotations

import pytest

from ml import policy
from ml.drift import DriftResult

pytestmark = pytest.mark.fast
ORDER = ["2025-01", "2025-02", "2025-03", "2025-04", "2025-05", "2025-06"]


def _drift(batch: str, severity: str = "critical") -> DriftResult:
    return DriftResult(batch, 1000, "drift" if severity != "none" else "no_drift", severity, 0.5, None, [])


def test_cooldown_then_allowed_again(config, paths) -> None:
    assert policy.decide_retrain(config, paths, _drift("2025-02"), ORDER).retrain
    policy.record_request(paths, "2025-02", "drift", ["x"])
    blocked = policy.decide_retrain(config, paths, _drift("2025-03"), ORDER)
    assert not blocked.retrain and "cooldown" in blocked.reason
    assert not policy.decide_retrain(config, paths, _drift("2025-04"), ORDER).retrain
    assert policy.decide_retrain(config, paths, _drift("2025-05"), ORDER).retrain


def test_warning_below_threshold_and_pause(config, paths) -> None:
    assert not policy.decide_retrain(config, paths, _drift("2025-02", "warning"), ORDER).retrain
    policy.pause_file(paths).parent.mkdir(parents=True)
    policy.pause_file(paths).touch()
    paused = policy.decide_retrain(config, paths, _drift("2025-02"), ORDER)
    assert not paused.retrain and "paused" in paused.reason


def test_rate_limit_caps_requests_in_the_window(config, paths) -> None:
    strict = config.model_copy(
        update={"drift": config.drift.model_copy(update={"cooldown_batches": 0, "max_retrains": 2})}
    )
    for batch in ORDER[:2]:
        assert policy.decide_retrain(strict, paths, _drift(batch), ORDER).retrain
        policy.record_request(paths, batch, "drift", [])
    capped = policy.decide_retrain(strict, paths, _drift(ORDER[2]), ORDER)
    assert not capped.retrain and "rate limit" in capped.reason
