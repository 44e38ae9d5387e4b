"""The same checks as a Great Expectations suite, vectorised in pandas/numpy: the gate's baseline.

Semantics follow GE's for the expectation types Loopline's suites use: column-map expectations ignore missing
values (except ``not_be_null``), ``mostly`` is the share of those values that must pass, ``be_unique`` counts
every occurrence of a repeated value as unexpected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Outcome:
    """One expectation's verdict."""

    expectation: str
    column: str | None
    severity: str
    success: bool


def _share_ok(good: int, total: int, mostly: float | None) -> bool:
    if total == 0:
        return True
    return good / total >= (1.0 if mostly is None else mostly)


def _present(series: pd.Series) -> np.ndarray:
    return series.notna().to_numpy()


def _not_null(frame: pd.DataFrame, kw: dict[str, Any]) -> bool:
    present = _present(frame[kw["column"]])
    return _share_ok(int(present.sum()), len(present), kw.get("mostly"))


def _between(frame: pd.DataFrame, kw: dict[str, Any]) -> bool:
    values = frame[kw["column"]].to_numpy(dtype="float64", na_value=np.nan)
    present = ~np.isnan(values)
    good = np.ones(len(values), dtype=bool)
    if kw.get("min_value") is not None:
        good &= values >= kw["min_value"]
    if kw.get("max_value") is not None:
        good &= values <= kw["max_value"]
    return _share_ok(int((good & present).sum()), int(present.sum()), kw.get("mostly"))


def _in_set(frame: pd.DataFrame, kw: dict[str, Any]) -> bool:
    series = frame[kw["column"]]
    present = _present(series)
    good = series.isin(kw["value_set"]).to_numpy() & present
    return _share_ok(int(good.sum()), int(present.sum()), kw.get("mostly"))


def _unique(frame: pd.DataFrame, kw: dict[str, Any]) -> bool:
    series = frame[kw["column"]]
    present = _present(series)
    repeated = series.duplicated(keep=False).to_numpy() & present
    return _share_ok(int(present.sum() - repeated.sum()), int(present.sum()), kw.get("mostly"))


def _mean_between(frame: pd.DataFrame, kw: dict[str, Any]) -> bool:
    mean = float(frame[kw["column"]].mean())
    low, high = kw.get("min_value"), kw.get("max_value")
    return (low is None or mean >= low) and (high is None or mean <= high)


def _row_count(frame: pd.DataFrame, kw: dict[str, Any]) -> bool:
    low, high = kw.get("min_value"), kw.get("max_value")
    return (low is None or len(frame) >= low) and (high is None or len(frame) <= high)


_CHECKS: dict[str, Callable[[pd.DataFrame, dict[str, Any]], bool]] = {
    "expect_table_row_count_to_be_between": _row_count,
    "expect_column_to_exist": lambda frame, kw: kw["column"] in frame.columns,
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_be_unique": _unique,
    "expect_column_mean_to_be_between": _mean_between,
}


def validate(frame: pd.DataFrame, suite_path: Path) -> list[Outcome]:
    """Every expectation of the suite, evaluated on ``frame`` (a missing column fails its expectation)."""
    document = json.loads(suite_path.read_text())
    outcomes = []
    for item in document["expectations"]:
        kwargs = item.get("kwargs", {})
        column = kwargs.get("column")
        check = _CHECKS[item["type"]]
        severity = str(item.get("severity") or (item.get("meta") or {}).get("severity") or "critical")
        needs_column = column is not None and item["type"] != "expect_column_to_exist"
        success = False if needs_column and column not in frame.columns else check(frame, kwargs)
        outcomes.append(Outcome(item["type"], column, severity, bool(success)))
    return outcomes


def failures(outcomes: list[Outcome]) -> list[tuple[str, str | None, str]]:
    """(type, column, severity) of each failed expectation, sorted."""
    return sorted((o.expectation, o.column, o.severity) for o in outcomes if not o.success)
