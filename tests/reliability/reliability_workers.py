"""Child processes of the fault tests: writers of a lake partition or a report that run until they are killed.

``python tests/reliability/reliability_workers.py lake|report TARGET`` (checkout on PYTHONPATH) starts a zygote:
it imports and builds the payloads once, prints ``ready``, then for every ``go`` line on stdin forks a writer,
prints its pid, and after the writer died (the test SIGKILLs it) prints ``exit <code>``. A writer writes payload
A, B, A, ... forever, so the kill lands at a random moment of some write. A is a large partition, B a small one
(its commit is a larger share of a write cycle). The test builds the same payloads to know the expected hashes.

``python tests/reliability/reliability_workers.py race VERSION RUN_ID GO_FILE ACTOR`` is one of several racing
promotions: it prints ``ready`` once connected, waits for GO_FILE, calls ``ml.registry.promote`` over champion v1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TABLE, BATCH = "killed", "2025-01"
ROWS = 150_000


def lake_frame(which: int) -> pd.DataFrame:
    """A deterministic partition: ``which`` 0 has ``ROWS`` rows (a few MB of Parquet), 1 has 2,000."""
    rng = np.random.default_rng([11, which])
    rows = ROWS if which == 0 else 2_000
    return pd.DataFrame(
        {
            "id": [f"K{which}{i:08d}" for i in range(rows)],
            "when": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 2_000_000, rows), unit="s"),
            **{f"x{j}": rng.normal(size=rows) for j in range(6)},
            "kind": rng.choice(["a", "b", "c"], rows),
            "label": rng.integers(0, 2, rows),
        }
    )


def report_document(which: int) -> dict[str, Any]:
    """A deterministic drift-report-like JSON document of a few MB."""
    rng = np.random.default_rng([13, which])
    return {
        "batch": BATCH,
        "which": which,
        "features": {f"f{j}": rng.normal(size=6_000).round(6).tolist() for j in range(12)},
    }


def _lake_writer(root: Path, frames: list[pd.DataFrame]) -> None:
    from ml.lake import Lake

    lake = Lake(root)
    turn = 0
    while True:
        lake.write(TABLE, BATCH, frames[turn % 2], source="reliability_workers.py")
        turn += 1


def _report_writer(target: Path, documents: list[dict[str, Any]]) -> None:
    from ml.lake import atomic_write_json

    turn = 0
    while True:
        atomic_write_json(target, documents[turn % 2])
        turn += 1


def zygote(kind: str, target: Path) -> None:
    """Build the payloads once, then fork one writer per ``go`` line and report its pid and exit code."""
    import ml.lake  # noqa: F401  (imported before forking: the writers start at once)

    if kind == "lake":
        payloads: list[Any] = [lake_frame(0), lake_frame(1)]
        writer: Any = _lake_writer
    else:
        payloads = [report_document(0), report_document(1)]
        writer = _report_writer
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        pid = os.fork()
        if pid == 0:
            try:
                writer(target, payloads)
            finally:
                os._exit(1)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


def race(version: str, run_id: str, go_file: Path, actor: str) -> int:
    """Promote ``version`` over champion v1 as soon as ``go_file`` exists; exit 0 if it won, 3 if refused."""
    import time

    from ml import registry
    from ml.config import Paths, load_config

    config, paths = load_config(), Paths.from_env()
    registry.connect(config, paths)
    print("ready", flush=True)
    while not go_file.exists():
        time.sleep(0.005)
    try:
        registry.promote(config, registry.VersionRef(config.model_name, version, run_id), "1", "race", actor)
    except registry.PromotionConflict as exc:
        print(f"refused: {exc}", flush=True)
        return 3
    print("won", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "race":
        sys.exit(race(sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5]))
    zygote(sys.argv[1], Path(sys.argv[2]))
