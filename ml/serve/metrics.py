"""Prometheus metrics of the scoring service, in the text exposition format (no client library needed).

Each worker counts in memory (the event loop is its only writer, so counting costs a dict update). With
several workers, each also writes a snapshot of its counts to ``$LOOPLINE_HOME/serve/metrics/<port>/<pid>.json``
about once a second, and ``/metrics`` (answered by whichever worker) sums every live worker's snapshot, its own
taken fresh; per-worker gauges keep a ``worker`` label. A worker that dies takes its counts with it, which
Prometheus sees as a counter reset.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
KNOWN_PATHS = frozenset(
    {
        "/predict",
        "/health",
        "/ready",
        "/metrics",
        "/admin/reload",
        "/docs",
        "/openapi.json",
        "/docs/oauth2-redirect",
    }
)


class ServeMetrics:
    """The counts of one worker."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latency_counts: dict[str, list[int]] = {}
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.records_scored = 0
        self.unknown_categories = 0
        self.model_events: defaultdict[str, int] = defaultdict(int)
        self.gauges: list[Callable[[], dict[str, Any]]] = []

    def observe(self, path: str, code: int, seconds: float) -> None:
        """One answered request."""
        label = path if path in KNOWN_PATHS else "other"
        self.requests[(label, str(code))] += 1
        counts = self.latency_counts.get(label)
        if counts is None:
            counts = self.latency_counts[label] = [0] * (len(LATENCY_BUCKETS) + 1)
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[label] += seconds

    def error(self, path: str, reason: str) -> None:
        """One request that failed, by reason (validation, auth, not_ready, capture_full, too_large, internal)."""
        self.errors[(path if path in KNOWN_PATHS else "other", reason)] += 1

    def model_event(self, name: str) -> None:
        """swaps, refused, registry_errors, load_errors."""
        self.model_events[name] += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the counts and the current gauges of this worker."""
        gauges: dict[str, Any] = {}
        for provider in self.gauges:
            gauges.update(provider())
        return {
            "pid": os.getpid(),
            "requests": [[p, c, n] for (p, c), n in self.requests.items()],
            "errors": [[p, r, n] for (p, r), n in self.errors.items()],
            "latency": {p: [list(counts), self.latency_sum[p]] for p, counts in self.latency_counts.items()},
            "records_scored": self.records_scored,
            "unknown_categories": self.unknown_categories,
            "model_events": dict(self.model_events),
            "gauges": gauges,
        }


class SnapshotShare:
    """Worker snapshots in a folder, for /metrics to sum across worker processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, snapshot: dict[str, Any]) -> None:
        target = self.folder / f"{snapshot['pid']}.json"
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(snapshot))
        os.replace(temporary, target)

    def read_all(self, own: dict[str, Any]) -> list[dict[str, Any]]:
        """Every live worker's last snapshot, with ``own`` (fresh) in place of this worker's file."""
        found = [own]
        for file in self.folder.glob("*.json"):
            try:
                pid = int(file.stem)
            except ValueError:
                continue
            if pid == own["pid"]:
                continue
            if not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
                continue
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                found.append(json.loads(file.read_text()))
        return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[str, dict[str, Any], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(**labels)} {_number(value)}")


def render(snapshots: list[dict[str, Any]], model_name: str) -> str:
    """The Prometheus text exposition of the summed snapshots of every worker."""
    requests: defaultdict[tuple[str, str], int] = defaultdict(int)
    errors: defaultdict[tuple[str, str], int] = defaultdict(int)
    latency: dict[str, list[float]] = {}
    totals: defaultdict[str, float] = defaultdict(float)
    events: defaultdict[str, int] = defaultdict(int)
    for snap in snapshots:
        for path, code, count in snap["requests"]:
            requests[(path, code)] += count
        for path, reason, count in snap["errors"]:
            errors[(path, reason)] += count
        for path, (counts, seconds) in snap["latency"].items():
            merged = latency.setdefault(path, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, count in enumerate(counts):
                merged[i] += count
            merged[-1] += seconds
        totals["records_scored"] += snap["records_scored"]
        totals["unknown_categories"] += snap["unknown_categories"]
        for name, count in snap["model_events"].items():
            events[name] += count
        for name in (
            "queue_depth",
            "queue_capacity",
            "captures_dropped",
            "rows_written",
            "write_errors",
            "rows_spilled",
        ):
            totals[name] += snap["gauges"].get(name, 0)
    out = _Text()
    out.family(
        "loopline_serve_requests_total",
        "counter",
        "HTTP requests answered, by path and status code.",
        [("", {"path": p, "code": c}, n) for (p, c), n in sorted(requests.items())],
    )
    out.family(
        "loopline_serve_request_errors_total",
        "counter",
        "Requests that failed, by path and reason (validation, auth, not_ready, capture_full, too_large, internal).",
        [("", {"path": p, "reason": r}, n) for (p, r), n in sorted(errors.items())],
    )
    samples: list[tuple[str, dict[str, Any], float]] = []
    for path, merged in sorted(latency.items()):
        cumulative = 0.0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), merged[:-1], strict=False):
            cumulative += count
            samples.append(
                (
                    "_bucket",
                    {"path": path, "le": "+Inf" if bound == float("inf") else repr(bound)},
                    cumulative,
                )
            )
        samples.append(("_sum", {"path": path}, merged[-1]))
        samples.append(("_count", {"path": path}, cumulative))
    out.family(
        "loopline_serve_request_duration_seconds",
        "histogram",
        "Time from request to answer, by path.",
        samples,
    )
    out.family(
        "loopline_serve_records_scored_total",
        "counter",
        "Records scored.",
        [("", {}, totals["records_scored"])],
    )
    out.family(
        "loopline_serve_unknown_categories_total",
        "counter",
        "Categorical values never seen in training (scored as missing).",
        [("", {}, totals["unknown_categories"])],
    )
    versions = [(snap["pid"], snap["gauges"].get("model_version")) for snap in snapshots]
    out.family(
        "loopline_serve_model_version",
        "gauge",
        "Champion version each worker serves (0: none loaded).",
        [
            ("", {"model": model_name, "worker": pid}, float(v) if v and str(v).isdigit() else 0.0)
            for pid, v in versions
        ],
    )
    out.family(
        "loopline_serve_model_info",
        "gauge",
        "The model each worker serves.",
        [("", {"model": model_name, "version": v, "worker": pid}, 1.0) for pid, v in versions if v],
    )
    out.family(
        "loopline_serve_model_events_total",
        "counter",
        "Champion checks that swapped, refused a version, or failed to reach the registry.",
        [("", {"event": name}, events.get(name, 0)) for name in ("swaps", "refused", "registry_errors")],
    )
    out.family("loopline_serve_workers", "gauge", "Worker processes reporting.", [("", {}, len(snapshots))])
    out.family(
        "loopline_serve_capture_queue_depth",
        "gauge",
        "Requests waiting to be written to the prediction store.",
        [("", {}, totals["queue_depth"])],
    )
    out.family(
        "loopline_serve_capture_queue_capacity",
        "gauge",
        "Capacity of the capture queues.",
        [("", {}, totals["queue_capacity"])],
    )
    out.family(
        "loopline_serve_captures_dropped_total",
        "counter",
        "Requests not captured because the queue was full (shed policy, or block timeout: answered 503).",
        [("", {}, totals["captures_dropped"])],
    )
    out.family(
        "loopline_serve_capture_rows_written_total",
        "counter",
        "Prediction rows committed to the store.",
        [("", {}, totals["rows_written"])],
    )
    out.family(
        "loopline_serve_capture_write_errors_total",
        "counter",
        "Failed store transactions (retried).",
        [("", {}, totals["write_errors"])],
    )
    out.family(
        "loopline_serve_capture_rows_spilled_total",
        "counter",
        "Rows written to a spill file at shutdown because the store was unreachable.",
        [("", {}, totals["rows_spilled"])],
    )
    return "\n".join(out.lines) + "\n"
