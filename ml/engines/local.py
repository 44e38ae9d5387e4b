"""The local engine: pandas, pyarrow and XGBoost in the task's own process, out of core past a memory budget.

A window (or batch) whose in-memory size, estimated from the Parquet footers as rows x columns x bytes of the
columns a step needs, fits in ``engine.memory_budget_mb`` is read at once and handled in memory. A larger one
streams: the lake is read with pyarrow datasets in record batches of ``engine.batch_rows`` rows (fewer when
such a batch would take over an eighth of the budget), only the needed columns, and

- the quality gate counts every expectation batch by batch and judges the merged counts
  (``quality.validate_stream``: the same verdicts as a whole-window run);
- training fits XGBoost's external-memory ``ExtMemQuantileDMatrix`` over the record batches; the reference
  profile's category counts merge across batches, its quantile edges and KS grid stay exact by reading whole
  numeric columns, as many per pass as half the budget holds (at least one: memory bounded by one column,
  8 bytes per row);
- drift merges per-batch summaries (``drift.summarize_batch``), equal to the in-memory comparison;
- scoring writes predictions as the record batches come (``Lake.write_stream``).

The holdout (the newest share of the newest batch) is always held in memory: it is a fraction of one batch.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ml import drift, performance, quality, train
from ml.config import LooplineConfig, Paths
from ml.engines.base import MonitoredBatch, TrainedModel
from ml.evaluate import classification_metrics, roc_auc
from ml.features import FeatureSpec, fit_vocabulary, resolve_features
from ml.ingest import CleanBatch, clean_batch, read_source
from ml.lake import Lake, Partition

if TYPE_CHECKING:
    import xgboost as xgb

log = logging.getLogger(__name__)
SAMPLE_ROWS = 100
"""Training rows handed to the registry for the signature and the dataset inputs."""


class LocalEngine:
    """The ``Engine`` of one worker: in memory when the data fits the budget, streaming when it does not."""

    name = "local"

    def __init__(self, config: LooplineConfig, paths: Paths) -> None:
        self.config = config
        self.paths = paths
        self.lake = Lake(paths.lake)
        self.table = config.dataset.name

    # -- ingestion -----------------------------------------------------------------------------------------

    def ingest(self, batch: str, source: Path, others: list[str]) -> CleanBatch:
        """``ml.ingest.clean_batch`` on the landed file (a whole-batch file stops reading past the row limit)."""
        dataset = self.config.dataset
        limit = dataset.max_batch_rows if source.stem == batch else None
        frame = read_source(source, dataset.source.format, max_rows=limit)
        known = self.lake.ids_in(self.table, others, dataset.id_column) if others else set()
        return clean_batch(self.config, frame, batch, source, known)

    def write_batch(self, batch: str, cleaned: CleanBatch, source: Path) -> Partition:
        """The cleaned frame as the batch's partition (``Lake.write``: atomic, hashed)."""
        return self.lake.write(self.table, batch, cleaned.frame, source=str(source))

    # -- reading -------------------------------------------------------------------------------------------

    def out_of_core(self, batches: Sequence[str], columns: Sequence[str] | None = None) -> bool:
        """Whether these batches' columns exceed the memory budget (then every pass streams).

        ``engine.out_of_core`` set to ``always`` or ``never`` overrides the estimate.
        """
        choice = self.config.engine.out_of_core
        if choice != "auto":
            return choice == "always"
        estimate = self.lake.memory_estimate(self.table, batches, columns)
        budget = self.config.engine.memory_budget_mb
        stream = estimate > budget * 2**20
        log.info(
            "%s %s..%s: %.0f MiB in memory vs engine.memory_budget_mb %d: %s",
            self.table,
            batches[0],
            batches[-1],
            estimate / 2**20,
            budget,
            "streaming in record batches" if stream else "in memory",
        )
        return stream

    def chunks(self, batches: Sequence[str], columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
        """The batches' rows as DataFrames of at most ``engine.batch_rows`` rows (only ``columns``)."""
        rows = self.chunk_rows(batches, columns)
        for _, _, record_batch in self.lake.scan(self.table, batches, columns, rows):
            yield record_batch.to_pandas()

    def chunk_rows(self, batches: Sequence[str], columns: Sequence[str] | None) -> int:
        """Rows per record batch: ``engine.batch_rows``, fewer when a batch of them would exceed 1/8 of the budget.

        A record batch lives as Arrow, as pandas and as the model's input at once, so an eighth of the budget
        per batch keeps a step's working set within the budget.
        """
        keys = list(batches)
        rows = self.lake.footer_rows(self.table, keys) or 1
        per_row = max(self.lake.memory_estimate(self.table, keys, columns) / rows, 1.0)
        fitting = int(self.config.engine.memory_budget_mb * 2**20 / 8 / per_row)
        return max(1000, min(self.config.engine.batch_rows, fitting))

    def _tables(
        self, batches: Sequence[str], columns: Sequence[str], stream: bool, dictionary: Sequence[str]
    ) -> Iterator[pa.Table]:
        """One Arrow table of everything when it fits, else one per streamed record batch (no pandas copy).

        Text columns named in ``dictionary`` come dictionary-encoded (``Lake.read_arrow``).
        """
        if not stream:
            yield self.lake.read_arrow(self.table, batches, columns, dictionary)
            return
        rows = self.chunk_rows(batches, columns)
        for _, _, record_batch in self.lake.scan(self.table, batches, columns, rows, dictionary):
            yield pa.Table.from_batches([record_batch])

    def _spec(self, batch: str) -> FeatureSpec:
        empty = self.lake.schema(self.table, batch).empty_table().to_pandas()
        return resolve_features(self.config, empty.columns, empty.dtypes)

    def _lineage(self, stream: bool, batches: Sequence[str], columns: Sequence[str] | None) -> dict[str, str]:
        estimate = self.lake.memory_estimate(self.table, batches, columns)
        return {
            "loopline.engine": self.name,
            "loopline.out_of_core": "yes" if stream else "no",
            "loopline.memory_estimate_mb": f"{estimate / 2**20:.1f}",
            "loopline.memory_budget_mb": str(self.config.engine.memory_budget_mb),
        }

    # -- the Engine protocol -------------------------------------------------------------------------------

    def validate(self, batches: list[str], run_name: str) -> quality.GateResult:
        """The dataset's GE suite over the batches, as one verdict (streamed past the budget)."""
        suite, docs = self.config.suite_path(), self.paths.reports / "data_docs"
        if not self.out_of_core(batches):
            frame = self.lake.read(self.table, batches)
            return quality.validate(frame, suite, docs, run_name=run_name)
        columns = self.lake.schema(self.table, batches[0]).names
        return quality.validate_stream(self.chunks(batches, None), columns, suite, docs, run_name)

    def train(self, batches: list[str], params: dict[str, Any]) -> TrainedModel:
        """Split off the holdout, fit XGBoost on the rest, profile the training rows and their scores."""
        if self.out_of_core(batches):
            return self._train_streaming(batches, params)
        dataset = self.config.dataset
        window = self.lake.read(self.table, batches)
        split = train.split_window(window, self.lake.footer_rows(self.table, batches[-1:]), self.config)
        del window  # the split holds what training needs (slices of it, when it can)
        spec = resolve_features(self.config, split.train.columns, split.train.dtypes)
        bins = self.config.drift.bins
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopline-profile") as pool:
            # The features' profile does not depend on the model: built while it trains (numpy and XGBoost
            # leave the GIL), the scores' part is added after.
            features = pool.submit(drift.feature_profiles, split.train, spec, bins)
            fitted = train.fit_scored(split.train, spec, dataset.target, params)
            columns = features.result()
        y = split.train[dataset.target].astype(int).to_numpy()
        return self._trained(
            fitted.booster,
            spec,
            fitted.scores,
            y,
            split.holdout,
            split.train.head(SAMPLE_ROWS),
            lambda importance, calibration: drift.assemble_profile(
                columns, fitted.scores, len(y), bins, importance=importance, calibration=calibration
            ),
            self._lineage(False, batches, None),
        )

    def _trained(
        self,
        booster: xgb.Booster,
        spec: FeatureSpec,
        scores: np.ndarray,
        y: np.ndarray,
        holdout: pd.DataFrame,
        sample: pd.DataFrame,
        profile_of: Callable[[dict[str, float], tuple[np.ndarray, np.ndarray] | None], dict[str, Any]],
        lineage: dict[str, str],
    ) -> TrainedModel:
        """The parts of a trained model both paths share: importance, calibration, profile, metrics."""
        importance = train.feature_importance(booster)
        holdout_y = holdout[self.config.dataset.target].astype(int).to_numpy()
        calibration = (train.predict(booster, holdout), holdout_y) if len(holdout) else None
        return TrainedModel(
            booster=booster,
            spec=spec,
            profile=profile_of(importance, calibration),
            train_metrics=classification_metrics(y, scores, self.config.gate.decision_threshold),
            importance=importance,
            train_rows=len(y),
            holdout=holdout,
            example=sample,
            lineage=lineage,
        )

    def _holdout_split(self, newest: str) -> tuple[np.ndarray, np.ndarray]:
        """The newest batch's training-row mask and its holdout row positions (in holdout order).

        The same rows as ``train.split_holdout``: labelled rows, stably sorted by event time, the latest
        ``training.holdout_fraction`` held out; read from two columns only.
        """
        dataset = self.config.dataset
        columns = [dataset.target] + ([dataset.time_column] if dataset.time_column else [])
        head = self.lake.read(self.table, [newest], columns)
        labelled = np.flatnonzero(head[dataset.target].notna().to_numpy())
        if dataset.time_column:
            order = np.argsort(head[dataset.time_column].to_numpy()[labelled], kind="stable")
            labelled = labelled[order]
        cut = round(len(labelled) * (1 - self.config.training.holdout_fraction))
        mask = np.zeros(len(head), dtype=bool)
        mask[labelled[:cut]] = True
        return mask, labelled[cut:]

    def _train_streaming(self, batches: list[str], params: dict[str, Any]) -> TrainedModel:
        dataset, newest = self.config.dataset, batches[-1]
        spec = self._spec(newest)
        mask, holdout_rows = self._holdout_split(newest)

        def training(columns: Sequence[str]) -> Iterator[pd.DataFrame]:
            for key, offset, record_batch in self.lake.scan(
                self.table, batches, columns, self.chunk_rows(batches, columns)
            ):
                frame = record_batch.to_pandas()
                keep = (
                    mask[offset : offset + len(frame)]
                    if key == newest
                    else frame[dataset.target].notna().to_numpy()
                )
                yield frame[keep] if not keep.all() else frame

        needed = [*spec.columns, dataset.target]
        rows, positives, sample = 0, 0, None
        counts: dict[str, dict[str, int]] = {column: {} for column in spec.categorical}
        seen: dict[str, set[str]] = {column: set() for column in spec.categorical}
        for frame in training(needed):
            rows += len(frame)
            positives += int(frame[dataset.target].astype("int64").sum())
            sample = frame.head(SAMPLE_ROWS) if sample is None else sample
            for column, found in fit_vocabulary(frame, spec).items():
                seen[column].update(found)
                counts[column] = drift.merge_counts(counts[column], drift.category_counts(frame[column]))
        vocabulary = {column: sorted(found) for column, found in seen.items()}
        with tempfile.TemporaryDirectory(prefix="loopline-xgb-") as cache:
            booster = train.fit_external(
                lambda: training(needed),
                spec,
                dataset.target,
                params,
                vocabulary,
                rows,
                positives,
                Path(cache),
            )
        scores = np.empty(rows)
        y = np.empty(rows, dtype=np.int8)
        at = 0
        for frame in training(needed):
            scores[at : at + len(frame)] = train.predict(booster, frame)
            y[at : at + len(frame)] = frame[dataset.target].astype("int64").to_numpy()
            at += len(frame)
        holdout = self._holdout_frame(newest, holdout_rows)

        def profile_of(
            importance: dict[str, float], calibration: tuple[np.ndarray, np.ndarray] | None
        ) -> dict[str, Any]:
            columns: dict[str, Any] = {}
            # Exact quantiles need a column whole: read as many numeric columns per pass as half the budget holds.
            per_pass = max(1, int(self.config.engine.memory_budget_mb * 2**20 / 2 // max(rows * 8, 1)))
            numeric = list(spec.numeric)
            for start in range(0, len(numeric), per_pass):
                group = numeric[start : start + per_pass]
                parts: dict[str, list[pd.Series]] = {column: [] for column in group}
                for frame in training([*group, dataset.target]):
                    for column in group:
                        parts[column].append(frame[column])
                for column in group:
                    values = pd.concat(parts.pop(column), ignore_index=True)
                    columns[column] = drift.numeric_profile(values, self.config.drift.bins)
            for column in spec.categorical:
                columns[column] = drift.categorical_profile(counts[column], rows)
            return drift.assemble_profile(
                columns, scores, rows, self.config.drift.bins, importance=importance, calibration=calibration
            )

        assert sample is not None  # fit_external refused an empty window
        return self._trained(
            booster, spec, scores, y, holdout, sample, profile_of, self._lineage(True, batches, None)
        )

    def _holdout_frame(self, newest: str, positions: np.ndarray) -> pd.DataFrame:
        """The holdout rows of the newest batch, in holdout order, gathered record batch by record batch."""
        wanted = np.sort(positions)
        parts = []
        for _, offset, record_batch in self.lake.scan(
            self.table, [newest], None, self.chunk_rows([newest], None)
        ):
            inside = wanted[(wanted >= offset) & (wanted < offset + record_batch.num_rows)] - offset
            if inside.size:
                parts.append(record_batch.take(inside).to_pandas())
        gathered = (
            pd.concat(parts, ignore_index=True) if parts else self.lake.read(self.table, [newest]).iloc[0:0]
        )
        order = np.searchsorted(wanted, positions)
        return gathered.iloc[order].reset_index(drop=True)

    def monitor(self, batch: str, booster: xgb.Booster, profile: dict[str, Any]) -> MonitoredBatch:
        """Drift statistics of one batch and the booster's scores on it, merged over record batches.

        Read, scored and counted in Arrow (categoricals dictionary-encoded), never copied into pandas.
        """
        target = self.config.dataset.target
        spec = train.feature_spec_of(booster)
        columns = list(dict.fromkeys([*spec.columns, *drift.summary_columns(profile), target]))
        available = set(self.lake.schema(self.table, batch).names)
        columns = [c for c in columns if c in available]
        kinds = {column: ref["kind"] for column, ref in profile["columns"].items()}
        text = [c for c in columns if c in spec.categorical or kinds.get(c) == "categorical"]
        summaries, labels, labelled_scores = [], [], []
        for table in self._tables([batch], columns, self.out_of_core([batch], columns), text):
            scores = train.predict(booster, table)
            summaries.append(drift.summarize_batch(profile, table, scores))
            y, s = _labelled(table, target, scores)
            labels.append(y)
            labelled_scores.append(s)
        summary = drift.merge_summaries(summaries)
        result = drift.compare_summary(profile, summary, batch, self.config.drift)
        y, s = np.concatenate(labels), np.concatenate(labelled_scores)
        realised = performance.realised_performance(y, s) if y.size else None
        return MonitoredBatch(drift=result, realised=realised, rows=summary.rows)

    def score(self, batch: str, booster: xgb.Booster, model_version: str) -> dict[str, Any]:
        """Score one batch into its predictions partition, record batch by record batch past the budget.

        Read and scored in Arrow; the predictions (id, time, score, model version) are written from Arrow.
        """
        dataset = self.config.dataset
        spec = train.feature_spec_of(booster)
        keep = [c for c in (dataset.id_column, dataset.time_column) if c]
        columns = list(dict.fromkeys([*keep, *spec.columns, dataset.target]))
        stream = self.out_of_core([batch], columns)
        labels: list[np.ndarray] = []
        labelled_scores: list[np.ndarray] = []

        def predictions() -> Iterator[pa.Table]:
            for table in self._tables([batch], columns, stream, spec.categorical):
                scores = train.predict(booster, table)
                y, s = _labelled(table, dataset.target, scores)
                labels.append(y)
                labelled_scores.append(s)
                version = pa.repeat(pa.scalar(model_version, pa.large_string()), len(scores))
                yield pa.table(
                    [*(table.column(c) for c in keep), pa.array(scores), version],
                    names=[*keep, "score", "model_version"],
                )

        partition = self.lake.write_stream(f"{self.table}__predictions", batch, predictions())
        summary: dict[str, Any] = {
            "batch": batch,
            "scored": True,
            "rows": partition.rows,
            "champion_version": model_version,
            "out_of_core": stream,
        }
        y = np.concatenate(labels)
        if y.size:
            summary["roc_auc"] = roc_auc(y, np.concatenate(labelled_scores))
        return summary


def _labelled(table: pa.Table, target: str, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 0/1 labels of the rows that have one, and those rows' scores."""
    values = table.column(target).to_pandas()
    known = values.notna().to_numpy()
    return values[known].astype(int).to_numpy(), scores[known]
