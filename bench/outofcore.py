"""Out of core on one worker: ``python -m bench.outofcore [--budget-mb 64] [--factor 10] [--rounds 50]``.

Writes a training window and a new batch whose in-memory size (the local engine's own Parquet-footer estimate)
is ``--factor`` times ``engine.memory_budget_mb`` each, then runs the local engine's gate, training, drift and
scoring on them, each step in a fresh child process: streaming (``engine.out_of_core: auto``, which picks
streaming past the budget) and in memory on the same data (``never``). Reports per step the time, rows per
second, peak RSS (the child's own ``VmHWM``, see bench.procs) and the ratio of throughputs.

Whether memory is bounded by the budget, not by the data: each step also runs streamed (``always``) on inputs
``--small-factor`` times the budget (default 1x). That peak is the step's fixed overhead (its imports, its
libraries' runtime state, and its buffers, which the budget sizes); the growth from there to the large inputs is
what the data adds, and a bounded step's growth stays within one budget. A child that only imports the steps'
modules gives the imports' share. Results go to ``--json`` (default ``bench/outofcore.json``) and are printed as
a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import data, procs

STEPS = ("gate", "train", "drift", "score")
WINDOW = ["2025-01", "2025-02", "2025-03"]
NEW_BATCH = "2025-04"
CHUNK_ROWS = 500_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.outofcore", description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mb", type=int, default=64, help="engine.memory_budget_mb (>= 64)")
    parser.add_argument("--factor", type=float, default=10.0, help="data size as a multiple of the budget")
    parser.add_argument(
        "--small-factor",
        type=float,
        default=1.0,
        help="inputs of the fixed-overhead runs (streamed) as a multiple of the budget; 0 skips them",
    )
    parser.add_argument("--batch-rows", type=int, default=100_000, help="engine.batch_rows")
    parser.add_argument("--rounds", type=int, default=50, help="boosting rounds of the training step")
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "outofcore.json")
    parser.add_argument("--workdir", type=Path, help="where data and state go (default: a temporary folder)")
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=STEPS,
        default=list(STEPS),
        help="steps to run (drift and score need a model: train runs too unless --workdir holds one)",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=("auto", "never"), default=["auto", "never"], help="out_of_core modes"
    )
    return parser.parse_args(argv)


def _write_batch(lake: Any, key: str, rows: int, seed: int, shift: float) -> None:
    """One lake partition of ``rows`` rows, generated and written in chunks (the parent stays small)."""
    from ml.lake import Lake

    assert isinstance(lake, Lake)

    def chunks() -> Any:
        for start in range(0, rows, CHUNK_ROWS):
            spec = data.BatchSpec(key, min(CHUNK_ROWS, rows - start), seed + start, shift=shift)
            frame = data.generate_batch(spec)
            frame[data.ID_COLUMN] += start  # ids stay unique across chunks
            yield frame

    lake.write_stream(data.DATASET, key, chunks())


def prepare(workdir: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """The config, home and lake of the run; rows chosen so each input is ``factor`` x the budget."""
    from ml.lake import Lake

    home = workdir / "home"
    config = data.write_config(
        workdir,
        extra={
            "engine": {"memory_budget_mb": opts.budget_mb, "batch_rows": opts.batch_rows},
            "training": {"num_boost_round": opts.rounds},
        },
    )
    lake = Lake(home / "lake")
    _write_batch(lake, "2000-01", 20_000, 1, 0.0)  # a probe of the bytes per row
    per_row = lake.memory_estimate(data.DATASET, ["2000-01"]) / 20_000
    shutil.rmtree(lake.partition_dir(data.DATASET, "2000-01"))
    target = opts.factor * opts.budget_mb * 2**20
    rows = int(target / per_row)
    for index, key in enumerate(WINDOW):
        _write_batch(lake, key, rows // 3 + (1 if index < rows % 3 else 0), 11 + index, 0.0)
    _write_batch(lake, NEW_BATCH, rows, 15, 0.5)
    return {
        "home": str(home),
        "config": str(config),
        "rows_per_input": rows,
        "bytes_per_row": per_row,
        "window_mb": lake.memory_estimate(data.DATASET, WINDOW) / 2**20,
        "batch_mb": lake.memory_estimate(data.DATASET, [NEW_BATCH]) / 2**20,
    }


def _data_settings(opts: argparse.Namespace) -> dict[str, Any]:
    """What the generated data depends on (a ``--workdir`` prepared with the same settings is reused)."""
    return {
        "budget_mb": opts.budget_mb,
        "factor": opts.factor,
        "batch_rows": opts.batch_rows,
        "rounds": opts.rounds,
    }


def _steps_to_run(steps: list[str], model: Path) -> list[str]:
    """``steps`` in order, with ``train`` first when drift or score need a model that is not there yet."""
    wanted = set(steps)
    if wanted & {"drift", "score"} and not (model / "booster.ubj").exists():
        wanted.add("train")
    return [step for step in STEPS if step in wanted]


def _prepared(workdir: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """The data of ``workdir``: generated for ``opts``, or reused if an earlier run made it with the same settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = workdir / "prepared.json"
    reuse = prepared.exists() and json.loads(prepared.read_text())["settings"] == _data_settings(opts)
    setup = json.loads(prepared.read_text())["data"] if reuse else prepare(workdir, opts)
    prepared.write_text(json.dumps({"settings": _data_settings(opts), "data": setup}))
    return setup


def _run_steps(
    workdir: Path, setup: dict[str, Any], steps: list[str], mode: str, label: str
) -> dict[str, dict[str, Any]]:
    """Each of ``steps`` (train first if a later step needs its model) in a child with out_of_core = ``mode``."""
    env = procs.base_env(Path(setup["home"]), Path(setup["config"]))
    args = {"home": setup["home"], "config": setup["config"], "window": WINDOW, "batch": NEW_BATCH}
    model = str(workdir / f"model-{mode}")
    found: dict[str, dict[str, Any]] = {}
    for step in _steps_to_run(steps, Path(model)):
        child = procs.run_worker(
            "out_of_core_step", {**args, "step": step, "mode": mode, "model": model}, env, workdir
        )
        found[f"{step}/{label}"] = {
            **child.payload,
            "peak_rss_mib": round(child.peak_rss_mib, 1),
            "rows_per_second": round(child.payload["rows"] / child.payload["seconds"]),
        }
    return found


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """Prepare, then every step streaming and in memory, and streamed on the small inputs, each in its own
    child; returns the results."""
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="loopline-ooc-"))
    started = time.perf_counter()
    setup = _prepared(workdir, opts)
    results: dict[str, Any] = {"settings": vars(opts) | {"workdir": str(workdir)}, "data": setup, "steps": {}}
    for mode in opts.modes:
        results["steps"] |= _run_steps(workdir, setup, opts.steps, mode, mode)
    if opts.small_factor:
        small = argparse.Namespace(**{**vars(opts), "factor": opts.small_factor})
        results["small_data"] = _prepared(workdir / "small", small)
        results["steps"] |= _run_steps(
            workdir / "small", results["small_data"], opts.steps, "always", "small"
        )
    env = procs.base_env(Path(setup["home"]), Path(setup["config"]))
    args = {"home": setup["home"], "config": setup["config"], "window": WINDOW, "batch": NEW_BATCH}
    overhead = procs.run_worker("out_of_core_step", {**args, "step": "imports", "mode": "auto"}, env, workdir)
    results["fixed_overhead_mib"] = round(overhead.peak_rss_mib, 1)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def growth_verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per step streamed at both sizes: the small inputs' peak (the fixed overhead), the growth to the large
    inputs' peak, and whether that growth stays within one budget (memory bounded by the budget, not the data)."""
    budget, verdicts = results["settings"]["budget_mb"], {}
    for step in STEPS:
        large, small = results["steps"].get(f"{step}/auto"), results["steps"].get(f"{step}/small")
        if large and small:
            growth = large["peak_rss_mib"] - small["peak_rss_mib"]
            verdicts[step] = {
                "fixed_mib": small["peak_rss_mib"],
                "growth_mib": round(growth, 1),
                "bounded": growth <= budget,
            }
    return verdicts


def table(results: dict[str, Any]) -> str:
    """The results as Markdown: one row per step, streaming vs in memory, and the bound on memory."""
    budget, settings = results["settings"]["budget_mb"], results["settings"]
    verdicts = growth_verdicts(results)
    lines = [results["note"], ""] if results.get("note") else []
    lines.append(
        f"Budget {budget} MiB; window {results['data']['window_mb']:.0f} MiB and new batch "
        f"{results['data']['batch_mb']:.0f} MiB in memory ({results['data']['rows_per_input']:,} rows each); "
        f"the imports alone {results['fixed_overhead_mib']:.0f} MiB peak RSS."
    )
    if results.get("small_data"):
        lines.append(
            f"Fixed overhead of a step: its peak RSS streamed on inputs {settings['small_factor']:g}x the budget "
            f"({results['small_data']['rows_per_input']:,} rows each). Growth: what inputs "
            f"{settings['factor']:g}x the budget add to it. Bounded: the growth is within one budget."
        )
    lines += [
        "",
        "| step | streamed | s | rows/s | peak RSS MiB | fixed overhead MiB | growth MiB | bounded "
        "| in memory s | rows/s | peak RSS MiB | throughput ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for step in STEPS:
        if f"{step}/auto" not in results["steps"] or f"{step}/never" not in results["steps"]:
            continue
        streamed, memory = results["steps"][f"{step}/auto"], results["steps"][f"{step}/never"]
        verdict = verdicts.get(step)
        bound = "- | - | -"
        if verdict:
            bound = f"{verdict['fixed_mib']:,.0f} | {verdict['growth_mib']:+,.0f} | "
            bound += "yes" if verdict["bounded"] else "NO"
        lines.append(
            f"| {step} | {'yes' if streamed['out_of_core'] else 'no'} | {streamed['seconds']:.1f} "
            f"| {streamed['rows_per_second']:,} | {streamed['peak_rss_mib']:,.0f} | {bound} "
            f"| {memory['seconds']:.1f} | {memory['rows_per_second']:,} | {memory['peak_rss_mib']:,.0f} "
            f"| {streamed['rows_per_second'] / memory['rows_per_second']:.2f} |"
        )
    lines += _training_notes(results)
    return "\n".join(lines)


def _training_notes(results: dict[str, Any]) -> list[str]:
    """What streamed boosting saw (every row, or an id-hash sample up to ``engine.max_boosting_rows``) and
    what that cost: the holdout AUC streamed vs in memory."""
    streamed, memory = results["steps"].get("train/auto"), results["steps"].get("train/never")
    if not streamed or not memory or "holdout_roc_auc" not in streamed:
        return []
    boosted, rows = streamed["boosted_rows"], streamed["train_rows"]
    sample = "every training row" if boosted == rows else f"a sample of {boosted:,} of {rows:,} training rows"
    return [
        "",
        f"Streamed training boosted on {sample} ({100 * boosted / rows:.0f}%; `engine.max_boosting_rows: "
        f"auto`); holdout ROC AUC streamed {streamed['holdout_roc_auc']:.4f} vs in memory on every row "
        f"{memory['holdout_roc_auc']:.4f} ({streamed['holdout_roc_auc'] - memory['holdout_roc_auc']:+.4f}).",
    ]


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    results = run(opts)
    opts.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
