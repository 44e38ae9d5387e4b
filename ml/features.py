"""Which columns are features, and how a frame becomes the model's input.

Numeric features become float64; categorical features become pandas categoricals over a vocabulary fixed at
training time (stored inside the model), so codes mean the same thing at training and at scoring, and an
unseen category scores as missing instead of shifting the codes of the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.config import LooplineConfig


@dataclass(frozen=True)
class FeatureSpec:
    """The model's input columns, numeric first, then categorical."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_json(self) -> str:
        return json.dumps({"numeric": list(self.numeric), "categorical": list(self.categorical)})

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        return cls(tuple(raw["numeric"]), tuple(raw["categorical"]))


def resolve_features(config: LooplineConfig, columns: pd.Index | list[str], dtypes: pd.Series) -> FeatureSpec:
    """The feature columns from config, inferring from dtypes the lists set to ``infer``."""
    dataset = config.dataset
    reserved = {dataset.id_column, dataset.target, dataset.time_column}
    candidates = [c for c in columns if c not in reserved]
    if dataset.numeric_features == "infer":
        explicit_cat = set() if dataset.categorical_features == "infer" else set(dataset.categorical_features)
        numeric = [
            c
            for c in candidates
            if c not in explicit_cat
            and pd.api.types.is_numeric_dtype(dtypes[c])
            and not pd.api.types.is_bool_dtype(dtypes[c])
        ]
    else:
        numeric = list(dataset.numeric_features)
    if dataset.categorical_features == "infer":
        categorical = [c for c in candidates if c not in numeric]
    else:
        categorical = list(dataset.categorical_features)
    return FeatureSpec(tuple(numeric), tuple(categorical))


def fit_vocabulary(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, list[str]]:
    """The sorted categories seen in training, per categorical feature."""
    return {
        column: sorted(frame[column].dropna().astype(str).unique().tolist()) for column in spec.categorical
    }


def model_frame(frame: pd.DataFrame, spec: FeatureSpec, vocabulary: dict[str, list[str]]) -> pd.DataFrame:
    """The model's input: float64 numerics and categoricals over the training vocabulary.

    Categorical values are factorised and only the distinct values matched as text against the vocabulary;
    values unseen in training and missing values get code -1 (missing), never a shifted code.
    """
    out = {column: pd.to_numeric(frame[column], errors="coerce").astype("float64") for column in spec.numeric}
    for column in spec.categorical:
        categories = vocabulary.get(column, [])
        found, uniques = pd.factorize(frame[column], use_na_sentinel=True)
        lookup = pd.Index(categories, dtype=object).get_indexer([str(v) for v in uniques])
        codes = np.append(lookup, -1)[found] if len(uniques) else np.full(len(found), -1)
        out[column] = pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="str"))
    return pd.DataFrame(out, index=frame.index)


def labels(frame: pd.DataFrame, target: str) -> pd.Series:
    """The 0/1 label column (ingest has already mapped the positive class to 1)."""
    return frame[target].astype("int64")
