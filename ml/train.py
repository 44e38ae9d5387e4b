"""Training: the window's rows -> an XGBoost booster that carries its own feature spec and vocabulary.

Pure functions over DataFrames or Arrow tables (the in-memory train step reads the window as Arrow, its
categoricals dictionary-encoded, and makes no pandas frame of it). The booster stores the feature spec and the
categorical vocabulary as attributes, so whoever loads it (batch scoring, the live endpoint, the monitor) encodes
input the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb

from ml.config import LooplineConfig, TrainingConfig
from ml.features import FeatureSpec, fit_vocabulary, labels, model_batches, model_frame, model_table

SPEC_ATTR = "loopline_feature_spec"
VOCAB_ATTR = "loopline_vocabulary"


Rows = TypeVar("Rows", pd.DataFrame, pa.Table)
"""A window's rows: a pandas DataFrame or an Arrow table."""


class TrainingDataError(ValueError):
    """A training window that cannot produce a model (too few rows, one class only, ...)."""


@dataclass(frozen=True)
class Split(Generic[Rows]):
    """Training rows and the holdout (the newest rows of the newest batch, never trained on)."""

    train: Rows
    holdout: Rows


def hyperparameters(training: TrainingConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training config with trigger-form overrides applied (unknown keys are refused)."""
    merged = training.model_dump()
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in merged:
            raise KeyError(f"unknown training parameter {key!r}; known: {', '.join(sorted(merged))}")
        merged[key] = value
    return TrainingConfig.model_validate(merged).model_dump()


def split_holdout(older: pd.DataFrame, newest: pd.DataFrame, config: LooplineConfig) -> Split:
    """Train on the older batches plus the early part of the newest; hold out its latest share."""
    labelled = older[config.dataset.target].notna().to_numpy()
    older = older if labelled.all() else older[labelled]
    train_rows, holdout_rows = _newest_split(newest, config)
    train = pd.concat([older, _rows(newest, train_rows)], ignore_index=True)
    return Split(train, _rows(newest, holdout_rows).reset_index(drop=True))


def split_window(window: Rows, newest_rows: int, config: LooplineConfig) -> Split[Rows]:
    """``split_holdout`` of a window read as one frame (or Arrow table) whose last ``newest_rows`` rows are the
    newest batch.

    The same rows in the same order, of the window's type; the training rows are a slice of ``window`` (no
    copy) when every row is labelled and the newest batch is in event-time order, as batches usually are. Of
    an Arrow table only the target and time columns are converted to pandas, to choose the rows.
    """
    dataset = config.dataset
    keys = window
    if isinstance(window, pa.Table):
        keys = window.select(
            [dataset.target, *([dataset.time_column] if dataset.time_column else [])]
        ).to_pandas()
    start = len(window) - newest_rows
    older = np.flatnonzero(keys[dataset.target].iloc[:start].notna().to_numpy())
    train_rows, holdout_rows = _newest_split(keys.iloc[start:], config)
    train = _rows(window, np.concatenate([older, start + train_rows]))
    return Split(_renumbered(train), _renumbered(_rows(window, start + holdout_rows)))


def _newest_split(newest: pd.DataFrame, config: LooplineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the newest batch's training and holdout rows: its labelled rows in stable event-time
    order, the latest ``training.holdout_fraction`` held out."""
    order = np.flatnonzero(newest[config.dataset.target].notna().to_numpy())
    time_column = config.dataset.time_column
    if time_column:
        times = newest[time_column].iloc[order].reset_index(drop=True)
        order = order[times.sort_values(kind="stable").index.to_numpy()]
    cut = round(len(order) * (1 - config.training.holdout_fraction))
    return order[:cut], order[cut:]


def _rows(frame: Rows, positions: np.ndarray) -> Rows:
    """``frame.take(positions)``, a slice (no copy) when the positions are a contiguous ascending run."""
    contiguous = positions.size and bool(np.all(np.diff(positions) == 1))
    if isinstance(frame, pa.Table):
        return frame.slice(positions[0], positions.size) if contiguous else frame.take(positions)
    return frame.iloc[positions[0] : positions[-1] + 1] if contiguous else frame.take(positions)


def _renumbered(rows: Rows) -> Rows:
    """A frame's rows with a fresh 0..n-1 index; an Arrow table as it is (it has no index)."""
    return rows.reset_index(drop=True) if isinstance(rows, pd.DataFrame) else rows


def check_labels(rows: int, positives: int) -> None:
    """Refuse a window that cannot produce a model (too few labelled rows, one class only)."""
    if rows < 50:
        raise TrainingDataError(f"only {rows} labelled training rows: widen training.window_batches")
    if positives == 0 or positives == rows:
        raise TrainingDataError(
            f"the training window has a single class ({positives} positives in {rows} rows): "
            "widen the window or check the target column"
        )


def booster_params(params: dict[str, Any], rows: int, positives: int) -> dict[str, Any]:
    """XGBoost's parameters for Loopline's hyperparameters (binary logistic, hist)."""
    found = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": params["max_depth"],
        "eta": params["learning_rate"],
        "min_child_weight": params["min_child_weight"],
        "subsample": params["subsample"],
        "colsample_bytree": params["colsample_bytree"],
        "lambda": params["reg_lambda"],
        "seed": params["seed"],
        "nthread": 0,
    }
    if params["class_weight"] == "balanced":
        found["scale_pos_weight"] = (rows - positives) / positives
    return found


def _finish(booster: xgb.Booster, spec: FeatureSpec, vocabulary: dict[str, list[str]]) -> xgb.Booster:
    booster.set_attr(**{SPEC_ATTR: spec.to_json(), VOCAB_ATTR: json.dumps(vocabulary)})
    return booster


@dataclass(frozen=True)
class TrainingInput:
    """XGBoost's input for labelled training rows: the encoded features, the 0/1 labels, the vocabulary."""

    features: pd.DataFrame | pa.Table
    """``model_frame`` of a DataFrame, or ``model_table`` of an Arrow table with every column in one chunk."""
    labels: np.ndarray
    vocabulary: dict[str, list[str]]


def training_input(rows: pd.DataFrame | pa.Table, spec: FeatureSpec, target: str) -> TrainingInput:
    """The labels, vocabulary and encoded features of labelled training rows; refuses rows that make no model.

    An Arrow table (categoricals as text or dictionary-encoded text) is encoded in Arrow, each column combined
    into one chunk as XGBoost reads it: a column it copies keeps no reference to ``rows``, so a caller may
    release the rows before boosting.
    """
    y = labels(rows, target).to_numpy()
    check_labels(len(y), int(y.sum()))
    vocabulary = fit_vocabulary(rows, spec)
    if isinstance(rows, pa.Table):
        return TrainingInput(model_table(rows, spec, vocabulary).combine_chunks(), y, vocabulary)
    return TrainingInput(model_frame(rows, spec, vocabulary), y, vocabulary)


@dataclass(frozen=True)
class Fitted:
    """A trained booster and its probabilities on its own training rows (in row order, float64)."""

    booster: xgb.Booster
    scores: np.ndarray


class _TrainingScores(xgb.callback.TrainingCallback):
    """Reads the booster's probabilities on its training matrix when boosting ends.

    XGBoost keeps the training rows' predictions current while it boosts (its prediction cache) and
    ``xgboost.train`` returns a copy without that cache: read here, the scores cost a copy instead of a second
    pass of every tree over every row, and equal ``predict`` on the same rows bit for bit.
    """

    def __init__(self, matrix: xgb.DMatrix) -> None:
        super().__init__()
        self.matrix = matrix
        self.scores: np.ndarray | None = None

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        self.scores = np.asarray(model.predict(self.matrix), dtype="float64")
        return model


def fit_scored(
    train: pd.DataFrame | pa.Table | TrainingInput, spec: FeatureSpec, target: str, params: dict[str, Any]
) -> Fitted:
    """``fit``, plus the booster's scores on the training rows (read from XGBoost's prediction cache).

    ``train`` is the rows (a DataFrame or an Arrow table) or their ``training_input``: the same booster, byte
    for byte, from the same rows in any of these forms.
    """
    data = train if isinstance(train, TrainingInput) else training_input(train, spec, target)
    rows, positives, vocabulary = len(data.labels), int(data.labels.sum()), data.vocabulary
    features = data.features
    if isinstance(features, pa.Table):
        # XGBoost builds its matrix from an Arrow table with about twice the memory it needs from the same columns
        # in pandas; the frame views the table's buffers (a copy only of columns with nulls, as NaN).
        features = features.to_pandas(split_blocks=True)
    matrix = xgb.DMatrix(features, label=data.labels, enable_categorical=True, missing=np.nan)
    del data, features  # the matrix holds its own copy
    scored = _TrainingScores(matrix)
    booster = xgb.train(
        booster_params(params, rows, positives),
        matrix,
        num_boost_round=params["num_boost_round"],
        callbacks=[scored],
    )
    assert scored.scores is not None  # after_training always runs
    return Fitted(_finish(booster, spec, vocabulary), scores=scored.scores)


def fit(
    train: pd.DataFrame | pa.Table, spec: FeatureSpec, target: str, params: dict[str, Any]
) -> xgb.Booster:
    """Fit a binary XGBoost classifier (hist, native categoricals) on labelled rows."""
    return fit_scored(train, spec, target, params).booster


class FrameIter(xgb.DataIter):
    """XGBoost's external-memory input: labelled training chunks, encoded with a fixed vocabulary.

    ``chunks`` is called once per pass over the data (XGBoost makes several) and yields DataFrames holding
    the feature columns and the target; the quantised pages are cached under ``cache_prefix`` on disk.
    """

    def __init__(
        self,
        chunks: Callable[[], Iterable[pd.DataFrame]],
        spec: FeatureSpec,
        vocabulary: dict[str, list[str]],
        target: str,
        cache_prefix: str,
    ) -> None:
        self._chunks, self._spec, self._vocabulary, self._target = chunks, spec, vocabulary, target
        self._current: Iterator[pd.DataFrame] | None = None
        super().__init__(cache_prefix=cache_prefix, release_data=True)

    def next(self, input_data: Callable[..., None]) -> bool:
        if self._current is None:
            self._current = iter(self._chunks())
        for frame in self._current:
            if len(frame):
                features = model_frame(frame, self._spec, self._vocabulary)
                input_data(data=features, label=labels(frame, self._target).to_numpy())
                return True
        return False

    def reset(self) -> None:
        self._current = None


ID_BUCKET_BITS = 10
ID_BUCKETS = 1 << ID_BUCKET_BITS
"""The buckets a hash of the id splits rows into: a boosting sample is made of whole buckets (1/1024 steps)."""


def id_buckets(ids: pd.Series | np.ndarray) -> np.ndarray:
    """Each row's bucket in ``0 .. ID_BUCKETS - 1``: the top ``ID_BUCKET_BITS`` bits of a fixed hash of its id.

    An id lands in the same bucket on every run and every machine, so whole buckets make a uniform sample of
    rows that a rerun reproduces.
    """
    hashed = pd.util.hash_array(np.asarray(ids))
    return (hashed >> np.uint64(64 - ID_BUCKET_BITS)).astype(np.int64)


def sampled_buckets(rows_per_bucket: np.ndarray, max_rows: int) -> int:
    """How many leading buckets a sample of at most ``max_rows`` rows takes (at least one)."""
    return max(1, int(np.count_nonzero(np.cumsum(rows_per_bucket) <= max_rows)))


def boosting_tags(boosted: int, buckets: int = ID_BUCKETS) -> dict[str, str]:
    """The run's tags on what boosting saw: every training row, or a sample of whole id-hash buckets."""
    sample = "all training rows" if buckets == ID_BUCKETS else f"{buckets}/{ID_BUCKETS} id-hash buckets"
    return {"loopline.boosted_rows": str(boosted), "loopline.boosting_sample": sample}


def fit_external(
    chunks: Callable[[], Iterable[pd.DataFrame]],
    spec: FeatureSpec,
    target: str,
    params: dict[str, Any],
    vocabulary: dict[str, list[str]],
    rows: int,
    positives: int,
    cache_dir: Path,
) -> xgb.Booster:
    """``fit`` out of core: XGBoost's ``ExtMemQuantileDMatrix`` over the labelled training chunks.

    The caller has counted ``rows`` and ``positives`` and fitted the ``vocabulary`` in an earlier pass; memory
    holds one chunk plus the quantised pages XGBoost keeps (about 72 bytes per row at 30 features).
    """
    check_labels(rows, positives)
    iterator = FrameIter(chunks, spec, vocabulary, target, str(cache_dir / "xgb-cache"))
    matrix = xgb.ExtMemQuantileDMatrix(iterator, missing=np.nan, enable_categorical=True)
    booster = xgb.train(
        booster_params(params, rows, positives), matrix, num_boost_round=params["num_boost_round"]
    )
    return _finish(booster, spec, vocabulary)


def predict(booster: xgb.Booster, frame: pd.DataFrame | pa.Table) -> np.ndarray:
    """Probabilities of the positive class for raw rows, encoded with the booster's own spec and vocabulary.

    An Arrow table is encoded and scored record batch by record batch (``model_batches``): the same scores
    without a pandas copy of the rows.
    """
    spec_json, vocab_json = booster.attr(SPEC_ATTR), booster.attr(VOCAB_ATTR)
    if spec_json is None or vocab_json is None:
        raise ValueError("this booster was not trained by Loopline: it carries no feature spec")
    spec = FeatureSpec.from_json(spec_json)
    arrow = isinstance(frame, pa.Table)
    present = set(frame.column_names if arrow else frame.columns)
    missing = [c for c in spec.columns if c not in present]
    if missing:
        raise KeyError(f"input lacks the model's feature column(s) {', '.join(missing)}")
    vocabulary = json.loads(vocab_json)
    if not arrow:
        return np.asarray(booster.inplace_predict(model_frame(frame, spec, vocabulary)), dtype="float64")
    scores = [booster.inplace_predict(part) for part in model_batches(frame, spec, vocabulary)]
    return np.concatenate(scores).astype("float64") if scores else np.zeros(0)


def feature_spec_of(booster: xgb.Booster) -> FeatureSpec:
    """The feature spec a Loopline booster was trained with."""
    return FeatureSpec.from_json(booster.attr(SPEC_ATTR) or "{}")


def feature_importance(booster: xgb.Booster) -> dict[str, float]:
    """Total gain per feature, normalised to sum to 1 (features never used get 0)."""
    gains = booster.get_score(importance_type="total_gain")
    total = sum(gains.values()) or 1.0
    return {column: gains.get(column, 0.0) / total for column in feature_spec_of(booster).columns}
