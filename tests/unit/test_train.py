from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.demo_data import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET, Scenario, generate_month
from ml.features import FeatureSpec
from ml.train import TrainingDataError, feature_importance, fit, hyperparameters, predict

pytestmark = pytest.mark.fast
SPEC = FeatureSpec(tuple(NUMERIC_FEATURES), tuple(CATEGORICAL_FEATURES))


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return generate_month(Scenario(rows_per_month=3000, incident_months=()), 1)


def test_fit_and_predict_raw_rows(config, data: pd.DataFrame) -> None:
    booster = fit(data, SPEC, TARGET, hyperparameters(config.training, {"num_boost_round": 30}))
    scores = predict(booster, data)
    assert scores.shape == (len(data),)
    assert ((scores > 0) & (scores < 1)).all()
    assert scores[data[TARGET] == 1].mean() > scores[data[TARGET] == 0].mean()
    assert sum(feature_importance(booster).values()) == pytest.approx(1)


def test_unseen_category_scores_like_missing_and_does_not_shift_others(config, data: pd.DataFrame) -> None:
    booster = fit(data, SPEC, TARGET, hyperparameters(config.training, {"num_boost_round": 20}))
    row = data.head(1).copy()
    unseen = row.assign(purpose="crypto")
    missing = row.assign(purpose=None)
    assert predict(booster, unseen)[0] == pytest.approx(predict(booster, missing)[0])
    reordered = data.head(50).iloc[::-1]
    assert np.allclose(predict(booster, reordered)[::-1], predict(booster, data.head(50)))


def test_single_class_window_is_refused(config, data: pd.DataFrame) -> None:
    with pytest.raises(TrainingDataError, match="single class"):
        fit(data.assign(**{TARGET: 0}), SPEC, TARGET, hyperparameters(config.training))


def test_unknown_override_is_refused(config) -> None:
    with pytest.raises(KeyError, match="unknown training parameter"):
        hyperparameters(config.training, {"depth": 3})


def test_vectorised_encoding_matches_text_matching() -> None:
    from ml.features import model_frame

    frame = pd.DataFrame(
        {
            "x": ["1.5", None, "2"],
            "c": pd.Series(["b", None, "zz"], dtype="str"),
            "k": [3.0, np.nan, 1.0],
            "o": pd.Series([True, "a", 7], dtype=object),
        }
    )
    spec = FeatureSpec(("x",), ("c", "k", "o"))
    encoded = model_frame(frame, spec, {"c": ["a", "b"], "k": ["1.0", "3.0"], "o": ["7", "True"]})
    assert encoded["x"].tolist()[0] == 1.5 and np.isnan(encoded["x"].iloc[1])
    assert encoded["c"].cat.codes.tolist() == [1, -1, -1]  # missing and unseen are both missing
    assert encoded["k"].cat.codes.tolist() == [1, -1, 0]
    assert encoded["o"].cat.codes.tolist() == [1, -1, 0]
    assert list(encoded["c"].cat.categories) == ["a", "b"]


def test_training_scores_come_from_the_cache_equal_to_predict_and_change_no_model(config, data) -> None:
    from ml.train import fit_scored

    params = hyperparameters(config.training, {"num_boost_round": 30})
    fitted = fit_scored(data, SPEC, TARGET, params)
    assert np.array_equal(fitted.scores, predict(fitted.booster, data))
    assert fitted.scores.dtype == np.float64
    assert fitted.booster.save_raw() == fit(data, SPEC, TARGET, params).save_raw()


def test_splits_take_labelled_rows_in_event_time_order(config) -> None:
    from ml.train import split_holdout, split_window

    target, time_column = config.dataset.target, config.dataset.time_column
    rng = np.random.default_rng(3)

    def batch(rows: int, start: int) -> pd.DataFrame:
        labels = rng.integers(0, 2, rows).astype("float64")
        labels[rng.random(rows) < 0.1] = np.nan
        times = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 50, rows), unit="D")
        return pd.DataFrame({"id": np.arange(start, start + rows), target: labels, time_column: times})

    older, newest = batch(300, 0), batch(200, 1000)
    # Unlabelled rows out of order, and the already clean, sorted case (taken as a slice, not a copy).
    for old, new in ((older, newest), (older.dropna(), newest.dropna().sort_values(time_column))):
        split = split_holdout(old, new, config)
        # What the split means, spelled out: labelled rows; the newest batch stably sorted by event time.
        kept = new[new[target].notna()].sort_values(time_column, kind="stable")
        cut = round(len(kept) * (1 - config.training.holdout_fraction))
        expected = pd.concat([old[old[target].notna()], kept.iloc[:cut]], ignore_index=True)
        pd.testing.assert_frame_equal(split.train, expected)
        pd.testing.assert_frame_equal(split.holdout, kept.iloc[cut:].reset_index(drop=True))
        whole = split_window(pd.concat([old, new], ignore_index=True), len(new), config)
        pd.testing.assert_frame_equal(whole.train, expected)
        pd.testing.assert_frame_equal(whole.holdout, split.holdout)
