"""Evidently's DataDriftPreset on the bench data: run by the Evidently virtualenv's Python, never imports ``ml``.

``python bench/evidently_runner.py ARGS_JSON`` with ``reference`` (Parquet files), ``current`` (one file),
``numeric`` and ``categorical`` columns; writes timings and the drifted columns to ``$BENCH_RESULT``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any


def drifted_columns(snapshot: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Columns whose ValueDrift crossed its threshold (distances: >= threshold; p-values: < threshold)."""
    drifted, scores = [], {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        column, method, threshold = config["column"], str(config.get("method", "")), config.get("threshold")
        value = float(metric["value"])
        scores[column] = {"method": method, "value": value, "threshold": threshold}
        is_p_value = "p_value" in method.lower() or "p-value" in method.lower()
        if threshold is not None and ((value < threshold) if is_p_value else (value >= threshold)):
            drifted.append(column)
    return sorted(drifted), scores


def main() -> None:
    """``repeats`` timed DataDriftPreset runs on in-memory frames (import and reading timed apart, once)."""
    warnings.filterwarnings("ignore")
    args = json.loads(sys.argv[1])
    t0 = time.perf_counter()
    import pandas as pd
    import pyarrow.parquet as pq
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    t1 = time.perf_counter()
    columns = args["numeric"] + args["categorical"]
    reference = pd.concat(
        [pq.read_table(f, columns=columns).to_pandas() for f in args["reference"]], ignore_index=True
    )
    current = pq.read_table(args["current"], columns=columns).to_pandas()
    t2 = time.perf_counter()
    definition = DataDefinition(numerical_columns=args["numeric"], categorical_columns=args["categorical"])
    runs = []
    for _ in range(int(args.get("repeats", 1))):
        began = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
        document = snapshot.dict()
        runs.append(time.perf_counter() - began)
    drifted, scores = drifted_columns(document)
    count = next(
        (m["value"].get("count") for m in document["metrics"] if "DriftedColumnsCount" in m["metric_name"]),
        None,
    )
    from importlib.metadata import version

    result = {
        "import_seconds": t1 - t0,
        "read_seconds": t2 - t1,
        "runs_seconds": runs,
        "rows": len(current),
        "reference_rows": len(reference),
        "drifted": drifted,
        "drifted_count_reported": count,
        "scores": scores,
        "versions": {name: version(name) for name in ("evidently", "pandas", "numpy", "scipy")},
    }
    Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
