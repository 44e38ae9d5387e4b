"""The local engine: the streaming (out-of-core) path gives the in-memory path's results on the same lake."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import drift, train
from ml.config import LooplineConfig, Paths, load_config
from ml.demo_data import Scenario, generate_month
from ml.engines.local import LocalEngine
from ml.evaluate import roc_auc
from ml.features import FeatureSpec
from ml.ingest import clean_batch
from ml.lake import Lake
from ml.performance import estimate_performance

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Scenario(months=4, rows_per_month=6000, shift_from_month=4, incident_months=())
PARAMS = {"num_boost_round": 40, "max_depth": 3}


def _engine(config: LooplineConfig, paths: Paths, mode: str) -> LocalEngine:
    engine = config.engine.model_copy(update={"out_of_core": mode, "batch_rows": 1000})
    return LocalEngine(config.model_copy(update={"engine": engine}), paths)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[LooplineConfig, Paths, list[str]]:
    """Four months of demo loans in a lake (the fourth shifted), written with small row groups."""
    paths = Paths(home=tmp_path_factory.mktemp("home"))
    config = load_config(ROOT / "loopline.yaml")
    keys = []
    for month in range(1, SCENARIO.months + 1):
        key = SCENARIO.batch_key(month)
        clean = clean_batch(config, generate_month(SCENARIO, month), key, Path(f"{key}.csv"), set())
        Lake(paths.lake).write(config.dataset.name, key, clean.frame)
        keys.append(key)
    return config, paths, keys


@pytest.fixture(scope="module")
def trained(lake: tuple[LooplineConfig, Paths, list[str]]) -> dict[str, object]:
    config, paths, keys = lake
    params = train.hyperparameters(config.training, PARAMS)
    return {mode: _engine(config, paths, mode).train(keys[:3], params) for mode in ("never", "always")}


def test_streaming_training_matches_in_memory(trained: dict, lake: tuple) -> None:
    memory, streamed = trained["never"], trained["always"]
    assert (
        memory.lineage["loopline.out_of_core"] == "no" and streamed.lineage["loopline.out_of_core"] == "yes"
    )
    assert streamed.train_rows == memory.train_rows
    # the same holdout rows in the same order, each scored by its own booster as it was read
    np.testing.assert_array_equal(streamed.holdout.ids, memory.holdout.ids)
    np.testing.assert_array_equal(streamed.holdout.labels, memory.holdout.labels)
    y = memory.holdout.labels
    auc_memory, auc_streamed = roc_auc(y, memory.holdout.scores), roc_auc(y, streamed.holdout.scores)
    assert abs(auc_memory - auc_streamed) < 0.005
    config, paths, keys = lake
    newest = Lake(paths.lake).read(config.dataset.name, keys[2:3]).set_index(config.dataset.id_column)
    expected = train.predict(streamed.booster, newest.loc[streamed.holdout.ids])
    np.testing.assert_allclose(streamed.holdout.scores, expected, rtol=1e-6)
    assert abs(streamed.train_metrics["roc_auc"] - memory.train_metrics["roc_auc"]) < 0.01


def test_streaming_profile_equals_the_in_memory_profile(trained: dict) -> None:
    memory, streamed = trained["never"].profile, trained["always"].profile
    assert set(memory) == set(streamed) and memory["rows"] == streamed["rows"]
    assert list(memory["columns"]) == list(streamed["columns"])
    for column, entry in memory["columns"].items():
        if column == drift.SCORE:  # scores of two different boosters: same document shape
            assert set(entry) == set(streamed["columns"][column])
            continue
        other = streamed["columns"][column]
        for key, value in entry.items():
            if key in {"mean", "std"}:  # summation order only
                assert other[key] == pytest.approx(value, rel=1e-12)
            else:
                assert other[key] == value, (column, key)


def test_streaming_drift_and_realised_performance_equal_in_memory(trained: dict, lake: tuple) -> None:
    config, paths, keys = lake
    model = trained["never"]
    results = {
        mode: _engine(config, paths, mode).monitor(keys[3], model.booster, model.profile)
        for mode in ("never", "always")
    }
    memory, streamed = results["never"], results["always"]
    assert memory.drift.verdict == streamed.drift.verdict == "drift"
    assert memory.rows == streamed.rows == SCENARIO.rows_per_month
    for a, b in zip(memory.drift.features, streamed.drift.features, strict=True):
        assert (a.column, a.severity, a.new_categories, a.rows) == (
            b.column,
            b.severity,
            b.new_categories,
            b.rows,
        )
        assert a.current_shares == b.current_shares and a.plot == b.plot
        assert (a.psi, a.statistic, a.p_value_adjusted) == (b.psi, b.statistic, b.p_value_adjusted)
    estimate = memory.drift.performance["estimated_roc_auc"]
    assert streamed.drift.performance["estimated_roc_auc"] == pytest.approx(estimate, abs=1e-12)
    # streamed AUC: merged score histograms (ml.evaluate.histogram_roc_auc, error bound far under 1e-4)
    assert memory.realised["roc_auc"] == pytest.approx(streamed.realised["roc_auc"], abs=1e-4)


def test_summaries_merge_through_json_to_the_whole_batch_result(trained: dict, lake: tuple) -> None:
    config, paths, keys = lake
    model = trained["never"]
    batch = Lake(paths.lake).read(config.dataset.name, [keys[3]])
    scores = train.predict(model.booster, batch)
    parts = [
        drift.BatchSummary.from_dict(
            json.loads(json.dumps(drift.summarize_batch(model.profile, chunk, s).to_dict()))
        )
        for chunk, s in ((batch.iloc[i : i + 1700], scores[i : i + 1700]) for i in range(0, len(batch), 1700))
    ]
    merged = drift.compare_summary(model.profile, drift.merge_summaries(parts), "m", config.drift)
    whole = drift.compare(model.profile, batch, scores, "m", config.drift)
    assert [(f.column, f.psi, f.p_value) for f in merged.features] == [
        (f.column, f.psi, f.p_value) for f in whole.features
    ]
    assert merged.performance["estimated_roc_auc"] == pytest.approx(whole.performance["estimated_roc_auc"])
    per_row = estimate_performance(scores, model.profile["calibration"])["estimated_roc_auc"]
    assert abs(whole.performance["estimated_roc_auc"] - per_row) < 1e-3


def test_streaming_gate_gives_the_whole_window_verdicts(lake: tuple, tmp_path: Path) -> None:
    config, paths, keys = lake
    lake_ = Lake(paths.lake)
    broken = lake_.read(config.dataset.name, [keys[1]])
    broken.loc[100:400, "credit_score"] = np.nan
    broken.loc[2500:2520, "age"] = -1
    broken.loc[5000, "home_ownership"] = "CASTLE"
    broken.loc[5500, config.dataset.id_column] = broken.loc[10, config.dataset.id_column]
    lake_.write(config.dataset.name, "9999-01", broken)
    for window in (keys[:2], [keys[0], "9999-01"]):
        verdicts = {
            mode: _engine(config, paths, mode).validate(window, f"t-{mode}") for mode in ("never", "always")
        }
        memory, streamed = verdicts["never"], verdicts["always"]
        assert memory.passed == streamed.passed
        assert memory.evaluated == streamed.evaluated
        failed = {
            mode: {(f.expectation, f.column, f.severity) for f in v.critical + v.warnings}
            for mode, v in verdicts.items()
        }
        assert failed["never"] == failed["always"]
        percents = {
            mode: sorted((f.column or "", f.unexpected_percent or 0) for f in v.critical)
            for mode, v in verdicts.items()
        }
        for (col_a, pct_a), (col_b, pct_b) in zip(percents["never"], percents["always"], strict=True):
            assert col_a == col_b and pct_a == pytest.approx(pct_b)
    assert (
        not memory.passed
        and ("expect_column_values_to_be_unique", config.dataset.id_column, "critical") in failed["always"]
    )


def test_streaming_scores_equal_in_memory_scores(trained: dict, lake: tuple) -> None:
    config, paths, keys = lake
    model = trained["never"]
    table = f"{config.dataset.name}__predictions"
    found = {}
    for mode in ("never", "always"):
        summary = _engine(config, paths, mode).score(keys[3], model.booster, "7")
        found[mode] = (summary, Lake(paths.lake).read(table, [keys[3]]))
    (memory, rows_memory), (streamed, rows_streamed) = found["never"], found["always"]
    assert streamed["out_of_core"] and not memory["out_of_core"]
    assert streamed["rows"] == memory["rows"] == SCENARIO.rows_per_month
    assert streamed["roc_auc"] == memory["roc_auc"]
    pd.testing.assert_frame_equal(rows_streamed, rows_memory)
    assert Lake(paths.lake).partition(table, keys[3]).rows == SCENARIO.rows_per_month


def test_arrow_scores_equal_pandas_scores(trained: dict, lake: tuple) -> None:
    """Scoring Arrow (record batch by record batch, text dictionary-encoded or not) equals scoring the frame."""
    import pyarrow as pa

    config, paths, keys = lake
    booster = trained["never"].booster
    spec = train.feature_spec_of(booster)
    frame = Lake(paths.lake).read(config.dataset.name, [keys[3]])
    frame.loc[:50, spec.categorical[0]] = "never-seen"
    frame.loc[51:90, spec.categorical[0]] = None
    frame.loc[91:130, spec.numeric[0]] = np.nan
    table = pa.Table.from_pandas(frame, preserve_index=False)
    read = Lake(paths.lake).read_arrow(config.dataset.name, [keys[3]], None, spec.categorical)
    expected = train.predict(booster, frame)
    for arrow in (table, pa.concat_tables([table.slice(0, 1234), table.slice(1234)])):
        np.testing.assert_array_equal(train.predict(booster, arrow), expected)
    assert pa.types.is_dictionary(read.schema.field(spec.categorical[0]).type)
    np.testing.assert_array_equal(
        train.predict(booster, read),
        train.predict(booster, Lake(paths.lake).read(config.dataset.name, [keys[3]])),
    )


def test_external_memory_training_over_a_small_budget(tmp_path: Path) -> None:
    """A window over a 64 MB budget: the external-memory booster's AUC is within 0.005 of in-memory training."""
    rng = np.random.default_rng(5)
    rows, width = 300_000, 30
    x = rng.normal(size=(rows, width)).astype("float64")
    logit = x[:, :6] @ np.array([1.0, -0.8, 0.6, 0.5, -0.4, 0.3]) + 0.5 * x[:, 6] * x[:, 7]
    frame = pd.DataFrame(x, columns=[f"x{i:02d}" for i in range(width)])
    frame["y"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    lake_ = Lake(tmp_path / "lake")
    lake_.write("big", "b1", frame.iloc[:240_000])
    lake_.write("big", "b2", frame.iloc[240_000:])
    assert lake_.memory_estimate("big", ["b1", "b2"]) > 64 * 2**20
    spec = FeatureSpec(tuple(frame.columns[:width]), ())
    params = train.hyperparameters(
        load_config(ROOT / "loopline.yaml").training, {"num_boost_round": 30, "max_depth": 3}
    )
    training = frame.iloc[:240_000]
    holdout = frame.iloc[240_000:]

    def chunks():
        for _, _, batch in lake_.scan("big", ["b1"], None, 50_000):
            yield batch.to_pandas()

    in_memory = train.fit(training, spec, "y", params)
    external = train.fit_external(
        chunks, spec, "y", params, {}, len(training), int(training["y"].sum()), tmp_path
    )
    y = holdout["y"].to_numpy()
    auc_memory = roc_auc(y, train.predict(in_memory, holdout))
    auc_external = roc_auc(y, train.predict(external, holdout))
    assert auc_memory > 0.75
    assert abs(auc_memory - auc_external) < 0.005


def test_record_batches_shrink_to_an_eighth_of_the_budget(lake: tuple) -> None:
    config, paths, keys = lake
    engine = LocalEngine(
        config.model_copy(update={"engine": config.engine.model_copy(update={"memory_budget_mb": 64})}), paths
    )
    per_row = engine.lake.memory_estimate(engine.table, keys) / engine.lake.footer_rows(engine.table, keys)
    rows = engine.chunk_rows(keys, None)
    assert rows < config.engine.batch_rows
    assert rows * per_row <= 64 * 2**20 / 8 < (rows + 1) * per_row
    assert not engine.out_of_core(keys)  # four small months fit the budget: read at once


def test_streamed_training_metrics_equal_the_per_row_metrics() -> None:
    """Merged over chunks, the tally gives classification_metrics: exact, but binned ROC and PR AUC."""
    from ml.engines.local import _ScoreTally
    from ml.evaluate import classification_metrics

    rng = np.random.default_rng(8)
    y = (rng.random(200_000) < 0.2).astype("int64")
    scores = np.clip(rng.beta(2, 8, y.size) + 0.15 * y, 0, 1).astype("float32").astype("float64")
    tally = _ScoreTally(0.5)
    for start in range(0, y.size, 30_000):
        tally.add(y[start : start + 30_000], scores[start : start + 30_000])
    expected, found = classification_metrics(y, scores, 0.5), tally.metrics()
    assert set(found) == set(expected)
    for key, value in expected.items():
        tolerance = 1e-4 if key in {"roc_auc", "pr_auc"} else 1e-12
        assert found[key] == pytest.approx(value, rel=tolerance, abs=tolerance), key


def test_streamed_boosting_takes_whole_id_buckets_up_to_max_boosting_rows(trained: dict, lake: tuple) -> None:
    """Past engine.max_boosting_rows XGBoost sees a reproducible id-hash sample; the profile and the training
    metrics still cover every training row."""
    config, paths, keys = lake
    memory = trained["never"]
    limit = memory.train_rows // 2
    engine = _engine(config, paths, "always")
    engine = LocalEngine(
        engine.config.model_copy(
            update={"engine": engine.config.engine.model_copy(update={"max_boosting_rows": limit})}
        ),
        paths,
    )
    params = train.hyperparameters(config.training, PARAMS)
    sampled, again = engine.train(keys[:3], params), engine.train(keys[:3], params)

    kept = int(sampled.lineage["loopline.boosting_sample"].split("/")[0])
    window = Lake(paths.lake).read(config.dataset.name, keys[:3])
    labelled = window[window[config.dataset.target].notna()]
    training_ids = labelled.loc[
        ~labelled[config.dataset.id_column].isin(memory.holdout.ids), config.dataset.id_column
    ]
    buckets = train.id_buckets(training_ids)
    assert len(training_ids) == memory.train_rows == sampled.train_rows
    boosted = int(sampled.lineage["loopline.boosted_rows"])
    assert boosted == int((buckets < kept).sum()) <= limit < int((buckets <= kept).sum())
    assert boosted > 0.45 * memory.train_rows
    assert sampled.profile["rows"] == memory.profile["rows"]  # the profile reads every training row
    for key in ("rows", "positive_rate"):  # the training metrics score every training row
        assert sampled.train_metrics[key] == memory.train_metrics[key]
    y = memory.holdout.labels
    assert abs(roc_auc(y, sampled.holdout.scores) - roc_auc(y, memory.holdout.scores)) < 0.02
    np.testing.assert_array_equal(sampled.holdout.scores, again.holdout.scores)  # the same sample on a rerun
    assert memory.lineage["loopline.boosting_sample"] == trained["always"].lineage["loopline.boosting_sample"]
    assert trained["always"].lineage["loopline.boosted_rows"] == str(memory.train_rows)


@pytest.mark.fast
def test_id_buckets_are_a_fixed_uniform_hash_of_the_id() -> None:
    ids = np.arange(200_000, dtype=np.int64)
    buckets = train.id_buckets(ids)
    assert buckets.min() >= 0 and buckets.max() < train.ID_BUCKETS
    np.testing.assert_array_equal(buckets, train.id_buckets(pd.Series(ids)))  # no state between calls
    per_bucket = np.bincount(buckets, minlength=train.ID_BUCKETS)
    assert per_bucket.min() > 0.7 * per_bucket.mean() and per_bucket.max() < 1.3 * per_bucket.mean()
    text = train.id_buckets(np.array([f"loan-{i}" for i in range(1000)], dtype=object))
    assert len(set(text.tolist())) > 500
    assert train.sampled_buckets(np.array([5, 5, 5, 5]), 12) == 2
    assert train.sampled_buckets(np.array([5, 5, 5, 5]), 3) == 1  # never an empty sample
    assert train.sampled_buckets(np.array([5, 5, 5, 5]), 20) == 4
