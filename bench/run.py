"""Loopline's benchmark suite: ``python -m bench.run [--sizes N ...] [--compare-rows N] [--quick]``.

Generates seeded data per size into a temporary LOOPLINE_HOME, runs every comparison side by side (Loopline's
step, then its baseline, repeated; each run a fresh child process so its peak RSS is its own), and writes
``bench/results.json`` and ``bench/results.md``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import data, findings, procs, profiling, report, venvs
from bench.report import Series, growth, ratio, verdict

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = procs.PROJECT_ROOT
DEFAULT_SIZES = [100_000, 300_000, 1_000_000]
DEFAULT_COMPARE_ROWS = 1_000_000
QUICK_SIZES = [20_000, 60_000]
EVIDENTLY_ROWS = 100_000
LOOP_PORT = 28380
SHIFT = 0.5
WINDOW = ["2025-01", "2025-02", "2025-03"]
NEW_BATCH = "2025-04"
VERSIONED = [
    "apache-airflow",
    "apache-airflow-providers-standard",
    "mlflow",
    "great_expectations",
    "xgboost-cpu",
    "pandas",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "scipy",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of every part but the loop: small sizes, 1 repeat"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="row counts for cost growth (default 100k 300k 1M)"
    )
    parser.add_argument("--compare-rows", type=int, help="rows of the side-by-side comparisons (default 1M)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (median; >= 3)")
    parser.add_argument(
        "--evidently-rows",
        type=int,
        help="rows of the Evidently comparison (default 100k: one Evidently run on 1M rows takes minutes here)",
    )
    parser.add_argument(
        "--evidently-repeats", type=int, help="repeats of the Evidently run (default: --repeats)"
    )
    parser.add_argument(
        "--loop-rows", type=int, default=100_000, help="rows per batch in the loop latency test"
    )
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed rounds of the loop")
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=["evidently", "loop", "parse", "profile", "monitor", "outofcore"],
        help="leave parts out",
    )
    parser.add_argument(
        "--ooc-budget-mb", type=int, default=64, help="engine.memory_budget_mb of the out-of-core section"
    )
    parser.add_argument(
        "--ooc-factor",
        type=float,
        help="out-of-core inputs as a multiple of the budget (default 10; quick 1.5)",
    )
    parser.add_argument("--port", type=int, default=LOOP_PORT, help="Airflow API port of the loop test")
    parser.add_argument(
        "--omp-wait-policy",
        choices=["passive", "default"],
        default="passive",
        help="OMP_WAIT_POLICY of every child (passive: XGBoost threads sleep instead of spinning; see README)",
    )
    parser.add_argument("--workdir", type=Path, help="where data and state go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--output", type=Path, default=BENCH_DIR, help="folder for results.md and results.json"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: re-derive the findings and rewrite results.md from the output's results.json",
    )
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.sizes = opts.sizes or QUICK_SIZES
        opts.compare_rows = opts.compare_rows or max(opts.sizes)
        opts.evidently_rows = opts.evidently_rows or min(opts.sizes)
        opts.repeats = 1
        opts.skip = sorted({*opts.skip, "loop", "profile", "monitor"})
        opts.ooc_factor = opts.ooc_factor or 1.5
    opts.ooc_factor = opts.ooc_factor or 10.0
    opts.sizes = sorted(set(opts.sizes or DEFAULT_SIZES))
    opts.compare_rows = opts.compare_rows or DEFAULT_COMPARE_ROWS
    opts.evidently_rows = opts.evidently_rows or EVIDENTLY_ROWS
    opts.evidently_repeats = opts.evidently_repeats or opts.repeats
    if opts.repeats < 1:
        parser.error("--repeats must be at least 1")
    return opts


def machine_facts() -> dict[str, Any]:
    """Cores, memory, CPU, load and the versions that matter."""
    from importlib.metadata import PackageNotFoundError, version

    memory_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    cpu = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024**2, 1),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": found,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "code_version": _code_version(),
    }


def _code_version() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(PROJECT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no", "--", "ml", "dags"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes in ml/ or dags/' if dirty else ''}"


def example_dag() -> Path | None:
    """Airflow's own example_python_operator DAG from the installed providers-standard package."""
    pattern = str(
        PROJECT
        / ".venv/lib/python*/site-packages/airflow/providers/standard/example_dags/example_python_operator.py"
    )
    found = sorted(glob.glob(pattern))
    return Path(found[0]) if found else None


class Bench:
    """One run of the suite: its work folder, its measurements, its report."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.started = time.monotonic()
        self.workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="loopline-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.workdir / "bench.log"
        self.steps: dict[str, dict[int, Series]] = {}
        self.pairs: dict[str, tuple[Series, Series]] = {}
        self.extra: dict[str, Any] = {}
        self.errors: list[str] = []
        self.files: dict[int, dict[str, str]] = {}

    # -- plumbing -------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {message}"
        print(line, flush=True)
        with self.log_file.open("a") as log:
            log.write(line + "\n")

    def home(self, size: int) -> Path:
        return self.workdir / f"rows-{size}"

    def args(self, size: int, **extra: Any) -> dict[str, Any]:
        home = self.home(size)
        return {"home": str(home), "config": str(home / "loopline.yaml"), **extra}

    def child(self, task: str, size: int, timeout: float = 1800.0, **extra: Any) -> procs.ChildResult:
        """Run a worker task in the LOOPLINE_HOME of the data set of ``size`` rows."""
        home = self.home(size)
        env = procs.base_env(home, home / "loopline.yaml")
        return procs.run_worker(task, self.args(size, **extra), env, home, timeout)

    def measure(self, series: Series, task: str, size: int, **extra: Any) -> dict[str, Any]:
        result = self.child(task, size, **extra)
        series.add(result.payload, result.peak_rss_mib, result.wall_seconds)
        return result.payload

    def step(self, name: str, rows: int) -> Series:
        return self.steps.setdefault(name, {}).setdefault(rows, Series(f"{name}@{rows}"))

    def pair(self, name: str) -> tuple[Series, Series]:
        return self.pairs.setdefault(name, (Series(f"{name}/loopline"), Series(f"{name}/baseline")))

    def guarded(self, what: str, action: Callable[[], None]) -> None:
        """Run one part; a failure is recorded in the report and the rest goes on."""
        try:
            action()
        except Exception as exc:  # a broken part must not hide the others' results
            self.errors.append(f"{what}: {type(exc).__name__}: {str(exc)[-1500:]}")
            self.say(f"{what} FAILED: {type(exc).__name__}: {str(exc)[-400:]}")
            with self.log_file.open("a") as log:
                log.write(traceback.format_exc() + "\n")

    # -- parts ----------------------------------------------------------------------------------------
    def prepare(self, rows: int) -> None:
        home = self.home(rows)
        data.write_config(home)
        result = self.child("prepare", rows, rows=rows, shift=SHIFT)
        self.files[rows] = result.payload["files"]
        self.say(f"{rows:,} rows: data generated ({result.payload['seconds']:.0f} s)")

    def train(self, rows: int, repeat: int) -> None:
        """One repeat of training at ``rows`` (and of the bare baseline at the comparison size)."""
        lp = self.measure(self.step("train", rows), "train_loopline", rows, batches=WINDOW, repeat=repeat)
        line = f"{rows:,} rows: train_challenger {lp['seconds']:.1f} s"
        if rows == self.opts.compare_rows:
            loopline, bare = self.pair("train")
            loopline.runs.append(self.step("train", rows).runs[-1])
            base = self.measure(bare, "train_bare", rows, batches=WINDOW)
            line += f" | bare xgboost.train {base['seconds']:.1f} s"
        self.say(line + f" (repeat {repeat + 1})")

    def champion(self, rows: int) -> None:
        """The first trained version becomes champion; its reference profile is built once (timed, reported)."""
        self.child("promote_first", rows)
        profile = self.child(
            "build_profile", rows, batches=WINDOW, profile=str(self.home(rows) / "profile.json")
        )
        series = self.step("build_profile", rows)
        series.add(profile.payload, profile.peak_rss_mib, profile.wall_seconds)

    def drift(self, rows: int, repeat: int) -> None:
        """One repeat of the drift check at ``rows`` (and of the Parquet floor at the comparison size)."""
        profile = str(self.home(rows) / "profile.json")
        lp = self.measure(self.step("drift", rows), "drift_loopline", rows, batch=NEW_BATCH, profile=profile)
        line = (
            f"{rows:,} rows: drift read+compare {lp['seconds']:.2f} s (compare {lp['compare_seconds']:.2f})"
        )
        if rows == self.opts.compare_rows:
            loopline, floor = self.pair("drift_floor")
            loopline.runs.append(self.step("drift", rows).runs[-1])
            base = self.measure(floor, "drift_floor", rows, file=self.files[rows][NEW_BATCH])
            line += f" | pyarrow read {base['seconds']:.2f} s"
        self.say(line + f" (repeat {repeat + 1})")

    def evidently(self, rows: int, python: Path) -> None:
        """Evidently's DataDriftPreset on the same reference and batch, repeats in one process (import once)."""
        loopline, theirs = self.pair("drift_evidently")
        for run in self.step("drift", rows).runs:
            loopline.runs.append({**run, "seconds": run["in_memory_seconds"]})
        files = self.files[rows]
        args = {
            "reference": [files[b] for b in WINDOW],
            "current": files[NEW_BATCH],
            "numeric": data.NUMERIC,
            "categorical": data.CATEGORICAL,
            "repeats": self.opts.evidently_repeats,
        }
        command = [str(python), str(BENCH_DIR / "evidently_runner.py"), json.dumps(args)]
        env = procs.base_env()
        env.pop("PYTHONPATH", None)
        result = procs.run_child(command, env, self.home(rows), timeout=3600)
        for seconds in result.payload.pop("runs_seconds"):
            theirs.add({**result.payload, "seconds": seconds}, result.peak_rss_mib, result.wall_seconds)
        times = ", ".join(f"{v:.1f}" for v in theirs.values())
        self.say(
            f"{rows:,} rows: Evidently DataDriftPreset {times} s (import {result.payload['import_seconds']:.0f} s)"
        )

    def monitor(self, rows: int) -> None:
        """The whole monitor task body once (information, not a target: drift plus champion scoring)."""
        lp = self.measure(self.step("monitor task", rows), "monitor_loopline", rows, batch=NEW_BATCH)
        self.say(f"{rows:,} rows: monitor_batch (scores + drift + report) {lp['seconds']:.2f} s")

    def gate(self, rows: int, repeat: int) -> None:
        """One repeat of the GE gate at ``rows`` (and of the pandas checks at the comparison size)."""
        compare = rows == self.opts.compare_rows
        suite = str(data.SUITE_FILE)
        check = compare and repeat == 0
        lp = self.measure(self.step("gate", rows), "gate_ge", rows, batch=NEW_BATCH, suite=suite, check=check)
        line = f"{rows:,} rows: GE validate {lp['seconds']:.2f} s (import {lp['import_seconds']:.1f} s)"
        if compare:
            loopline, pandas = self.pair("gate")
            loopline.runs.append(self.step("gate", rows).runs[-1])
            base = self.measure(pandas, "gate_pandas", rows, batch=NEW_BATCH, suite=suite, check=check)
            line += f" | pandas {base['seconds']:.3f} s"
        self.say(line + f" (repeat {repeat + 1})")

    def score(self, rows: int, repeat: int) -> None:
        """One repeat of scoring at ``rows`` (and of the bare booster at the comparison size)."""
        lp = self.measure(self.step("score", rows), "score_loopline", rows, batch=NEW_BATCH)
        line = f"{rows:,} rows: score_batch {lp['seconds']:.2f} s"
        if rows == self.opts.compare_rows:
            loopline, bare = self.pair("score")
            loopline.runs.append(self.step("score", rows).runs[-1])
            base = self.measure(bare, "score_bare", rows, batch=NEW_BATCH)
            line += (
                f" | Booster.predict {base['seconds']:.2f} s, inplace_predict {base['inplace_seconds']:.2f} s"
            )
        self.say(line + f" (repeat {repeat + 1})")

    def dag_parse(self) -> None:
        example = example_dag()
        dag_files = sorted(str(p) for p in (PROJECT / "dags").glob("*.py"))
        files: list[Any] = [*dag_files, *([str(example)] if example else [])]
        fix = ["airflow.sdk.definitions.decorators"]
        files += [{"file": f, "preimport": fix} for f in dag_files]
        home = self.home(self.opts.compare_rows)
        airflow_home = self.workdir / "airflow-parse"
        airflow_home.mkdir(exist_ok=True)
        env = procs.base_env(home, home / "loopline.yaml")
        env.update(
            {
                "AIRFLOW_HOME": str(airflow_home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
            }
        )
        args = {"files": files, "repeats": self.opts.repeats, "plugins": str(PROJECT / "plugins")}
        result = procs.run_worker("dag_parse", args, env, airflow_home)
        self.extra["dag_parse_raw"] = result.payload
        self.extra["example_dag"] = str(example) if example else None
        self.say(f"DAG parse measured ({len(files)} entries)")

    def loop(self) -> None:
        from ml.config import Paths
        from ml.stack import Stack

        home = self.workdir / "loop"
        home.mkdir(exist_ok=True)
        env = procs.base_env(home, home / "loopline.yaml")
        args = {
            "home": str(home),
            "rows": self.opts.loop_rows,
            "repeats": self.opts.loop_repeats,
            "port": self.opts.port,
        }
        self.say(f"loop latency: starting Airflow in {home} (port {self.opts.port})")
        try:
            result = procs.run_worker("loop_latency", args, env, home, timeout=2400)
            self.extra["loop"] = result.payload
            for r in result.payload["rounds"]:
                self.say(f"loop round {r['batch']}: {r.get('latency_seconds') or 0:.1f} s, ok={r.get('ok')}")
        finally:
            Stack(Paths(home)).stop()

    def out_of_core(self) -> None:
        """The local engine streaming over inputs ``--ooc-factor`` x its budget, vs in memory (bench.outofcore)."""
        from bench import outofcore

        self.say(
            f"out of core: budget {self.opts.ooc_budget_mb} MiB, inputs {self.opts.ooc_factor}x the budget"
        )
        settings = outofcore.parse_args(
            [
                "--budget-mb",
                str(self.opts.ooc_budget_mb),
                "--factor",
                str(self.opts.ooc_factor),
                "--workdir",
                str(self.workdir / "out-of-core"),
            ]
        )
        self.extra["out_of_core"] = outofcore.run(settings)

    def omp_probe(self) -> None:
        """The same small bare XGBoost training with spinning (default) and sleeping (passive) OpenMP threads."""
        rows = min(self.files)
        out = {}
        for policy in ("PASSIVE", None):
            procs.OMP_WAIT_POLICY = policy
            try:
                result = self.child("omp_probe", rows, timeout=120, rows=20_000, rounds=20)
                out[policy or "default"] = round(result.payload["seconds"], 3)
            except procs.StepFailed as exc:
                out[policy or "default"] = f"failed or over 120 s: {str(exc)[:200]}"
        procs.OMP_WAIT_POLICY = "PASSIVE" if self.opts.omp_wait_policy == "passive" else None
        self.extra["omp_probe"] = {**out, "load_average": [round(v, 2) for v in os.getloadavg()]}
        self.say(f"OpenMP probe (20k rows, 20 rounds, all cores): {out}")

    def profile_misses(self, targets: list[dict[str, Any]]) -> dict[str, Any]:
        """py-spy on the Loopline side of each missed comparison (at the smallest size >= 100k rows)."""
        rows = min((n for n in self.files if n >= 100_000), default=self.opts.compare_rows)
        home = self.home(rows)
        env = procs.base_env(home, home / "loopline.yaml")
        plans = {
            "gate": ("gate_ge", {"batch": NEW_BATCH, "suite": str(data.SUITE_FILE)}, "validate"),
            "train": ("train_loopline", {"batches": WINDOW, "repeat": 99}, "train_challenger"),
            "score": ("score_loopline", {"batch": NEW_BATCH}, "score_batch"),
            "drift_floor": (
                "drift_loopline",
                {"batch": NEW_BATCH, "profile": str(home / "profile.json")},
                "compare",
            ),
        }
        out = {}
        for target in targets:
            key = target.get("profile")
            if target["verdict"] != "MISS" or key not in plans or key in out:
                continue
            task, extra, focus = plans[key]
            self.say(f"profiling {task} with py-spy (missed: {target['what']})")
            out[key] = profiling.profile_task(
                task, self.args(rows, **extra), env, home, focus, self.workdir / "venv-tools.log"
            )
        return out

    # -- the whole run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        opts = self.opts
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        machine = machine_facts()
        self.say(f"work folder {self.workdir}; sizes {opts.sizes}; comparisons at {opts.compare_rows:,} rows")
        evidently: Path | None = None
        if "evidently" not in opts.skip:
            try:
                self.say(
                    "checking the Evidently venv (bench/.venv-evidently; created from PyPI when missing)"
                )
                evidently = venvs.ensure_evidently(self.workdir / "venv-evidently.log")
                machine["evidently_versions"] = venvs.versions(
                    evidently, ["evidently", "pandas", "numpy", "scipy"]
                )
            except Exception as exc:
                self.errors.append(f"Evidently venv: {exc}")
        procs.OMP_WAIT_POLICY = "PASSIVE" if opts.omp_wait_policy == "passive" else None
        # Sizes alternate inside each repeat, so a change of the machine's load hits every size alike (growth).
        for rows in sorted({*opts.sizes, opts.compare_rows, opts.evidently_rows}):
            self.guarded(f"data {rows}", lambda rows=rows: self.prepare(rows))
        ready = sorted(self.files)
        for repeat in range(opts.repeats):
            for rows in ready:
                self.guarded(f"train {rows}", lambda rows=rows, r=repeat: self.train(rows, r))
        for rows in ready:
            self.guarded(f"champion {rows}", lambda rows=rows: self.champion(rows))
        for repeat in range(opts.repeats):
            for rows in ready:
                self.guarded(f"drift {rows}", lambda rows=rows, r=repeat: self.drift(rows, r))
        if evidently is not None and opts.evidently_rows in ready:
            self.guarded("Evidently", lambda: self.evidently(opts.evidently_rows, evidently))
        if opts.compare_rows in ready and "monitor" not in opts.skip:
            self.guarded("monitor", lambda: self.monitor(opts.compare_rows))
        for repeat in range(opts.repeats):
            for rows in ready:
                self.guarded(f"gate {rows}", lambda rows=rows, r=repeat: self.gate(rows, r))
        for repeat in range(opts.repeats):
            for rows in ready:
                self.guarded(f"score {rows}", lambda rows=rows, r=repeat: self.score(rows, r))
        if "parse" not in opts.skip:
            self.guarded("DAG parse", self.dag_parse)
        if "loop" not in opts.skip:
            self.guarded("loop latency", self.loop)
        if "outofcore" not in opts.skip:
            self.guarded("out of core", self.out_of_core)
        if not opts.quick:
            self.guarded("OpenMP probe", self.omp_probe)
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        results = self.assemble(machine, started_at)
        if "profile" not in opts.skip:
            self.guarded("profiles", lambda: results.update(profiles=self.profile_misses(results["targets"])))
        results["findings"] = findings.build(results)
        results["errors"] = self.errors
        results["duration_seconds"] = round(time.monotonic() - self.started, 1)
        return results

    def assemble(self, machine: dict[str, Any], started_at: str) -> dict[str, Any]:
        """Medians, ratios, growth fits and the targets as PASS/MISS."""
        opts = self.opts
        comparisons = self.comparisons()
        steps = {
            name: {str(rows): series.summary() for rows, series in by_size.items() if series.runs}
            for name, by_size in self.steps.items()
        }
        growth_results = {}
        for name in ("drift", "gate", "train", "score"):
            by_size = {rows: s for rows, s in self.steps.get(name, {}).items() if s.runs}
            if len(by_size) >= 2:
                fitted = growth(sorted(by_size), [by_size[r].median() for r in sorted(by_size)])
                fitted["verdict"] = verdict(fitted["factor_over_linear"] <= 1.5)
                growth_results[name] = fitted
        suite_size = len(json.loads(data.SUITE_FILE.read_text())["expectations"])
        results: dict[str, Any] = {
            "command": "python -m bench.run " + " ".join(sys.argv[1:]),
            "started_at": started_at,
            "duration_seconds": 0.0,
            "machine": machine,
            "settings": {
                "quick": opts.quick,
                "sizes": opts.sizes,
                "compare_rows": opts.compare_rows,
                "repeats": opts.repeats,
                "evidently_rows": opts.evidently_rows,
                "evidently_repeats": opts.evidently_repeats,
                "omp_wait_policy": opts.omp_wait_policy,
                "loop_rows": opts.loop_rows,
                "loop_repeats": 0 if "loop" in opts.skip else opts.loop_repeats,
                "skipped": opts.skip,
            },
            "data": {
                "description": (
                    f"seeded; {len(data.NUMERIC)} numeric + {len(data.CATEGORICAL)} categorical features, binary "
                    f"target, int id, event time; window = 3 baseline months holding N rows, new batch = N rows "
                    f"with {data.DRIFTED_COLUMNS} shifted by {SHIFT} sd / reweighted; suite "
                    f"bench/expectations/bench.json ({suite_size} expectations)"
                ),
                "planted_drift": data.DRIFTED_COLUMNS,
            },
            "comparisons": comparisons,
            "steps": steps,
            "breakdowns": self.breakdowns(),
            "growth": growth_results,
        }
        results["omp_probe"] = self.extra.get("omp_probe")
        results["dag_parse"] = self.parse_summary()
        results["loop"] = self.loop_summary()
        results["out_of_core"] = self.extra.get("out_of_core")
        results["targets"] = self.targets(results)
        return results

    def comparisons(self) -> dict[str, Any]:
        labels = {
            "drift_evidently": (
                f"ml.drift.compare vs the saved profile (in memory), {self.opts.evidently_rows:,} rows",
                "Evidently DataDriftPreset (same rows)",
            ),
            "drift_floor": ("lake read + ml.drift.compare", "pyarrow.parquet.read_table"),
            "gate": (
                "ml.quality.validate (GE, first call, GE imported)",
                "same suite in pandas (bench/checks.py)",
            ),
            "train": ("ml.steps.train_challenger", "DMatrix + xgboost.train, same rows/params"),
            "score": ("ml.steps.score_batch", "Booster.predict(DMatrix), encoded in memory"),
        }
        out = {}
        for name, (loopline, baseline) in self.pairs.items():
            if not loopline.runs or not baseline.runs:
                continue
            per_repeat = [
                round(ratio(a, b), 3) if name != "drift_evidently" else round(ratio(b, a), 1)
                for a, b in zip(loopline.values(), baseline.values(), strict=False)
            ]
            comp = {
                "loopline_label": labels[name][0],
                "baseline_label": labels[name][1],
                "loopline": loopline.summary(),
                "baseline": baseline.summary(),
                "ratio": ratio(loopline.median(), baseline.median()),
                "per_repeat_ratios": per_repeat,
            }
            if name == "drift_evidently":
                comp["speedup"] = ratio(baseline.median(), loopline.median())
                comp["ratio_text"] = f"{comp['speedup']:.0f}x faster"
                comp["loopline_drifted"] = loopline.runs[0].get("drifted")
                comp["evidently_drifted"] = baseline.runs[0].get("drifted")
                comp["evidently_import_seconds"] = baseline.median("import_seconds")
                comp["note"] = (
                    f"Evidently is {comp['speedup']:.0f}x slower; drifted columns: Loopline "
                    f"{comp['loopline_drifted']}, Evidently {comp['evidently_drifted']}, planted "
                    f"{data.DRIFTED_COLUMNS}. Evidently needs the raw reference every time; Loopline compares "
                    "against the saved profile (built once)."
                )
            if name == "gate":
                with_import = [
                    r["seconds"] + r["import_seconds"]
                    for r in loopline.runs
                    if r.get("import_seconds") is not None
                ]
                comp["ratio_with_import"] = ratio(
                    sorted(with_import)[len(with_import) // 2], baseline.median()
                )
                comp["loopline_warm_seconds"] = loopline.median("warm_seconds")
                comp["baseline_warm_seconds"] = baseline.median("warm_seconds")
                checked = [r for r in loopline.runs if "failures" in r]
                theirs = [r for r in baseline.runs if "failures" in r]
                if checked and theirs:
                    comp["same_failures_on_broken_batch"] = checked[0]["failures"] == theirs[0]["failures"]
                    comp["broken_batch_failures"] = checked[0]["failures"]
                comp["note"] = (
                    f"first call in a fresh process with GE already imported; GE import adds "
                    f"{loopline.median('import_seconds'):.1f} s (ratio with it {comp['ratio_with_import']:.0f}x); "
                    f"a second (warm) call takes {comp['loopline_warm_seconds']:.2f} s vs pandas "
                    f"{comp['baseline_warm_seconds']:.3f} s. Same failures on a broken batch: "
                    f"{comp.get('same_failures_on_broken_batch')}."
                )
            if name in ("train", "score"):
                # Load-robust cross-check: the step's total over its own booster call, timed in the same process.
                core = "xgboost.train" if name == "train" else "Booster.inplace_predict"
                extra = baseline.median("dmatrix_seconds") if name == "train" else 0.0
                own = [
                    r["seconds"] / ((r.get("breakdown") or {}).get(core, 0.0) + extra)
                    for r in loopline.runs
                    if (r.get("breakdown") or {}).get(core)
                ]
                comp["in_process_ratio"] = sorted(own)[len(own) // 2] if own else None
                comp["verdict_ratio"] = max(comp["ratio"], comp["in_process_ratio"] or 0.0)
            if name == "score":
                comp["ratio_vs_inplace"] = ratio(loopline.median(), baseline.median("inplace_seconds"))
                comp["baseline_inplace_seconds"] = baseline.median("inplace_seconds")
                comp["max_abs_diff_loopline_vs_bare"] = baseline.runs[0].get("max_abs_diff_loopline_vs_bare")
                comp["note"] = (
                    f"vs Booster.inplace_predict on the encoded frame: {comp['ratio_vs_inplace']:.2f}x; "
                    f"Loopline's scores equal the bare ones (max abs diff "
                    f"{comp['max_abs_diff_loopline_vs_bare']})."
                )
            if name == "train":
                comp["note"] = (
                    f"bare: DMatrix {baseline.median('dmatrix_seconds'):.2f} s + boosting "
                    f"{baseline.median('boost_seconds'):.2f} s on {baseline.runs[0]['rows']:,} rows, "
                    f"{baseline.runs[0]['rounds']} rounds, params captured from ml.train.fit."
                )
            out[name] = comp
        return out

    def breakdowns(self) -> dict[str, dict[str, float]]:
        rows = self.opts.compare_rows
        out = {}
        for name in ("train", "score", "drift", "monitor task"):
            series = self.steps.get(name, {}).get(rows)
            if not series or not series.runs:
                continue
            median_run = sorted(series.runs, key=lambda r: r["seconds"])[len(series.runs) // 2]
            parts = dict(median_run.get("breakdown") or {})
            parts = {"total": median_run["seconds"], **parts}
            for key in ("read_seconds", "compare_seconds", "import_seconds"):
                if key in median_run:
                    parts[key.replace("_seconds", "")] = median_run[key]
            out[f"{name} @ {rows:,} rows"] = {k: round(v, 3) for k, v in parts.items()}
        return out

    def parse_summary(self) -> dict[str, Any] | None:
        raw = self.extra.get("dag_parse_raw")
        if not raw:
            return None
        import statistics

        files = []
        for name, runs in raw["files"].items():
            ok = [r for r in runs if "process_seconds" in r]
            values = [r["process_seconds"] for r in ok]
            files.append(
                {
                    "file": name.replace(str(PROJECT) + "/", "").replace(str(PROJECT / ".venv") + "/", ""),
                    "path": name,
                    "median_seconds": round(statistics.median(values), 4) if values else None,
                    "min_seconds": round(min(values), 4) if values else None,
                    "max_seconds": round(max(values), 4) if values else None,
                    "parse_median_seconds": round(statistics.median(r["parse_seconds"] for r in ok), 4)
                    if ok
                    else None,
                    "dags": ok[0]["dags"] if ok else 0,
                    "errors": "; ".join({str(r.get("error") or "") for r in runs} - {""})
                    or "; ".join(k for r in ok for k in r["errors"]),
                }
            )
        loop = self.extra.get("loop") or {}
        return {
            "files": files,
            "example": self.extra.get("example_dag"),
            "scheduler_reported": loop.get("parse_durations"),
        }

    def loop_summary(self) -> dict[str, Any] | None:
        if "loop" in self.opts.skip:
            return None
        loop = self.extra.get("loop")
        if not loop:
            return {"error": next((e for e in self.errors if e.startswith("loop")), "not run"), "rounds": []}
        return loop

    def targets(self, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Every target of issue 6 with its measured value and PASS/MISS (n/a when not measured)."""
        comps = results["comparisons"]
        rows = f"{self.opts.compare_rows:,} rows"
        out: list[dict[str, Any]] = []

        def add(
            what: str, loopline: str, against: str, target: str, measured: str, ok: bool | None, **kw: Any
        ) -> None:
            out.append(
                {
                    "what": what,
                    "loopline": loopline,
                    "against": against,
                    "target": target,
                    "measured": measured,
                    "verdict": verdict(ok),
                    **kw,
                }
            )

        ev = comps.get("drift_evidently")
        if ev:
            same = (
                set(ev["loopline_drifted"] or [])
                == set(ev["evidently_drifted"] or [])
                == set(data.DRIFTED_COLUMNS)
            )
            add(
                f"drift check, {self.opts.evidently_rows:,} rows x 30",
                "ml.drift.compare vs saved profile",
                "Evidently DataDriftPreset",
                ">= 50x faster, same drifted columns",
                f"{ev['speedup']:.0f}x faster; same columns: {same}",
                ev["speedup"] >= 50 and same,
            )
        else:
            add(
                f"drift check, {rows} x 30",
                "ml.drift.compare",
                "Evidently DataDriftPreset",
                ">= 50x faster",
                "not measured",
                None,
            )
        floor = comps.get("drift_floor")
        add(
            f"drift check, {rows}",
            "lake read + ml.drift.compare",
            "pyarrow read_table (floor)",
            "<= 3x",
            f"{floor['ratio']:.2f}x" if floor else "not measured",
            floor["ratio"] <= 3 if floor else None,
            profile="drift_floor",
        )
        gate = comps.get("gate")
        add(
            f"data-quality gate, {rows} x 30",
            "ml.quality.validate (GE)",
            "same checks in pandas",
            "<= 5x",
            f"{gate['ratio']:.1f}x (with GE import {gate['ratio_with_import']:.0f}x)"
            if gate
            else "not measured",
            gate["ratio"] <= 5 if gate else None,
            profile="gate",
        )
        train = comps.get("train")
        add(
            f"training, {rows} x 30, 200 rounds hist",
            "ml.steps.train_challenger",
            "bare xgboost.train",
            "<= 1.15x",
            f"{train['ratio']:.2f}x side by side; {train['in_process_ratio']:.2f}x in-process (total / its own "
            "xgboost.train + DMatrix)"
            if train and train.get("in_process_ratio")
            else (f"{train['ratio']:.2f}x" if train else "not measured"),
            train["verdict_ratio"] <= 1.15 if train else None,
            profile="train",
        )
        score = comps.get("score")
        add(
            f"scoring, {rows}",
            "ml.steps.score_batch",
            "bare Booster.predict",
            "<= 1.3x",
            f"{score['ratio']:.2f}x side by side (vs inplace_predict {score['ratio_vs_inplace']:.2f}x); "
            f"{score['in_process_ratio']:.2f}x in-process (total / its own inplace_predict)"
            if score and score.get("in_process_ratio")
            else (f"{score['ratio']:.2f}x" if score else "not measured"),
            score["verdict_ratio"] <= 1.3 if score else None,
            profile="score",
        )
        parse = results.get("dag_parse")
        if parse:
            example = next((f for f in parse["files"] if "example_python_operator" in f["file"]), None)
            ours = [f for f in parse["files"] if f["file"].startswith("dags/") and " +" not in f["file"]]
            slowest = max(ours, key=lambda f: f["median_seconds"] or 0) if ours else None
            ok = bool(ours) and all(
                (f["median_seconds"] or 9) < 0.2
                and (example is None or (f["median_seconds"] or 9) < example["median_seconds"])
                for f in ours
            )
            measured = ", ".join(f"{Path(f['file']).stem} {f['median_seconds']:.2f} s" for f in ours) + (
                f"; example {example['median_seconds']:.2f} s" if example else ""
            )
            add(
                "DAG parse",
                "each dags/*.py",
                "example_python_operator",
                "< 0.2 s and faster than the example",
                measured,
                ok,
                slowest=slowest["file"] if slowest else None,
            )
        else:
            add("DAG parse", "each dags/*.py", "example_python_operator", "< 0.2 s", "not measured", None)
        loop = results.get("loop") or {}
        latencies = [r["latency_seconds"] for r in loop.get("rounds", []) if r.get("ok")]
        if latencies:
            import statistics

            median = statistics.median(latencies)
            add(
                f"loop latency, {self.opts.loop_rows:,} rows",
                "batch lands -> monitor -> retrain -> new champion",
                "none (absolute)",
                "< 120 s",
                f"median {median:.0f} s (range {min(latencies):.0f}-{max(latencies):.0f} s, "
                f"{len(latencies)}/{len(loop['rounds'])} rounds promoted)",
                median < 120 and len(latencies) == len(loop["rounds"]),
            )
        else:
            reason = (
                loop.get("error")
                or "; ".join(str(r.get("reason")) for r in loop.get("rounds", []))
                or "not run"
            )
            add(
                "loop latency",
                "batch lands -> new champion",
                "none",
                "< 120 s",
                f"not measured: {reason}"[:300],
                None,
            )
        for name, g in results["growth"].items():
            add(
                f"cost growth: {name}",
                f"{name} at {', '.join(f'{n:,}' for n in g['sizes'])} rows",
                "linear fit",
                "<= 1.5x linear",
                f"{g['factor_over_linear']:.2f}x linear (log-log slope {g['loglog_slope']:.2f})",
                g["factor_over_linear"] <= 1.5,
            )
        return out

    def cleanup(self) -> None:
        if self.opts.keep or self.opts.workdir:
            self.say(f"kept {self.workdir}")
            return
        shutil.rmtree(self.workdir, ignore_errors=True)


def rewrite_report(output: Path) -> None:
    """results.md (and the findings in results.json) again from an existing results.json."""
    results = json.loads((output / "results.json").read_text())
    results["findings"] = findings.build(results)
    report.write_json(output / "results.json", results)
    (output / "results.md").write_text(report.markdown(results))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.report_only:
        rewrite_report(opts.output)
        return 0
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    bench = Bench(opts)
    try:
        results = bench.run()
        opts.output.mkdir(parents=True, exist_ok=True)
        report.write_json(opts.output / "results.json", results)
        (opts.output / "results.md").write_text(report.markdown(results))
        bench.say(f"wrote {opts.output / 'results.md'} and results.json")
        for target in results["targets"]:
            print(
                f"  {target['verdict']:4}  {target['what']}: {target['measured']} (target {target['target']})"
            )
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
