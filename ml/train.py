"""Training: the window's rows -> an XGBoost booster that carries its own feature spec and vocabulary.

Pure functions over DataFrames. The booster stores the feature spec and the categorical vocabulary as
attributes, so whoever loads it (batch scoring, the live endpoint, the monitor) encodes input the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


def fit(train: pd.DataFrame, spec: FeatureSpec, target: str, params: dict[str, Any]) -> xgb.Booster:
    """Fit a binary XGBoost classifier (hist, native categoricals) on labelled rows."""
    if len(train) < 50:
        raise TrainingDataError(f"only {len(train)} labelled training rows: widen training.window_batches")
    y = labels(train, target)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise TrainingDataError(
            f"the training window has a single class ({positives} positives in {len(y)} rows): "
            "widen the window or check the target column"
        )
    vocabulary = fit_vocabulary(train, spec)
    features = model_frame(train, spec, vocabulary)
    booster_params = {
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
        booster_params["scale_pos_weight"] = (len(y) - positives) / positives
    matrix = xgb.DMatrix(features, label=y.to_numpy(), enable_categorical=True, missing=np.nan)
    booster = xgb.train(booster_params, matrix, num_boost_round=params["num_boost_round"])
    booster.set_attr(**{SPEC_ATTR: spec.to_json(), VOCAB_ATTR: json.dumps(vocabulary)})
    return booster


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
