"""Engine parity on the same lake: the Spark engine's gate, split, profile, scores and drift vs the local path.

The local side calls ``ml.quality``, ``ml.train`` and ``ml.drift`` directly on the same partitions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

PROFILE_TOLERANCE = 0.01
"""approxQuantile path: bin shares and CDF points within this of the local profile (see spark_profile)."""


def _failures(result: Any) -> set[tuple[str, str | None, str]]:
    return {(f.expectation, f.column, f.severity) for f in [*result.critical, *result.warnings]}


@pytest.fixture(scope="module")
def local(spark_home: tuple[Any, Any], trained: Any, window: Any) -> dict[str, Any]:
    """The local path on the same window: split, spec, profile of the Spark booster's scores, local booster."""
    from ml import drift, train
    from ml.features import resolve_features
    from ml.lake import Lake

    config, paths = spark_home
    lake = Lake(paths.lake)
    older, newest = lake.read("loans", window.batches[:-1]), lake.read("loans", window.batches[-1:])
    split = train.split_holdout(older, newest, config)
    spec = resolve_features(config, split.train.columns, split.train.dtypes)
    params = train.hyperparameters(config.training, window.params)
    scores = train.predict(trained.booster, split.train)
    holdout_y = split.holdout[config.dataset.target].astype(int).to_numpy()
    profile = drift.build_profile(
        split.train,
        spec,
        scores,
        config.drift.bins,
        importance=trained.importance,
        calibration=(train.predict(trained.booster, split.holdout), holdout_y),
    )
    booster = train.fit(split.train, spec, config.dataset.target, params)
    return {"split": split, "spec": spec, "profile": profile, "booster": booster, "lake": lake}


@pytest.mark.parametrize("which", ["window", "broken"])
def test_gate_verdicts_equal_local(engine: Any, spark_home: tuple[Any, Any], window: Any, which: str) -> None:
    from ml import quality
    from ml.lake import Lake

    config, paths = spark_home
    batches = window.batches if which == "window" else [window.broken]
    expected = quality.validate(Lake(paths.lake).read("loans", batches), config.suite_path())
    result = engine.validate(batches, f"spark-{batches[0]}")
    assert result.passed == expected.passed
    assert result.passed is (which == "window")
    assert result.evaluated == expected.evaluated
    assert _failures(result) == _failures(expected)
    for got, want in zip(
        sorted(result.critical, key=lambda f: (f.expectation, f.column or "")),
        sorted(expected.critical, key=lambda f: (f.expectation, f.column or "")),
        strict=True,
    ):
        assert got.unexpected_percent == pytest.approx(want.unexpected_percent, abs=1e-9)
    assert result.data_docs and (paths.reports / "data_docs" / "index.html").is_file()


def test_split_equals_local(trained: Any, local: dict[str, Any], spark_home: tuple[Any, Any]) -> None:
    from ml import train

    config, _ = spark_home
    split = local["split"]
    assert trained.train_rows == len(split.train)
    ids = config.dataset.id_column
    assert trained.holdout.ids.tolist() == split.holdout[ids].tolist()
    expected_labels = split.holdout[config.dataset.target].astype(int).to_numpy()
    np.testing.assert_array_equal(trained.holdout.labels, expected_labels)
    np.testing.assert_allclose(
        trained.holdout.scores, train.predict(trained.booster, split.holdout), rtol=1e-6
    )
    assert trained.spec == local["spec"]
    assert trained.lineage["loopline.engine"] == "spark"
    assert trained.lineage["loopline.boosted_rows"] == str(len(split.train))  # Spark boosts on every row
    assert trained.lineage["loopline.boosting_sample"] == "all training rows"


def _assert_numeric_close(got: dict[str, Any], want: dict[str, Any], tolerance: float) -> None:
    assert got["rows"] == want["rows"] and got["count"] == want["count"]
    assert got["missing_rate"] == pytest.approx(want["missing_rate"], abs=1e-12)
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-9)
    assert got["std"] == pytest.approx(want["std"], rel=1e-9)
    assert len(got["shares"]) == len(got["edges"]) + 1
    if tolerance == 0:
        assert got["edges"] == pytest.approx(want["edges"], rel=1e-12)
        assert got["shares"] == pytest.approx(want["shares"], abs=1e-12)
        assert got["grid"] == pytest.approx(want["grid"], rel=1e-12)
        assert got["cdf"] == pytest.approx(want["cdf"], abs=1e-7)
        assert got["exact"] == want["exact"]
        return
    # Approximate quantiles: compare the distributions, not the edges (which may move within the ties).
    assert len(got["edges"]) == len(want["edges"])
    grid = np.asarray(want["grid"])
    ours = np.interp(grid, got["grid"], got["cdf"], left=0.0, right=1.0)
    assert np.max(np.abs(ours - np.asarray(want["cdf"]))) <= tolerance
    assert np.max(np.abs(np.asarray(got["shares"]) - np.asarray(want["shares"]))) <= tolerance


def test_profile_equals_local(trained: Any, local: dict[str, Any]) -> None:
    """On this data every column has at most 10,000 values: the exact path, equal to drift.build_profile."""
    got, want = trained.profile, local["profile"]
    assert got.keys() == want.keys()
    assert got["rows"] == want["rows"] and got["bins"] == want["bins"]
    assert got["importance"] == want["importance"]
    assert got["calibration"] == want["calibration"]
    assert list(got["columns"]) == list(want["columns"])
    for name, column in want["columns"].items():
        if column["kind"] == "numeric":
            _assert_numeric_close(got["columns"][name], column, 0)
        else:
            assert got["columns"][name]["shares"] == pytest.approx(column["shares"], abs=1e-12)
            assert got["columns"][name]["missing_rate"] == pytest.approx(column["missing_rate"], abs=1e-12)


def test_approximate_profile_within_tolerance(
    engine: Any, spark: Any, trained: Any, local: dict[str, Any], window: Any
) -> None:
    """Columns with more than 100 distinct values through approxQuantile + Bucketizer: within the tolerance."""
    from ml import drift
    from ml.engines.spark import SCORE_COLUMN, with_scores
    from ml.engines.spark_profile import profile_columns

    spec = local["spec"]
    rows, _ = engine.split(window.batches, spark)
    scored = with_scores(rows, trained.booster, spec.columns).persist()
    try:
        count, columns = profile_columns(scored, spec, SCORE_COLUMN, 10, exact_limit=100)
    finally:
        scored.unpersist()
    assert count == local["profile"]["rows"]
    approximate = [name for name, c in columns.items() if c["kind"] == "numeric" and not c["exact"]]
    assert {"annual_income", "credit_score", drift.SCORE} <= set(approximate)
    for name in approximate:
        _assert_numeric_close(columns[name], local["profile"]["columns"][name], PROFILE_TOLERANCE)


def test_scores_equal_local(engine: Any, trained: Any, local: dict[str, Any], window: Any) -> None:
    from ml import train

    shifted = window.shifted
    summary = engine.score(shifted, trained.booster, "7")
    written = local["lake"].read("loans__predictions", [shifted])
    frame = local["lake"].read("loans", [shifted])
    expected = pd.Series(train.predict(trained.booster, frame), index=frame["loan_id"])
    assert summary["rows"] == len(frame) == len(written)
    assert set(written["model_version"]) == {"7"}
    np.testing.assert_array_equal(written["score"].to_numpy(), expected[written["loan_id"]].to_numpy())
    assert 0.5 < summary["roc_auc"] < 1


def test_training_auc_within_0005_of_local(trained: Any, local: dict[str, Any], spark_home: Any) -> None:
    from ml import train
    from ml.evaluate import classification_metrics

    config, _ = spark_home
    holdout = local["split"].holdout
    y = holdout[config.dataset.target].astype(int).to_numpy()
    spark_auc = classification_metrics(y, train.predict(trained.booster, holdout), 0.5)["roc_auc"]
    local_auc = classification_metrics(y, train.predict(local["booster"], holdout), 0.5)["roc_auc"]
    assert spark_auc > 0.65
    assert abs(spark_auc - local_auc) <= 0.005, (spark_auc, local_auc)
    assert trained.train_metrics["rows"] == trained.train_rows
    assert trained.train_metrics["roc_auc"] == pytest.approx(
        classification_metrics(
            local["split"].train[config.dataset.target].astype(int).to_numpy(),
            train.predict(trained.booster, local["split"].train),
            0.5,
        )["roc_auc"],
        abs=1e-4,
    )


def test_monitor_equals_local(
    engine: Any, trained: Any, local: dict[str, Any], spark_home: Any, window: Any
) -> None:
    from ml import drift, train

    shifted = window.shifted
    config, _ = spark_home
    frame = local["lake"].read("loans", [shifted])
    expected = drift.compare(
        trained.profile, frame, train.predict(trained.booster, frame), shifted, config.drift
    )
    monitored = engine.monitor(shifted, trained.booster, trained.profile)
    got = monitored.drift
    assert monitored.rows == len(frame)
    assert (got.verdict, got.severity) == (expected.verdict, expected.severity) == ("drift", "critical")
    assert {f.column: f.psi for f in got.features} == pytest.approx(
        {f.column: f.psi for f in expected.features}
    )
    assert monitored.realised is not None and 0.5 < monitored.realised["roc_auc"] < 1
