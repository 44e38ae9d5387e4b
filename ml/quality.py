"""The data-quality gate: Great Expectations suites, their verdict, and the quarantine.

This is the only module that imports Great Expectations (inside functions: the import costs ~4 s). A suite is
a GE JSON file in ``expectations/``; each expectation is ``critical`` (fails the gate) or ``warning`` (logged),
from GE's native ``severity`` or ``meta.severity``. A failed batch goes to
``$LOOPLINE_HOME/quarantine/<dataset>/<batch>/`` with its validation result, never into the lake.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml.lake import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkFrame

log = logging.getLogger(__name__)
DATA_DOCS_SITE = "loopline"
GATE_FORMAT = {"result_format": "BOOLEAN_ONLY"}
"""How GE decides each expectation: the verdict alone."""
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
"""The details of each failed expectation: its unexpected share and examples."""


class SuiteError(ValueError):
    """A suite file that cannot be used as it is."""


class QualityGateFailed(RuntimeError):
    """Critical expectations failed; the message names each one, its column and example values."""

    def __init__(self, what: str, result: GateResult) -> None:
        self.result = result
        lines = [f"{what}: data-quality gate failed ({len(result.critical)} critical expectation(s)):"]
        lines += [f"  - {failure.describe()}" for failure in result.critical]
        if result.quarantined_to:
            lines.append(f"  batch quarantined to {result.quarantined_to} (see `loopline quarantine list`)")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that did not hold."""

    expectation: str
    column: str | None
    severity: str
    unexpected_percent: float | None
    examples: list[Any]

    def describe(self) -> str:
        where = f" on column {self.column}" if self.column else ""
        share = f", {self.unexpected_percent:.1f}% of rows" if self.unexpected_percent is not None else ""
        examples = f", e.g. {self.examples}" if self.examples else ""
        return f"{self.expectation}{where} [{self.severity}]{share}{examples}"


@dataclass
class GateResult:
    """The verdict of one validation: passed unless a critical expectation failed."""

    suite: str
    evaluated: int
    critical: list[FailedExpectation] = field(default_factory=list)
    warnings: list[FailedExpectation] = field(default_factory=list)
    validated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    quarantined_to: str | None = None
    data_docs: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return not self.critical

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready summary (no raw GE result)."""
        document = asdict(self)
        document.pop("raw")
        document["passed"] = self.passed
        return document


def load_suite(path: Path) -> dict[str, Any]:
    """Read a suite file and check every expectation has a type GE knows (GE drops unknown ones silently)."""
    if not path.is_file():
        raise SuiteError(
            f"{path}: expectation suite not found (write one, or set dataset.expectation_suite in the config)"
        )
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}") from exc
    expectations = document.get("expectations")
    if not isinstance(expectations, list) or not expectations:
        raise SuiteError(f"{path}: the suite has no 'expectations' list")
    for position, item in enumerate(expectations):
        severity = _severity_of(item)
        if severity not in {"critical", "warning", "info"}:
            raise SuiteError(
                f"{path}: expectation #{position + 1} has severity {severity!r}; use critical or warning"
            )
    return document


def _severity_of(item: dict[str, Any]) -> str:
    return str(item.get("severity") or (item.get("meta") or {}).get("severity") or "critical")


def validate(
    frame: pd.DataFrame | SparkFrame,
    suite_path: Path,
    docs_dir: Path | None = None,
    run_name: str | None = None,
) -> GateResult:
    """Validate ``frame`` against the suite with Great Expectations.

    A pandas frame runs on GE's pandas engine; any other frame (a Spark DataFrame, classic or Connect) on GE's
    Spark execution engine, with the same suite, severities and ``GateResult``. With ``docs_dir``, GE renders the
    result into the Data Docs site in that folder (``index.html``), named by ``run_name``.
    """
    return _validate_document(frame, load_suite(suite_path), suite_path, docs_dir, run_name)


def _validate_document(
    frame: pd.DataFrame | SparkFrame,
    document: dict[str, Any],
    suite_path: Path,
    docs_dir: Path | None = None,
    run_name: str | None = None,
) -> GateResult:
    """``validate`` with the suite already loaded (``suite_path`` names it in errors)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    suite = _ge_suite(gx, document, suite_path)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    result = _run(context, suite, frame)
    gate = GateResult(suite=suite.name, evaluated=len(result.results))
    if docs_dir is not None:
        gate.data_docs = _render_data_docs(context, suite, result, docs_dir, run_name)
    gate.raw = result.to_json_dict()
    for failure in (_failure(outcome) for outcome in result.results if not outcome.success):
        (gate.critical if failure.severity == "critical" else gate.warnings).append(failure)
    for warning in gate.warnings:
        log.warning("data-quality warning: %s", warning.describe())
    return gate


def _ge_suite(gx: Any, document: dict[str, Any], suite_path: Path) -> Any:
    """The suite document as a GE ExpectationSuite, each expectation with its severity (unknown types refused).

    Every expectation gets an id (a fresh one where the file has none): ``_run`` puts GE's results back in the
    suite's order by it.
    """
    items = [{**item, "severity": _severity_of(item)} for item in document["expectations"]]
    suite = gx.ExpectationSuite(
        **{k: v for k, v in document.items() if k in {"name", "meta"}}, expectations=items
    )
    if len(suite.expectations) != len(items):
        kept = {e.expectation_type for e in suite.expectations}
        lost = [e.get("type") for e in items if e.get("type") not in kept]
        raise SuiteError(f"{suite_path}: Great Expectations does not know expectation type(s) {lost}")
    for expectation in suite.expectations:
        expectation.id = expectation.id or str(uuid.uuid4())
    return suite


def _run(context: Any, suite: Any, frame: pd.DataFrame | SparkFrame) -> Any:
    """GE's validation result of ``frame``: one ``ExpectationSuiteValidationResult`` in the suite's order.

    GE decides every expectation with ``BOOLEAN_ONLY`` results; only the expectations that failed are validated
    again with ``RESULT_FORMAT`` (SUMMARY: unexpected share and examples). Formatting SUMMARY results costs GE
    several full-frame filters per column-map expectation even when it holds, and a gate mostly sees batches
    that pass. Each domain of ``_domains`` is one batch of the same batch definition.
    """
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.validator.v1_validator import Validator
    from great_expectations.validator.validation_statistics import calc_validation_statistics

    sources = context.data_sources
    source = (
        sources.add_pandas("loopline") if isinstance(frame, pd.DataFrame) else sources.add_spark("loopline")
    )
    definition = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole")
    by_id = {expectation.id: expectation for expectation in suite.expectations}
    outcomes: dict[str, Any] = {}
    first = None
    _skip_fingerprints()
    for data, expectations in _domains(frame, suite.expectations):
        validator = Validator(
            batch_definition=definition, batch_parameters={"dataframe": data}, result_format=GATE_FORMAT
        )
        part = validator.validate_expectation_suite(_subsuite(suite, expectations))
        first = part if first is None else first
        failed = [by_id[r.expectation_config.id] for r in part.results if not r.success]
        outcomes.update((r.expectation_config.id, r) for r in part.results)
        if failed:
            validator.result_format = RESULT_FORMAT  # the same batch: the validator keeps it
            details = validator.validate_expectation_suite(_subsuite(suite, failed))
            outcomes.update((r.expectation_config.id, r) for r in details.results)
    results = [outcomes[expectation.id] for expectation in suite.expectations]
    statistics = calc_validation_statistics(results)
    return ExpectationSuiteValidationResult(
        success=statistics.success,
        results=results,
        suite_name=suite.name,
        statistics={
            "evaluated_expectations": statistics.evaluated_expectations,
            "successful_expectations": statistics.successful_expectations,
            "unsuccessful_expectations": statistics.unsuccessful_expectations,
            "success_percent": statistics.success_percent,
        },
        meta=first.meta if first is not None else {},
        batch_id=first.batch_id if first is not None else None,
    )


def _subsuite(suite: Any, expectations: list[Any]) -> Any:
    """An ExpectationSuite of ``suite``'s name holding copies of only ``expectations`` (ids kept)."""
    import great_expectations as gx

    configurations = [expectation.configuration for expectation in expectations]
    return gx.ExpectationSuite(name=suite.name, meta=suite.meta, expectations=configurations)


def _domains(frame: pd.DataFrame | SparkFrame, expectations: list[Any]) -> list[tuple[Any, list[Any]]]:
    """The frames GE validates, each with its expectations: the whole frame, and single columns with gaps.

    For every column-map expectation GE's pandas engine drops the column's missing values by filtering the
    WHOLE frame (a copy of all its columns; a cheap view when nothing is missing). An expectation on one column
    that has missing values therefore runs on a frame of that column alone: the same rows, values and index,
    so the same GE verdict and result, at 1/width of the copy. ``expect_column_to_exist`` (which may check the
    column's position) and any expectation with a ``row_condition`` (which may read other columns) stay on the
    whole frame, as does everything on a Spark frame.
    """
    if not isinstance(frame, pd.DataFrame):
        return [(frame, list(expectations))]
    whole: list[Any] = []
    alone: dict[str, list[Any]] = {}
    gaps: dict[str, bool] = {}
    for expectation in expectations:
        kwargs = expectation.configuration.kwargs
        column = kwargs.get("column")
        movable = (
            isinstance(column, str)
            and column in frame.columns
            and expectation.expectation_type != "expect_column_to_exist"
            and not kwargs.get("row_condition")
        )
        if movable and column not in gaps:
            gaps[column] = bool(frame[column].isna().any())
        if movable and gaps[column]:
            alone.setdefault(column, []).append(expectation)
        else:
            whole.append(expectation)
    domains = [(frame, whole)] if whole else []
    return domains + [(frame[[column]], items) for column, items in alone.items()]


def _skip_fingerprints() -> None:
    """Stop GE's pandas engine computing its batch fingerprint (an MD5 over every cell, kept in result meta).

    The fingerprint costs as much as the checks themselves and nothing in Loopline reads it (a lake partition
    has its own content hash). GE itself skips it for frames over ``HASH_THRESHOLD`` bytes; this module is the
    only user of GE in the process, so the threshold goes to 0 for good. Verdicts and results are unchanged.
    """
    from great_expectations.execution_engine import pandas_execution_engine

    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0


def _render_data_docs(context: Any, suite: Any, result: Any, docs_dir: Path, run_name: str | None) -> str:
    """Render ``result`` and its suite into the Data Docs site in ``docs_dir``; the path of its index.html.

    This is what GE's ``UpdateDataDocsAction`` does after a Checkpoint run: store the result, then rebuild the
    site's pages for that result and suite.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context.add_data_docs_site(
        DATA_DOCS_SITE,
        {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    context.suites.add(suite)
    run_id = RunIdentifier(run_name=run_name)
    result.meta["run_id"] = run_id
    result.meta["validation_time"] = run_id.run_time
    suite_id = ExpectationSuiteIdentifier(name=suite.name)
    result_id = ValidationResultIdentifier(
        expectation_suite_identifier=suite_id, run_id=run_id, batch_identifier=result.batch_id
    )
    context.validation_results_store.set(result_id, result)
    context.build_data_docs(site_names=[DATA_DOCS_SITE], resource_identifiers=[result_id, suite_id])
    return str(docs_dir / "index.html")


def _failure(outcome: Any) -> FailedExpectation:
    """One failed GE expectation result as a ``FailedExpectation`` (its error message when it raised)."""
    config = outcome.expectation_config
    details = outcome.result or {}
    message = _exception_message(outcome.exception_info)
    if message is not None:
        examples: list[Any] = [message]
    else:
        examples = [_plain(v) for v in details.get("partial_unexpected_list") or []][:5]
        if not examples and "observed_value" in details:
            examples = [f"observed {_plain(details['observed_value'])}"]
    return FailedExpectation(
        expectation=config.type,
        column=config.kwargs.get("column"),
        severity=str(getattr(config.severity, "value", config.severity)),
        unexpected_percent=details.get("unexpected_percent"),
        examples=examples,
    )


def _exception_message(info: Any) -> str | None:
    """The first line of the error a GE expectation raised, None when it raised none.

    GE reports an error of the expectation itself as ``{"raised_exception": True, "exception_message": ...}``
    and errors of the metrics it needed (a missing column, say) nested, keyed by each metric's id.
    """
    if not isinstance(info, dict):
        return None
    reports = [info, *(value for value in info.values() if isinstance(value, dict))]
    for report in reports:
        if report.get("raised_exception"):
            lines = str(report.get("exception_message") or "").splitlines()
            return (lines[0] if lines else "error without a message")[:200]
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def quarantine(
    folder: Path,
    source: Path,
    reason: str,
    result: GateResult | None,
    frame: pd.DataFrame | None,
    move_source: bool,
) -> Path:
    """Put a rejected batch aside with why: the landed file (moved or copied) and the validation result."""
    folder.mkdir(parents=True, exist_ok=True)
    if move_source and source.is_file():
        shutil.move(str(source), folder / source.name)
    elif frame is not None:
        atomic_write_bytes(folder / "rows.csv", frame.to_csv(index=False).encode())
    elif source.is_file():
        shutil.copy2(source, folder / source.name)
    atomic_write_json(
        folder / "reason.json",
        {
            "source": str(source),
            "reason": reason,
            "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "gate": result.summary() if result else None,
        },
    )
    if result is not None:
        atomic_write_json(folder / "validation_result.json", result.raw)
    return folder


def quarantined(folder: Path) -> list[dict[str, Any]]:
    """The batches in a dataset's quarantine folder, oldest first, each with its reason."""
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
        reason_file = entry / "reason.json"
        reason = json.loads(reason_file.read_text()) if reason_file.is_file() else {}
        found.append(
            {
                "batch": entry.name,
                "quarantined_at": reason.get("quarantined_at"),
                "reason": reason.get("reason", "unknown"),
                "files": sorted(p.name for p in entry.iterdir()),
                "path": str(entry),
            }
        )
    return found


def release(folder: Path, landing_file: Path) -> Path:
    """Put a quarantined batch back into the landing zone (as ``landing_file``) so it can be ingested again."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such quarantined batch (see `loopline quarantine list`)")
    candidates = [p for p in folder.iterdir() if p.name not in {"reason.json", "validation_result.json"}]
    if not candidates:
        raise FileNotFoundError(f"{folder}: holds no data file to release")
    if landing_file.exists():
        raise FileExistsError(f"{landing_file} already exists: move it away before releasing {folder.name}")
    landing_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(candidates[0]), landing_file)
    shutil.rmtree(folder)
    return landing_file


def drop(folder: Path, log_file: Path) -> None:
    """Delete a quarantined batch for good, keeping a line about it in ``log_file``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such quarantined batch (see `loopline quarantine list`)")
    reason_file = folder / "reason.json"
    record = {
        "batch": folder.name,
        "dropped_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": json.loads(reason_file.read_text()).get("reason") if reason_file.is_file() else None,
    }
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    shutil.rmtree(folder)


_SUGGESTED_TYPES = {
    "numeric": [
        *("int", "int8", "int16", "int32", "int64", "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype"),
        *("float", "float32", "float64", "Float32Dtype", "Float64Dtype"),
        *("ByteType", "ShortType", "IntegerType", "LongType", "FloatType", "DoubleType"),
    ],
    "datetime": [
        *("datetime64[s]", "datetime64[ms]", "datetime64[us]", "datetime64[ns]"),
        *("TimestampType", "TimestampNTZType"),
    ],
    "bool": ["bool", "BooleanDtype", "BooleanType"],
}
"""Type names ``expect_column_values_to_be_in_type_list`` accepts per kind of column: pandas/numpy dtypes (and
Python types, for object columns) and the Spark types of the same data, so one suite serves both engines."""


def _suggested_types(values: pd.Series) -> list[str] | None:
    """The type list a column of ``values``' kind must keep; None for text columns.

    Great Expectations 1.24 matches no type name against pandas 3's ``str`` dtype (it compares the dtype with
    ``StringDtype()``, whose missing value differs), so a type expectation on a text column always fails.
    """
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return _SUGGESTED_TYPES["bool"]
    if pd.api.types.is_numeric_dtype(dtype):
        return _SUGGESTED_TYPES["numeric"]
    if pd.api.types.is_datetime64_dtype(dtype):
        return _SUGGESTED_TYPES["datetime"]
    return None


def suggest_suite(
    frame: pd.DataFrame,
    *,
    name: str,
    id_column: str,
    target: str,
    time_column: str | None,
    numeric: list[str],
    categorical: list[str],
    batch_rows: list[int],
    margin: float = 0.1,
    window_batches: int | None = None,
) -> dict[str, Any]:
    """A Great Expectations suite profiled from a reference window (in the spirit of TFX SchemaGen).

    Structure (columns, their kind of type (number, time, boolean), id uniqueness, target classes, nulls where
    none were seen) and ranges widened by ``margin`` are critical; categories and null-rate drift are warnings.
    A human reviews it afterwards. The same suite gates one batch at ingest and a whole training window of
    ``window_batches`` batches (default: as many as ``batch_rows``), so the row count may range from half the
    smallest batch to twice the largest batch times ``window_batches``.
    """
    expectations: list[dict[str, Any]] = []

    def add(kind: str, severity: str, **kwargs: Any) -> None:
        expectations.append(
            {"type": kind, "kwargs": kwargs, "severity": severity, "meta": {"severity": severity}}
        )

    low, high = min(batch_rows), max(batch_rows)
    largest_window = high * max(window_batches or len(batch_rows), 1)
    add(
        "expect_table_row_count_to_be_between",
        "critical",
        min_value=int(low * 0.5),
        max_value=int(largest_window * 2),
    )
    for column in [id_column, *([time_column] if time_column else []), *numeric, *categorical, target]:
        add("expect_column_to_exist", "critical", column=column)
        type_list = _suggested_types(frame[column])
        if type_list is not None:
            add(
                "expect_column_values_to_be_in_type_list",
                "critical",
                column=column,
                type_list=list(type_list),
            )
    add("expect_column_values_to_be_unique", "critical", column=id_column)
    add("expect_column_values_to_not_be_null", "critical", column=id_column)
    if time_column:
        add("expect_column_values_to_not_be_null", "critical", column=time_column)
    classes = sorted(int(v) for v in frame[target].dropna().unique())
    add("expect_column_values_to_be_in_set", "critical", column=target, value_set=classes)
    for column in [*numeric, *categorical]:
        present = float(frame[column].notna().mean())
        if present == 1.0:
            add("expect_column_values_to_not_be_null", "critical", column=column, mostly=0.99)
        else:
            add(
                "expect_column_values_to_not_be_null",
                "warning",
                column=column,
                mostly=round(max(present - margin, 0), 3),
            )
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce").dropna()
        if values.empty:
            continue
        lo, hi = float(values.min()), float(values.max())
        pad = (hi - lo) * margin
        minimum = lo - pad if lo < 0 or lo - pad >= 0 else 0.0
        add(
            "expect_column_values_to_be_between",
            "critical",
            column=column,
            min_value=minimum,
            max_value=hi + pad,
            mostly=0.999,
        )
    for column in categorical:
        seen = sorted(str(v) for v in frame[column].dropna().unique())
        add("expect_column_values_to_be_in_set", "warning", column=column, value_set=seen, mostly=0.99)
    rate = float(frame[target].mean())
    add(
        "expect_column_mean_to_be_between",
        "warning",
        column=target,
        min_value=round(max(rate * 0.5, 0), 4),
        max_value=round(min(rate * 1.5 + 0.01, 1), 4),
    )
    return {
        "name": name,
        "expectations": expectations,
        "meta": {
            "suggested_by": "loopline expectations suggest",
            "suggested_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reference_rows": len(frame),
            "notes": "Review before use: severity critical fails the gate, warning is logged.",
        },
    }


TYPE_LIST = "expect_column_values_to_be_in_type_list"
STREAMABLE = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_column_to_exist",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_unique",
        "expect_column_mean_to_be_between",
        TYPE_LIST,
    }
)
"""Expectation types the streaming gate evaluates itself, with Great Expectations' semantics."""

ChunkReader = Callable[[Sequence[str] | None], Iterable[pd.DataFrame]]
"""Reads a window afresh on every call: its rows in the same order each time, as pandas record batches of only
the named columns (``None``: all of them; a named column a part of the window lacks comes as missing values)."""

EXAMPLES = 5
"""Unexpected values a failed expectation lists (``RESULT_FORMAT``'s ``partial_unexpected_count``)."""
_BUCKET_BITS = 6
_ENTRY = np.dtype([("hash", "<u8"), ("count", "<i8")])
_SUSPECT_BYTES = 512
"""Memory one suspect hash costs while its values are compared: its count and its first values' positions."""


def _hash64(values: pd.Series) -> np.ndarray:
    """64-bit hashes of ``values``: equal values get equal hashes (numbers as float64, so 3 and 3.0 match, and
    -0.0 as 0.0), whatever the dtype of the record batch they came in."""
    if values.dtype.kind in "iufb":
        values = values.astype("float64") + 0.0
    return pd.util.hash_pandas_object(values, index=False).to_numpy()


def _spread(entries: np.ndarray, folder: Path, level: int) -> None:
    """Append ``(hash, count)`` entries to ``folder``'s bucket files, the bucket picked by the hash's bits of
    ``level`` (the lowest bits at level 0, the next ones at level 1, ...)."""
    shift, mask = np.uint64(_BUCKET_BITS * level), np.uint64((1 << _BUCKET_BITS) - 1)
    buckets = ((entries["hash"] >> shift) & mask).astype(np.intp)
    order = np.argsort(buckets, kind="stable")
    edges = np.searchsorted(buckets[order], np.arange((1 << _BUCKET_BITS) + 1))
    for bucket in np.flatnonzero(np.diff(edges)):
        with (folder / f"{bucket:02d}.bin").open("ab") as handle:
            entries[order[edges[bucket] : edges[bucket + 1]]].tofile(handle)


class _RepeatFinder:
    """The repeated values of one column over record batches, exactly, in memory bounded by ``limit`` bytes.

    ``add`` hashes each record batch's values to 64 bits, counts them per hash and appends the ``(hash, count)``
    pairs to one of 64 bucket files on disk by the hash's lowest bits: memory holds one record batch. ``result``
    sums each bucket's counts (a bucket file larger than the limit is first split by the next bits of the hash):
    a hash counted twice is a suspect. Without suspects every value is unique (equal values hash alike).
    Otherwise the column is read again, as many suspects per pass as the limit holds, and the values whose hash
    is a suspect are counted by value: a repeat is always two equal values, never a hash collision.
    """

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        folder.mkdir(parents=True)

    def add(self, values: pd.Series) -> None:
        """Count one record batch's present values."""
        hashes, counts = np.unique(_hash64(values), return_counts=True)
        entries = np.empty(hashes.size, dtype=_ENTRY)
        entries["hash"], entries["count"] = hashes, counts
        _spread(entries, self.folder, 0)

    def result(self, reread: Callable[[], Iterable[pd.Series]]) -> tuple[int, list[Any]]:
        """How many values belong to a repeated value, and the first ``EXAMPLES`` of them in row order.

        ``reread`` gives the present values of the column again, in the order ``add`` saw them.
        """
        suspects = self.folder / "suspects.bin"
        with suspects.open("wb") as handle:
            for bucket in sorted(self.folder.glob("*.bin")):
                if bucket != suspects:
                    for found in self._suspects(bucket, 0):
                        found.tofile(handle)
        per_pass = max(1024, self.limit // _SUSPECT_BYTES)
        unexpected, examples = 0, []
        for start in range(0, suspects.stat().st_size // 8, per_pass):
            chosen = np.fromfile(suspects, dtype="<u8", count=per_pass, offset=8 * start)
            repeated, earliest = _repeats(reread(), np.sort(chosen))
            unexpected += repeated
            examples = sorted([*examples, *earliest])[:EXAMPLES]
        return unexpected, [_plain(value) for _, value in examples]

    def _suspects(self, bucket: Path, level: int) -> Iterator[np.ndarray]:
        """The hashes counted more than once in a bucket file, split by the next hash bits while too large."""
        if bucket.stat().st_size > self.limit and _BUCKET_BITS * (level + 1) < 64:
            folder = bucket.with_suffix("")
            folder.mkdir()
            piece = max(1, self.limit // _ENTRY.itemsize)
            for start in range(0, bucket.stat().st_size // _ENTRY.itemsize, piece):
                part = np.fromfile(bucket, dtype=_ENTRY, count=piece, offset=start * _ENTRY.itemsize)
                _spread(part, folder, level + 1)
            bucket.unlink()
            for child in sorted(folder.iterdir()):
                yield from self._suspects(child, level + 1)
            return
        entries = np.fromfile(bucket, dtype=_ENTRY)
        order = np.argsort(entries["hash"])
        hashes, counts = entries["hash"][order], entries["count"][order]
        starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
        yield hashes[starts[np.add.reduceat(counts, starts) > 1]]


def _repeats(batches: Iterable[pd.Series], suspects: np.ndarray) -> tuple[int, list[tuple[int, Any]]]:
    """Among the values whose hash is in the sorted, non-empty ``suspects``: how many belong to a value seen more
    than once, and the first ``EXAMPLES`` of those as (position in the stream of values, value).

    Counts go by value, so different values that share a hash stay apart. Each value keeps the positions of
    its first ``EXAMPLES`` occurrences only: memory follows the number of suspects, not of rows.
    """
    counts = pd.Series(dtype="int64")
    earliest: pd.DataFrame | None = None
    position = 0
    for values in batches:
        hashes = _hash64(values)
        picked = np.flatnonzero(
            suspects[np.searchsorted(suspects, hashes).clip(max=suspects.size - 1)] == hashes
        )
        if picked.size:
            chosen = values.iloc[picked]
            counts = counts.add(chosen.value_counts(), fill_value=0)
            found = pd.DataFrame({"position": position + picked, "value": chosen.to_numpy()})
            both = found if earliest is None else pd.concat([earliest, found], ignore_index=True)
            earliest = both.groupby("value", sort=False).head(EXAMPLES)
        position += len(values)
    repeated = counts[counts > 1]
    if earliest is None or repeated.empty:
        return 0, []
    first = earliest[earliest["value"].isin(repeated.index)].nsmallest(EXAMPLES, "position")
    return int(repeated.sum()), list(zip(first["position"].tolist(), first["value"], strict=True))


@dataclass
class _Check:
    """One expectation evaluated over record batches: counts that add up across batches."""

    kind: str
    kwargs: dict[str, Any]
    severity: str
    elements: int = 0
    unexpected: int = 0
    examples: list[Any] = field(default_factory=list)
    total: float = 0.0
    repeats: _RepeatFinder | None = None
    dtypes: dict[Any, int] = field(default_factory=dict)
    """Type list: the dtypes of the record batches with present values, each with how many it had."""
    value_checked: bool = False
    """Type list: a record batch held Python objects, so its values were checked one by one."""

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")

    def add(self, chunk: pd.DataFrame) -> None:
        """Count one record batch (a column the batch lacks is judged at the end, from the schema)."""
        kind, column = self.kind, self.column
        if column is None or column not in chunk.columns or kind == "expect_column_to_exist":
            return
        series = chunk[column]
        present = series.notna().to_numpy()
        if kind == "expect_column_values_to_not_be_null":
            self.elements += len(series)
            self._unexpected(series, ~present, keep_missing=True)
            return
        values = series[present]
        self.elements += len(values)
        if kind == "expect_column_values_to_be_between":
            self._unexpected(values, ~self._within(values.to_numpy(dtype="float64")))
        elif kind == "expect_column_values_to_be_in_set":
            self._unexpected(values, ~values.isin(self.kwargs["value_set"]).to_numpy())
        elif kind == "expect_column_values_to_be_unique" and self.repeats is not None:
            self.repeats.add(values)
        elif kind == "expect_column_mean_to_be_between":
            self.total += float(values.to_numpy(dtype="float64").sum())
        elif kind == TYPE_LIST and self.kwargs.get("type_list") is not None:
            self._types(series, values)

    def _types(self, series: pd.Series, values: pd.Series) -> None:
        """Note one record batch's dtype; on an object column check each present value, as GE's map check does
        (a batch of missing values only, such as a column a partition lacks, has no type of its own)."""
        if _holds_objects(series.dtype):
            self.value_checked = True
            accepted = _value_types(tuple(self.kwargs["type_list"]))
            self._unexpected(
                values, ~np.fromiter((isinstance(v, accepted) for v in values), bool, len(values))
            )
        elif len(values) or not self.dtypes:
            self.dtypes[series.dtype] = self.dtypes.get(series.dtype, 0) + len(values)

    def _within(self, numbers: np.ndarray) -> np.ndarray:
        kw = self.kwargs
        good = np.ones(numbers.size, dtype=bool)
        if kw.get("min_value") is not None:
            good &= numbers > kw["min_value"] if kw.get("strict_min") else numbers >= kw["min_value"]
        if kw.get("max_value") is not None:
            good &= numbers < kw["max_value"] if kw.get("strict_max") else numbers <= kw["max_value"]
        return good

    def _unexpected(self, values: pd.Series, bad: np.ndarray, keep_missing: bool = False) -> None:
        count = int(np.count_nonzero(bad))
        if count and len(self.examples) < EXAMPLES:
            picked = values[bad].head(EXAMPLES - len(self.examples))
            self.examples += [None] * len(picked) if keep_missing else [_plain(v) for v in picked]
        self.unexpected += count

    def settle(self, read: ChunkReader) -> None:
        """Finish what needs the column read again after every batch was counted: the repeated values."""
        if self.repeats is None or self.column is None:
            return
        column = self.column

        def present_values() -> Iterator[pd.Series]:
            for chunk in read([column]):
                series = chunk[column]
                yield series[series.notna().to_numpy()]

        self.unexpected, self.examples = self.repeats.result(present_values)

    def outcome(self, columns: set[str], rows: int) -> FailedExpectation | None:
        """The failure this expectation reports over all the batches counted, or None when it held."""
        kind, kw, column = self.kind, self.kwargs, self.column
        if kind == "expect_column_to_exist":
            return None if column in columns else self._failure(None, [])
        if column is not None and column not in columns:
            return self._failure(None, [f'Error: The column "{column}" in BatchData does not exist.'])
        if kind == "expect_table_row_count_to_be_between":
            return None if self._in_range(rows) else self._failure(None, [f"observed {rows}"])
        if kind == "expect_column_mean_to_be_between":
            mean = self.total / self.elements if self.elements else None
            held = mean is not None and self._in_range(mean)
            return None if held else self._failure(None, [f"observed {mean}"])
        unexpected = self.unexpected
        if kind == TYPE_LIST and kw.get("type_list") is not None:
            window = _common_dtype(list(self.dtypes))
            if not self.value_checked and window is not None and not _holds_objects(window):
                held, observed = _dtype_verdict(window, tuple(kw["type_list"]))
                return None if held else self._failure(None, [f"observed {observed}"])
            # The window's column holds Python objects: the values of typed record batches count as their dtype.
            refused = (d for d in self.dtypes if not _dtype_verdict(d, tuple(kw["type_list"]))[0])
            unexpected += sum(self.dtypes[d] for d in refused)
        share = (self.elements - unexpected) / self.elements if self.elements else 1.0
        if share >= (1.0 if kw.get("mostly") is None else kw["mostly"]):
            return None
        return self._failure(unexpected / self.elements * 100, self.examples)  # GE computes it so

    def _in_range(self, value: float) -> bool:
        return bool(self._within(np.array([value], dtype="float64"))[0])

    def _failure(self, percent: float | None, examples: list[Any]) -> FailedExpectation:
        return FailedExpectation(self.kind, self.column, self.severity, percent, examples)


def _common_dtype(dtypes: list[Any]) -> Any:
    """The dtype pandas gives a column joined from record batches of these dtypes (None for none)."""
    if len(dtypes) <= 1:
        return dtypes[0] if dtypes else None
    return pd.concat([pd.Series([], dtype=dtype) for dtype in dtypes]).dtype


def _holds_objects(dtype: Any) -> bool:
    """Whether GE checks a column of ``dtype`` value by value for a type list (numpy ``object`` columns)."""
    return getattr(dtype, "type", None) is np.object_


@functools.cache
def _dtype_verdict(dtype: Any, type_list: tuple[str, ...]) -> tuple[bool, str]:
    """Whether GE's pandas engine accepts a column of ``dtype`` for ``type_list``, and the type it observes.

    This is GE's own comparison for a column whose dtype is not ``object`` (it checks the dtype, not the values).
    """
    from great_expectations.expectations.core.expect_column_values_to_be_in_type_list import (
        ExpectColumnValuesToBeInTypeList,
    )

    expectation = ExpectColumnValuesToBeInTypeList(column="column", type_list=list(type_list))
    verdict = expectation._validate_pandas(actual_column_type=dtype, expected_types_list=list(type_list))
    return bool(verdict["success"]), str(verdict["result"]["observed_value"])


@functools.cache
def _value_types(type_list: tuple[str, ...]) -> tuple[type, ...]:
    """The Python types GE's pandas engine accepts for each value of an ``object`` column, per ``type_list``
    (``column_values.in_type_list``: numpy scalar types, pandas types, and Python's own for "int", "str"...)."""
    from great_expectations.expectations.type_comparison import native_type_type_map

    accepted: list[type] = []
    for name in type_list:
        try:
            accepted.append(np.dtype(name).type)
        except TypeError:
            for namespace in (pd, pd.core.dtypes.dtypes):
                found = getattr(namespace, name, None)
                if isinstance(found, type):
                    accepted.append(found)
        accepted.extend(native_type_type_map(name) or ())
    if not accepted:
        raise ValueError(f"No recognized numpy/python type in list: {list(type_list)}")
    return tuple(accepted)


def _first_batch_and_others(
    read: ChunkReader,
    document: dict[str, Any],
    others: list[dict[str, Any]],
    suite_path: Path,
    docs_dir: Path | None,
    run_name: str | None,
) -> tuple[GateResult, list[FailedExpectation], int | None]:
    """GE's result of the whole suite on the first record batch (Data Docs, raw result), the failures of the
    expectations the stream cannot count (GE on every record batch, first failure of each kept) and, when those
    needed a pass over every row, the number of rows."""
    chunks = iter(read(None))
    try:
        sample = next(chunks, None)
        if sample is None:
            raise ValueError("the window has no rows to validate")
        first = _validate_document(sample, document, suite_path, docs_dir, run_name)
        if not others:
            return first, [], None
        failures: dict[tuple[str, str | None], FailedExpectation] = {}
        rows, partial = 0, {**document, "expectations": others}
        for chunk in itertools.chain([sample], chunks):
            rows += len(chunk)
            result = _validate_document(chunk, partial, suite_path)
            for failure in [*result.critical, *result.warnings]:
                failures.setdefault((failure.expectation, failure.column), failure)
        return first, list(failures.values()), rows
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def validate_stream(
    read: ChunkReader,
    columns: list[str],
    suite_path: Path,
    docs_dir: Path | None = None,
    run_name: str | None = None,
    budget_bytes: int = 64 * 2**20,
) -> GateResult:
    """The gate over a window too large for memory, in record batches, with a whole-window run's verdicts.

    Every expectation of a type in ``STREAMABLE`` is counted batch by batch with GE's semantics (missing values
    ignored except by not-null, ``mostly``, every copy of a repeated value unexpected, the mean of the present
    values, a type list by the dtype of the record batches, value by value in an ``object`` column) and judged
    once on the merged counts, so the failures equal ``validate`` on the whole window.
    ``read`` (a ``ChunkReader``) is called once per column the suite checks, reading that column alone, so
    memory holds one record batch of one column; uniqueness spills hashes to a temporary folder and holds at
    most an eighth of ``budget_bytes`` (``_RepeatFinder``). ``columns`` are the window's columns (its schema).
    Great Expectations itself validates the first record batch of all columns, for the Data Docs and the raw
    result. Other expectation types are validated by GE on each record batch and fail the gate when they fail
    on any.
    """
    document = load_suite(suite_path)
    checks = [
        _Check(item["type"], dict(item.get("kwargs") or {}), _severity_of(item))
        for item in document["expectations"]
        if item["type"] in STREAMABLE
    ]
    others = [item for item in document["expectations"] if item["type"] not in STREAMABLE]
    first, extra, rows = _first_batch_and_others(read, document, others, suite_path, docs_dir, run_name)
    by_column: dict[str, list[_Check]] = {}
    for check in checks:
        if check.column in columns and check.kind != "expect_column_to_exist":
            by_column.setdefault(check.column, []).append(check)
    with tempfile.TemporaryDirectory(prefix="loopline-gate-") as spill:
        for position, check in enumerate(checks):
            if check.kind == "expect_column_values_to_be_unique" and check.column in by_column:
                check.repeats = _RepeatFinder(Path(spill) / str(position), budget_bytes // 8)
        for column, group in list(by_column.items()) or [(column, []) for column in columns[:1]]:
            counted = 0
            for chunk in read([column]):
                counted += len(chunk)
                for check in group:
                    check.add(chunk)
            rows = counted if rows is None else rows
        for check in checks:
            check.settle(read)
    gate = GateResult(suite=first.suite, evaluated=len(document["expectations"]), data_docs=first.data_docs)
    found = [failure for check in checks if (failure := check.outcome(set(columns), rows or 0)) is not None]
    seen = {(f.expectation, f.column) for f in found}
    found += [failure for failure in extra if (failure.expectation, failure.column) not in seen]
    for failure in found:
        (gate.critical if failure.severity == "critical" else gate.warnings).append(failure)
    gate.raw = {
        "streamed": True,
        "rows": rows,
        "success": gate.passed,
        "failures": [asdict(f) for f in found],
        "first_record_batch": first.raw,
    }
    for warning in gate.warnings:
        log.warning("data-quality warning: %s", warning.describe())
    return gate
