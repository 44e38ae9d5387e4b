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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ml.lake import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


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


def validate(frame: pd.DataFrame, suite_path: Path) -> GateResult:
    """Validate ``frame`` against the suite with Great Expectations (pandas engine)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    document = load_suite(suite_path)
    for item in document["expectations"]:
        item["severity"] = _severity_of(item)
    suite = gx.ExpectationSuite(
        **{k: v for k, v in document.items() if k in {"name", "expectations", "meta"}}
    )
    if len(suite.expectations) != len(document["expectations"]):
        kept = {e.expectation_type for e in suite.expectations}
        lost = [e.get("type") for e in document["expectations"] if e.get("type") not in kept]
        raise SuiteError(f"{suite_path}: Great Expectations does not know expectation type(s) {lost}")
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("loopline")
    definition = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole")
    batch = definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})
    gate = GateResult(suite=suite.name, evaluated=len(result.results), raw=result.to_json_dict())
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        details = outcome.result or {}
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            message = str(outcome.exception_info.get("exception_message", "")).splitlines()[0][:200]
            examples: list[Any] = [message]
        else:
            examples = [_plain(v) for v in details.get("partial_unexpected_list") or []][:5]
            if not examples and "observed_value" in details:
                examples = [f"observed {_plain(details['observed_value'])}"]
        failure = FailedExpectation(
            expectation=config.type,
            column=config.kwargs.get("column"),
            severity=str(getattr(config.severity, "value", config.severity)),
            unexpected_percent=details.get("unexpected_percent"),
            examples=examples,
        )
        (gate.critical if failure.severity == "critical" else gate.warnings).append(failure)
    for warning in gate.warnings:
        log.warning("data-quality warning: %s", warning.describe())
    return gate


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
