from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.config import DriftConfig
from ml.demo_data import CATEGORICAL_FEATURES, NUMERIC_FEATURES, Scenario, generate_month
from ml.drift import build_profile, compare, js_distance, psi
from ml.features import FeatureSpec

pytestmark = pytest.mark.fast
SPEC = FeatureSpec(tuple(NUMERIC_FEATURES), tuple(CATEGORICAL_FEATURES))
SCENARIO = Scenario(rows_per_month=3000, shift_from_month=4, incident_months=())


@pytest.fixture(scope="module")
def profile() -> dict:
    reference = pd.concat([generate_month(SCENARIO, m) for m in (1, 2)])
    return build_profile(reference, SPEC, np.zeros(len(reference)), bins=10)


def test_identical_distributions_have_zero_distance() -> None:
    shares = np.array([0.2, 0.3, 0.5])
    assert psi(shares, shares) == pytest.approx(0)
    assert js_distance(shares, shares) == pytest.approx(0)
    assert psi(shares, shares[::-1]) > 0.1


def test_stable_month_is_not_drift(profile: dict) -> None:
    result = compare(profile, generate_month(SCENARIO, 3), None, "m3", DriftConfig())
    assert result.verdict == "no_drift"
    assert result.top() == []


def test_shifted_month_is_drift_and_names_the_moved_features(profile: dict) -> None:
    result = compare(profile, generate_month(SCENARIO, 4), None, "m4", DriftConfig())
    assert result.verdict == "drift"
    assert result.severity == "critical"
    top = {f.column for f in result.top(3)}
    assert top & {"credit_score", "interest_rate", "open_accounts", "channel"}
    assert "region" not in {f.column for f in result.top()}


def test_new_category_and_missing_rate_jump_are_reported(profile: dict) -> None:
    month = generate_month(SCENARIO, 3)
    month.loc[: len(month) // 3, "purpose"] = "crypto"
    month.loc[: len(month) // 2, "annual_income"] = np.nan
    result = compare(profile, month, None, "m3", DriftConfig())
    by_column = {f.column: f for f in result.features}
    assert by_column["purpose"].new_categories == ["crypto"]
    assert by_column["purpose"].severity == "critical"
    assert by_column["annual_income"].missing_rate_current > 0.45
    assert by_column["annual_income"].severity == "critical"


def test_small_batch_is_insufficient_data_never_drift(profile: dict) -> None:
    result = compare(profile, generate_month(SCENARIO, 4).head(100), None, "tiny", DriftConfig(min_rows=500))
    assert result.verdict == "insufficient_data"
