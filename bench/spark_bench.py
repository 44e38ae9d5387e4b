"""Spark ``local[2]`` vs the local engine on the same rows: ``python -m bench.spark_bench [--rows 5000000]``.

Writes the seeded bench data (``bench/data.py``) as landed Parquet files: a training window of three months
holding ``--rows`` rows in all, and a new month of ``--rows / 3`` rows with the planted shift. Then each engine
runs, every step in a fresh child process (as an Airflow task is), in its own ``LOOPLINE_HOME``:

- ``ingest``: ``ml.steps.ingest_batch`` of the four months (schema, dedup on the id, the GE gate of the batch,
  the partition written into the lake);
- ``gate``: ``engine.validate`` of the window (the GE suite ``bench/expectations/bench.json``);
- ``train``: ``engine.train`` of the window (XGBoost, ``--rounds`` rounds; SparkXGBClassifier on Spark) with its
  reference profile;
- ``drift``: ``engine.monitor`` of the new month with the engine's own booster and profile;
- ``score``: ``engine.score`` of the new month with the local engine's booster on both (so scores compare).

A last child compares the results: partitions (row digests in order), gate failures, holdout AUC of both
boosters on the same holdout (within ``AUC_TOLERANCE``), drift verdicts and drifted columns, and scores (within
``SCORE_TOLERANCE``). Per step: the step's time (the Spark session's start-up timed apart), the child's wall
time, the peak RSS of the driver's Python process and, sampled, of its whole process tree (the JVM and the
Python workers it starts). Results: ``bench/spark-results.json`` and ``bench/spark-results.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import data, procs

STEPS = ("ingest", "gate", "train", "drift", "score")
ENGINES = ("local", "spark")
AUC_TOLERANCE = 0.005
"""Holdout ROC AUC of the Spark-trained booster vs the local one on the same holdout (as tests/spark asserts)."""
SCORE_TOLERANCE = 1e-6
"""Largest absolute difference of a row's score between the engines' predictions (same booster)."""
CHUNK_ROWS = 500_000
HERE = Path(__file__).resolve().parent
SAMPLE_SECONDS = 0.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.spark_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the training window (3 months)")
    parser.add_argument("--rounds", type=int, default=100, help="XGBoost boosting rounds")
    parser.add_argument("--master", default="local[2]", help="engine.spark.master")
    parser.add_argument(
        "--driver-memory", default="3g", help="spark.driver.memory (local mode: all of Spark)"
    )
    parser.add_argument("--shuffle-partitions", default="8", help="spark.sql.shuffle.partitions")
    parser.add_argument("--out", type=Path, default=HERE / "spark-results", help="results path, no suffix")
    parser.add_argument("--workdir", type=Path, help="where data and state go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per child")
    return parser.parse_args(argv)


# --- the parent: data, configs, children, comparison, report -------------------------------------------------


def _write_landed(folder: Path, spec: data.BatchSpec) -> int:
    """``spec``'s rows as one landed Parquet file, generated in chunks (unique ids across chunks)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for start in range(0, spec.rows, CHUNK_ROWS):
            part = data.BatchSpec(
                spec.key, min(CHUNK_ROWS, spec.rows - start), spec.seed + start, shift=spec.shift
            )
            frame = data.generate_batch(part)
            frame[data.ID_COLUMN] += start
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(folder / f"{spec.key}.parquet", table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return spec.rows


def prepare(workdir: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Landed files shared by both engines, and one config and home per engine."""
    landing = workdir / "landing"
    (landing / data.DATASET).mkdir(parents=True, exist_ok=True)
    specs = [*data.window_specs(opts.rows), data.new_batch_spec(max(opts.rows // 3, 1000))]
    rows = {spec.key: _write_landed(landing / data.DATASET, spec) for spec in specs}
    spark = {
        "master": opts.master,
        "num_workers": 2,
        "conf": {
            "spark.driver.memory": opts.driver_memory,
            "spark.sql.shuffle.partitions": opts.shuffle_partitions,
            "spark.ui.enabled": "false",
        },
    }
    engines = {}
    for name in ENGINES:
        folder = workdir / name
        engine = {"kind": name, **({"spark": spark} if name == "spark" else {})}
        config = data.write_config(
            folder, extra={"engine": engine, "training": {"num_boost_round": opts.rounds}}
        )
        home = folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "landing").symlink_to(landing, target_is_directory=True)
        engines[name] = {"config": str(config), "home": str(home), "model": str(folder / "model")}
    return {
        "rows": rows,
        "window": [s.key for s in specs[:-1]],
        "batch": specs[-1].key,
        "engines": engines,
    }


def _child(args: dict[str, Any], env: dict[str, str], cwd: Path, timeout: float) -> procs.ChildResult:
    python = str(procs.MAIN_PYTHON if procs.MAIN_PYTHON.exists() else Path(sys.executable))
    return procs.run_child(
        [python, "-m", "bench.spark_bench", "--child", json.dumps(args)], env, cwd, timeout
    )


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """Prepare, then every step on both engines (each in its own child), then the comparison."""
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="loopline-spark-bench-"))
    started = time.perf_counter()
    setup = prepare(workdir, opts)
    common = {
        "window": setup["window"],
        "batch": setup["batch"],
        "local_model": setup["engines"]["local"]["model"],
    }
    results: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
        | {"workdir": str(workdir)},
        "machine": _machine(),
        "data": {"rows": setup["rows"], "window": setup["window"], "batch": setup["batch"]},
        "steps": {},
    }
    try:
        for step in STEPS:
            for name in ENGINES:
                engine = setup["engines"][name]
                env = procs.base_env(Path(engine["home"]), Path(engine["config"]))
                args = {**common, **engine, "engine": name, "step": step}
                print(f"{step} on {name} ...", flush=True)
                child = _child(args, env, workdir, opts.timeout)
                results["steps"][f"{step}/{name}"] = {
                    **child.payload,
                    "wall_seconds": round(child.wall_seconds, 2),
                }
        compare = {"step": "compare", **common, "engines": setup["engines"]}
        env = procs.base_env(
            Path(setup["engines"]["local"]["home"]), Path(setup["engines"]["local"]["config"])
        )
        results["parity"] = _child(compare, env, workdir, opts.timeout).payload
        results["parity"] |= _compare_payloads(results["steps"])
    finally:
        results["seconds"] = round(time.perf_counter() - started, 1)
        if not (opts.keep or opts.workdir):
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def _machine() -> dict[str, Any]:
    import pyspark
    import xgboost

    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "xgboost": xgboost.__version__,
    }


def _compare_payloads(steps: dict[str, Any]) -> dict[str, Any]:
    """What the children reported that must agree: gate verdicts and failures, drift verdicts and columns."""
    local, spark = ({s: steps[f"{s}/{e}"] for s in STEPS} for e in ENGINES)
    psi = [abs(local["drift"]["psi"][c] - spark["drift"]["psi"][c]) for c in local["drift"]["psi"]]
    return {
        "ingest_summaries_equal": local["ingest"]["summaries"] == spark["ingest"]["summaries"],
        "gate_equal": (local["gate"]["passed"], local["gate"]["failed"])
        == (spark["gate"]["passed"], spark["gate"]["failed"]),
        "drift_verdicts_equal": local["drift"]["verdict"] == spark["drift"]["verdict"],
        "drifted_columns_equal": local["drift"]["drifted"] == spark["drift"]["drifted"],
        "drifted_columns_expected": local["drift"]["drifted"] == sorted(data.DRIFTED_COLUMNS),
        "max_feature_psi_difference": max(psi, default=0.0),
    }


# --- the children ----------------------------------------------------------------------------------------------


class RssSampler:
    """Peak RSS of this process's whole tree (the JVM and Python workers Spark starts), sampled in a thread."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.tree_peak = 0
        self.jvm_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(SAMPLE_SECONDS):
            total = jvm = 0
            for proc in [self._me, *self._me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                    total += rss
                    jvm += rss if proc.name() == "java" else 0
                except psutil.Error:
                    continue
            self.tree_peak, self.jvm_peak = max(self.tree_peak, total), max(self.jvm_peak, jvm)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {
            "driver_python_peak_rss_mib": round(procs.own_peak_rss_kib() / 1024, 1),
            "tree_peak_rss_mib": round(self.tree_peak / 2**20, 1),
            "jvm_peak_rss_mib": round(self.jvm_peak / 2**20, 1),
        }


def _drifted(result: Any) -> list[str]:
    """Features drifted at ``warning`` or above, as ``bench.worker`` counts them."""
    return sorted(
        f.column
        for f in result.features
        if f.severity in {"warning", "critical"} and not f.column.startswith("__")
    )


def _load_model(folder: str) -> tuple[Any, dict[str, Any]]:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(Path(folder) / "booster.ubj")
    return booster, json.loads((Path(folder) / "profile.json").read_text())


def _step(args: dict[str, Any]) -> dict[str, Any]:
    """One timed step on one engine; the Spark session's start is timed apart (``session_seconds``)."""
    import pandas as pd

    from ml import steps, train
    from ml.config import Paths, load_config
    from ml.engines import engine_for
    from ml.evaluate import classification_metrics

    config, paths = load_config(args["config"]), Paths(Path(args["home"]))
    engine = engine_for(config, paths)
    out: dict[str, Any] = {"session_seconds": 0.0}
    if args["engine"] == "spark":
        from ml.engines.spark import classic_session

        began = time.perf_counter()
        classic_session(config.engine.spark)
        out["session_seconds"] = round(time.perf_counter() - began, 2)
    step, window, batch = args["step"], args["window"], args["batch"]
    model = Path(args["model"])
    started = time.perf_counter()
    if step == "ingest":
        summaries = [
            steps.ingest_batch(config, paths, key, quarantine_moves_source=False) for key in [*window, batch]
        ]
        out["rows"] = sum(s["rows"] for s in summaries)
        out["summaries"] = [
            {k: s[k] for k in ("batch", "rows", "rows_read", "duplicates_dropped")} for s in summaries
        ]
    elif step == "gate":
        result = engine.validate(window, "spark-bench")
        out["passed"] = result.passed
        out["failed"] = sorted(
            f"{f.expectation}:{f.column}:{f.severity}" for f in [*result.critical, *result.warnings]
        )
        out["rows"] = sum(engine.lake.partition(data.DATASET, key).rows for key in window)
    elif step == "train":
        trained = engine.train(window, train.hyperparameters(config.training))
        seconds = time.perf_counter() - started
        model.mkdir(parents=True, exist_ok=True)
        trained.booster.save_model(model / "booster.ubj")
        (model / "profile.json").write_text(json.dumps(trained.profile))
        held = trained.holdout
        pd.DataFrame({data.ID_COLUMN: held.ids, data.TARGET: held.labels}).to_parquet(
            model / "holdout.parquet"
        )
        out |= {"rows": trained.train_rows, "holdout_rows": len(held)}
        out["train_roc_auc"] = trained.train_metrics["roc_auc"]
        out["holdout_roc_auc"] = classification_metrics(held.labels, held.scores, 0.5)["roc_auc"]
        out["seconds"] = seconds
    elif step == "drift":
        booster, profile = _load_model(args["model"])
        started = time.perf_counter()
        monitored = engine.monitor(batch, booster, profile)
        out |= {
            "rows": monitored.rows,
            "verdict": monitored.drift.verdict,
            "drifted": _drifted(monitored.drift),
        }
        out["psi"] = {f.column: f.psi for f in monitored.drift.features if not f.column.startswith("__")}
    elif step == "score":
        booster, _ = _load_model(args["local_model"])
        started = time.perf_counter()
        summary = engine.score(batch, booster, "1")
        out |= {"rows": summary["rows"], "roc_auc": summary.get("roc_auc")}
    else:
        raise ValueError(f"unknown step {step!r}")
    out.setdefault("seconds", time.perf_counter() - started)
    out["seconds"] = round(out["seconds"], 2)
    return out


def _digest(path: Path) -> str:
    """A digest of a Parquet file's rows in order, independent of its row groups (``hash_pandas_object``)."""
    import pandas as pd
    import pyarrow.parquet as pq

    digest = hashlib.sha256()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=200_000):
        frame = batch.to_pandas()
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        digest.update(",".join(f"{c}:{t}" for c, t in frame.dtypes.items()).encode())
    return digest.hexdigest()


def _compare(args: dict[str, Any]) -> dict[str, Any]:
    """Partitions, holdouts, both boosters' AUC on the local holdout, and the scores of both engines."""
    import numpy as np
    import pandas as pd

    from ml import train
    from ml.evaluate import classification_metrics
    from ml.lake import DATA_FILE, Lake

    engines = args["engines"]
    lakes = {name: Lake(Path(engines[name]["home"]) / "lake") for name in ENGINES}
    partitions = {}
    for key in [*args["window"], args["batch"]]:
        digests = {n: _digest(lakes[n].partition_dir(data.DATASET, key) / DATA_FILE) for n in ENGINES}
        partitions[key] = digests["local"] == digests["spark"]
    holdouts = {n: pd.read_parquet(Path(engines[n]["model"]) / "holdout.parquet") for n in ENGINES}
    boosters = {n: _load_model(engines[n]["model"])[0] for n in ENGINES}
    holdout = lakes["local"].read(data.DATASET, args["window"][-1:])
    holdout = holdout.set_index(data.ID_COLUMN).loc[holdouts["local"][data.ID_COLUMN]].reset_index()
    y = holdout[data.TARGET].astype(int).to_numpy()
    auc = {n: classification_metrics(y, train.predict(boosters[n], holdout), 0.5)["roc_auc"] for n in ENGINES}
    predictions = {
        n: lakes[n].read(f"{data.DATASET}__predictions", [args["batch"]]).set_index(data.ID_COLUMN)["score"]
        for n in ENGINES
    }
    both = predictions["local"].to_frame("local").join(predictions["spark"].rename("spark"), how="outer")
    difference = float(np.max(np.abs(both["local"] - both["spark"]))) if both.notna().all().all() else None
    return {
        "partitions_equal": partitions,
        "holdouts_equal": holdouts["local"][data.ID_COLUMN].tolist()
        == holdouts["spark"][data.ID_COLUMN].tolist(),
        "holdout_roc_auc": {n: round(v, 5) for n, v in auc.items()},
        "auc_difference": round(abs(auc["local"] - auc["spark"]), 5),
        "auc_within_tolerance": abs(auc["local"] - auc["spark"]) <= AUC_TOLERANCE,
        "scored_rows": {n: len(p) for n, p in predictions.items()},
        "max_score_difference": difference,
        "scores_within_tolerance": difference is not None and difference <= SCORE_TOLERANCE,
    }


def child(raw: str) -> None:
    """Run one child task (a step, or the comparison) and write its JSON result to ``$BENCH_RESULT``."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    args = json.loads(raw)
    if args["step"] == "compare":
        result = _compare(args)
    else:
        sampler = RssSampler()
        result = _step(args)
        result |= sampler.stop()
    Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(result, default=str))


def report(results: dict[str, Any]) -> str:
    """The results as Markdown: one row per step, then the parity checks."""
    settings, rows, parity = results["settings"], results["data"]["rows"], results["parity"]
    window = sum(rows[k] for k in results["data"]["window"])
    machine = results["machine"]
    lines = [
        "# Spark `local[2]` vs the local engine (issue 10)",
        "",
        f"`python -m bench.spark_bench --rows {settings['rows']}`: a window of {window:,} rows (3 months) and a "
        f"new month of {rows[results['data']['batch']]:,} rows, 30 features; XGBoost {settings['rounds']} rounds; "
        f"Spark `{settings['master']}`, driver memory {settings['driver_memory']}, "
        f"{settings['shuffle_partitions']} shuffle partitions. {machine['cpus']} cores, load average "
        f"{' / '.join(map(str, machine['load_average']))} at the start; pyspark {machine['pyspark']}, xgboost "
        f"{machine['xgboost']}; {results['seconds']:.0f} s in all. Every step ran in a fresh child process.",
        "",
        "Times: the step itself; Spark's session start-up (a JVM per child) is the next column and is part of the "
        "child's wall time. Peak RSS: the driver's Python process (`VmHWM`), and for Spark the sampled sum "
        "over its process tree (the driver JVM, which in local mode also runs the executors, and the Python "
        "workers).",
        "",
        "| step | rows | local s | Spark s | Spark ratio | Spark session s | wall ratio | local peak MiB "
        "| Spark driver Python MiB | Spark tree MiB (JVM) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for step in STEPS:
        local, spark = results["steps"][f"{step}/local"], results["steps"][f"{step}/spark"]
        lines.append(
            f"| {step} | {local['rows']:,} | {local['seconds']:.1f} | {spark['seconds']:.1f} "
            f"| {spark['seconds'] / local['seconds']:.1f}x | {spark['session_seconds']:.1f} "
            f"| {spark['wall_seconds'] / local['wall_seconds']:.1f}x | {local['tree_peak_rss_mib']:,.0f} "
            f"| {spark['driver_python_peak_rss_mib']:,.0f} | {spark['tree_peak_rss_mib']:,.0f} "
            f"({spark['jvm_peak_rss_mib']:,.0f}) |"
        )
    total = {e: sum(results["steps"][f"{s}/{e}"]["seconds"] for s in STEPS) for e in ENGINES}
    walls = {e: sum(results["steps"][f"{s}/{e}"]["wall_seconds"] for s in STEPS) for e in ENGINES}
    lines += [
        f"| all steps | | {total['local']:.1f} | {total['spark']:.1f} | {total['spark'] / total['local']:.1f}x "
        f"| | {walls['spark'] / walls['local']:.1f}x | | | |",
        "",
        "## Parity (same data, same seeds)",
        "",
        "| check | result |",
        "|---|---|",
        "| ingested partitions: same rows, order and types (row digests) | "
        f"{_yes(all(parity['partitions_equal'].values()))} "
        f"({', '.join(f'{k}: {_yes(v)}' for k, v in parity['partitions_equal'].items())}) |",
        f"| ingestion summaries (rows read, kept, duplicates) | {_yes(parity['ingest_summaries_equal'])} |",
        f"| window gate: verdict and failed expectations | {_yes(parity['gate_equal'])} |",
        f"| holdout rows (same ids, same order) | {_yes(parity['holdouts_equal'])} |",
        f"| holdout ROC AUC, local vs Spark-trained booster (tolerance {AUC_TOLERANCE}) | "
        f"{parity['holdout_roc_auc']['local']:.4f} vs {parity['holdout_roc_auc']['spark']:.4f}: "
        f"{_yes(parity['auc_within_tolerance'])} |",
        f"| drift verdict, each engine's own model and profile | {_yes(parity['drift_verdicts_equal'])} "
        f"({results['steps']['drift/local']['verdict']}) |",
        f"| drifted columns (warning or above) equal, and the six planted | "
        f"{_yes(parity['drifted_columns_equal'])}, {_yes(parity['drifted_columns_expected'])} |",
        f"| largest per-feature PSI difference | {parity['max_feature_psi_difference']:.2g} |",
        f"| scores of the same booster, largest difference (tolerance {SCORE_TOLERANCE:g}) | "
        f"{parity['max_score_difference']} : {_yes(parity['scores_within_tolerance'])} |",
    ]
    return "\n".join(lines) + "\n"


def _yes(value: bool) -> str:
    return "yes" if value else "**NO**"


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    opts = parse_args(argv)
    results = run(opts)
    out = opts.out
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
