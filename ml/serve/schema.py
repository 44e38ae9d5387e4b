"""The request contract of ``POST /predict``, derived from the champion's own feature spec and vocabulary.

A body is one record (a JSON object) or a list of them. Every model feature is a required key; its value may
be ``null`` (a missing value, which XGBoost handles as in training). Numeric features take JSON numbers
(finite; booleans and strings are refused); categorical features take strings (integers are accepted and read
as their decimal text, as the lake does). A category never seen in training is not an error: it scores as
missing, exactly as in batch scoring, and the answer carries a warning. The dataset's id and time columns are
optional (the id is captured as the entity id, the time as the event time); other keys are ignored with a
warning. Problems are collected for every record and field, then reported together (a 422 body).

The records become the model's input matrix directly (numerics as float64, categoricals as their index in the
training vocabulary, missing as NaN): the same numbers ``ml.features.model_frame`` gives XGBoost, so scores
are identical to ``ml.train.predict`` (checked on every model at load time, and in tests).

Well-formed batches (every record has exactly the known keys with the right JSON types) take a fast path:
msgspec decodes them into typed structs in C and the matrix is built column by column; anything else (a bad
field, an extra key, a number out of range) goes through the general path, which reports every problem and
gives the same result for what the fast path accepts.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from ml.features import FeatureSpec

MAX_REPORTED_ERRORS = 50
_NAN = float("nan")
_ABSENT = object()


@dataclass(frozen=True)
class FieldError:
    """One bad field of one record (``record`` None: the body as a whole)."""

    field: str
    msg: str
    kind: str
    record: int | None = None

    def to_dict(self) -> dict[str, Any]:
        loc: list[Any] = ["body"]
        if self.record is not None:
            loc.append(self.record)
        if self.field != "body":
            loc.append(self.field)
        return {"loc": loc, "field": self.field, "record": self.record, "msg": self.msg, "type": self.kind}


class PayloadError(ValueError):
    """A request body that cannot be scored; ``errors`` names each bad field and why."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.msg}" for e in errors[:5]))

    def detail(self) -> dict[str, Any]:
        """The 422 body: the first errors and how many there were."""
        return {
            "detail": [e.to_dict() for e in self.errors[:MAX_REPORTED_ERRORS]],
            "error_count": len(self.errors),
        }


@dataclass
class ParsedBatch:
    """Validated records ready to score."""

    single: bool
    matrix: np.ndarray
    features: Sequence[Any]  # per record, the model's features: dicts, or msgspec structs of the fast path
    entity_ids: list[str | None]
    event_times: list[datetime | None]
    warnings: list[list[str]] = field(default_factory=list)
    unknown_categories: int = 0

    def __len__(self) -> int:
        return len(self.features)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


class RecordSchema:
    """Validation and encoding of records for one model (its spec and vocabulary)."""

    def __init__(
        self,
        spec: FeatureSpec,
        vocabulary: dict[str, list[str]],
        id_column: str | None,
        time_column: str | None,
        ignored: tuple[str, ...] = (),
    ) -> None:
        self.spec = spec
        self.vocabulary = {column: list(vocabulary.get(column, [])) for column in spec.categorical}
        self.codes = {
            column: {value: float(code) for code, value in enumerate(values)}
            for column, values in self.vocabulary.items()
        }
        self.id_column = id_column
        self.time_column = time_column
        self.known = {*spec.columns, *(c for c in (id_column, time_column, *ignored) if c)}
        self._fast = _FastPath(spec, id_column, time_column, ignored)

    @property
    def columns(self) -> list[str]:
        return self.spec.columns

    def parse(self, body: bytes, max_batch_size: int) -> ParsedBatch:
        """Decode and validate a request body; raises PayloadError naming every bad field."""
        if body[:1] == b"[":  # a batch: one record is faster on the general path (no numpy set-up)
            parsed = self._parse_fast(body, max_batch_size)
            if parsed is not None:
                return parsed
        if not body.strip():
            raise PayloadError(
                [
                    FieldError(
                        "body", "empty body: send one record (a JSON object) or a list of records", "empty"
                    )
                ]
            )
        try:
            document = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise PayloadError([FieldError("body", f"not valid JSON: {exc}", "json_invalid")]) from None
        single = isinstance(document, dict)
        if single:
            records = [document]
        elif isinstance(document, list):
            records = document
        else:
            raise PayloadError(
                [
                    FieldError(
                        "body",
                        f"expected a JSON object (one record) or a list of records, got {_type_name(document)}",
                        "type",
                    )
                ]
            )
        if not records:
            raise PayloadError([FieldError("body", "empty list: send at least one record", "empty")])
        if len(records) > max_batch_size:
            raise PayloadError(
                [
                    FieldError(
                        "body",
                        f"batch of {len(records)} records exceeds the maximum of {max_batch_size} "
                        "(serving.max_batch_size): split it",
                        "too_many_records",
                    )
                ]
            )
        return self.validate(records, single)

    def _parse_fast(self, body: bytes, max_batch_size: int) -> ParsedBatch | None:
        """The batch of a well-formed body, column-wise; None sends the body to the general path."""
        fast = self._fast
        if not fast.enabled:
            return None
        try:
            document = fast.decode_records(body)
        except msgspec.DecodeError:
            return None
        single = not isinstance(document, list)
        records = [document] if single else document
        count = len(records)
        if not count or count > max_batch_size:
            return None
        numeric = np.array(list(map(fast.numeric_values, records)), dtype="float64")
        if np.isinf(numeric).any():  # the decoder refuses non-finite numbers; kept as a guard
            return None
        matrix = np.empty((count, len(self.spec.columns)), dtype="float64")
        matrix[:, : len(self.spec.numeric)] = numeric.reshape(count, len(self.spec.numeric))
        warnings: list[list[str]] = [[] for _ in range(count)]
        unknown = 0
        for offset, (column, values) in enumerate(
            zip(self.spec.categorical, fast.categorical_columns(records), strict=True)
        ):
            codes = self.codes[column]
            found: list[float | None] = list(map(codes.get, values))
            if None in found:  # missing, unknown or an integer (read as its text)
                for index, value in enumerate(values):
                    if found[index] is None and value is not None:
                        text = value if type(value) is str else str(value)
                        code = codes.get(text)
                        if code is None:
                            unknown += 1
                            warnings[index].append(_unknown_category(column, text))
                        found[index] = code
            matrix[:, len(self.spec.numeric) + offset] = found  # None becomes NaN
        entity_ids = fast.entity_ids(records)
        event_times = fast.event_times(records)
        if entity_ids is None or event_times is None:
            return None
        return ParsedBatch(single, matrix, fast.features(records), entity_ids, event_times, warnings, unknown)

    def validate(self, records: list[Any], single: bool = False) -> ParsedBatch:
        """Validate decoded records and encode them as the model's input matrix."""
        errors: list[FieldError] = []
        rows: list[list[float]] = []
        features: list[dict[str, Any]] = []
        entity_ids: list[str | None] = []
        event_times: list[datetime | None] = []
        warnings: list[list[str]] = []
        unknown = 0
        numeric, categorical, codes = self.spec.numeric, self.spec.categorical, self.codes
        columns = self.spec.columns
        width = len(columns)
        for index, record in enumerate(records):
            position = None if single else index
            if type(record) is not dict:
                errors.append(
                    FieldError(
                        "body", f"a record must be a JSON object, got {_type_name(record)}", "type", position
                    )
                )
                continue
            get = record.get
            row: list[float] = []
            notes: list[str] = []
            for column in numeric:
                value = get(column, _ABSENT)
                kind = type(value)
                if kind is float:
                    if value - value != 0.0:  # inf (NaN cannot come out of the JSON decoder)
                        errors.append(
                            FieldError(column, f"number out of range: {value!r}", "number_range", position)
                        )
                    row.append(value)
                elif kind is int:
                    number = _finite(value)
                    if number is None:
                        errors.append(
                            FieldError(column, f"number out of range: {value!r}", "number_range", position)
                        )
                    row.append(_NAN if number is None else number)
                elif value is None:
                    row.append(_NAN)
                elif value is _ABSENT:
                    errors.append(_missing(column, position))
                else:
                    errors.append(
                        FieldError(
                            column,
                            f"expected a number or null, got {_type_name(value)}",
                            "number_type",
                            position,
                        )
                    )
            for column in categorical:
                value = get(column, _ABSENT)
                kind = type(value)
                if kind is int:
                    value, kind = str(value), str
                if kind is str:
                    code = codes[column].get(value)
                    if code is None:
                        unknown += 1
                        row.append(_NAN)
                        notes.append(_unknown_category(column, value))
                    else:
                        row.append(code)
                elif value is None:
                    row.append(_NAN)
                elif value is _ABSENT:
                    errors.append(_missing(column, position))
                else:
                    errors.append(
                        FieldError(
                            column,
                            f"expected a string or null, got {_type_name(value)}",
                            "string_type",
                            position,
                        )
                    )
            if len(record) == width:
                kept = record  # exactly the features: no copy
            else:
                kept = {column: get(column) for column in columns}
                extra = [str(key) for key in record if key not in self.known]
                if extra:
                    notes.append(
                        f"ignored field(s) that the model does not use: {', '.join(sorted(extra)[:10])}"
                    )
            entity_ids.append(self._entity_id(record, position, errors) if self.id_column in record else None)
            event_times.append(
                self._event_time(record, position, errors) if self.time_column in record else None
            )
            rows.append(row)
            features.append(kept)
            warnings.append(notes)
        if errors:
            raise PayloadError(errors)
        matrix = np.array(rows, dtype="float64").reshape(len(rows), width)
        return ParsedBatch(single, matrix, features, entity_ids, event_times, warnings, unknown)

    def _entity_id(
        self, record: dict[str, Any], position: int | None, errors: list[FieldError]
    ) -> str | None:
        if not self.id_column or record.get(self.id_column) is None:
            return None
        value = record[self.id_column]
        if type(value) is str and 0 < len(value) <= 256:
            return value
        if type(value) is int:
            return str(value)
        errors.append(
            FieldError(
                self.id_column,
                f"expected a string of 1-256 characters or an integer, got {_type_name(value)}",
                "id_type",
                position,
            )
        )
        return None

    def _event_time(
        self, record: dict[str, Any], position: int | None, errors: list[FieldError]
    ) -> datetime | None:
        if not self.time_column or record.get(self.time_column) is None:
            return None
        value = record[self.time_column]
        if type(value) is str:
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        errors.append(
            FieldError(
                self.time_column,
                f"expected an ISO 8601 date-time string, got {_type_name(value)} {str(value)[:40]!r}",
                "datetime_type",
                position,
            )
        )
        return None

    def json_schema(self, max_batch_size: int) -> dict[str, Any]:
        """The JSON Schema of a request body (for the OpenAPI document)."""
        properties: dict[str, Any] = {
            column: {"type": ["number", "null"], "description": "numeric feature (null: missing)"}
            for column in self.spec.numeric
        }
        for column in self.spec.categorical:
            properties[column] = {
                "type": ["string", "integer", "null"],
                "description": "categorical feature; unknown categories score as missing, with a warning",
                "examples": self.vocabulary[column][:20],
            }
        if self.id_column:
            properties[self.id_column] = {
                "type": ["string", "integer", "null"],
                "description": "entity id (captured)",
            }
        if self.time_column:
            properties[self.time_column] = {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "event time (captured; default: the time of the request)",
            }
        record = {
            "type": "object",
            "title": "Record",
            "required": list(self.spec.columns),
            "properties": properties,
            "additionalProperties": True,
        }
        return {
            "oneOf": [
                record,
                {"type": "array", "items": record, "minItems": 1, "maxItems": max_batch_size},
            ]
        }

    def example(self) -> dict[str, Any]:
        """A valid record (numerics 0, first known category), for the docs."""
        out: dict[str, Any] = {}
        if self.id_column:
            out[self.id_column] = "example-1"
        out |= {column: 0 for column in self.spec.numeric}
        out |= {column: (self.vocabulary[column] or [None])[0] for column in self.spec.categorical}
        return out


def _getter(names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving the named attributes of an object as a tuple (of any length)."""
    if len(names) == 1:
        name = names[0]
        return lambda item: (getattr(item, name),)
    if not names:
        return lambda item: ()
    return operator.attrgetter(*names)


class _FastPath:
    """msgspec decoders of well-formed bodies for one feature spec, and the column-wise reads of them.

    Struct fields are named ``f0``, ``f1`` ... and renamed to the JSON keys (any column name works). The
    record type takes exactly the known keys (others are refused, so the general path can warn about them);
    the features type takes the model's features only: its structs are what the capture stores.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        id_column: str | None,
        time_column: str | None,
        ignored: tuple[str, ...],
    ) -> None:
        # An id or time column that is also a feature is read by the general path only.
        self.enabled = not {id_column, time_column} & set(spec.columns)
        features: list[tuple[str, Any]] = [(column, float | None) for column in spec.numeric]
        features += [(column, str | int | None) for column in spec.categorical]
        extras: list[tuple[str, Any, Any]] = []
        if id_column and self.enabled:
            extras.append((id_column, str | int | None, None))
        if time_column and time_column != id_column and self.enabled:
            extras.append((time_column, str | None, None))
        known = {*spec.columns, id_column, time_column}
        extras += [(column, Any, None) for column in dict.fromkeys(ignored) if column not in known]
        names = [column for column, _ in features] + [column for column, _, _ in extras]
        attribute = {column: f"f{index}" for index, column in enumerate(names)}
        rename = {f"f{index}": column for index, column in enumerate(names)}
        typed = [(attribute[column], kind) for column, kind in features]
        record = msgspec.defstruct(
            "Record",
            typed + [(attribute[column], kind, default) for column, kind, default in extras],
            rename=rename,
            forbid_unknown_fields=True,
            gc=False,
        )
        kept = msgspec.defstruct("Features", typed, rename=rename, gc=False)
        self.decode_records = msgspec.json.Decoder(list[record] | record).decode  # type: ignore[valid-type]
        self._kept = list[kept]  # type: ignore[valid-type]
        self.numeric_values = _getter([attribute[column] for column in spec.numeric])
        self._categorical = [operator.attrgetter(attribute[column]) for column in spec.categorical]
        self._id = operator.attrgetter(attribute[id_column]) if id_column in attribute else None
        self._time = operator.attrgetter(attribute[time_column]) if time_column in attribute else None

    def features(self, records: list[Any]) -> list[Any]:
        """The model's features of each record (structs that encode to exactly those keys)."""
        return msgspec.convert(records, self._kept, from_attributes=True)

    def categorical_columns(self, records: list[Any]) -> list[list[Any]]:
        return [list(map(get, records)) for get in self._categorical]

    def entity_ids(self, records: list[Any]) -> list[str | None] | None:
        """The id column as text (None: absent or null); None when one is not a valid id."""
        if self._id is None:
            return [None] * len(records)
        ids = list(map(self._id, records))
        for index, value in enumerate(ids):
            if type(value) is str:
                if not 0 < len(value) <= 256:
                    return None
            elif type(value) is int:
                ids[index] = str(value)
        return ids

    def event_times(self, records: list[Any]) -> list[datetime | None] | None:
        """The time column as aware UTC datetimes (naive: UTC); None when one is not ISO 8601."""
        if self._time is None:
            return [None] * len(records)
        moments: list[datetime | None] = []
        parse = datetime.fromisoformat
        for value in map(self._time, records):
            if value is None:
                moments.append(None)
                continue
            try:
                moment = parse(value)
            except ValueError:
                return None
            zone = moment.tzinfo
            moments.append(
                moment
                if zone is UTC
                else moment.replace(tzinfo=UTC)
                if zone is None
                else moment.astimezone(UTC)
            )
        return moments


def _unknown_category(column: str, value: str) -> str:
    return f"{column}: unknown category {value[:80]!r} (scored as missing)"


def _missing(column: str, position: int | None) -> FieldError:
    return FieldError(column, "field required (send null for a missing value)", "missing", position)


def _finite(value: float) -> float | None:
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")
