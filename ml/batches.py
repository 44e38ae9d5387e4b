"""Batch keys: how a point in time (or a row range) names one batch, and which rows belong to it.

Keys sort in time order as plain strings: ``2025-03`` (month), ``2025-W09`` (ISO week), ``2025-03-01`` (day),
``000003`` (the fourth block of ``rows_per_batch`` rows when the data has no time column).
"""

from __future__ import annotations

import re
from datetime import date, datetime

import pandas as pd

from ml.config import BatchingConfig

_PATTERNS = {
    "month": re.compile(r"^\d{4}-\d{2}$"),
    "week": re.compile(r"^\d{4}-W\d{2}$"),
    "day": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
    "rows": re.compile(r"^\d{6}$"),
}


class BatchKeyError(ValueError):
    """A batch key that does not match the configured batching."""


def batch_key_for(moment: datetime | date | str, batching: BatchingConfig) -> str:
    """The key of the batch that contains ``moment`` (time batching only)."""
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    if batching.by == "month":
        return f"{stamp.year:04d}-{stamp.month:02d}"
    if batching.by == "week":
        year, week, _ = stamp.isocalendar()
        return f"{year:04d}-W{week:02d}"
    if batching.by == "day":
        return stamp.strftime("%Y-%m-%d")
    raise BatchKeyError(
        "batching.by is 'rows': batches have no date; pass the batch key (e.g. 000001) instead"
    )


def check_key(key: str, batching: BatchingConfig) -> str:
    """Return ``key`` when it is a valid key for this batching, else raise with the expected form."""
    if not _PATTERNS[batching.by].match(key):
        examples = {"month": "2025-03", "week": "2025-W09", "day": "2025-03-01", "rows": "000003"}
        raise BatchKeyError(
            f"batch key {key!r} does not match batching.by={batching.by!r} (expected e.g. {examples[batching.by]})"
        )
    return key


def window_of(key: str, batching: BatchingConfig) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The half-open time window [start, end) of a time batch."""
    check_key(key, batching)
    if batching.by == "month":
        start = pd.Timestamp(f"{key}-01")
        return start, start + pd.DateOffset(months=1)
    if batching.by == "week":
        year, week = key.split("-W")
        start = pd.Timestamp(date.fromisocalendar(int(year), int(week), 1))
        return start, start + pd.Timedelta(days=7)
    if batching.by == "day":
        start = pd.Timestamp(key)
        return start, start + pd.Timedelta(days=1)
    raise BatchKeyError("batching.by is 'rows': batches have no time window")


def row_range_of(key: str, batching: BatchingConfig) -> tuple[int, int]:
    """The half-open row range [first, last) of a row batch."""
    index = int(check_key(key, batching))
    return index * batching.rows_per_batch, (index + 1) * batching.rows_per_batch
