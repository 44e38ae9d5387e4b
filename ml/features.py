"""Which columns are features, and how a frame becomes the model's input.

Numeric features become float64; categorical features become pandas categoricals over a vocabulary fixed at
training time (stored inside the model), so codes mean the same thing at training and at scoring, and an
unseen category scores as missing instead of shifting the codes of the others. ``model_batches`` (and
``model_table``) make the same input from an Arrow table (dictionary arrays over the vocabulary), without a pandas
copy; ``fit_vocabulary`` and ``labels`` read an Arrow table as well.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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


def fit_vocabulary(frame: pd.DataFrame | pa.Table, spec: FeatureSpec) -> dict[str, list[str]]:
    """The sorted categories seen in training, per categorical feature, as text.

    An Arrow table's text (or dictionary-encoded text) columns are read from their distinct values in Arrow; only
    values present in the rows count (a dictionary may hold more).
    """
    return {column: _categories(frame[column]) for column in spec.categorical}


def _categories(values: pd.Series | pa.ChunkedArray) -> list[str]:
    """The sorted distinct non-missing values of one column, as text."""
    if isinstance(values, pa.ChunkedArray):
        if not is_text_like(values.type):
            values = values.to_pandas()
        else:
            distinct = pc.unique(values)
            if isinstance(distinct, pa.DictionaryArray):
                distinct = distinct.dictionary.take(distinct.indices)
            return sorted({value for value in distinct.to_pylist() if value is not None})
    return sorted(values.dropna().astype(str).unique().tolist())


def _numeric(values: pd.Series) -> pd.Series:
    """A numeric feature as float64; values that are no number become missing."""
    return pd.to_numeric(values, errors="coerce").astype("float64")


def _category_codes(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Codes of ``values`` in the vocabulary, matched as text; -1 for missing and unseen values.

    Only the distinct values are matched (``pd.factorize``), not every row.
    """
    found, uniques = pd.factorize(values, use_na_sentinel=True)
    lookup = pd.Index(categories, dtype=object).get_indexer([str(v) for v in uniques])
    return np.append(lookup, -1)[found] if len(uniques) else np.full(len(found), -1)


def model_frame(frame: pd.DataFrame, spec: FeatureSpec, vocabulary: dict[str, list[str]]) -> pd.DataFrame:
    """The model's input: float64 numerics and categoricals over the training vocabulary.

    Values unseen in training and missing values get code -1 (missing), never a shifted code.
    """
    out = {column: _numeric(frame[column]) for column in spec.numeric}
    for column in spec.categorical:
        categories = vocabulary.get(column, [])
        codes = _category_codes(frame[column], categories)
        out[column] = pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="str"))
    return pd.DataFrame(out, index=frame.index)


def model_table(table: pa.Table, spec: FeatureSpec, vocabulary: dict[str, list[str]]) -> pa.Table:
    """``model_batches`` as one table, a chunk per record batch (the batches are not copied together)."""
    return pa.Table.from_batches(
        [part for encoded in model_batches(table, spec, vocabulary) for part in encoded.to_batches()],
        schema=_model_schema(spec),
    )


def _model_schema(spec: FeatureSpec) -> pa.Schema:
    """The schema of ``model_batches``' tables: float64 numerics, categoricals as int32 codes into text."""
    categorical = pa.dictionary(pa.int32(), pa.string())
    return pa.schema(
        [
            *(pa.field(c, pa.float64()) for c in spec.numeric),
            *(pa.field(c, categorical) for c in spec.categorical),
        ]
    )


def model_batches(table: pa.Table, spec: FeatureSpec, vocabulary: dict[str, list[str]]) -> Iterator[pa.Table]:
    """``model_frame`` of an Arrow table, one table per record batch of it (no pandas copy, no concatenation).

    Float64 numerics pass as they are (nulls are missing), other numbers and booleans are cast; categoricals
    become dictionary arrays over the vocabulary, missing and unseen values null. Text (or dictionary-encoded
    text) is matched per distinct value in Arrow; columns of other types take ``model_frame``'s pandas path.
    Every array starts at offset 0 (XGBoost reads Arrow buffers from their start).
    """
    vocabularies = {column: vocabulary.get(column, []) for column in spec.categorical}
    dictionaries = {column: pa.array(found, pa.string()) for column, found in vocabularies.items()}
    for batch in table.select(spec.columns).to_batches():
        arrays = [_arrow_numeric(batch.column(column)) for column in spec.numeric]
        arrays += [
            _arrow_categorical(batch.column(column), vocabularies[column], dictionaries[column])
            for column in spec.categorical
        ]
        yield pa.Table.from_arrays(arrays, names=spec.columns)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def is_text_like(kind: pa.DataType) -> bool:
    """Text, or dictionary-encoded text."""
    return _is_text(kind.value_type if pa.types.is_dictionary(kind) else kind)


def _arrow_numeric(values: pa.Array) -> pa.Array:
    """One numeric feature column of a record batch as float64 (``_numeric``'s values)."""
    kind = values.type
    if pa.types.is_float64(kind):
        return pa.concat_arrays([values]) if values.offset else values
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return values.cast(pa.float64(), safe=False)
    return pa.array(_numeric(values.to_pandas()).to_numpy(), pa.float64())


def _arrow_categorical(values: pa.Array, categories: list[str], dictionary: pa.Array) -> pa.DictionaryArray:
    """One categorical feature column of a record batch as codes into ``dictionary`` (the vocabulary)."""
    kind = values.type
    if is_text_like(kind):
        encoded = values if pa.types.is_dictionary(kind) else values.dictionary_encode()
        lookup = pd.Index(categories, dtype=object).get_indexer(encoded.dictionary.to_pylist())
        indices = pc.take(pa.array(lookup, pa.int32(), mask=lookup < 0), encoded.indices)
    else:
        codes = _category_codes(values.to_pandas(), categories)
        indices = pa.array(codes, pa.int32(), mask=codes < 0)
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def labels(frame: pd.DataFrame | pa.Table, target: str) -> pd.Series:
    """The 0/1 label column (ingest has already mapped the positive class to 1)."""
    values = frame[target]
    return (values.to_pandas() if isinstance(values, pa.ChunkedArray) else values).astype("int64")
