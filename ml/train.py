"""Training: the window's rows -> an XGBoost booster that carries its own feature spec and vocabulary.

Pure functions over DataFrames. The booster stores the feature spec and the categorical vocabulary as
attributes, so whoever loads it (batch scoring, the live endpoint, the monitor) encodes input the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from ml.config import LooplineConfig, TrainingConfig
from ml.features import FeatureSpec, fit_vocabulary, labels, model_frame

SPEC_ATTR = "loopline_feature_spec"
VOCAB_ATTR = "loopline_vocabulary"


class TrainingDataError(ValueError):
    """A training window that cannot produce a model (too few rows, one class only, ...)."""


@dataclass(frozen=True)
class Split:
    """Training rows and the holdout (the newest rows of the newest batch, never trained on)."""

    train: pd.DataFrame
    holdout: pd.DataFrame


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
    target = config.dataset.target
    older = older[older[target].notna()]
    newest = newest[newest[target].notna()]
    time_column = config.dataset.time_column
    ordered = newest.sort_values(time_column, kind="stable") if time_column else newest
    cut = round(len(ordered) * (1 - config.training.holdout_fraction))
    train = pd.concat([older, ordered.iloc[:cut]], ignore_index=True)
    holdout = ordered.iloc[cut:].reset_index(drop=True)
    return Split(train, holdout)


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


def fit(train: pd.DataFrame, spec: FeatureSpec, target: str, params: dict[str, Any]) -> xgb.Booster:
    """Fit a binary XGBoost classifier (hist, native categoricals) on labelled rows."""
    y = labels(train, target)
    positives = int(y.sum())
    check_labels(len(y), positives)
    vocabulary = fit_vocabulary(train, spec)
    features = model_frame(train, spec, vocabulary)
    matrix = xgb.DMatrix(features, label=y.to_numpy(), enable_categorical=True, missing=np.nan)
    booster = xgb.train(
        booster_params(params, len(y), positives), matrix, num_boost_round=params["num_boost_round"]
    )
    return _finish(booster, spec, vocabulary)


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


def predict(booster: xgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities of the positive class for raw rows, encoded with the booster's own spec and vocabulary."""
    spec_json, vocab_json = booster.attr(SPEC_ATTR), booster.attr(VOCAB_ATTR)
    if spec_json is None or vocab_json is None:
        raise ValueError("this booster was not trained by Loopline: it carries no feature spec")
    spec = FeatureSpec.from_json(spec_json)
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise KeyError(f"input lacks the model's feature column(s) {', '.join(missing)}")
    features = model_frame(frame, spec, json.loads(vocab_json))
    return np.asarray(booster.inplace_predict(features), dtype="float64")


def feature_spec_of(booster: xgb.Booster) -> FeatureSpec:
    """The feature spec a Loopline booster was trained with."""
    return FeatureSpec.from_json(booster.attr(SPEC_ATTR) or "{}")


def feature_importance(booster: xgb.Booster) -> dict[str, float]:
    """Total gain per feature, normalised to sum to 1 (features never used get 0)."""
    gains = booster.get_score(importance_type="total_gain")
    total = sum(gains.values()) or 1.0
    return {column: gains.get(column, 0.0) / total for column in feature_spec_of(booster).columns}
