"""The seam between the loop's steps and the engine that does their data-heavy work.

``ml.steps`` keeps the transaction of each step (MLflow logging, the registry, reports, the policy, quarantine);
an engine reads the landing zone and the lake and computes: a landed batch's cleaning and its partition, the
window's quality gate, training with its reference profile, a batch's drift
statistics and its scores. ``local`` (pandas, pyarrow and XGBoost in the task's process, out of core past the
memory budget) and ``spark`` (Apache Spark jobs) give the same results within a stated tolerance, so the DAG
files never change between engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import xgboost as xgb

    from ml.config import LooplineConfig, Paths
    from ml.drift import DriftResult
    from ml.features import FeatureSpec
    from ml.lake import Partition
    from ml.quality import GateResult


@dataclass(frozen=True)
class Holdout:
    """The evaluation rows as training saw them: the latest share of the newest batch, never trained on.

    Only three arrays per row stay in memory (in holdout order): the rows' ids, their 0/1 labels and the trained
    booster's scores. The evaluate step reads the rows again from the lake to score the champion beside it.
    """

    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def scored(
        cls, booster: xgb.Booster, rows: pd.DataFrame | pa.Table, id_column: str, target: str
    ) -> Holdout:
        """Holdout rows (a DataFrame, or Arrow record batches as a table) scored by ``booster``."""
        from ml import train

        return cls(
            ids=np.asarray(rows[id_column]),
            labels=np.asarray(rows[target]).astype(int),
            scores=train.predict(booster, rows) if len(rows) else np.zeros(0),
        )

    @classmethod
    def concat(cls, parts: list[Holdout]) -> Holdout:
        """Parts in order, as one holdout."""
        if not parts:
            return cls(np.zeros(0, dtype=object), np.zeros(0, dtype=int), np.zeros(0))
        return cls(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in ("ids", "labels", "scores"))
        )

    def take(self, order: np.ndarray) -> Holdout:
        """The rows at positions ``order``."""
        return Holdout(self.ids[order], self.labels[order], self.scores[order])

    def calibration(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, labels) for the reference profile's calibration curve; None for an empty holdout."""
        return (self.scores, self.labels) if len(self) else None


@dataclass
class TrainedModel:
    """What training on a window produced, ready for ``registry.log_training_run``."""

    booster: xgb.Booster
    spec: FeatureSpec
    profile: dict[str, Any]
    """The drift reference profile (``drift.build_profile``'s document) of the training rows and their scores."""
    train_metrics: dict[str, float]
    importance: dict[str, float]
    train_rows: int
    holdout: Holdout
    """The evaluation rows' ids, labels and this booster's scores (the latest share of the newest batch)."""
    example: pd.DataFrame
    """Up to 100 training rows (features and target): the model's signature, input example and dataset inputs."""
    lineage: dict[str, str] = field(default_factory=dict)
    """Engine facts for the run's tags (``loopline.engine``, out-of-core or not, partitions read)."""


class CleanedBatch(Protocol):
    """A landed batch after ``ingest``: its rows (a pandas or Spark DataFrame) and what cleaning did."""

    frame: Any
    rows_read: int
    duplicates_dropped: int
    warnings: list[str]


@dataclass
class MonitoredBatch:
    """A batch compared with the champion's reference profile, plus realised performance when labelled."""

    drift: DriftResult
    realised: dict[str, Any] | None
    rows: int


class Engine(Protocol):
    """The data-heavy half of the loop's steps, over accepted lake batches."""

    name: str
    config: LooplineConfig
    paths: Paths

    def ingest(self, batch: str, source: Path, others: list[str]) -> CleanedBatch:
        """Landing file -> schema -> the batch's rows -> dedup (in the file, then against ``others``' ids).

        Raises ``ml.ingest.BatchRejected`` naming each problem; writes nothing.
        """
        ...

    def write_batch(self, batch: str, cleaned: CleanedBatch, source: Path) -> Partition:
        """The cleaned rows (after the gate) as the batch's lake partition, atomically (replaced on re-run)."""
        ...

    def validate(self, batches: list[str], run_name: str) -> GateResult:
        """The dataset's GE suite over the batches, as one verdict (Data Docs built, raw result kept)."""
        ...

    def train(self, batches: list[str], params: dict[str, Any]) -> TrainedModel:
        """Split off the holdout, fit XGBoost on the rest, profile the training rows and their scores."""
        ...

    def monitor(self, batch: str, booster: xgb.Booster, profile: dict[str, Any]) -> MonitoredBatch:
        """Drift statistics of one batch and the booster's scores on it against ``profile``."""
        ...

    def score(self, batch: str, booster: xgb.Booster, model_version: str) -> dict[str, Any]:
        """Score one batch and write its predictions partition (replaced on re-run); returns a summary."""
        ...


def engine_for(config: LooplineConfig, paths: Paths) -> Engine:
    """The engine the config names (``engine.kind``); Spark is imported only when chosen."""
    if config.engine.kind == "spark":
        from ml.engines.spark import SparkEngine

        return SparkEngine(config, paths)
    from ml.engines.local import LocalEngine

    return LocalEngine(config, paths)
