"""Streamed monitoring and scoring keep fixed-size state: binned AUC and calibration, and a scan that holds one
record batch (issue 10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml import train
from ml.config import LooplineConfig, Paths, load_config
from ml.demo_data import Scenario, generate_month
from ml.engines.local import LocalEngine
from ml.evaluate import histogram_roc_auc, roc_auc, score_class_histogram
from ml.ingest import clean_batch
from ml.lake import ROW_GROUP_ROWS, Lake
from ml.performance import LabelledScores, realised_performance

ROOT = Path(__file__).resolve().parents[2]

AUC_TOLERANCE = 1e-4
"""The documented tolerance of the binned AUC against the per-row one (``LabelledScores.performance``)."""


def _scored(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from float32 scores of a logistic model (as XGBoost's; 3 decimals when ``ties``)."""
    rng = np.random.default_rng(seed)
    scores = 1 / (1 + np.exp(-(-1.0 + 1.5 * rng.normal(size=n))))
    if ties:
        scores = np.round(scores, 3)
    scores = scores.astype(np.float32).astype("float64")
    return (rng.random(n) < scores).astype(int), scores


@pytest.mark.fast
@pytest.mark.parametrize(("n", "seed"), [(200_000, 0), (20_000, 1), (3_000, 2)])
def test_histogram_auc_is_within_its_bound_of_the_exact_auc(n: int, seed: int) -> None:
    y, scores = _scored(n, seed)
    auc, bound = histogram_roc_auc(score_class_histogram(y, scores))
    exact = roc_auc(y, scores)
    assert abs(auc - exact) <= bound + 1e-12
    assert bound < AUC_TOLERANCE and abs(auc - exact) < AUC_TOLERANCE


@pytest.mark.fast
def test_histogram_auc_is_exact_when_each_bin_holds_one_score_value() -> None:
    y, scores = _scored(50_000, 3, ties=True)  # 1,000 distinct values, each alone in its bin
    auc, bound = histogram_roc_auc(score_class_histogram(y, scores))
    assert auc == pytest.approx(roc_auc(y, scores), abs=1e-12)
    assert bound > AUC_TOLERANCE  # the bound cannot tell ties from distinct values in one bin


@pytest.mark.fast
def test_histogram_auc_of_one_class_is_nan() -> None:
    auc, bound = histogram_roc_auc(score_class_histogram(np.ones(10), np.linspace(0, 1, 10)))
    assert np.isnan(auc) and np.isnan(bound)


@pytest.mark.fast
def test_histogram_ignores_non_finite_scores_and_clips_the_rest() -> None:
    histogram = score_class_histogram(np.array([0, 1, 1, 0]), np.array([np.nan, 1.5, 1.0, -0.2]))
    assert histogram.sum() == 3
    assert histogram[1, -1] == 2 and histogram[0, 0] == 1


def _chunked_state(y: np.ndarray, scores: np.ndarray, size: int) -> LabelledScores:
    state = None
    for start in range(0, len(y), size):
        part = LabelledScores.of(y[start : start + size], scores[start : start + size])
        part = LabelledScores.from_dict(json.loads(json.dumps(part.to_dict())))
        state = part if state is None else state.merge(part)
    assert state is not None
    return state


@pytest.mark.fast
def test_labelled_scores_merge_through_json_to_the_whole_state() -> None:
    y, scores = _scored(30_000, 4)
    whole, merged = LabelledScores.of(y, scores), _chunked_state(y, scores, 7_000)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    assert merged.squared_error == pytest.approx(whole.squared_error, rel=1e-12)
    assert merged.log_loss == pytest.approx(whole.log_loss, rel=1e-12)
    assert merged.rows == 30_000


@pytest.mark.fast
@pytest.mark.parametrize("ties", [False, True])
def test_binned_realised_performance_matches_the_per_row_document(ties: bool) -> None:
    y, scores = _scored(100_000, 5, ties)
    exact = realised_performance(y, scores)
    binned = _chunked_state(y, scores, 33_000).performance()
    assert set(binned) == set(exact)
    for key in ("rows", "positives"):
        assert binned[key] == exact[key]
    for key in ("positive_rate", "mean_score", "calibration_in_the_large", "ece", "brier", "log_loss"):
        assert binned[key] == pytest.approx(exact[key], rel=1e-9, abs=1e-12), key
    assert binned["roc_auc"] == pytest.approx(exact["roc_auc"], abs=AUC_TOLERANCE)
    # Quantile table bins: edges moved to the nearest state bin edge, so rows per bin nearly equal.
    assert len(binned["calibration"]) == len(exact["calibration"])
    widest = int(LabelledScores.of(y, scores).counts.sum(axis=0).max())
    for row, expected in zip(binned["calibration"], exact["calibration"], strict=True):
        assert abs(row["rows"] - expected["rows"]) <= 2 * widest
        assert row["mean_score"] == pytest.approx(expected["mean_score"], abs=5e-3)
        assert row["positive_rate"] == pytest.approx(expected["positive_rate"], abs=5e-3)
    json.dumps(binned)


@pytest.mark.fast
def test_binned_realised_performance_of_no_rows_and_one_class() -> None:
    assert LabelledScores.of(np.zeros(0), np.zeros(0)).performance() == {
        "rows": 0,
        "positives": 0,
        "roc_auc": None,
    }
    one_class = LabelledScores.of(np.zeros(50), np.linspace(0, 1, 50)).performance()
    assert one_class["roc_auc"] is None and one_class["rows"] == 50 and one_class["positives"] == 0


@pytest.mark.fast
def test_scan_holds_one_record_batch_not_the_partition(tmp_path: Path) -> None:
    """Arrow memory while streaming a partition of many row groups stays at its level of the first row group:
    no read-ahead of row groups, no column chunks kept until the file closes."""
    lake = Lake(tmp_path)
    rng = np.random.default_rng(6)
    rows, batch_rows = 1_000_000, 20_000
    frame = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(8)})
    frame["kind"] = rng.choice(["a", "b", "c"], rows)
    lake.write("t", "b1", frame)  # 8 row groups of 131,072 rows, ~70 MiB in memory
    del frame
    baseline = pa.total_allocated_bytes()
    held: list[int] = []
    seen = 0
    for _, offset, batch in lake.scan("t", ["b1"], None, batch_rows, ["kind"]):
        assert offset == seen and pa.types.is_dictionary(batch.schema.field("kind").type)
        seen += batch.num_rows
        held.append(pa.total_allocated_bytes() - baseline)
    assert seen == rows
    first_row_group = max(held[: ROW_GROUP_ROWS // batch_rows])
    one_batch = batch_rows * 9 * 8
    assert max(held) <= first_row_group + 2 * one_batch


def _engine(config: LooplineConfig, paths: Paths, mode: str) -> LocalEngine:
    engine = config.engine.model_copy(update={"out_of_core": mode, "batch_rows": 1000})
    return LocalEngine(config.model_copy(update={"engine": engine}), paths)


def test_streamed_monitor_and_score_match_in_memory_within_the_documented_tolerances(tmp_path: Path) -> None:
    scenario = Scenario(months=2, rows_per_month=5000, shift_from_month=2, incident_months=())
    paths, config = Paths(home=tmp_path), load_config(ROOT / "loopline.yaml")
    keys = [scenario.batch_key(month) for month in (1, 2)]
    for month, key in enumerate(keys, start=1):
        clean = clean_batch(config, generate_month(scenario, month), key, Path(f"{key}.csv"), set())
        Lake(paths.lake).write(config.dataset.name, key, clean.frame)
    params = train.hyperparameters(config.training, {"num_boost_round": 20, "max_depth": 3})
    model = _engine(config, paths, "never").train(keys[:1], params)
    monitored = {
        mode: _engine(config, paths, mode).monitor(keys[1], model.booster, model.profile)
        for mode in ("never", "always")
    }
    memory, streamed = monitored["never"].realised, monitored["always"].realised
    assert memory is not None and streamed is not None and set(memory) == set(streamed)
    assert monitored["never"].drift.verdict == monitored["always"].drift.verdict
    assert streamed["rows"] == memory["rows"] and streamed["positives"] == memory["positives"]
    for key in ("mean_score", "ece", "brier", "log_loss"):
        assert streamed[key] == pytest.approx(memory[key], rel=1e-9), key
    assert streamed["roc_auc"] == pytest.approx(memory["roc_auc"], abs=AUC_TOLERANCE)
    scored = {
        mode: _engine(config, paths, mode).score(keys[1], model.booster, "1") for mode in ("never", "always")
    }
    assert scored["never"]["roc_auc"] == scored["always"]["roc_auc"]  # the same histogram either way
    frame = Lake(paths.lake).read(config.dataset.name, [keys[1]])
    labelled = frame[config.dataset.target].notna().to_numpy()
    exact = roc_auc(
        frame.loc[labelled, config.dataset.target].astype(int).to_numpy(),
        train.predict(model.booster, frame.loc[labelled]),
    )
    assert scored["never"]["roc_auc"] == pytest.approx(exact, abs=AUC_TOLERANCE)
    assert memory["roc_auc"] == pytest.approx(exact, abs=1e-12)  # in memory: the per-row AUC, unchanged
