"""Training from Arrow (dictionary-encoded categoricals, no pandas frame) gives what training from pandas gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml import drift, train
from ml.config import LooplineConfig, Paths, load_config
from ml.demo_data import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET, Scenario, generate_month
from ml.engines.local import SAMPLE_ROWS, LocalEngine
from ml.features import FeatureSpec, fit_vocabulary, labels, model_frame, model_table, resolve_features
from ml.ingest import clean_batch
from ml.lake import Lake

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]
SPEC = FeatureSpec(tuple(NUMERIC_FEATURES), tuple(CATEGORICAL_FEATURES))
PARAMS = {"num_boost_round": 25, "max_depth": 4}


def _parquet_round_trip(
    frame: pd.DataFrame, folder: Path, dictionary: list[str]
) -> tuple[pd.DataFrame, pa.Table]:
    """The frame as the lake reads it back: as pandas, and as Arrow with ``dictionary`` columns encoded.

    Small row groups give every chunk its own Parquet dictionary (in its own order of first occurrence).
    """
    path = folder / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=700)
    return pq.read_table(path).to_pandas(), pq.read_table(path, read_dictionary=dictionary)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pa.Table]:
    """Demo loans with missing categories and numbers, read back both ways."""
    frame = generate_month(Scenario(rows_per_month=3000, incident_months=()), 1)
    rng = np.random.default_rng(7)
    frame.loc[rng.random(len(frame)) < 0.05, "purpose"] = None
    frame.loc[rng.random(len(frame)) < 0.05, "credit_score"] = np.nan
    return _parquet_round_trip(frame, tmp_path_factory.mktemp("rows"), list(SPEC.categorical))


def test_arrow_input_trains_the_same_booster(config: LooplineConfig, rows: tuple) -> None:
    frame, table = rows
    assert (
        pa.types.is_dictionary(table.schema.field("purpose").type) and table.column("purpose").num_chunks > 1
    )
    assert fit_vocabulary(table, SPEC) == fit_vocabulary(frame, SPEC)
    assert labels(table, TARGET).tolist() == labels(frame, TARGET).tolist()
    params = train.hyperparameters(config.training, PARAMS)
    from_pandas = train.fit_scored(frame, SPEC, TARGET, params)
    from_arrow = train.fit_scored(table, SPEC, TARGET, params)
    # The model, its feature spec and vocabulary (booster attributes) byte for byte; the training scores exactly.
    assert from_arrow.booster.save_raw() == from_pandas.booster.save_raw()
    assert np.array_equal(from_arrow.scores, from_pandas.scores)
    assert np.array_equal(train.predict(from_arrow.booster, table), train.predict(from_pandas.booster, frame))


def test_model_table_encodes_like_model_frame(rows: tuple) -> None:
    frame, table = rows
    vocabulary = fit_vocabulary(frame, SPEC)
    vocabulary["purpose"] = vocabulary["purpose"][1:]  # a category unseen by this vocabulary becomes missing
    encoded, expected = model_table(table, SPEC, vocabulary), model_frame(frame, SPEC, vocabulary)
    assert encoded.column_names == list(expected.columns)
    for column in SPEC.numeric:
        assert np.array_equal(encoded.column(column).to_numpy(), expected[column].to_numpy(), equal_nan=True)
    for column in SPEC.categorical:
        values = encoded.column(column).combine_chunks()
        assert values.dictionary.to_pylist() == vocabulary[column]
        codes = values.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        assert np.array_equal(codes, expected[column].cat.codes.to_numpy())
    assert (expected["purpose"].cat.codes == -1).sum() > frame["purpose"].isna().sum()


def test_feature_profiles_of_arrow_equal_pandas_in_order(tmp_path: Path) -> None:
    """Same entries, same key order (count, then first occurrence), for text, dictionary and other columns."""
    frame = pd.DataFrame(
        {
            "x": [1.5, np.nan, 3.0, 2.0, 2.0, 7.0, np.nan, 0.5],
            "n": pd.array([1, None, 3, 3, 5, 1, 2, None], dtype="Int64"),
            "c": pd.Series(["b", "a", None, "c", "a", "b", "d", "c"], dtype="str"),  # ties: b, a, c
            "k": pd.array([3, 1, None, 1, 3, 2, 2, 7], dtype="Int64"),  # a categorical stored as integers
        }
    )
    spec = FeatureSpec(("x", "n"), ("c", "k"))
    pandas_rows, dictionary = _parquet_round_trip(frame, tmp_path, ["c"])
    plain = pa.Table.from_pandas(pandas_rows, preserve_index=False)
    expected = json.dumps(drift.feature_profiles(pandas_rows, spec, 4))
    chunked = pa.Table.from_batches(dictionary.to_batches(max_chunksize=3))  # dictionaries differ per chunk
    for table in (dictionary, plain, chunked):
        assert json.dumps(drift.feature_profiles(table, spec, 4)) == expected
    assert list(drift.feature_profiles(chunked, spec, 4)["c"]["shares"]) == ["b", "a", "c", "d"]


def test_split_window_of_arrow_takes_the_same_rows(config: LooplineConfig) -> None:
    target, time_column = config.dataset.target, config.dataset.time_column
    rng = np.random.default_rng(5)
    rows = 400
    values = rng.integers(0, 2, rows).astype("float64")
    values[rng.random(rows) < 0.1] = np.nan
    window = pd.DataFrame(
        {
            "id": np.arange(rows),
            target: values,
            time_column: pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 40, rows), unit="D"),
        }
    )
    for frame in (window, window.dropna()):
        frame = frame.reset_index(drop=True)
        expected = train.split_window(frame, 150, config)
        found = train.split_window(pa.Table.from_pandas(frame, preserve_index=False), 150, config)
        assert isinstance(found.train, pa.Table) and isinstance(found.holdout, pa.Table)
        pd.testing.assert_frame_equal(found.train.to_pandas(), expected.train)
        pd.testing.assert_frame_equal(found.holdout.to_pandas(), expected.holdout)


def _demo_lake(folder: Path) -> tuple[LooplineConfig, Paths, list[str]]:
    """Three months of demo loans: the newest out of event-time order, some labels missing in every month."""
    paths = Paths(home=folder)
    config = load_config(ROOT / "loopline.yaml")
    scenario = Scenario(months=3, rows_per_month=2500, incident_months=())
    rng = np.random.default_rng(11)
    keys = []
    for month in range(1, scenario.months + 1):
        key = scenario.batch_key(month)
        raw = generate_month(scenario, month).drop_duplicates(config.dataset.id_column)
        raw = raw.sample(frac=1.0, random_state=month).reset_index(drop=True) if month == 3 else raw
        raw[config.dataset.target] = raw[config.dataset.target].astype("float64")
        raw.loc[rng.random(len(raw)) < 0.04, config.dataset.target] = np.nan
        clean = clean_batch(config, raw, key, Path(f"{key}.csv"), set())
        Lake(paths.lake).write(config.dataset.name, key, clean.frame)
        keys.append(key)
    return config, paths, keys


def test_local_engine_trains_from_arrow_what_the_pandas_path_trained(tmp_path: Path) -> None:
    """The in-memory train step equals the pandas composition it replaced: model, profile, metrics, rows."""
    config, paths, keys = _demo_lake(tmp_path)
    engine = LocalEngine(
        config.model_copy(update={"engine": config.engine.model_copy(update={"out_of_core": "never"})}), paths
    )
    params = train.hyperparameters(config.training, PARAMS)
    trained = engine.train(keys, params)

    dataset, lake = config.dataset, engine.lake
    window = lake.read(dataset.name, keys)
    split = train.split_window(window, lake.footer_rows(dataset.name, keys[-1:]), config)
    assert window[dataset.target].isna().any() and split.train[dataset.target].notna().all()
    spec = resolve_features(config, split.train.columns, split.train.dtypes)
    fitted = train.fit_scored(split.train, spec, dataset.target, params)
    holdout_y = split.holdout[dataset.target].astype(int).to_numpy()
    profile = drift.assemble_profile(
        drift.feature_profiles(split.train, spec, config.drift.bins),
        fitted.scores,
        len(split.train),
        config.drift.bins,
        importance=train.feature_importance(fitted.booster),
        calibration=(train.predict(fitted.booster, split.holdout), holdout_y),
    )

    assert trained.spec == spec
    assert trained.booster.save_raw() == fitted.booster.save_raw()
    assert json.dumps(trained.profile) == json.dumps(profile)
    assert trained.train_rows == len(split.train)
    np.testing.assert_array_equal(trained.holdout.ids, split.holdout[dataset.id_column].to_numpy())
    np.testing.assert_array_equal(trained.holdout.labels, holdout_y)
    np.testing.assert_array_equal(trained.holdout.scores, train.predict(fitted.booster, split.holdout))
    pd.testing.assert_frame_equal(trained.example, split.train.head(SAMPLE_ROWS))
    y = split.train[dataset.target].astype(int).to_numpy()
    from ml.evaluate import classification_metrics

    assert trained.train_metrics == classification_metrics(y, fitted.scores, config.gate.decision_threshold)
