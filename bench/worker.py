"""The measured steps, one per child process: ``python -m bench.worker TASK ARGS_JSON``.

Each task imports what it needs first (timed apart as ``import_seconds``), prepares its inputs untimed, then
times exactly the step it stands for and writes a JSON result to ``$BENCH_RESULT``. Loopline's side calls the
same ``ml`` functions the DAG tasks call; the baselines get the same data already in memory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import PEAK_KEY, own_peak_rss_kib

Args = dict[str, Any]
TASKS: dict[str, Callable[[Args], dict[str, Any]]] = {}


def task(function: Callable[[Args], dict[str, Any]]) -> Callable[[Args], dict[str, Any]]:
    """Register a task under its function name."""
    TASKS[function.__name__] = function
    return function


class Calls:
    """Inclusive wall time of selected functions, by label (wraps them in place for this process)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.absent: list[str] = []

    def wrap(self, owner: Any, attr: str, label: str | None = None) -> None:
        """Time ``owner.attr`` under ``label``; an attribute this version of the code lacks is noted, not fatal."""
        original = getattr(owner, attr, None)
        name = label or attr
        if original is None:
            self.absent.append(attr)
            return

        @functools.wraps(original)
        def inner(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        setattr(owner, attr, inner)

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}


def _import_mlflow_sql_store() -> None:
    """Import MLflow's SQL stores (SQLAlchemy, Alembic, its ORM models: ~1.1-1.5 s here) with the other imports.

    MLflow imports them lazily at a process's first store access; left there, a step that touches the registry
    would time module loading that every other import of the task is timed apart from (``import_seconds``).
    """
    import mlflow.store.model_registry.sqlalchemy_store
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def _setup(args: Args) -> tuple[Any, Any]:
    from ml.config import Paths, load_config

    return load_config(args["config"]), Paths(Path(args["home"]))


def _corrupted(rows: int = 20_000) -> Any:
    """A small broken batch: a column gone, nulls, out-of-range values, an unknown category, repeated ids."""
    import numpy as np

    from bench import data

    frame = data.generate_batch(data.BatchSpec("2025-06", rows, 606))
    rng = np.random.default_rng(6)
    frame = frame.drop(columns=["num_07"])
    frame.loc[rng.random(rows) < 0.3, "num_01"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "num_02"] = 1e12
    frame.loc[rng.random(rows) < 0.05, "cat_a"] = "zz"
    frame.loc[: rows // 100, data.ID_COLUMN] = frame[data.ID_COLUMN].iloc[0]
    return frame


@task
def prepare(args: Args) -> dict[str, Any]:
    """Write the window (three baseline months) and the shifted new batch into the lake."""
    from bench import data
    from ml import registry
    from ml.lake import Lake

    config, paths = _setup(args)
    registry.connect(config, paths)  # the MLflow store exists before any timed step, as in a deployment
    lake = Lake(paths.lake)
    started = time.perf_counter()
    specs = [*data.window_specs(args["rows"]), data.new_batch_spec(args["rows"], args["shift"])]
    files = {}
    for spec in specs:
        partition = lake.write(data.DATASET, spec.key, data.generate_batch(spec))
        files[spec.key] = partition.data_file
    return {"seconds": time.perf_counter() - started, "files": files}


def _wrap_by_kind(module: Any, name: str, calls: Calls) -> None:
    original = getattr(module, name)

    def inner(column: str, ref: dict[str, Any], *rest: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(column, ref, *rest, **kwargs)
        finally:
            calls.seconds[f"per-column {ref['kind']}"] += time.perf_counter() - began

    setattr(module, name, inner)


def _drifted(result: Any) -> list[str]:
    """Features drifted at ``warning`` or above (``info`` means moved, too little to alert)."""
    alerting = {"warning", "critical"}
    return sorted(
        f.column for f in result.features if f.severity in alerting and not f.column.startswith("__")
    )


@task
def drift_loopline(args: Args) -> dict[str, Any]:
    """The drift check as the monitor computes it: saved profile + lake read + ``ml.drift.compare``."""
    started = time.perf_counter()
    from ml import drift
    from ml.lake import Lake

    config, paths = _setup(args)
    imported = time.perf_counter()
    calls = Calls()
    # Per-column time by kind, whichever per-column function this version of ml.drift has.
    for name in ("_measure", "_compare_column"):
        if hasattr(drift, name):
            _wrap_by_kind(drift, name, calls)
            break
    t0 = time.perf_counter()
    profile = json.loads(Path(args["profile"]).read_text())
    t1 = time.perf_counter()
    columns = drift.summary_columns(profile) if hasattr(drift, "summary_columns") else None
    frame = Lake(paths.lake).read(config.dataset.name, [args["batch"]], columns)  # as the monitor reads it
    t2 = time.perf_counter()
    result = drift.compare(profile, frame, None, args["batch"], config.drift)
    t3 = time.perf_counter()
    return {
        "import_seconds": imported - started,
        "seconds": t3 - t0,
        "profile_load_seconds": t1 - t0,
        "in_memory_seconds": (t1 - t0) + (t3 - t2),
        "read_seconds": t2 - t1,
        "compare_seconds": t3 - t2,
        "breakdown": calls.rounded(),
        "rows": len(frame),
        "verdict": result.verdict,
        "drifted": _drifted(result),
        "severities": {f.column: f.severity for f in result.features},
        "psi": {f.column: round(f.psi, 5) for f in result.features},
    }


@task
def drift_floor(args: Args) -> dict[str, Any]:
    """The physical floor: reading the batch's Parquet file with pyarrow (and, apart, to pandas)."""
    import pyarrow.dataset  # noqa: F401  (read_table's lazy import: the floor is the read, not the import)
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    table = pq.read_table(args["file"])
    t1 = time.perf_counter()
    frame = table.to_pandas()
    t2 = time.perf_counter()
    return {"seconds": t1 - t0, "to_pandas_seconds": t2 - t1, "rows": len(frame)}


@task
def monitor_loopline(args: Args) -> dict[str, Any]:
    """The whole monitor task body, ``ml.steps.monitor_batch`` (champion scores, drift, report, policy)."""
    started = time.perf_counter()
    import mlflow.pyfunc  # noqa: F401

    _import_mlflow_sql_store()
    from ml import drift, registry, reports, steps
    from ml.lake import Lake

    config, paths = _setup(args)
    imported = time.perf_counter()
    calls = Calls()
    calls.wrap(Lake, "read", "lake read")
    calls.wrap(Lake, "read_arrow", "lake read (Arrow)")
    calls.wrap(registry, "load_model", "load champion")
    calls.wrap(registry, "load_booster", "load champion (booster)")
    calls.wrap(registry, "load_profile", "load profile")
    calls.wrap(registry, "predict", "champion scores")
    calls.wrap(drift, "compare", "drift compare")
    calls.wrap(reports, "write_drift_report", "write report")
    t0 = time.perf_counter()
    result = steps.monitor_batch(config, paths, args["batch"])
    seconds = time.perf_counter() - t0
    return {
        "import_seconds": imported - started,
        "seconds": seconds,
        "breakdown": calls.rounded(),
        "verdict": result["verdict"],
        "top": [f["column"] for f in result.get("top_features", [])],
    }


@task
def gate_ge(args: Args) -> dict[str, Any]:
    """``ml.quality.validate`` (Great Expectations) on the batch: import, first call, warm second call."""
    from ml import quality
    from ml.lake import Lake

    config, paths = _setup(args)
    frame = Lake(paths.lake).read(config.dataset.name, [args["batch"]])
    suite = Path(args["suite"])
    t0 = time.perf_counter()
    import great_expectations  # noqa: F401

    t1 = time.perf_counter()
    first = quality.validate(frame, suite)
    t2 = time.perf_counter()
    out: dict[str, Any] = {
        "import_seconds": t1 - t0,
        "seconds": t2 - t1,
        "rows": len(frame),
        "passed": first.passed,
        "evaluated": first.evaluated,
    }
    if args.get("check"):
        quality.validate(frame, suite)
        out["warm_seconds"] = time.perf_counter() - t2
        broken = quality.validate(_corrupted(), suite)
        out["failures"] = sorted(
            [f.expectation, f.column, f.severity] for f in broken.critical + broken.warnings
        )
    return out


@task
def gate_pandas(args: Args) -> dict[str, Any]:
    """The same suite vectorised in pandas/numpy (``bench.checks``): first call, warm second call."""
    from bench import checks
    from ml.lake import Lake

    config, paths = _setup(args)
    frame = Lake(paths.lake).read(config.dataset.name, [args["batch"]])
    suite = Path(args["suite"])
    t0 = time.perf_counter()
    outcomes = checks.validate(frame, suite)
    t1 = time.perf_counter()
    critical = [o for o in outcomes if not o.success and o.severity == "critical"]
    out: dict[str, Any] = {
        "seconds": t1 - t0,
        "rows": len(frame),
        "passed": not critical,
        "evaluated": len(outcomes),
    }
    if args.get("check"):
        checks.validate(frame, suite)
        out["warm_seconds"] = time.perf_counter() - t1
        out["failures"] = [list(f) for f in checks.failures(checks.validate(_corrupted(), suite))]
    return out


def _training_inputs(config: Any, paths: Any, batches: list[str]) -> tuple[Any, Any, Any]:
    """The train split of the window, its feature spec and the model's params, exactly as Loopline builds them."""
    from ml import steps, train
    from ml.features import resolve_features

    lake, table = steps.lake_of(paths), config.dataset.name
    older, newest = lake.read(table, batches[:-1]), lake.read(table, batches[-1:])
    split = train.split_holdout(older, newest, config)
    spec = resolve_features(config, split.train.columns, split.train.dtypes)
    return split.train, spec, train.hyperparameters(config.training, {})


def _captured_booster_params(frame: Any, spec: Any, target: str, params: dict[str, Any]) -> tuple[dict, int]:
    """The params and rounds ``ml.train.fit`` passes to ``xgboost.train`` (captured on a few rows)."""
    import xgboost as xgb

    from ml import train

    captured: dict[str, Any] = {}

    class _Captured(Exception):
        pass

    def capture(booster_params: dict[str, Any], matrix: Any, num_boost_round: int, **_: Any) -> None:
        captured.update(params=dict(booster_params), rounds=num_boost_round)
        raise _Captured

    original = xgb.train
    xgb.train = capture
    try:
        train.fit(frame.head(500), spec, target, params)
    except _Captured:
        pass
    finally:
        xgb.train = original
    return captured["params"], int(captured["rounds"])


@task
def train_loopline(args: Args) -> dict[str, Any]:
    """``ml.steps.train_challenger``: lake read, split, fit, train scores, profile, MLflow logging, register."""
    started = time.perf_counter()
    import mlflow
    import mlflow.pyfunc
    import xgboost

    from ml import drift, evaluate, features, registry, steps, train
    from ml.lake import Lake

    _import_mlflow_sql_store()
    config, paths = _setup(args)
    imported = time.perf_counter()
    calls = Calls()
    calls.wrap(Lake, "read", "lake read")
    calls.wrap(Lake, "read_arrow", "lake read (Arrow)")
    calls.wrap(train, "split_holdout", "split holdout")
    calls.wrap(train, "split_window", "split window")
    calls.wrap(features, "resolve_features", "resolve features")
    calls.wrap(train, "fit", "fit (encode + DMatrix + boost)")
    calls.wrap(train, "fit_scored", "fit (encode + DMatrix + boost + training scores)")
    calls.wrap(train, "model_frame", "encode features (model_frame)")
    calls.wrap(train, "fit_vocabulary", "fit vocabulary")
    calls.wrap(xgboost, "train", "xgboost.train")
    calls.wrap(train, "predict", "holdout scores (predict)")
    calls.wrap(evaluate, "classification_metrics", "train metrics")
    calls.wrap(drift, "build_profile", "build reference profile")
    calls.wrap(drift, "feature_profiles", "reference profile: features (beside boosting)")
    calls.wrap(drift, "assemble_profile", "reference profile: assemble")
    calls.wrap(registry, "prepare_training_log", "MLflow preparation (beside boosting)")
    calls.wrap(registry, "log_training_run", "MLflow logging (all)")
    calls.wrap(registry, "_log_dataset_inputs", "MLflow dataset inputs")
    calls.wrap(mlflow.pyfunc, "log_model", "MLflow log_model")
    calls.wrap(mlflow, "register_model", "MLflow register_model")
    t0 = time.perf_counter()
    result = steps.train_challenger(
        config, paths, args["batches"], {}, None, f"bench {args['repeat']}", {"bench": "true"}
    )
    seconds = time.perf_counter() - t0
    return {
        "import_seconds": imported - started,
        "seconds": seconds,
        "breakdown": calls.rounded(),
        "rows": result["train_rows"],
        "version": result["version"],
    }


@task
def train_bare(args: Args) -> dict[str, Any]:
    """Bare ``xgboost.train`` on the same training rows, already encoded in memory, with the same params."""
    import numpy as np
    import xgboost as xgb

    from ml.features import fit_vocabulary, labels, model_frame

    config, paths = _setup(args)
    frame, spec, params = _training_inputs(config, paths, args["batches"])
    booster_params, rounds = _captured_booster_params(frame, spec, config.dataset.target, params)
    matrix_input = model_frame(frame, spec, fit_vocabulary(frame, spec))
    y = labels(frame, config.dataset.target).to_numpy()
    t0 = time.perf_counter()
    matrix = xgb.DMatrix(matrix_input, label=y, enable_categorical=True, missing=np.nan)
    t1 = time.perf_counter()
    booster = xgb.train(booster_params, matrix, num_boost_round=rounds)
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "dmatrix_seconds": t1 - t0,
        "boost_seconds": t2 - t1,
        "rows": len(frame),
        "rounds": rounds,
        "trees": booster.num_boosted_rounds(),
        "params": booster_params,
    }


@task
def promote_first(args: Args) -> dict[str, Any]:
    """Make the first registered version the champion (once, untimed set-up for scoring and monitoring)."""
    from ml import registry

    config, paths = _setup(args)
    registry.connect(config, paths)
    current = registry.champion(config)
    if current is None:
        first = registry.versions(config)[0]
        current = registry.VersionRef(config.model_name, first["version"], first["run_id"])
        registry.promote(config, current, None, "benchmark champion", "bench")
    return {"seconds": 0.0, "champion": current.version}


@task
def build_profile(args: Args) -> dict[str, Any]:
    """``ml.drift.build_profile`` once, on the reference window with the champion's scores; saved as JSON."""
    from ml import drift, registry
    from ml.features import resolve_features
    from ml.lake import Lake

    config, paths = _setup(args)
    reference = Lake(paths.lake).read(config.dataset.name, args["batches"])
    spec = resolve_features(config, reference.columns, reference.dtypes)
    registry.connect(config, paths)
    scores = registry.predict(registry.load_model(registry.champion(config)), reference)
    t0 = time.perf_counter()
    profile = drift.build_profile(reference, spec, scores, config.drift.bins)
    seconds = time.perf_counter() - t0
    Path(args["profile"]).write_text(json.dumps(profile))
    return {"seconds": seconds, "rows": len(reference)}


@task
def score_loopline(args: Args) -> dict[str, Any]:
    """``ml.steps.score_batch``: lake read, champion load, predict, predictions partition write."""
    started = time.perf_counter()
    import mlflow.pyfunc  # noqa: F401
    import xgboost

    _import_mlflow_sql_store()

    from ml import evaluate, model, registry, steps, train
    from ml.lake import Lake

    config, paths = _setup(args)
    imported = time.perf_counter()
    calls = Calls()
    calls.wrap(registry, "connect", "MLflow connect")
    calls.wrap(registry, "champion", "resolve champion alias")
    calls.wrap(Lake, "read", "lake read")
    calls.wrap(Lake, "read_arrow", "lake read (Arrow)")
    calls.wrap(registry, "load_model", "load champion (pyfunc)")
    calls.wrap(registry, "load_booster", "load champion (booster)")
    calls.wrap(registry, "predict", "predict via pyfunc (all)")
    calls.wrap(model, "predict", "LooplineModel predict")
    calls.wrap(train, "predict", "train.predict (encode + inplace_predict)")
    calls.wrap(train, "model_frame", "encode features (model_frame)")
    calls.wrap(xgboost.Booster, "inplace_predict", "Booster.inplace_predict")
    calls.wrap(Lake, "write", "predictions write")
    calls.wrap(Lake, "write_stream", "predictions write (stream)")
    calls.wrap(evaluate, "classification_metrics", "batch metrics")
    t0 = time.perf_counter()
    result = steps.score_batch(config, paths, args["batch"])
    seconds = time.perf_counter() - t0
    return {
        "import_seconds": imported - started,
        "seconds": seconds,
        "breakdown": calls.rounded(),
        "rows": result["rows"],
    }


@task
def score_bare(args: Args) -> dict[str, Any]:
    """The champion's booster on the same batch, already encoded in memory: predict(DMatrix), inplace_predict."""
    import numpy as np
    import xgboost as xgb

    from ml import registry, steps
    from ml.features import model_frame
    from ml.lake import Lake
    from ml.train import VOCAB_ATTR, feature_spec_of

    config, paths = _setup(args)
    registry.connect(config, paths)
    booster = registry.load_model(registry.champion(config)).unwrap_python_model().booster
    frame = Lake(paths.lake).read(config.dataset.name, [args["batch"]])
    encoded = model_frame(frame, feature_spec_of(booster), json.loads(booster.attr(VOCAB_ATTR) or "{}"))
    t0 = time.perf_counter()
    by_matrix = booster.predict(xgb.DMatrix(encoded, enable_categorical=True, missing=np.nan))
    t1 = time.perf_counter()
    in_place = booster.inplace_predict(encoded)
    t2 = time.perf_counter()
    out: dict[str, Any] = {
        "seconds": t1 - t0,
        "inplace_seconds": t2 - t1,
        "rows": len(frame),
        "max_abs_diff_predict_vs_inplace": float(np.max(np.abs(by_matrix - in_place))),
    }
    table = steps.predictions_table(config)
    if args["batch"] in Lake(paths.lake).batches(table):
        written = Lake(paths.lake).read(table, [args["batch"]])["score"].to_numpy()
        out["max_abs_diff_loopline_vs_bare"] = float(np.max(np.abs(written - by_matrix)))
    return out


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _parse_once(file: str, log: logging.Logger, extra: list[str]) -> dict[str, Any]:
    """In a forked "manager": pre-import the file's airflow modules (and ``extra``), fork the parser, time it."""
    import importlib

    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.dag_processing.processor import _pre_import_airflow_modules, _serialize_dags

    began = time.perf_counter()
    _pre_import_airflow_modules(file, log)  # type: ignore[arg-type]
    for module in extra:
        importlib.import_module(module)
    pre_import = time.perf_counter() - began
    read_end, write_end = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the parsing child, as the dag-processor forks it
        os.close(read_end)
        started = time.perf_counter()
        bag = BundleDagBag(
            dag_folder=file, bundle_path=Path(file).parent, bundle_name="bench", load_op_links=False
        )
        serialised, errors = _serialize_dags(bag, log)  # type: ignore[arg-type]
        report = {
            "parse_seconds": time.perf_counter() - started,
            "dags": len(serialised),
            "errors": {str(k): str(v)[-500:] for k, v in {**bag.import_errors, **errors}.items()},
        }
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    report = json.loads(_read_all(read_end))
    os.waitpid(pid, 0)
    report["process_seconds"] = time.perf_counter() - t0
    report["pre_import_seconds"] = pre_import
    return report


@task
def dag_parse(args: Args) -> dict[str, Any]:
    """Parse each DAG file as the dag-processor does: pre-import its airflow modules, fork, DagBag + serialise.

    Each parse starts from the same process state (a fork of this one), so no file profits from modules an
    earlier file loaded.
    """
    started = time.perf_counter()
    sys.path.insert(0, args["plugins"])
    import airflow.dag_processing.manager  # (what the dag-processor process has loaded)
    import airflow.dag_processing.processor  # noqa: F401

    imported = time.perf_counter()
    log = logging.getLogger("bench.dag_parse")
    timings: dict[str, list[dict[str, Any]]] = {}
    for entry in args["files"]:
        file, extra = (entry, []) if isinstance(entry, str) else (entry["file"], entry["preimport"])
        runs = []
        for _ in range(args["repeats"]):
            read_end, write_end = os.pipe()
            manager = os.fork()
            if manager == 0:
                os.close(read_end)
                try:
                    payload = json.dumps(_parse_once(file, log, extra)).encode()
                except Exception as exc:  # reported, never raised past the fork
                    payload = json.dumps({"error": repr(exc)}).encode()
                os.write(write_end, payload)
                os._exit(0)
            os.close(write_end)
            runs.append(json.loads(_read_all(read_end)))
            os.waitpid(manager, 0)
        timings[file + "".join(f" +{m}" for m in extra)] = runs
    return {"import_seconds": imported - started, "seconds": 0.0, "files": timings}


@task
def omp_probe(args: Args) -> dict[str, Any]:
    """Bare XGBoost training on small synthetic data with all cores: shows the OpenMP wait policy's effect."""
    import numpy as np
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args["rows"], 30))
    y = (x[:, 0] + rng.normal(size=args["rows"]) > 0).astype(int)
    matrix = xgb.DMatrix(x, label=y)
    params = {"tree_method": "hist", "max_depth": 4, "objective": "binary:logistic", "nthread": 0}
    t0 = time.perf_counter()
    xgb.train(params, matrix, num_boost_round=args["rounds"])
    return {
        "seconds": time.perf_counter() - t0,
        "rows": args["rows"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default: active)"),
    }


@task
@task
def out_of_core_step(args: Args) -> dict[str, Any]:
    """One local-engine step (gate, train, drift, score) with ``engine.out_of_core`` = ``args["mode"]``.

    ``train`` saves its booster and profile under ``args["model"]`` for the drift and score steps of the same
    mode; ``imports`` only imports what the steps import (the fixed part of every child's peak RSS).
    """
    import xgboost as xgb

    from ml import train
    from ml.engines.local import LocalEngine
    from ml.evaluate import roc_auc

    if args["step"] == "imports":
        import great_expectations  # noqa: F401

        return {"rows": 1, "seconds": 1.0, "out_of_core": False}
    config, paths = _setup(args)
    engine = config.engine.model_copy(update={"out_of_core": args["mode"]})
    local = LocalEngine(config.model_copy(update={"engine": engine}), paths)
    model = Path(args["model"])
    step, window, batch = args["step"], args["window"], args["batch"]
    started = time.perf_counter()
    if step == "gate":
        result = local.validate(window, "ooc")
        found: dict[str, Any] = {"passed": result.passed, "failed": [f.describe() for f in result.critical]}
        rows, streamed = (
            sum(local.lake.partition(local.table, b).rows for b in window),
            local.out_of_core(window),
        )
    elif step == "train":
        params = train.hyperparameters(config.training)
        trained = local.train(window, params)
        model.mkdir(parents=True, exist_ok=True)
        trained.booster.save_model(model / "booster.ubj")
        (model / "profile.json").write_text(json.dumps(trained.profile))
        found = {
            "train_rows": trained.train_rows,
            "boosted_rows": int(trained.lineage["loopline.boosted_rows"]),
            "holdout_rows": len(trained.holdout),
            "train_roc_auc": trained.train_metrics["roc_auc"],
            "holdout_roc_auc": roc_auc(trained.holdout.labels, trained.holdout.scores),
        }
        rows, streamed = trained.train_rows, trained.lineage["loopline.out_of_core"] == "yes"
    else:
        booster = xgb.Booster()
        booster.load_model(model / "booster.ubj")
        streamed = local.out_of_core([batch])
        started = time.perf_counter()
        if step == "drift":
            profile = json.loads((model / "profile.json").read_text())
            monitored = local.monitor(batch, booster, profile)
            found = {"verdict": monitored.drift.verdict, "drifted": _drifted(monitored.drift)}
            rows = monitored.rows
        else:
            summary = local.score(batch, booster, "1")
            found, rows = {"roc_auc": summary.get("roc_auc")}, summary["rows"]
    return {"seconds": time.perf_counter() - started, "rows": rows, "out_of_core": bool(streamed), **found}


@task
def loop_latency(args: Args) -> dict[str, Any]:
    """New batch lands -> monitor -> retrain -> new champion, through the embedded Airflow (``bench.loop``)."""
    from bench import loop

    return loop.measure(args)


def main() -> None:
    """Run the task named in argv with its JSON arguments; write the result to $BENCH_RESULT."""
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    name, raw = sys.argv[1], sys.argv[2]
    result = TASKS[name](json.loads(raw))
    if isinstance(result, dict):
        result[PEAK_KEY] = own_peak_rss_kib()
    Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
