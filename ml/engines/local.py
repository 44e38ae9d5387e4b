"""The local engine: pandas, pyarrow and XGBoost in the task's own process, out of core past a memory budget.

A window (or batch) whose in-memory size, estimated from the Parquet footers as rows x columns x bytes of the
columns a step needs, fits in ``engine.memory_budget_mb`` is read at once and handled in memory. A larger one
streams: the lake is read with pyarrow datasets in record batches of ``engine.batch_rows`` rows (fewer when
such a batch would take over an eighth of the budget), only the needed columns, and

- the quality gate counts every expectation batch by batch and judges the merged counts
  (``quality.validate_stream``: the same verdicts as a whole-window run);
- training fits XGBoost's external-memory ``ExtMemQuantileDMatrix`` over the record batches (past
  ``engine.max_boosting_rows``, over whole buckets of a hash of the id: XGBoost's per-row state stays within
  half the budget); the reference profile's category counts merge across batches, its quantile edges and KS
  grid stay exact by reading whole numeric columns, as many per pass as a quarter of the budget holds (at
  least one: memory bounded by one column, 8 bytes per row);
- drift merges per-batch summaries (``drift.summarize_batch``), equal to the in-memory comparison;
- scoring writes predictions as the record batches come (``Lake.write_stream``).

The holdout (the newest share of the newest batch) is scored as it is read; only its ids, labels and scores
stay in memory.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ml import drift, performance, quality, quantiles, train
from ml.config import LooplineConfig, Paths
from ml.engines.base import Holdout, MonitoredBatch, TrainedModel
from ml.evaluate import AUC_BINS, classification_metrics, histogram_roc_auc, score_class_histogram
from ml.features import FeatureSpec, fit_vocabulary, is_text_like, resolve_features
from ml.ingest import CleanBatch, clean_batch, read_source
from ml.lake import Lake, Partition

if TYPE_CHECKING:
    import xgboost as xgb

log = logging.getLogger(__name__)
SAMPLE_ROWS = 100
"""Training rows handed to the registry for the signature and the dataset inputs."""
XGBOOST_ROW_BYTES = 40
"""XGBoost's memory per boosted row out of core (gradients, labels, prediction cache, row partitions): 32 to
37 bytes measured by ``bench.outofcore``; ``engine.max_boosting_rows: auto`` gives it half the budget."""


class LocalEngine:
    """The ``Engine`` of one worker: in memory when the data fits the budget, streaming when it does not."""

    name = "local"

    def __init__(self, config: LooplineConfig, paths: Paths) -> None:
        self.config = config
        self.paths = paths
        self.lake = Lake.for_config(config, paths)
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
        """The batches' rows as DataFrames of at most ``chunk_rows`` rows, in row order (a ``quality.ChunkReader``).

        Only ``columns`` when given, in that order; one a batch lacks comes as missing values, as in a
        whole-window read.
        """
        rows = self.chunk_rows(batches, columns)
        stored = {key: set(self.lake.schema(self.table, key).names) for key in batches if columns is not None}
        # pyarrow's parsed Parquet footers are reference cycles (FileMetaData <-> ParquetSchema) as large as their
        # row groups; a steady read loop seldom triggers the collector, and every pass of ``Lake.scan`` opens
        # each partition file again (its schema and sizes come from the Lake's footer cache), so a gate reading
        # one column per pass would pile them up: freed here, from the young generations (a few ms). Measured
        # without it: peak RSS no lower (bench.outofcore gate, 10x the budget).
        gc.collect(1)
        for key in batches:
            present = None if columns is None else [column for column in columns if column in stored[key]]
            for _, _, record_batch in self.lake.scan(self.table, [key], present, rows):
                frame = record_batch.to_pandas()
                yield (
                    frame
                    if columns is None or present == list(columns)
                    else frame.reindex(columns=list(columns))
                )

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
        return quality.validate_stream(
            lambda wanted: self.chunks(batches, wanted),
            columns,
            suite,
            docs,
            run_name,
            budget_bytes=self.config.engine.memory_budget_mb * 2**20,
        )

    def train(self, batches: list[str], params: dict[str, Any]) -> TrainedModel:
        """Split off the holdout, fit XGBoost on the rest, profile the training rows and their scores."""
        if self.out_of_core(batches):
            return self._train_streaming(batches, params)
        # The window is read as Arrow, its categoricals dictionary-encoded as Parquet stores them, and never
        # becomes a pandas frame: the split, the encoding, XGBoost's input and the profile read Arrow columns.
        # The spec is resolved from the partitions' schema, as it was from the dtypes of a pandas read.
        dataset, bins = self.config.dataset, self.config.drift.bins
        schema = pa.unify_schemas(
            [self.lake.schema(self.table, batch) for batch in batches], promote_options="permissive"
        )
        empty = schema.empty_table().to_pandas()
        spec = resolve_features(self.config, empty.columns, empty.dtypes)
        window = self.lake.read_arrow(self.table, batches, None, spec.categorical)
        split = train.split_window(window, self.lake.footer_rows(self.table, batches[-1:]), self.config)
        del window  # the split holds what training needs (slices of it, when it can)

        def as_read(rows: pa.Table) -> pd.DataFrame:
            """Rows as ``Lake.read`` returns them: text columns plain again, the pandas metadata kept."""
            plain = [schema.field(f.name) if pa.types.is_dictionary(f.type) else f for f in rows.schema]
            return rows.cast(pa.schema(plain, metadata=rows.schema.metadata)).to_pandas()

        holdout, example = as_read(split.holdout), as_read(split.train.slice(0, SAMPLE_ROWS))
        data = train.training_input(split.train, spec, dataset.target)
        # The profile reads the encoded columns where they hold the rows' values (numbers as float64, text as
        # codes into a vocabulary of exactly the values present), the raw column of other categoricals.
        raw = [c for c in spec.categorical if not is_text_like(split.train.schema.field(c).type)]
        profiled = data.features.drop_columns(raw)
        for column in raw:
            profiled = profiled.append_column(column, split.train.column(column))
        del (
            split
        )  # boosting and the profile read encoded copies: the window's memory goes back before boosting
        pa.default_memory_pool().release_unused()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopline-profile") as pool:
            # The features' profile does not depend on the model: built while it trains (numpy and XGBoost
            # leave the GIL), the scores' part is added after.
            features = pool.submit(drift.feature_profiles, profiled, spec, bins)
            fitted = train.fit_scored(data, spec, dataset.target, params)
            columns = features.result()
        y = data.labels
        del data, profiled
        return self._trained(
            fitted.booster,
            spec,
            fitted.scores,
            y,
            Holdout.scored(fitted.booster, holdout, dataset.id_column, dataset.target),
            example,
            lambda importance, calibration: drift.assemble_profile(
                columns, fitted.scores, len(y), bins, importance=importance, calibration=calibration
            ),
            {**self._lineage(False, batches, None), **train.boosting_tags(len(y))},
        )

    def _trained(
        self,
        booster: xgb.Booster,
        spec: FeatureSpec,
        scores: np.ndarray,
        y: np.ndarray,
        holdout: Holdout,
        sample: pd.DataFrame,
        profile_of: Callable[[dict[str, float], tuple[np.ndarray, np.ndarray] | None], dict[str, Any]],
        lineage: dict[str, str],
    ) -> TrainedModel:
        """The parts of a trained model both paths share: importance, calibration, profile, metrics."""
        importance = train.feature_importance(booster)
        return TrainedModel(
            booster=booster,
            spec=spec,
            profile=profile_of(importance, holdout.calibration()),
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
        has_label: list[np.ndarray] = []
        times: list[np.ndarray] = []
        # Record batch by record batch: a whole-batch read of even two columns kept several times their size
        # in Arrow's pool (+114 MiB retained for 1.7M rows).
        for _, _, record_batch in self.lake.scan(
            self.table, [newest], columns, self.chunk_rows([newest], columns)
        ):
            has_label.append(~pd.isna(record_batch.column(dataset.target).to_numpy(zero_copy_only=False)))
            if dataset.time_column:
                times.append(record_batch.column(dataset.time_column).to_numpy(zero_copy_only=False))
        pa.default_memory_pool().release_unused()
        found = np.concatenate(has_label) if has_label else np.zeros(0, dtype=bool)
        labelled = np.flatnonzero(found)
        if dataset.time_column and times:
            order = np.argsort(np.concatenate(times)[labelled], kind="stable")
            labelled = labelled[order]
        cut = round(len(labelled) * (1 - self.config.training.holdout_fraction))
        mask = np.zeros(len(found), dtype=bool)
        mask[labelled[:cut]] = True
        return mask, labelled[cut:]

    def _train_streaming(self, batches: list[str], params: dict[str, Any]) -> TrainedModel:
        """``train`` in passes over record batches, in memory bounded by the budget plus XGBoost's per-row state.

        1. count the rows, the positives and the categories; the numeric columns' first selection pass;
        2. XGBoost's external-memory passes (``train.fit_external``);
        3. score the training rows: the scores go to a file next to XGBoost's cache, the training metrics
           and the scores' first selection pass take them as they come; the numeric columns' second pass;
        4. more selection passes over the numeric columns and the scores' file until their quantiles are
           exact (``quantiles.StreamedColumns``: two or three passes for millions of rows).

        Nothing per row stays in memory but XGBoost's own state (gradients, labels, prediction cache: about 40
        bytes per boosted row) and the holdout's ids, labels and scores (``Holdout``: 24 bytes per row). Past
        ``engine.max_boosting_rows`` boosting takes whole buckets of a hash of the id (``train.id_buckets``)
        up to that many rows, so XGBoost's state stays within its share of the budget however long the window;
        the profile and the training metrics still cover every training row.
        """
        dataset, newest = self.config.dataset, batches[-1]
        spec = self._spec(newest)
        mask, holdout_rows = self._holdout_split(newest)
        bins, budget = self.config.drift.bins, self.config.engine.memory_budget_mb * 2**20

        def training(columns: Sequence[str]) -> Iterator[pd.DataFrame]:
            wanted = list(dict.fromkeys([*columns, dataset.target]))
            for key, offset, record_batch in self.lake.scan(
                self.table, batches, wanted, self.chunk_rows(batches, wanted)
            ):
                frame = record_batch.to_pandas()
                del record_batch
                keep = (
                    mask[offset : offset + len(frame)]
                    if key == newest
                    else frame[dataset.target].notna().to_numpy()
                )
                if not keep.all():
                    frame = frame[keep]  # the unfiltered frame goes now, not when the next one comes
                yield frame

        def profile(statistics: quantiles.OrderStatistics) -> dict[str, Any]:
            return drift.numeric_profile(statistics, bins)

        # A quarter of the budget for the selections' state (a record batch takes an eighth, XGBoost the rest).
        numeric = quantiles.StreamedColumns(spec.numeric, profile, budget // 4)
        needed = [*spec.columns, dataset.target]
        with_ids = list(dict.fromkeys([*needed, dataset.id_column]))
        sample = None
        bucket_rows = np.zeros(train.ID_BUCKETS, dtype=np.int64)
        bucket_positives = np.zeros(train.ID_BUCKETS, dtype=np.int64)
        counts: dict[str, dict[str, int]] = {column: {} for column in spec.categorical}
        seen: dict[str, set[str]] = {column: set() for column in spec.categorical}
        for frame in training(with_ids):
            y = frame[dataset.target].astype("int64").to_numpy()
            buckets = train.id_buckets(frame[dataset.id_column])
            bucket_rows += np.bincount(buckets, minlength=train.ID_BUCKETS)
            bucket_positives += np.bincount(buckets, weights=y, minlength=train.ID_BUCKETS).astype(np.int64)
            sample = frame.head(SAMPLE_ROWS)[needed].copy() if sample is None else sample
            for column, found in fit_vocabulary(frame, spec).items():
                seen[column].update(found)
                counts[column] = drift.merge_counts(counts[column], drift.category_counts(frame[column]))
            numeric.add(frame)
        numeric.end_pass()
        vocabulary = {column: sorted(found) for column, found in seen.items()}
        rows = int(bucket_rows.sum())
        kept, boosted = self._boosting_buckets(bucket_rows)

        def boosting() -> Iterator[pd.DataFrame]:
            if kept == train.ID_BUCKETS:
                yield from training(needed)
                return
            for frame in training(with_ids):
                yield frame[train.id_buckets(frame[dataset.id_column]) < kept]

        with tempfile.TemporaryDirectory(prefix="loopline-xgb-") as cache:
            booster = train.fit_external(
                boosting,
                spec,
                dataset.target,
                params,
                vocabulary,
                boosted,
                int(bucket_positives[:kept].sum()),
                Path(cache),
            )
            scores = quantiles.StreamedSelection(profile, budget // 8)
            tally = _ScoreTally(self.config.gate.decision_threshold)
            spilled = Path(cache) / "scores.f8"
            with spilled.open("wb") as out:
                for frame in training(needed):
                    predicted = train.predict(booster, frame)
                    predicted.tofile(out)
                    tally.add(frame[dataset.target].astype("int64").to_numpy(), predicted)
                    scores.add(predicted)
                    numeric.add(frame)
            scores.end_pass()
            numeric.end_pass()
            numeric.run(training)
            while scores.pending:
                for part in _spilled(spilled, self.config.engine.batch_rows):
                    scores.add(part)
                scores.end_pass()
        holdout = self._scored_holdout(newest, holdout_rows, booster)
        importance = train.feature_importance(booster)
        calibration = holdout.calibration()
        columns: dict[str, Any] = {column: profile(numeric[column]) for column in spec.numeric}
        for column in spec.categorical:
            columns[column] = drift.categorical_profile(counts[column], rows)
        document = drift.assemble_profile(
            columns, np.zeros(0), rows, bins, importance=importance, calibration=calibration
        )
        document["columns"][drift.SCORE] = profile(scores)  # assemble_profile takes the scores as an array
        assert sample is not None  # fit_external refused an empty window
        return TrainedModel(
            booster=booster,
            spec=spec,
            profile=document,
            train_metrics=tally.metrics(),
            importance=importance,
            train_rows=rows,
            holdout=holdout,
            example=sample,
            lineage={**self._lineage(True, batches, None), **train.boosting_tags(boosted, kept)},
        )

    def _boosting_buckets(self, bucket_rows: np.ndarray) -> tuple[int, int]:
        """How many id-hash buckets streamed boosting takes, and their rows: all of them, or as many as
        ``engine.max_boosting_rows`` allows (logged, with how to change it)."""
        engine, rows = self.config.engine, int(bucket_rows.sum())
        limit = engine.max_boosting_rows
        if limit == "auto":
            limit = engine.memory_budget_mb * 2**20 // 2 // XGBOOST_ROW_BYTES
        if limit is None or rows <= limit:
            return train.ID_BUCKETS, rows
        kept = train.sampled_buckets(bucket_rows, limit)
        boosted = int(bucket_rows[:kept].sum())
        log.warning(
            "boosting on %d of %d training rows (%.1f%%, %d/%d buckets of a hash of %s; the profile and training "
            "metrics use every row): engine.max_boosting_rows is %s (%d rows; auto is what half of "
            "engine.memory_budget_mb %d holds at %d bytes of XGBoost state per row). Raise the budget or set "
            "max_boosting_rows (null: every row) to boost on more.",
            boosted,
            rows,
            100 * boosted / rows,
            kept,
            train.ID_BUCKETS,
            self.config.dataset.id_column,
            engine.max_boosting_rows,
            limit,
            engine.memory_budget_mb,
            XGBOOST_ROW_BYTES,
        )
        return kept, boosted

    def _scored_holdout(self, newest: str, positions: np.ndarray, booster: xgb.Booster) -> Holdout:
        """The holdout rows of the newest batch scored by ``booster`` record batch by record batch, in holdout
        order: only their ids, labels and scores stay in memory, never the rows."""
        dataset = self.config.dataset
        spec = train.feature_spec_of(booster)
        wanted = np.sort(positions)
        columns = list(dict.fromkeys([dataset.id_column, dataset.target, *spec.columns]))
        parts: list[Holdout] = []
        for _, offset, record_batch in self.lake.scan(
            self.table, [newest], columns, self.chunk_rows([newest], columns)
        ):
            inside = wanted[(wanted >= offset) & (wanted < offset + record_batch.num_rows)] - offset
            if inside.size:
                rows = pa.Table.from_batches([record_batch.take(inside)])
                parts.append(Holdout.scored(booster, rows, dataset.id_column, dataset.target))
        # ``wanted`` is sorted, so the parts hold the rows in position order; put them in holdout order
        return Holdout.concat(parts).take(np.searchsorted(wanted, positions))

    def monitor(self, batch: str, booster: xgb.Booster, profile: dict[str, Any]) -> MonitoredBatch:
        """Drift statistics of one batch and the booster's scores on it, merged over record batches.

        Read, scored and counted in Arrow (categoricals dictionary-encoded), never copied into pandas. Streamed,
        a record batch leaves only fixed-size state behind (its drift summary and its labelled scores'
        ``performance.LabelledScores``, each merged at once): memory does not grow with the rows. The drift
        result equals the in-memory one; the realised AUC is then binned (within 1e-4 of the per-row AUC, see
        ``LabelledScores.performance``), in memory it is per row.
        """
        target = self.config.dataset.target
        spec = train.feature_spec_of(booster)
        columns = list(dict.fromkeys([*spec.columns, *drift.summary_columns(profile), target]))
        available = set(self.lake.schema(self.table, batch).names)
        columns = [c for c in columns if c in available]
        kinds = {column: ref["kind"] for column, ref in profile["columns"].items()}
        text = [c for c in columns if c in spec.categorical or kinds.get(c) == "categorical"]
        stream = self.out_of_core([batch], columns)
        summary: drift.BatchSummary | None = None
        labelled: performance.LabelledScores | None = None
        realised: dict[str, Any] | None = None
        for table in self._tables([batch], columns, stream, text):
            scores = train.predict(booster, table)
            part = drift.summarize_batch(profile, table, scores)
            summary = part if summary is None else summary.merge(part)
            y, s = _labelled(table, target, scores)
            if not stream:  # one table: the per-row realised performance
                realised = performance.realised_performance(y, s) if y.size else None
            elif y.size:
                counted = performance.LabelledScores.of(y, s)
                labelled = counted if labelled is None else labelled.merge(counted)
            del table, scores, y, s  # not held while the next record batch is read
        if summary is None:
            raise ValueError(f"{self.table} batch {batch} has no rows to monitor")
        result = drift.compare_summary(profile, summary, batch, self.config.drift)
        if labelled is not None:
            realised = labelled.performance()
        return MonitoredBatch(drift=result, realised=realised, rows=summary.rows)

    def score(self, batch: str, booster: xgb.Booster, model_version: str) -> dict[str, Any]:
        """Score one batch into its predictions partition, record batch by record batch past the budget.

        Read and scored in Arrow; the predictions (id, time, score, model version) are written from Arrow as
        they come. The labelled rows' AUC comes from a fixed-size per-class score histogram
        (``evaluate.histogram_roc_auc``: no sort, memory independent of the rows, within 1e-4 of the per-row
        AUC), the same number streamed or in memory.
        """
        dataset = self.config.dataset
        spec = train.feature_spec_of(booster)
        keep = [c for c in (dataset.id_column, dataset.time_column) if c]
        columns = list(dict.fromkeys([*keep, *spec.columns, dataset.target]))
        stream = self.out_of_core([batch], columns)
        histogram = np.zeros((2, AUC_BINS), dtype=np.int64)

        def predictions() -> Iterator[pa.Table]:
            for table in self._tables([batch], columns, stream, spec.categorical):
                scores = train.predict(booster, table)
                histogram[...] += score_class_histogram(*_labelled(table, dataset.target, scores))
                version = pa.repeat(pa.scalar(model_version, pa.large_string()), len(scores))
                yield pa.table(
                    [*(table.column(c) for c in keep), pa.array(scores), version],
                    names=[*keep, "score", "model_version"],
                )
                del table, scores  # not held while the next record batch is read

        partition = self.lake.write_stream(f"{self.table}__predictions", batch, predictions())
        summary: dict[str, Any] = {
            "batch": batch,
            "scored": True,
            "rows": partition.rows,
            "champion_version": model_version,
            "out_of_core": stream,
        }
        if histogram.any():
            summary["roc_auc"] = histogram_roc_auc(histogram)[0]
        return summary


def _labelled(table: pa.Table, target: str, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 0/1 labels of the rows that have one, and those rows' scores."""
    values = table.column(target).to_numpy(zero_copy_only=False)  # missing: NaN (or None)
    known = pd.notna(values)
    if known.all():
        return values.astype(int, copy=False), scores
    return values[known].astype(int), scores[known]


def _spilled(path: Path, rows: int) -> Iterator[np.ndarray]:
    """A float64 file written with ``ndarray.tofile``, ``rows`` values at a time (read, not mapped)."""
    with path.open("rb") as source:
        while (part := np.fromfile(source, dtype="float64", count=rows)).size:
            yield part


class _ScoreTally:
    """``classification_metrics`` of the training rows from fixed-size state merged over record batches.

    Exact (up to summation order) but for the ranking metrics: ROC and PR AUC come from a per-class score
    histogram (``evaluate.score_class_histogram``, bins of width 1e-5 whose rows count as ties; see
    ``evaluate.histogram_roc_auc`` for the bound).
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.histogram = np.zeros((2, AUC_BINS), dtype=np.int64)
        self.log_loss = self.brier = 0.0
        self.flagged = self.true_positives = 0

    def add(self, y: np.ndarray, scores: np.ndarray) -> None:
        """One record batch's 0/1 labels and scores."""
        clipped = np.clip(scores, 1e-7, 1 - 1e-7)  # as classification_metrics clips them
        self.histogram += score_class_histogram(y, clipped)
        self.log_loss -= float(np.sum(np.where(y == 1, np.log(clipped), np.log1p(-clipped))))
        self.brier += float(np.sum((clipped - y) ** 2))
        predicted = clipped >= self.threshold
        self.flagged += int(np.count_nonzero(predicted))
        self.true_positives += int(np.count_nonzero(predicted & (y == 1)))

    def metrics(self) -> dict[str, float]:
        """The metrics of every row added, under ``classification_metrics``' keys."""
        negatives, positives = self.histogram
        rows, hits = int(self.histogram.sum()), int(positives.sum())
        roc_auc = pr_auc = float("nan")
        if 0 < hits < rows:
            roc_auc = histogram_roc_auc(self.histogram)[0]
            used = (positives + negatives)[::-1] > 0  # from the highest scores down, one threshold per bin
            true_pos = np.cumsum(positives[::-1])[used].astype("float64")
            flagged = np.cumsum((positives + negatives)[::-1])[used]
            pr_auc = float(np.sum(np.diff(true_pos, prepend=0.0) / hits * true_pos / flagged))
        precision = self.true_positives / self.flagged if self.flagged else 0.0
        recall = self.true_positives / hits if hits else 0.0
        both = self.flagged + hits
        return {
            "roc_auc": roc_auc,
            "pr_auc": pr_auc,
            "log_loss": self.log_loss / rows if rows else 0.0,
            "brier": self.brier / rows if rows else 0.0,
            "precision": float(precision),
            "recall": float(recall),
            "f1": 2 * self.true_positives / both if both else 0.0,
            "rows": float(rows),
            "positive_rate": hits / rows if rows else float("nan"),
        }
