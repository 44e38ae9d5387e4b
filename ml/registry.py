"""The MLflow adapter: the only module that talks to MLflow.

Runs hold params, metrics, the model, the reference profile, the data-quality result and the lineage (lake
partitions with content hashes as dataset inputs, Airflow dag_id/run_id as tags). The registry holds versions,
the ``champion`` alias, the gate verdict as version tags, and an append-only history of alias moves as
registered-model tags (``history.000001`` ...), readable with ``loopline history``. An alias move is recorded
"pending" before it happens and "moved" after, so a crash between the steps is reconciled by readers and completed
by a retry (``_move``, ``_settle``).
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

    from ml.evaluate import Decision, Rule
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
    _use_profile_credentials(paths, uri)
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


def client_state_file(paths: Paths) -> Path:
    """Where a profile that runs an MLflow server says how to reach it (``write_client_state``)."""
    return paths.mlflow_dir / "client.json"


def write_client_state(paths: Paths, tracking_uri: str, username: str, password_file: Path) -> Path:
    """Record (mode 0600) the MLflow server a profile started and the login its clients use.

    The password stays in ``password_file`` (0600 too); the state names the file.
    """
    from ml.lake import atomic_write_json

    file = client_state_file(paths)
    state = {"tracking_uri": tracking_uri, "username": username, "password_file": str(password_file)}
    atomic_write_json(file, state)
    file.chmod(0o600)
    return file


def client_state(paths: Paths) -> dict[str, str] | None:
    """The recorded MLflow server of this home's profile, or None (embedded profile, or never started)."""
    file = client_state_file(paths)
    return json.loads(file.read_text()) if file.is_file() else None


def _use_profile_credentials(paths: Paths, uri: str) -> None:
    """Log in to the home's own MLflow server (``client_state``) when ``uri`` is that server.

    Other servers keep whatever ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` say. MLflow reads
    them from the environment at every request.
    """
    state = client_state(paths)
    if state is None or state["tracking_uri"].rstrip("/") != uri.rstrip("/"):
        return
    password = Path(state["password_file"]).read_text().strip()
    os.environ["MLFLOW_TRACKING_USERNAME"] = state["username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def champion(config: LooplineConfig) -> VersionRef | None:
    """The version under the ``champion`` alias, or None before the first promotion."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        found = client.get_model_version_by_alias(config.model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        # MLflow's auth app answers a non-admin's question about a model that does not exist with 403
        if exc.error_code == "PERMISSION_DENIED" and not client.search_registered_models(
            f"name = '{config.model_name}'"
        ):
            return None
        raise
    return VersionRef(config.model_name, str(found.version), str(found.run_id))


def load_model(ref: VersionRef) -> mlflow.pyfunc.PyFuncModel:
    """Load a registered version as the pyfunc that scores raw rows."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(ref.uri)


def load_booster(ref: VersionRef) -> xgb.Booster:
    """The XGBoost booster inside a registered version, loaded natively (the one its pyfunc wraps).

    Fetches only the model's ``MLmodel`` and the booster file it names (a local store's files are copied, a
    server's downloaded), skipping the pyfunc's unpickling and environment checks: tenths of a second less for
    batch scoring, monitoring and evaluation. The booster carries its feature spec and vocabulary.
    """
    import mlflow
    import xgboost as xgb
    import yaml

    from ml.model import BOOSTER_ARTIFACT

    with tempfile.TemporaryDirectory(prefix="loopline-model-") as tmp:
        mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{ref.uri}/MLmodel", dst_path=tmp)
        flavor = yaml.safe_load(Path(mlmodel).read_text())["flavors"]["python_function"]
        path = flavor["artifacts"][BOOSTER_ARTIFACT]["path"]
        booster_file = mlflow.artifacts.download_artifacts(artifact_uri=f"{ref.uri}/{path}", dst_path=tmp)
        booster = xgb.Booster()
        booster.load_model(booster_file)
    return booster


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


def prepare_training_log(config: LooplineConfig, paths: Paths) -> str:
    """``connect`` plus what logging a model needs once per process; returns the experiment id.

    MLflow's first connection imports and opens its store, and ``log_model`` checks the model's requirements
    against a map of the installed packages that it builds once per process: 1-2 s that ``train_challenger``
    runs in a thread while the model trains (XGBoost and Spark leave the GIL) instead of after it.
    """
    from ml import model  # noqa: F401  (mlflow.pyfunc, which log_training_run needs)

    experiment_id = connect(config, paths)
    with contextlib.suppress(Exception):  # only a warm-up: log_model makes the same check itself
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        warn_dependency_requirement_mismatches(_requirements())
    return experiment_id


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
        mlflow.log_params(
            {
                **params,
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
        # An explicit signature and requirements (inferring them runs the model in a child Python: seconds).
        # The input example makes MLflow load the logged model and score the example once (its serving-input
        # validation, ~0.1 s, which pyfunc cannot skip): a check that the model serves raw rows.
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=LooplineModel(),
            artifacts={BOOSTER_ARTIFACT: str(booster_file)},
            signature=infer_signature(example, np.zeros(len(example))),
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
    """One MLflow dataset input per lake partition, its digest the partition's content hash (one request)."""
    import mlflow

    head = train.head(100)
    datasets = [
        mlflow.data.from_pandas(
            head,
            source=str(partition.data_file),
            name=f"{partition.table}/batch={partition.batch}",
            digest=partition.sha256[:32],
            targets=config.dataset.target,
        )
        for partition in partitions
    ]
    mlflow.log_inputs(
        datasets,
        contexts=["training"] * len(partitions),
        tags_list=[{"rows": str(p.rows), "sha256": p.sha256} for p in partitions],
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
    for rule in decision.rules:
        version_tags |= _rule_tags(rule)
    for key, value in version_tags.items():
        client.set_model_version_tag(config.model_name, challenger.version, key, value)


def _rule_tags(rule: Rule) -> dict[str, str]:
    """A gate rule as version tags: ``rule.<name>`` = pass/fail (the verdict alone, for readers that compare it),
    ``rule.<name>.value`` (a number, ``nan`` when undefined) and ``rule.<name>.threshold`` (e.g. ``>= 0``)."""
    value = float("nan") if rule.value is None else float(rule.value)
    return {
        f"rule.{rule.name}": "pass" if rule.passed else "fail",
        f"rule.{rule.name}.value": f"{value:.6g}",
        f"rule.{rule.name}.threshold": f"{rule.comparison} {rule.threshold:g}",
    }


def tag_version(config: LooplineConfig, version: str, tags: dict[str, str]) -> None:
    """Set tags on one model version."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(config.model_name, version, key, value)


def promote(
    config: LooplineConfig, challenger: VersionRef, expected_champion: str | None, reason: str, actor: str
) -> None:
    """Move ``champion`` to the challenger if the champion is still the one it was compared with.

    The check and the move happen under an exclusive lock, so two racing promotions cannot both win. A retry of
    a promotion that crashed half-way converges: the pending move is completed, or found done, not repeated.
    """
    with _alias_lock():
        _settle(config, CHAMPION, retry=(expected_champion, challenger.version))
        current = champion(config)
        current_version = current.version if current else None
        if current_version == challenger.version:
            return  # already champion: a retry of a move that happened
        if current_version != expected_champion:
            message = (
                f"champion is now v{current_version}, not v{expected_champion} as evaluated: "
                "re-run the evaluation"
            )
            _append(config, _entry(CHAMPION, current_version, challenger.version, message, actor, REFUSED))
            raise PromotionConflict(message)
        _move(config, _entry(CHAMPION, current_version, challenger.version, reason, actor, PENDING))


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
    with _alias_lock():
        _settle(config, alias)
        before = _aliases(config).get(alias)
        if before != version:
            _move(config, _entry(alias, before, version, reason, actor, PENDING))


def rollback(config: LooplineConfig, to_version: str | None, actor: str) -> tuple[str | None, str]:
    """Move ``champion`` back to ``to_version`` (default: the newest earlier champion that no rollback left).

    Returns (from, to). The target must be a registered version that passed the gate or was champion before.
    Without ``to_version`` a rollback never returns to a version that a rollback moved away from (so a second
    rollback goes further back instead of undoing the first); ``to_version`` may name any such version.
    """
    current = champion(config)
    if current is None:
        raise ValueError(f"model {config.model_name} has no champion to roll back")
    moves = champion_moves(config)
    if to_version is None:
        to_version = _rollback_target(moves, current.version)
        if to_version is None:
            raise ValueError(
                f"champion v{current.version} has no earlier champion that a rollback did not leave: "
                "name one with --to VERSION"
            )
    known = {v["version"]: v["tags"] for v in versions(config)}
    if to_version not in known:
        raise ValueError(
            f"model {config.model_name} has no version {to_version} (versions: {', '.join(known)})"
        )
    was_champion = any(m["to"] == to_version for m in moves)
    if known[to_version].get("gate") != "passed" and not was_champion:
        raise ValueError(f"version {to_version} never passed the gate: refusing to make it champion")
    with _alias_lock():
        completed = _settle(config, CHAMPION, retry=(current.version, to_version))
        now = (champion(config) or current).version
        if now == to_version:  # a retry of a rollback that happened
            return (completed["from"] if completed else current.version), to_version
        if now != current.version:
            raise PromotionConflict(
                "the champion moved while rolling back: check `loopline history` and retry"
            )
        reason = f"{_ROLLBACK_REASON}{current.version}"
        _move(config, _entry(CHAMPION, current.version, to_version, reason, actor, PENDING))
    return current.version, to_version


_ROLLBACK_REASON = (
    "rollback from v"  # the reason of every rollback's history entry, followed by the version left
)


def _rollback_target(moves: list[dict[str, Any]], current_version: str) -> str | None:
    """The newest champion in ``moves`` (champion moves, oldest first) other than ``current_version`` that no
    rollback moved away from; None when there is none."""
    left = {m["from"] for m in moves if str(m["reason"]).startswith(_ROLLBACK_REASON)}
    for move in reversed(moves):
        if move["to"] != current_version and move["to"] not in left:
            return str(move["to"])
    return None


# The history of alias moves: one registered-model tag per entry (history.000001, ...). A move is three writes
# that a crash can interrupt anywhere: (1) its entry, outcome "pending"; (2) the alias; (3) the entry, "moved".
# Readers reconcile a pending entry with the alias (moved if the alias points at its target); the next writer,
# under the alias lock, settles it for good ("moved", or "abandoned" when the alias never moved).
PENDING, MOVED, REFUSED, ABANDONED = "pending", "moved", "refused", "abandoned"
_HISTORY_PREFIX = "history."


def _entry(
    alias: str, from_version: str | None, to_version: str, reason: str, actor: str, outcome: str
) -> dict[str, Any]:
    return {
        "at": _now(),
        "alias": alias,
        "from": from_version,
        "to": to_version,
        "reason": reason[:2000],
        "by": actor,
        "outcome": outcome,
    }


def _recorded(config: LooplineConfig) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The history entries as written (by tag key, oldest first) and the aliases (alias -> version)."""
    model = _client().get_registered_model(config.model_name)
    keys = sorted(k for k in model.tags if k.startswith(_HISTORY_PREFIX))
    entries = {key: json.loads(model.tags[key]) for key in keys}
    for entry in entries.values():
        entry.setdefault("outcome", MOVED)
    return entries, {str(alias): str(version) for alias, version in dict(model.aliases).items()}


def _aliases(config: LooplineConfig) -> dict[str, str]:
    return _recorded(config)[1]


def _write_entry(config: LooplineConfig, key: str, entry: dict[str, Any]) -> None:
    _client().set_registered_model_tag(config.model_name, key, json.dumps(entry))


def _append(config: LooplineConfig, entry: dict[str, Any]) -> str:
    """Write ``entry`` under the next history key (callers hold the alias lock); returns the key."""
    entries, _ = _recorded(config)
    numbers = [int(key.removeprefix(_HISTORY_PREFIX)) for key in entries]
    key = f"{_HISTORY_PREFIX}{max(numbers, default=0) + 1:06d}"
    _write_entry(config, key, entry)
    return key


def _move(config: LooplineConfig, entry: dict[str, Any], key: str | None = None) -> None:
    """Move ``entry["alias"]`` to ``entry["to"]``: the pending entry (new unless ``key``), the alias, "moved"."""
    key = key or _append(config, entry)
    _client().set_registered_model_alias(config.model_name, entry["alias"], entry["to"])
    _complete(config, key, entry)


def _complete(config: LooplineConfig, key: str, entry: dict[str, Any]) -> None:
    """Step 3 of a move: a new champion gets ``promoted_at`` (unless it has one), then the entry says "moved"."""
    if entry["alias"] == CHAMPION:
        tags = _client().get_model_version(config.model_name, entry["to"]).tags
        if "promoted_at" not in tags:
            _client().set_model_version_tag(config.model_name, entry["to"], "promoted_at", _now())
    _write_entry(config, key, {**entry, "outcome": MOVED})


def _settle(
    config: LooplineConfig, alias: str, retry: tuple[str | None, str] | None = None
) -> dict[str, Any] | None:
    """Finish what a crashed move of ``alias`` left pending (callers hold the alias lock).

    A pending entry whose target the alias points at is completed; the one matching ``retry`` (from, to) while
    the alias is still at its ``from`` is resumed (the move is made now); any other is marked "abandoned".
    Returns the entry that ended up moved, if any.
    """
    entries, aliases = _recorded(config)
    target = aliases.get(alias)
    done: dict[str, Any] | None = None
    pending = [(k, e) for k, e in entries.items() if e["alias"] == alias and e["outcome"] == PENDING]
    for key, entry in reversed(pending):  # newest first: at most one can be the alias's last move
        if done is None and entry["to"] == target:
            _complete(config, key, entry)
            done = entry
        elif done is None and retry == (entry["from"], entry["to"]) and target == entry["from"]:
            _move(config, entry, key)
            done = entry
        else:
            _write_entry(config, key, {**entry, "outcome": ABANDONED})
    return done


def history(config: LooplineConfig) -> list[dict[str, Any]]:
    """Every recorded alias move or refused attempt, oldest first.

    A move still "pending" in the record is reported "moved" when its alias points at its target (the process
    that made it died before saying so); otherwise it stays "pending" (in flight, or the alias never moved).
    """
    entries, aliases = _recorded(config)
    found = list(entries.values())
    for entry in found:
        if entry["outcome"] == PENDING and aliases.get(entry["alias"]) == entry["to"]:
            entry["outcome"] = MOVED
    return found


def champion_moves(config: LooplineConfig) -> list[dict[str, Any]]:
    """The moves of the ``champion`` alias that happened, oldest first."""
    return [m for m in history(config) if m["alias"] == CHAMPION and m["outcome"] == MOVED]


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
