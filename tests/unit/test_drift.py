from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ml.config import DriftConfig
from ml.demo_data import CATEGORICAL_FEATURES, NUMERIC_FEATURES, Scenario, generate_month
from ml.drift import (
    DriftResult,
    adjust_p_values,
    build_profile,
    chi_square,
    compare,
    js_distance,
    ks_from_cdf,
    missing_rate_test,
    psi,
)
from ml.features import FeatureSpec
from ml.reports import write_drift_report

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
    assert result.severity == "none"
    assert result.top() == []


def test_shifted_month_is_drift_and_names_the_moved_features(profile: dict) -> None:
    result = compare(profile, generate_month(SCENARIO, 4), None, "m4", DriftConfig())
    assert result.verdict == "drift"
    assert result.severity == "critical"
    top = {f.column for f in result.top(3)}
    assert top & {"credit_score", "interest_rate", "open_accounts", "channel"}
    assert "region" not in {f.column for f in result.top()}
    assert all(f.significant for f in result.top())
    assert "critical" in result.reason and "credit_score" in result.reason


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
    assert by_column["annual_income"].missing_p_value < 1e-10


def test_small_batch_is_insufficient_data_never_drift(profile: dict) -> None:
    result = compare(profile, generate_month(SCENARIO, 4).head(100), None, "tiny", DriftConfig(min_rows=500))
    assert result.verdict == "insufficient_data"
    assert result.severity == "none"
    assert "min_rows" in result.reason


def test_large_effect_without_significance_is_not_drift(profile: dict) -> None:
    """30 rows: the PSI is mostly noise and crosses the thresholds, the tests are not significant."""
    tiny = generate_month(SCENARIO, 3).head(30)
    result = compare(profile, tiny, None, "tiny", DriftConfig(min_rows=10))
    assert max(f.psi for f in result.features) > 0.1
    assert any(f.effect_severity != "none" for f in result.features)
    assert result.top() == [] and result.verdict == "no_drift"


def test_significant_but_tiny_effect_is_not_drift() -> None:
    """A huge batch makes a 0.05 standard-deviation shift highly significant; its PSI stays below info."""
    rng = np.random.default_rng(3)
    spec = FeatureSpec(("x",), ())
    profile = build_profile(pd.DataFrame({"x": rng.normal(0, 1, 200_000)}), spec, rng.random(200_000), 10)
    batch = pd.DataFrame({"x": rng.normal(0.05, 1, 200_000)})
    feature = compare(profile, batch, None, "big", DriftConfig()).features[0]
    assert feature.p_value_adjusted < 1e-6 and feature.significant
    assert feature.psi < DriftConfig().psi_info
    assert feature.severity == "none"


def test_ks_matches_scipy_exactly_on_discrete_data() -> None:
    rng = np.random.default_rng(0)
    reference, current = rng.poisson(4, 6000).astype(float), rng.poisson(4.3, 1500).astype(float)
    profile = build_profile(pd.DataFrame({"x": reference}), FeatureSpec(("x",), ()), np.zeros(6000), 10)
    column = profile["columns"]["x"]
    assert column["exact"]
    statistic, p_value = ks_from_cdf(column["grid"], column["cdf"], column["count"], current)
    expected = stats.ks_2samp(reference, current, method="asymp")
    assert statistic == pytest.approx(expected.statistic, abs=1e-6)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.1, 0.2])
def test_ks_from_quantiles_matches_scipy_on_continuous_data(shift: float) -> None:
    rng = np.random.default_rng(1)
    reference, current = rng.normal(0, 1, 8000), rng.normal(shift, 1, 2000)
    profile = build_profile(pd.DataFrame({"x": reference}), FeatureSpec(("x",), ()), np.zeros(8000), 10)
    column = profile["columns"]["x"]
    statistic, p_value = ks_from_cdf(column["grid"], column["cdf"], column["count"], current)
    expected = stats.ks_2samp(reference, current, method="asymp")
    assert 0 <= expected.statistic - statistic <= 0.01  # one quantile step at most, never above
    assert p_value == pytest.approx(expected.pvalue, abs=0.06)
    assert (p_value < 0.01) == (expected.pvalue < 0.01)


def test_chi_square_matches_scipy_on_reference_counts() -> None:
    rng = np.random.default_rng(2)
    ref = pd.Series(rng.choice(["a", "b", "c", None], 5000, p=[0.5, 0.3, 0.15, 0.05]))
    cur = pd.Series(rng.choice(["a", "b", "c", "d", None], 1200, p=[0.45, 0.3, 0.15, 0.04, 0.06]))
    profile = build_profile(pd.DataFrame({"k": ref}), FeatureSpec((), ("k",)), np.zeros(5000), 10)
    feature = compare(profile, pd.DataFrame({"k": cur}), None, "b", DriftConfig(min_rows=1)).features[0]
    table = np.array(
        [
            [(ref == v).sum() for v in "abc"] + [0, ref.isna().sum()],
            [(cur == v).sum() for v in "abcd"] + [cur.isna().sum()],
        ]
    )
    expected = stats.chi2_contingency(table, correction=False)
    assert feature.test == "chi2"
    assert feature.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert feature.p_value == pytest.approx(expected.pvalue, rel=1e-6)
    assert feature.new_categories == ["d"]
    statistic, p_value, dof = chi_square(table[0], table[1])
    assert p_value == pytest.approx(expected.pvalue)
    assert (statistic, dof) == (pytest.approx(expected.statistic), expected.dof)


def test_chi_square_pools_rare_categories() -> None:
    reference = np.array([900.0, 95.0, 8.0, 7.0])
    current = np.array([450.0, 47.0, 3.0, 2.0])
    _, p_value, dof = chi_square(reference, current)
    assert dof == 2 and p_value > 0.5  # the two rare categories became one column
    _, _, dof = chi_square(np.array([900.0, 95.0, 3.0, 2.0]), np.array([450.0, 47.0, 2.0, 1.0]))
    assert dof == 1  # still too rare together: merged into the smallest column


def test_missing_rate_test_is_fishers_exact() -> None:
    table = np.array([[40, 960], [25, 275]])
    less = stats.fisher_exact(table[::-1], alternative="less").pvalue
    greater = stats.fisher_exact(table[::-1], alternative="greater").pvalue
    assert missing_rate_test(40, 1000, 25, 300) == pytest.approx(min(1.0, 2 * min(less, greater)), rel=1e-9)
    assert missing_rate_test(0, 1000, 0, 300) == 1.0


def test_holm_and_benjamini_hochberg() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjust_p_values(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(adjust_p_values(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(adjust_p_values(p, "none"), p)


def test_importance_weighting_moves_the_dataset_verdict(profile: dict) -> None:
    month = generate_month(SCENARIO, 3)
    month.loc[: len(month) // 5, "purpose"] = "crypto"
    equal = compare(profile, month, None, "m", DriftConfig())
    importance = dict.fromkeys(NUMERIC_FEATURES + CATEGORICAL_FEATURES, 0.01) | {"purpose": 0.6}
    weighted = compare(profile, month, None, "m", DriftConfig(weighting="importance"), importance=importance)
    assert equal.verdict == "no_drift" and equal.severity == "info"
    assert weighted.verdict == "drift" and weighted.weighting == "importance"
    assert weighted.shares["critical"] > 0.5


def test_profile_is_json_ready_and_small(profile: dict) -> None:
    text = json.dumps(profile)
    assert len(text) < 60_000
    assert json.loads(text)["version"] == 2


def test_old_profile_without_quantile_grid_still_compares(profile: dict) -> None:
    old = {
        "rows": profile["rows"],
        "bins": 10,
        "columns": {
            name: {k: ref[k] for k in ("kind", "edges", "shares", "missing_rate") if k in ref}
            for name, ref in profile["columns"].items()
        },
    }
    assert compare(old, generate_month(SCENARIO, 3), None, "m3", DriftConfig()).verdict == "no_drift"
    shifted = compare(old, generate_month(SCENARIO, 4), None, "m4", DriftConfig())
    assert shifted.verdict == "drift" and shifted.top()[0].significant


def test_policy_style_construction_still_works() -> None:
    result = DriftResult("b", 1000, "drift", "critical", 0.5, None, [])
    assert result.top() == [] and result.to_dict()["severity"] == "critical"


def test_report_has_summary_plots_and_json_twin(profile: dict, tmp_path: Path) -> None:
    month = generate_month(SCENARIO, 4)
    result = compare(profile, month, np.linspace(0, 1, len(month)), "2025-04", DriftConfig())
    json_path, html_path = write_drift_report(tmp_path, result, {"dataset": "loans", "champion_version": "3"})
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == len(result.features) == len(SPEC.columns) + 1
    assert "Summary" in page and "corrected p" in page and "credit_score" in page
    document = json.loads(json_path.read_text())
    assert document["context"]["dataset"] == "loans"
    assert document["verdict"] == "drift"
    by_column = {f["column"]: f for f in document["features"]}
    assert {"p_value", "p_value_adjusted", "significant", "test", "plot"} <= set(by_column["credit_score"])
    assert by_column["credit_score"]["plot"]["type"] == "bins"
    assert by_column["purpose"]["plot"]["type"] == "categories"
    assert not list(tmp_path.glob(".*.tmp"))


def test_drift_config_orders_its_thresholds() -> None:
    with pytest.raises(ValueError, match="psi_info"):
        DriftConfig(psi_info=0.1, psi_warning=0.1)
    with pytest.raises(ValueError, match="must hold for those set"):
        DriftConfig(js_warning=0.2, js_critical=0.1)
    assert DriftConfig(js_warning=0.1).js_warning == 0.1


def test_js_threshold_can_raise_the_severity(profile: dict) -> None:
    month = generate_month(SCENARIO, 3)
    month.loc[: len(month) // 12, "purpose"] = "car"
    by_psi = {f.column: f for f in compare(profile, month, None, "m", DriftConfig()).features}["purpose"]
    config = DriftConfig(js_info=0.01, js_warning=0.02, js_critical=by_psi.js_distance - 0.005)
    by_js = {f.column: f for f in compare(profile, month, None, "m", config).features}["purpose"]
    assert by_psi.severity == "info" and by_psi.significant
    assert by_js.severity == "critical"


def test_bucketed_locate_equals_searchsorted() -> None:
    from ml.drift import _locate

    rng = np.random.default_rng(9)
    values = np.concatenate([rng.lognormal(0, 2, 60_000), rng.normal(0, 1, 40_000), [-1e300, 1e300]])
    points = np.unique(np.quantile(values, np.linspace(0, 1, 131)))
    values = np.concatenate([values, points, np.nextafter(points, np.inf), np.nextafter(points, -np.inf)])
    np.testing.assert_array_equal(_locate(points, values), np.searchsorted(points, values, side="left"))


def test_cell_counts_equal_plain_counts() -> None:
    """Counting by cells (blocks, chunks, ties with the points, NaN, infinities) equals counting by comparison."""
    from ml.drift import NumericCounts

    rng = np.random.default_rng(11)
    values = np.concatenate([rng.poisson(3, 90_000).astype("float64"), rng.normal(0, 1, 90_000)])
    points = np.unique(np.concatenate([np.arange(12.0), np.quantile(values, np.linspace(0, 1, 60))]))
    values[rng.random(values.size) < 0.02] = np.nan
    values[:3] = [np.inf, -np.inf, 1e300]
    present = values[np.isfinite(values)]
    for parts in (values, np.array_split(values, 3)):
        counts = NumericCounts.of(points, parts)
        assert counts.rows == values.size and counts.present == present.size
        np.testing.assert_array_equal(counts.at_or_below, [(present <= p).sum() for p in points])
        np.testing.assert_array_equal(counts.equal, [(present == p).sum() for p in points])


def test_arrow_summary_equals_pandas_summary(profile: dict) -> None:
    """A batch counted as an Arrow table (chunked, text dictionary-encoded or not) summarises like its frame."""
    import pyarrow as pa

    from ml.drift import summarize_batch

    month = generate_month(SCENARIO, 4)
    month.loc[:200, CATEGORICAL_FEATURES[0]] = "crypto"
    month.loc[201:300, CATEGORICAL_FEATURES[0]] = None
    month.loc[:99, NUMERIC_FEATURES[0]] = np.nan
    scores = np.random.default_rng(4).random(len(month))
    table = pa.Table.from_pandas(month, preserve_index=False)
    chunked = pa.concat_tables([table.slice(0, 1000), table.slice(1000)])
    encoded = table.set_column(
        table.schema.get_field_index(CATEGORICAL_FEATURES[0]),
        CATEGORICAL_FEATURES[0],
        table[CATEGORICAL_FEATURES[0]].dictionary_encode(),
    )
    expected = summarize_batch(profile, month, scores).to_dict()
    for arrow in (table, chunked, encoded):
        assert summarize_batch(profile, arrow, scores).to_dict() == expected


def test_chunk_summaries_merge_to_the_in_memory_comparison(profile: dict) -> None:
    from ml.drift import BatchSummary, compare_summary, merge_summaries, summarize_batch

    month = generate_month(SCENARIO, 4)
    month.loc[:200, "purpose"] = "crypto"
    scores = np.random.default_rng(4).random(len(month))
    parts = [
        BatchSummary.from_dict(
            json.loads(
                json.dumps(summarize_batch(profile, month.iloc[i : i + 700], scores[i : i + 700]).to_dict())
            )
        )
        for i in range(0, len(month), 700)
    ]
    merged = compare_summary(profile, merge_summaries(parts), "m4", DriftConfig())
    whole = compare(profile, month, scores, "m4", DriftConfig())
    assert merged.to_dict() == whole.to_dict()
    assert {f.column: f.new_categories for f in merged.features}["purpose"] == ["crypto"]
    with pytest.raises(ValueError, match="cannot merge"):
        parts[0].merge(summarize_batch(profile, month.head(5)))


def test_profile_from_merged_parts_equals_build_profile() -> None:
    from ml.drift import assemble_profile, categorical_profile, category_counts, merge_counts, numeric_profile

    frame = pd.concat([generate_month(SCENARIO, m) for m in (1, 2)], ignore_index=True)
    scores = np.random.default_rng(2).random(len(frame))
    chunks = [frame.iloc[i : i + 999] for i in range(0, len(frame), 999)]
    columns = {
        c: numeric_profile(frame[c].to_numpy(dtype="float64", na_value=np.nan), 10) for c in SPEC.numeric
    }
    for column in SPEC.categorical:
        counts = merge_counts(*(category_counts(chunk[column]) for chunk in chunks))
        columns[column] = categorical_profile(counts, len(frame))
    assert assemble_profile(columns, scores, len(frame), 10) == build_profile(frame, SPEC, scores, 10)


def test_large_samples_use_the_asymptotic_ks_distribution() -> None:
    from ml.drift import ks_p_value

    d = np.array([0.002, 0.004, 0.006])
    exact = stats.kstwo.sf(d, 200_000)
    fast = ks_p_value(d, 400_000, 400_000)
    np.testing.assert_allclose(fast, exact, rtol=5e-3, atol=1e-6)  # within 0.5%
    assert ks_p_value(0.05, 2000, 2000)[0] == pytest.approx(stats.kstwo.sf(0.05, 1000))


def test_profile_quantiles_equal_numpys_on_sorted_values() -> None:
    from ml.drift import KS_POINTS, numeric_profile

    rng = np.random.default_rng(5)
    for values in (rng.normal(size=5001), rng.integers(0, 300, 4000) / 7, rng.exponential(size=999) * 1e6):
        values[rng.random(values.size) < 0.05] = np.nan
        entry = numeric_profile(values, 10)
        present = np.sort(values[np.isfinite(values)])
        assert entry["edges"] == np.unique(np.quantile(present, np.linspace(0, 1, 11)[1:-1])).tolist()
        grid = np.unique(np.quantile(present, np.arange(1, KS_POINTS + 1) / KS_POINTS, method="inverted_cdf"))
        assert entry["exact"] or entry["grid"] == grid.tolist()
