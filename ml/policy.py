"""When drift (or a drop of the champion's AUC) may trigger a retrain: severity threshold, cooldown in batches,
a rate limit, and a pause switch.

Requests are recorded in ``$LOOPLINE_HOME/state/retrain_requests.jsonl`` (append-only). Automatic retraining
is paused when ``drift.auto_retrain`` is false or the pause file exists (``loopline retrain pause``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ml.config import LooplineConfig, Paths
from ml.drift import DriftResult

_RANK = {"none": 0, "info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class PolicyDecision:
    """Whether to request a retrain for a batch, and why (or why not)."""

    retrain: bool
    reason: str


def requests_file(paths: Paths) -> Path:
    return paths.state / "retrain_requests.jsonl"


def pause_file(paths: Paths) -> Path:
    return paths.state / "auto_retrain.paused"


def past_requests(paths: Paths) -> list[dict[str, Any]]:
    """Every retrain request recorded so far, oldest first."""
    file = requests_file(paths)
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def decide_retrain(
    config: LooplineConfig, paths: Paths, result: DriftResult, batch_order: list[str]
) -> PolicyDecision:
    """Apply severity, pause and cooldown to a drift result; ``batch_order`` is the lake's batches in order.

    A drop of the champion's AUC counts like drift: ``drift.with_performance`` raised the severity and made the
    verdict ``drift``, and the reason names the drop.
    """
    needed = config.drift.retrain_on
    if result.verdict != "drift" or _RANK[result.severity] < _RANK[needed]:
        return PolicyDecision(
            False, f"no retrain: severity {result.severity} is below drift.retrain_on={needed}"
        )
    if not config.drift.auto_retrain or pause_file(paths).exists():
        return PolicyDecision(False, "no retrain: automatic retraining is paused (loopline retrain resume)")
    position = {batch: i for i, batch in enumerate(batch_order)}
    here = position.get(result.batch, len(batch_order))
    history = past_requests(paths)
    recent = [
        r
        for r in history
        if r["batch"] in position and 0 <= here - position[r["batch"]] < config.drift.rate_window_batches
    ]
    if len(recent) >= config.drift.max_retrains and all(r["batch"] != result.batch for r in recent):
        return PolicyDecision(
            False,
            f"no retrain: rate limit ({config.drift.max_retrains} requests in {config.drift.rate_window_batches} "
            "batches) reached; force one with `loopline retrain` if needed",
        )
    for request in reversed(history):
        if request["batch"] == result.batch:
            return PolicyDecision(False, f"no retrain: already requested for batch {result.batch}")
        then = position.get(request["batch"])
        if then is not None and 0 <= here - then <= config.drift.cooldown_batches:
            return PolicyDecision(
                False,
                f"no retrain: cooldown ({config.drift.cooldown_batches} batches) after the request for "
                f"batch {request['batch']}",
            )
    return PolicyDecision(
        True, f"retrain requested: {result.severity} {_cause(result)} in batch {result.batch}"
    )


def _cause(result: DriftResult) -> str:
    """What reached the batch's severity: the data drift, the champion's AUC drop, or both."""
    drop = result.performance_drop or {}
    if drop.get("severity") != result.severity:
        return "drift"
    fell = f"performance drop ({drop['summary']})"
    return f"drift and {fell}" if drop.get("data_severity") == result.severity else fell


def record_request(paths: Paths, batch: str, reason: str, features: list[str]) -> dict[str, Any]:
    """Append a retrain request to the log; returns the entry (the Asset event's extra)."""
    entry = {
        "batch": batch,
        "reason": reason,
        "features": features,
        "requested_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    file = requests_file(paths)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return entry
