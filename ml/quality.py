"""The data-quality gate: Great Expectations suites, their verdict, and the quarantine.

This is the only module that imports Great Expectations (inside functions: the import costs ~4 s). A suite is
a GE JSON file in ``expectations/``; each expectation is ``critical`` (fails the gate) or ``warning`` (logged),
from GE's native ``severity`` or ``meta.severity``. A failed batch goes to
``$LOOPLINE_HOME/quarantine/<dataset>/<batch>/`` with its validation result, never into the lake.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
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
    if outcome.exception_info and outcome.exception_info.get("raised_exception"):
        examples: list[Any] = [str(outcome.exception_info.get("exception_message", "")).splitlines()[0][:200]]
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
) -> dict[str, Any]:
    """A Great Expectations suite profiled from a reference window (in the spirit of TFX SchemaGen).

    Structure (columns, id uniqueness, target classes, nulls where none were seen) and ranges widened by
    ``margin`` are critical; categories and null-rate drift are warnings. A human reviews it afterwards.
    """
    expectations: list[dict[str, Any]] = []

    def add(kind: str, severity: str, **kwargs: Any) -> None:
        expectations.append(
            {"type": kind, "kwargs": kwargs, "severity": severity, "meta": {"severity": severity}}
        )

    low, high = min(batch_rows), max(batch_rows)
    add("expect_table_row_count_to_be_between", "critical", min_value=int(low * 0.5), max_value=int(high * 2))
    for column in [id_column, *([time_column] if time_column else []), *numeric, *categorical, target]:
        add("expect_column_to_exist", "critical", column=column)
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


STREAMABLE = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_column_to_exist",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_unique",
        "expect_column_mean_to_be_between",
    }
)
"""Expectation types the streaming gate evaluates itself, with Great Expectations' semantics."""


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
    values: list[pd.Series] = field(default_factory=list)

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
        elif kind == "expect_column_values_to_be_unique":
            self.values.append(values)
        elif kind == "expect_column_mean_to_be_between":
            self.total += float(values.to_numpy(dtype="float64").sum())

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
        if count and len(self.examples) < 5:
            picked = values[bad].head(5 - len(self.examples))
            self.examples += [None] * len(picked) if keep_missing else [_plain(v) for v in picked]
        self.unexpected += count

    def outcome(self, columns: set[str], rows: int) -> FailedExpectation | None:
        """The failure this expectation reports over all the batches counted, or None when it held."""
        kind, kw, column = self.kind, self.kwargs, self.column
        if kind == "expect_column_to_exist":
            return None if column in columns else self._failure(None, [])
        if column is not None and column not in columns:
            return self._failure(None, [f'The column "{column}" in BatchData does not exist.'])
        if kind == "expect_table_row_count_to_be_between":
            return None if self._in_range(rows) else self._failure(None, [f"observed {rows}"])
        if kind == "expect_column_mean_to_be_between":
            mean = self.total / self.elements if self.elements else None
            held = mean is not None and self._in_range(mean)
            return None if held else self._failure(None, [f"observed {mean}"])
        if kind == "expect_column_values_to_be_unique" and self.values:
            joined = pd.concat(self.values, ignore_index=True)
            repeated = joined.duplicated(keep=False).to_numpy()
            self.examples, self.unexpected = [], 0
            self._unexpected(joined, repeated)
        share = (self.elements - self.unexpected) / self.elements if self.elements else 1.0
        if share >= (1.0 if kw.get("mostly") is None else kw["mostly"]):
            return None
        return self._failure(100 * self.unexpected / self.elements, self.examples)

    def _in_range(self, value: float) -> bool:
        return bool(self._within(np.array([value], dtype="float64"))[0])

    def _failure(self, percent: float | None, examples: list[Any]) -> FailedExpectation:
        return FailedExpectation(self.kind, self.column, self.severity, percent, examples)


def validate_stream(
    chunks: Iterable[pd.DataFrame],
    columns: list[str],
    suite_path: Path,
    docs_dir: Path | None = None,
    run_name: str | None = None,
) -> GateResult:
    """The gate over record batches of a window too large for memory, with a whole-window run's verdicts.

    Every expectation of a type in ``STREAMABLE`` is counted batch by batch with GE's semantics (missing values
    ignored except by not-null, ``mostly``, every copy of a repeated value unexpected, the mean of the present
    values) and judged once on the merged counts, so the failures equal ``validate`` on the whole window;
    uniqueness holds one column at a time in memory. ``columns`` are the window's columns (its schema).
    Great Expectations itself validates the first record batch, for the Data Docs and the raw result. Other
    expectation types are validated by GE on each record batch and fail the gate when they fail on any.
    """
    document = load_suite(suite_path)
    checks = [
        _Check(item["type"], dict(item.get("kwargs") or {}), _severity_of(item))
        for item in document["expectations"]
        if item["type"] in STREAMABLE
    ]
    others = [item for item in document["expectations"] if item["type"] not in STREAMABLE]
    rows, sample, extra = 0, None, []
    for chunk in chunks:
        sample = chunk if sample is None else sample
        rows += len(chunk)
        for check in checks:
            check.add(chunk)
        if others:
            extra.append(_validate_document(chunk, {**document, "expectations": others}, suite_path))
    if sample is None:
        raise ValueError("the window has no rows to validate")
    first = _validate_document(sample, document, suite_path, docs_dir, run_name)
    gate = GateResult(suite=first.suite, evaluated=len(document["expectations"]), data_docs=first.data_docs)
    found = [failure for check in checks if (failure := check.outcome(set(columns), rows)) is not None]
    seen = {(f.expectation, f.column) for f in found}
    for result in extra:
        for failure in [*result.critical, *result.warnings]:
            if (failure.expectation, failure.column) not in seen:
                seen.add((failure.expectation, failure.column))
                found.append(failure)
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
