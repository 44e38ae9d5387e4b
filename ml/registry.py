"""The MLflow adapter: the only module that talks to MLflow.

Runs hold params, metrics, the model, the reference profile, the data-quality result and the lineage (lake
partitions with content hashes as dataset inputs, Airflow dag_id/run_id as tags). The registry holds versions,
the ``champion`` alias, the gate verdict as version tags, and an append-only history of alias moves as
registered-model tags (``history.000001`` ...), readable with ``loopline history``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml.config import LooplineConfig, Paths

if TYPE_CHECKING:
    import mlflow.pyfunc
    import xgboost as xgb

    from ml.evaluate import Decision
    from ml.lake import Partition

CHAMPION = "champion"
CHALLENGER = "challenger"
PROFILE_ARTIFACT = "reference_profile.json"


class PromotionConflict(RuntimeError):
    """The champion changed between evaluation and promotion; re-evaluate against the new one."""


@dataclass(frozen=True)
class VersionRef:
    """A registered model version and the run that produced it."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def connect(config: LooplineConfig, paths: Paths) -> str:
    """Point MLflow at the configured store; create the experiment with artifacts under the home. Returns its id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow

    uri = paths.tracking_uri(config)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; keep the environment as it was, so that a
    # later connect() for another LOOPLINE_HOME in this process does not inherit this store.
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    experiment = mlflow.get_experiment_by_name(config.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if uri.startswith("http") else (paths.mlflow_artifacts / config.dataset.name).as_uri()
    try:
        return mlflow.create_experiment(
            config.experiment_name,
            artifact_location=location,
            tags={"mlflow.experimentKind": "custom_model_development"},
        )
    except mlflow.exceptions.MlflowException:
        # Another task created it at the same moment.
        found = mlflow.get_experiment_by_name(config.experiment_name)
        if found is None:
            raise
        return found.experiment_id


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def champion(config: LooplineConfig) -> VersionRef | None:
    """The version under the ``champion`` alias, or None before the first promotion."""
    from mlflow.exceptions import MlflowException

    try:
        found = _client().get_model_version_by_alias(config.model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        raise
    return VersionRef(config.model_name, str(found.version), str(found.run_id))


def load_model(ref: VersionRef) -> mlflow.pyfunc.PyFuncModel:
    """Load a registered version as the pyfunc that scores raw rows."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(ref.uri)


def predict(model: mlflow.pyfunc.PyFuncModel, frame: pd.DataFrame) -> np.ndarray:
    """The model's scores for ``frame``, passing only the columns its signature names."""
    schema = model.metadata.get_input_schema()
    columns = schema.input_names() if schema is not None else list(frame.columns)
    return np.asarray(model.predict(frame[columns]), dtype="float64")


def load_profile(ref: VersionRef) -> dict[str, Any]:
    """The reference profile saved with a version's training run."""
    import mlflow

    return mlflow.artifacts.load_dict(f"runs:/{ref.run_id}/{PROFILE_ARTIFACT}")


@contextmanager
def _run(experiment_id: str, **kwargs: Any) -> Iterator[Any]:
    """A run that ends FAILED on error and re-raises the original error, not an end_run failure."""
    import mlflow

    run = mlflow.start_run(experiment_id=experiment_id, **kwargs)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):  # the original error matters more than a failed end_run
            mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


def log_training_run(
    config: LooplineConfig,
    paths: Paths,
    *,
    booster: xgb.Booster,
    train: pd.DataFrame,
    partitions: list[Partition],
    params: dict[str, Any],
    train_rows: int | None = None,
    train_metrics: dict[str, float],
    profile: dict[str, Any],
    quality: dict[str, Any] | None,
    importance: dict[str, float],
    run_name: str,
    tags: dict[str, str],
) -> VersionRef:
    """Log a trained model with its lineage and register it as a new version of the config's model.

    ``train`` may be a sample of the training rows (features and target; the first rows feed the signature and
    the dataset inputs); ``train_rows`` is then the real count (default ``len(train)``).
    """
    import mlflow
    from mlflow.models import infer_signature

    from ml.model import BOOSTER_ARTIFACT, LooplineModel
    from ml.train import feature_spec_of

    experiment_id = connect(config, paths)
    spec = feature_spec_of(booster)
    example = train[spec.columns].head(5)
    with _run(experiment_id, run_name=run_name, tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: v for k, v in params.items()})
        mlflow.log_params(
            {
                "window": f"{partitions[0].batch}..{partitions[-1].batch}",
                "train_rows": len(train) if train_rows is None else train_rows,
                "features": len(spec.columns),
            }
        )
        mlflow.log_metrics({f"train_{k}": v for k, v in train_metrics.items() if v == v})
        mlflow.log_dict(profile, PROFILE_ARTIFACT)
        mlflow.log_dict(importance, "feature_importance.json")
        mlflow.log_dict(json.loads(config.model_dump_json()), "loopline_config.json")
        if quality is not None:
            mlflow.log_dict(quality, "data_quality/validation_summary.json")
            if quality.get("result_file") and Path(quality["result_file"]).is_file():
                mlflow.log_artifact(quality["result_file"], "data_quality")
        _log_dataset_inputs(config, train, partitions)
        booster_file = Path(tmp) / "model.ubj"
        booster.save_model(booster_file)
        signature = infer_signature(example, np.zeros(len(example)))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=LooplineModel(),
            artifacts={BOOSTER_ARTIFACT: str(booster_file)},
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
        )
        version = mlflow.register_model(
            info.model_uri,
            config.model_name,
            tags={"run_name": run_name, "window": tags.get("loopline.window", "")},
        )
        mlflow.set_tag("loopline.model_version", str(version.version))
        ref = VersionRef(config.model_name, str(version.version), run.info.run_id)
    move_alias(
        config, CHALLENGER, ref.version, f"registered by {run_name}", tags.get("airflow.run_id", "loopline")
    )
    return ref


def _log_dataset_inputs(config: LooplineConfig, train: pd.DataFrame, partitions: list[Partition]) -> None:
    """One MLflow dataset input per lake partition, its digest the partition's content hash."""
    import mlflow

    head = train.head(100)
    for partition in partitions:
        dataset = mlflow.data.from_pandas(
            head,
            source=str(partition.data_file),
            name=f"{partition.table}/batch={partition.batch}",
            digest=partition.sha256[:32],
            targets=config.dataset.target,
        )
        mlflow.log_input(
            dataset, context="training", tags={"rows": str(partition.rows), "sha256": partition.sha256}
        )


def log_monitoring_run(
    config: LooplineConfig,
    paths: Paths,
    batch: str,
    metrics: dict[str, float],
    files: list[Path],
    tags: dict[str, str],
) -> str:
    """One run per monitored batch in ``<experiment>/monitoring``: drift metrics and the report files."""
    import mlflow

    connect(config, paths)
    name = f"{config.experiment_name}/monitoring"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        uri = paths.tracking_uri(config)
        location = (
            None
            if uri.startswith("http")
            else (paths.mlflow_artifacts / f"{config.dataset.name}-monitoring").as_uri()
        )
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    with _run(experiment_id, run_name=f"drift {batch}", tags=tags) as run:
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})
        for file in files:
            mlflow.log_artifact(str(file), "report")
        return str(run.info.run_id)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "xgboost-cpu", "pandas", "numpy")]


def record_evaluation(
    config: LooplineConfig, challenger: VersionRef, decision: Decision, plots: dict[str, bytes] | None = None
) -> None:
    """Log both models' holdout metrics, per-slice AUCs, plots and the gate decision on the challenger's run;
    the verdict and each rule also go to the version's tags."""
    import mlflow

    client = _client()
    metrics = {f"holdout_{k}": v for k, v in decision.challenger.items() if v == v}
    if decision.champion:
        metrics |= {f"champion_holdout_{k}": v for k, v in decision.champion.items() if v == v}
    for piece in decision.slices:
        metrics[f"holdout_slice_roc_auc/{piece.feature}/{metric_safe(piece.value)}"] = (
            piece.challenger_roc_auc
        )
        if piece.champion_roc_auc is not None:
            metrics[f"champion_holdout_slice_roc_auc/{piece.feature}/{metric_safe(piece.value)}"] = (
                piece.champion_roc_auc
            )
    timestamp = int(datetime.now(UTC).timestamp() * 1000)
    client.log_batch(
        challenger.run_id,
        metrics=[mlflow.entities.Metric(k, float(v), timestamp, 0) for k, v in metrics.items()],
        tags=[mlflow.entities.RunTag("loopline.gate", "passed" if decision.promote else "rejected")],
    )
    client.log_dict(challenger.run_id, decision.to_dict(), "gate/decision.json")
    if plots:
        with tempfile.TemporaryDirectory() as tmp:
            for name, payload in plots.items():
                (Path(tmp) / f"{name}.png").write_bytes(payload)
            client.log_artifacts(challenger.run_id, tmp, "gate/plots")
    version_tags = {
        "gate": "passed" if decision.promote else "rejected",
        "gate_reason": decision.reason[:5000],
        "compared_with": decision.champion_version or "none",
    }
    version_tags |= {f"rule.{rule.name}": "pass" if rule.passed else "fail" for rule in decision.rules}
    for key, value in version_tags.items():
        client.set_model_version_tag(config.model_name, challenger.version, key, value)


def tag_version(config: LooplineConfig, version: str, tags: dict[str, str]) -> None:
    """Set tags on one model version."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(config.model_name, version, key, value)


def promote(
    config: LooplineConfig, challenger: VersionRef, expected_champion: str | None, reason: str, actor: str
) -> None:
    """Move ``champion`` to the challenger if the champion is still the one it was compared with.

    The check and the move happen under an exclusive lock, so two racing promotions cannot both win.
    """
    with _alias_lock():
        current = champion(config)
        current_version = current.version if current else None
        if current_version != expected_champion:
            message = (
                f"champion is now v{current_version}, not v{expected_champion} as evaluated: "
                "re-run the evaluation"
            )
            append_history(
                config, CHAMPION, current_version, challenger.version, message, actor, outcome="refused"
            )
            raise PromotionConflict(message)
        client = _client()
        client.set_registered_model_alias(config.model_name, CHAMPION, challenger.version)
        client.set_model_version_tag(config.model_name, challenger.version, "promoted_at", _now())
        append_history(config, CHAMPION, current_version, challenger.version, reason, actor)


@contextmanager
def _alias_lock() -> Iterator[None]:
    """An exclusive lock on alias moves, held in a file under $LOOPLINE_HOME/state (shared by every process)."""
    import fcntl

    lock_file = Paths.from_env().state / "registry-alias.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def move_alias(config: LooplineConfig, alias: str, version: str, reason: str, actor: str) -> None:
    """Point ``alias`` at ``version`` and record the move (for aliases other than champion)."""
    client = _client()
    with _alias_lock():
        try:
            before: str | None = str(client.get_model_version_by_alias(config.model_name, alias).version)
        except Exception:  # no such alias yet
            before = None
        client.set_registered_model_alias(config.model_name, alias, version)
        append_history(config, alias, before, version, reason, actor)


def rollback(config: LooplineConfig, to_version: str | None, actor: str) -> tuple[str | None, str]:
    """Move ``champion`` back to ``to_version`` (default: the champion before the current one).

    Returns (from, to). The target must be a registered version that passed the gate or was champion before.
    """
    current = champion(config)
    if current is None:
        raise ValueError(f"model {config.model_name} has no champion to roll back")
    moves = champion_moves(config)
    if to_version is None:
        previous = [
            m["from"] for m in moves if m["alias"] == CHAMPION and m["to"] == current.version and m["from"]
        ]
        if not previous:
            raise ValueError(
                f"champion v{current.version} has no previous champion: name one with --to VERSION"
            )
        to_version = previous[-1]
    known = {v["version"]: v["tags"] for v in versions(config)}
    if to_version not in known:
        raise ValueError(
            f"model {config.model_name} has no version {to_version} (versions: {', '.join(known)})"
        )
    was_champion = any(m["to"] == to_version for m in moves)
    if known[to_version].get("gate") != "passed" and not was_champion:
        raise ValueError(f"version {to_version} never passed the gate: refusing to make it champion")
    with _alias_lock():
        if (champion(config) or current).version != current.version:
            raise PromotionConflict(
                "the champion moved while rolling back: check `loopline history` and retry"
            )
        _client().set_registered_model_alias(config.model_name, CHAMPION, to_version)
        append_history(
            config, CHAMPION, current.version, to_version, f"rollback from v{current.version}", actor
        )
    return current.version, to_version


def append_history(
    config: LooplineConfig,
    alias: str,
    from_version: str | None,
    to_version: str,
    reason: str,
    actor: str,
    outcome: str = "moved",
) -> None:
    """Append one alias move to the registered model's history (never rewritten)."""
    client = _client()
    model = client.get_registered_model(config.model_name)
    numbers = [int(key.split(".")[1]) for key in model.tags if key.startswith("history.")]
    entry = {
        "at": _now(),
        "alias": alias,
        "from": from_version,
        "to": to_version,
        "reason": reason[:2000],
        "by": actor,
        "outcome": outcome,
    }
    client.set_registered_model_tag(
        config.model_name, f"history.{max(numbers, default=0) + 1:06d}", json.dumps(entry)
    )


def history(config: LooplineConfig) -> list[dict[str, Any]]:
    """Every recorded alias move or refused attempt, oldest first."""
    model = _client().get_registered_model(config.model_name)
    entries = [
        json.loads(model.tags[key]) for key in sorted(k for k in model.tags if k.startswith("history."))
    ]
    for entry in entries:
        entry.setdefault("outcome", "moved")
    return entries


def champion_moves(config: LooplineConfig) -> list[dict[str, Any]]:
    """The moves of the ``champion`` alias that happened, oldest first."""
    return [m for m in history(config) if m["alias"] == CHAMPION and m["outcome"] == "moved"]


def versions(config: LooplineConfig) -> list[dict[str, Any]]:
    """All versions of the model with their tags, oldest first."""
    found = _client().search_model_versions(f"name='{config.model_name}'")
    rows = [{"version": str(v.version), "run_id": v.run_id, "tags": dict(v.tags)} for v in found]
    return sorted(rows, key=lambda row: int(row["version"]))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def metric_safe(text: str) -> str:
    """A value usable inside an MLflow metric name (alphanumerics, _ - . space : /)."""
    return "".join(c if c.isalnum() or c in "_-. :" else "_" for c in text)
