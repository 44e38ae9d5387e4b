"""Data capture: scored requests go to the prediction store off the request path.

The request handler puts one item per request on a bounded in-memory queue (a few microseconds) before it
answers; one writer thread per worker takes items off the queue and commits them as multi-row INSERTs of at
most ``batch_rows`` rows. An item is committed at most ``flush_interval`` after it was queued (plus the time of
one commit), as long as the store keeps up: that is the most a crash (SIGKILL, OOM, power to the process) can
lose. A failed transaction is retried with back-off, never dropped. On SIGTERM the worker stops accepting
connections, finishes its requests, then the writer commits everything queued; if the store is unreachable
until ``shutdown_timeout`` the remainder goes to a JSON-lines spill file under ``$LOOPLINE_HOME/serve/spill``,
which ``replay_spill`` (run by ``ml.serve.run`` at start-up) inserts later, idempotently.

A full queue (the store is slower than the traffic, or down) is handled by the policy: ``block`` makes the
request wait up to ``block_timeout`` for space and then answers 503 (so every 200 is captured); ``shed``
answers anyway and counts the capture as dropped. Both are counted in /metrics; neither crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ml.serve.store import Prediction, check_schema, engine_for, now, redact

log = logging.getLogger(__name__)

Outcome = Literal["queued", "shed", "full"]


@dataclass(slots=True)
class CaptureItem:
    """One answered request: its records, their scores and the model that scored them."""

    enqueued: float
    request_id: str
    requested_at: datetime
    features: Sequence[Any]  # per record: a dict, or a msgspec struct of the schema's fast path
    entity_ids: list[str | None]
    event_times: list[datetime | None]
    scores: list[float]
    decisions: list[bool]
    threshold: float
    model_name: str
    model_version: str
    latency_ms: float
    warnings: list[list[str]]

    def rows(self, dataset: str) -> list[dict[str, Any]]:
        return [
            {
                "request_id": self.request_id,
                "record_index": index,
                "dataset": dataset,
                "entity_id": self.entity_ids[index],
                "event_time": self.event_times[index] or self.requested_at,
                "requested_at": self.requested_at,
                "features": msgspec.to_builtins(features),
                "score": self.scores[index],
                "decision": self.decisions[index],
                "threshold": self.threshold,
                "model_name": self.model_name,
                "model_version": self.model_version,
                "latency_ms": self.latency_ms,
                "warnings": self.warnings[index] or None,
            }
            for index, features in enumerate(self.features)
        ]


_COLUMNS = (
    "request_id", "record_index", "dataset", "entity_id", "event_time", "requested_at", "features", "score",
    "decision", "threshold", "model_name", "model_version", "latency_ms", "warnings",
)  # fmt: skip
_SQLITE_INSERT = (
    f"INSERT INTO {Prediction.__tablename__} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (request_id, record_index) DO NOTHING"
)


_encode = msgspec.json.Encoder().encode  # compact JSON text (~5x faster than json.dumps); dicts and structs


def _sqlite_time(moment: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME storage text (``%Y-%m-%d %H:%M:%S.%f``, UTC); isoformat is faster than
    strftime and always writes the microseconds, so the text compares like the time."""
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_tuples(item: CaptureItem, dataset: str) -> list[tuple[Any, ...]]:
    """``item``'s rows as the SQLite driver takes them: what SQLAlchemy's types would bind, made directly.

    SQLAlchemy's per-row parameter processing costs ~2/3 of a captured row's CPU on SQLite; the statement
    text is built from the model's own table and column names (no input in it), the values are bound.
    """
    request_id, threshold, name, version, latency = (
        item.request_id, item.threshold, item.model_name, item.model_version, item.latency_ms
    )  # fmt: skip
    requested = _sqlite_time(item.requested_at)
    encode = _encode
    return [
        (
            request_id,
            index,
            dataset,
            entity_id,
            requested if moment is None else _sqlite_time(moment),
            requested,
            encode(features).decode(),
            score,
            decision,
            threshold,
            name,
            version,
            latency,
            encode(notes).decode() if notes else None,
        )
        for index, features, entity_id, moment, score, decision, notes in zip(
            itertools.count(),
            item.features,
            item.entity_ids,
            item.event_times,
            item.scores,
            item.decisions,
            item.warnings,
            strict=False,  # count() is endless
        )
    ]


class CaptureWriter:
    """A bounded queue and the thread that commits it to the prediction store."""

    def __init__(
        self,
        url: str,
        dataset: str,
        *,
        queue_size: int = 10_000,
        batch_rows: int = 2_000,
        flush_interval: float = 0.2,
        policy: Literal["block", "shed"] = "block",
        block_timeout: float = 2.0,
        shutdown_timeout: float = 30.0,
        spill_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.dataset = dataset
        self.queue: queue.Queue[CaptureItem] = queue.Queue(maxsize=queue_size)
        self.capacity = queue_size
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self.policy = policy
        self.block_timeout = block_timeout
        self.shutdown_timeout = shutdown_timeout
        self.spill_dir = spill_dir
        self.dropped = 0
        self.rows_written = 0
        self.write_errors = 0
        self.rows_spilled = 0
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._pending: list[CaptureItem] = []
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the store (it must be at the newest migration) and start the writer thread."""
        self._engine = engine_for(self.url)
        check_schema(self._engine)
        self._thread = threading.Thread(target=self._run, name="loopline-capture", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The writer thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def gauges(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queue.qsize(),
            "queue_capacity": self.capacity,
            "captures_dropped": self.dropped,
            "rows_written": self.rows_written,
            "write_errors": self.write_errors,
            "rows_spilled": self.rows_spilled,
        }

    async def submit(self, item: CaptureItem) -> Outcome:
        """Queue a request for capture; ``full`` means the caller must answer 503 (block policy)."""
        try:
            self.queue.put_nowait(item)
            return "queued"
        except queue.Full:
            pass
        if self.policy == "shed":
            self.dropped += 1
            return "shed"
        deadline = time.monotonic() + self.block_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            try:
                self.queue.put_nowait(item)
                return "queued"
            except queue.Full:
                continue
        self.dropped += 1
        return "full"

    def close(self) -> None:
        """Commit everything queued (spill what the store will not take in time), then stop."""
        self._stop_deadline = time.monotonic() + self.shutdown_timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.shutdown_timeout + 5)
            if self._thread.is_alive():  # stuck in a commit: keep the rows (replay ignores duplicates)
                log.error("capture writer did not finish within %.0f s; spilling", self.shutdown_timeout)
                self._spill([*list(self._pending), *self._drain()])
        if self._engine is not None:
            self._engine.dispose()

    def _drain(self) -> list[CaptureItem]:
        items = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self.queue.get_nowait())
        return items

    def _run(self) -> None:
        backoff = 0.2
        while True:
            if not self._pending:
                try:  # idle: block until the first item (one wake-up per flush, not per request)
                    self._pending.append(self.queue.get(timeout=0.1))
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
            deadline = self._pending[0].enqueued + self.flush_interval
            rows = self._take(sum(len(item.features) for item in self._pending))
            while rows < self.batch_rows and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Sleep instead of waiting on the queue: a put() then never wakes this thread, so the event
                # loop does not hand over the GIL once per request.
                self._stop.wait(min(remaining, 0.05))
                rows = self._take(rows)
            if self._write(self._pending):
                self._pending = []
                backoff = 0.2
                continue
            if self._stop.is_set() and time.monotonic() >= self._stop_deadline:
                self._spill([*self._pending, *self._drain()])
                self._pending = []
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _take(self, rows: int) -> int:
        """Move queued items to the pending batch (up to ``batch_rows`` rows); returns its row count."""
        while rows < self.batch_rows:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            self._pending.append(item)
            rows += len(item.features)
        return rows

    def _write(self, items: list[CaptureItem]) -> bool:
        assert self._engine is not None
        sqlite = self._engine.dialect.name == "sqlite"
        if sqlite:
            rows: list[Any] = [row for item in items for row in _sqlite_tuples(item, self.dataset)]
        else:
            rows = [row for item in items for row in item.rows(self.dataset)]
        try:
            with self._engine.begin() as connection:
                # Duplicates can only be rows a spill replay already inserted: skip them, never loop on them.
                if sqlite:
                    connection.exec_driver_sql(_SQLITE_INSERT, rows)
                else:  # PostgreSQL: SQLAlchemy batches the rows into multi-row INSERTs (insertmanyvalues)
                    connection.execute(_insert_ignoring_duplicates(connection.dialect.name), rows)
        except SQLAlchemyError as exc:
            self.write_errors += 1
            log.warning(
                "capture: %d rows not yet written to %s (%s); retrying",
                len(rows),
                redact(self.url),
                str(exc).splitlines()[0][:300],
            )
            return False
        self.rows_written += len(rows)
        return True

    def _spill(self, items: list[CaptureItem]) -> None:
        if not items:
            return
        folder = self.spill_dir or Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{self.dataset}-{os.getpid()}-{now():%Y%m%dT%H%M%S%f}.jsonl"
        rows = [row for item in items for row in item.rows(self.dataset)]
        with target.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row, default=_iso) + "\n")
        self.rows_spilled += len(rows)
        log.error("capture: store unreachable at shutdown; %d rows spilled to %s", len(rows), target)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def replay_spill(url: str, folder: Path) -> int:
    """Insert the rows of every spill file into the store (duplicates ignored), deleting each file after.

    Returns the rows read.
    """
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        return 0
    engine = engine_for(url)
    total = 0
    try:
        for file in files:
            rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
            for row in rows:
                for key in ("event_time", "requested_at"):
                    row[key] = datetime.fromisoformat(row[key])
            with engine.begin() as connection:
                connection.execute(_insert_ignoring_duplicates(connection.dialect.name), rows)
            file.unlink()
            total += len(rows)
            log.info("replayed %d captured rows from %s", len(rows), file)
    finally:
        engine.dispose()
    return total


def _insert_ignoring_duplicates(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise ValueError(f"prediction store on {dialect}: only SQLite and PostgreSQL are supported")
    return dialect_insert(Prediction.__table__).on_conflict_do_nothing(
        index_elements=["request_id", "record_index"]
    )
