"""Time ``loopline replay`` end to end on a seeded demo history.

    .venv/bin/python bench/replay_bench.py [--rows 300000] [--out bench/replay-results.json]

Generates ``--rows`` rows of the loan demo (``--months`` monthly batches: a broken export in month 5, covariate and
concept shift from month 8) into a temporary LOOPLINE_HOME, then runs ``loopline replay`` on it in a child process,
so its peak RSS (``os.wait4``) and its wall time include every import, as on the command line. ``--batching rows``
replays the same history as one file without a time column, cut into row batches. Writes the wall time, the time
per phase (ingest, score, monitor, retrain, from the replay's own report), the peak RSS and rows/s to ``--out``
and prints them. ``--profile FILE`` also saves the child's cProfile stats and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from bench import procs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--child`` and the options after it are internal: the measured replay)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=300_000, help="rows of demo history in all (default 300k)"
    )
    parser.add_argument("--months", type=int, default=12, help="monthly batches the rows are spread over")
    parser.add_argument("--batching", choices=["month", "rows"], default="month")
    parser.add_argument("--bootstrap", type=int, default=3, help="batches that train the first champion")
    parser.add_argument("--out", default=str(PROJECT / "bench" / "replay-results.json"))
    parser.add_argument("--workdir", help="where to generate data and state (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--profile", help="write the replay's cProfile stats to this file")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="kill the replay after this many seconds"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def generate(rows: int, months: int, batching: str, workdir: Path) -> Path:
    """The seeded demo history under ``workdir/home/landing``; returns the config file to replay it with."""
    from ml import demo_data

    scenario = demo_data.Scenario(months=months, rows_per_month=max(1, rows // months))
    base_config = PROJECT / "loopline.yaml"
    landing = workdir / "home" / "landing"
    if batching == "rows":
        return demo_data.write_row_stream_dataset(scenario, landing, workdir / "config", base_config)
    demo_data.write_landing(scenario, landing / "loans")
    return base_config


def run_child(args: argparse.Namespace) -> int:
    """Inside the child: ``loopline replay`` through its CLI, optionally profiled; reports to $BENCH_RESULT."""
    started = time.perf_counter()
    from ml.cli import main

    imported = time.perf_counter()
    argv = ["--config", args.config, "replay", "--json", args.json, "--home", args.home]
    argv += ["--bootstrap", str(args.bootstrap)]
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    code = main(argv)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    payload = {"exit": code, "cli_import_seconds": imported - started}
    Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(payload))
    return code


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Generate the history, replay it in a child process, and collect what was measured."""
    started = time.perf_counter()
    config_file = generate(args.rows, args.months, args.batching, workdir)
    generated = time.perf_counter() - started
    # The demo adds ~0.2% duplicate rows (dropped at ingest): count what actually landed.
    landed = sum(f.read_bytes().count(b"\n") - 1 for f in (workdir / "home" / "landing").rglob("*.csv"))
    home, report_file = workdir / "home", workdir / "replay.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--config", str(config_file)]
    command += ["--home", str(workdir / "replay-home"), "--json", str(report_file)]
    command += ["--bootstrap", str(args.bootstrap)]
    if args.profile:
        command += ["--profile", str(Path(args.profile).resolve())]
    load_before = os.getloadavg()
    child = procs.run_child(command, procs.base_env(home, config_file), PROJECT, timeout=args.timeout)
    report = json.loads(report_file.read_text())
    timing = report["timing"]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows_requested": args.rows,
        "rows_landed": landed,
        "batches": len(report["batches"]),
        "batching": args.batching,
        "generate_seconds": round(generated, 2),
        "wall_seconds": round(child.wall_seconds, 2),
        "replay_seconds": round(timing["wall_seconds"], 2),
        "outside_replay_seconds": round(child.wall_seconds - timing["wall_seconds"], 2),
        "cli_import_seconds": round(child.payload["cli_import_seconds"], 2),
        "phase_seconds": timing["phase_seconds"],
        "rows_accepted": timing["rows_accepted"],
        "rows_per_second": round(landed / child.wall_seconds, 1),
        "peak_rss_mib": round(child.peak_rss_mib, 1),
        "per_batch_seconds": {b["batch"]: b["seconds"] for b in report["batches"]},
        "summary": report["summary"],
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "omp_wait_policy": procs.OMP_WAIT_POLICY,
        },
    }


def describe(result: dict[str, Any]) -> str:
    """A few lines for people."""
    phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result["phase_seconds"].items())
    summary = result["summary"]
    return "\n".join(
        [
            f"replay of {result['rows_landed']} rows in {result['batches']} batches "
            f"(batching {result['batching']}): {result['wall_seconds']:.1f} s wall, "
            f"{result['rows_per_second']:.0f} rows/s, peak RSS {result['peak_rss_mib']:.0f} MiB",
            f"  replay {result['replay_seconds']:.1f} s: {phases}; process start, CLI and exit "
            f"{result['outside_replay_seconds']:.1f} s",
            f"  generating the data (not in the wall time): {result['generate_seconds']:.1f} s",
            f"  loop: {summary['alerts']} alert(s), {summary['retrains']} retrain(s), "
            f"{summary['promotions']} promotion(s), {summary['quarantined']} quarantined; mean AUC loop "
            f"{summary['mean_roc_auc_loop']:.3f} vs static {summary['mean_roc_auc_static']:.3f}",
            f"  load average before/after: {result['machine']['load_average_before'][0]} / "
            f"{result['machine']['load_average_after'][0]} on {result['machine']['cpus']} CPUs",
        ]
    )


def print_profile(stats_file: str, top: int = 25) -> None:
    """The functions with the most cumulative time in the child."""
    pstats.Stats(stats_file).strip_dirs().sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the internal ``--child``, the replay it measures)."""
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="loopline-replay-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(args, workdir)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(describe(result))
    print(f"results: {out}")
    if args.profile:
        print_profile(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
