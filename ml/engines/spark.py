"""The ``spark`` engine: the loop's data-heavy work as Apache Spark jobs, with the local engine's results.

Sessions: one classic ``SparkSession`` per process (``engine.spark.master`` + ``engine.spark.conf``), reused by
every step; with ``engine.spark.connect_url`` the data steps (ingestion, gate, drift, scoring) run over Spark Connect
instead, while training always uses the classic session (XGBoost on Spark needs the SparkContext and barrier
mode, which Spark Connect does not offer). The lake's partitions are read by path, so every executor (and the
Connect server) must see the lake at the same path (a shared filesystem or object storage).

What each step computes, and how it matches the local path:

- ``validate``: ``ml.quality.validate`` itself on the Spark DataFrame of the batches (GE's Spark execution
  engine, chosen by the frame's type): the same suite, ``GateResult`` and verdicts as the local gate.
- ``train``: the holdout split of ``ml.train.split_holdout`` (the latest share of the newest batch by event
  time, collected to pandas), ``xgboost.spark.SparkXGBClassifier`` on the rest with the local hyperparameters
  and encoding (numeric as float, categoricals as codes of the sorted training vocabulary, marked ``c``), the
  booster carrying the same spec and vocabulary attributes, so it loads and scores without Spark or Java; the
  reference profile as Spark aggregations (``ml.engines.spark_profile``); train metrics from a score histogram.
- ``monitor``: the champion's scores (``mapInPandas``) and the drift comparison with ``ml.drift``; realised
  performance on the labelled rows.
- ``score``: ``mapInPandas`` with the booster's ``inplace_predict``; the predictions partition is written
  through ``ml.lake.Lake`` (atomic, content-hashed), like the local path.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml import drift, performance, quality, train
from ml.config import LooplineConfig, Paths, SparkConfig
from ml.engines.base import Holdout, MonitoredBatch, TrainedModel
from ml.engines.spark_profile import profile_columns
from ml.features import FeatureSpec, resolve_features
from ml.lake import OBJECT_STORE_PREFIX, Lake, Partition

if TYPE_CHECKING:
    import xgboost as xgb
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
SCORE_COLUMN = "__score__"
ROW_COLUMN = "__row__"
LABEL_COLUMN = "__label__"
METRIC_DECIMALS = 6
WRITE_CHUNK_ROWS = 100_000
"""Rows per pandas chunk when a Spark-cleaned batch is written through ``Lake.write_stream``."""
"""Train metrics are computed from a histogram of (label, score rounded to this many decimals)."""
INSTALL = 'pip install "loopline[spark]"  (pyspark 4.1 with great-expectations[spark]; needs Java 17)'
DEFAULT_CONF = {
    "spark.app.name": "loopline",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
}

CONNECT_MODE = "SPARK_CONNECT_MODE_ENABLED"
_lock = threading.Lock()
_classic: SparkSession | None = None
_connect: dict[str, SparkSession] = {}


def classic_session(spark: SparkConfig) -> SparkSession:
    """The process's classic SparkSession on ``spark.master`` with the default conf plus ``spark.conf``.

    Created once and reused (a process has one SparkContext); for a ``local[N]`` master the executors' Python
    is this interpreter and Spark binds to ``$SPARK_LOCAL_IP`` (default 127.0.0.1). pyspark's functions build
    classic columns from here on, until a Connect session is requested (``connect_session``).
    """
    global _classic
    with _lock:
        os.environ.pop(CONNECT_MODE, None)
        if _classic is not None and _classic._sc._jsc is not None:
            return _classic
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise RuntimeError(f"engine.kind is spark but pyspark is not installed: {INSTALL}") from exc
        if spark.master.startswith("local"):
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = SparkSession.builder.master(spark.master)
        for key, value in {**DEFAULT_CONF, **spark.conf}.items():
            builder = builder.config(key, value)
        _classic = builder.getOrCreate()
        return _classic


def connect_session(url: str) -> SparkSession:
    """A Spark Connect session to ``url`` (``sc://host:port``), one per URL and process.

    pyspark's functions build Connect columns from here on (as pyspark's own ``builder.remote`` does), until the
    classic session is requested again: the frame a step hands back works in code outside the engine, such as
    ``ml.steps.ingest_batch``'s gate on the ingested batch. Steps of one process run one at a time.
    """
    with _lock:
        if url not in _connect or _connect[url].is_stopped:
            from pyspark.sql.connect.session import SparkSession as ConnectSession

            _connect[url] = ConnectSession.builder.remote(url).getOrCreate()
        os.environ[CONNECT_MODE] = "1"
        return _connect[url]


def stop_connect_session(url: str) -> None:
    """Close the process's Spark Connect session to ``url`` (before its server stops: a client left open
    retries its release for minutes at exit); pyspark's functions build classic columns once none is open."""
    with _lock:
        session = _connect.pop(url, None)
        if not _connect:
            os.environ.pop(CONNECT_MODE, None)
    if session is not None:
        session.stop()


def data_session(spark: SparkConfig) -> SparkSession:
    """The session of the data steps: Spark Connect when ``connect_url`` is set, else the classic one."""
    return connect_session(spark.connect_url) if spark.connect_url else classic_session(spark)


@contextmanager
def spark_mode(session: SparkSession) -> Iterator[SparkSession]:
    """Make ``pyspark.sql.functions`` build columns for ``session``'s kind (Connect or classic) meanwhile.

    pyspark chooses by the process-wide ``SPARK_CONNECT_MODE_ENABLED``; GE's Spark engine and these jobs call
    those functions, so a process that uses both kinds (a Connect data step, then classic training) switches
    around each step. Steps of one process run one at a time.
    """
    remote = type(session).__module__.startswith("pyspark.sql.connect")
    before = os.environ.get(CONNECT_MODE)
    if remote:
        os.environ[CONNECT_MODE] = "1"
    else:
        os.environ.pop(CONNECT_MODE, None)
    try:
        yield session
    finally:
        if before is None:
            os.environ.pop(CONNECT_MODE, None)
        else:
            os.environ[CONNECT_MODE] = before


def read_batches(session: SparkSession, lake: Lake, table: str, batches: list[str]) -> DataFrame:
    """The lake partitions of ``batches`` as one Spark DataFrame (read by path on the executors).

    An object-store lake is read through Hadoop's S3A connector (``s3a://``): the cluster needs hadoop-aws on
    its classpath and ``spark.hadoop.fs.s3a.*`` settings for the endpoint and credentials (``engine.spark.conf``).
    """
    files = lake.uris(table, batches)
    if lake.on_object_store:
        files = ["s3a://" + uri.removeprefix(OBJECT_STORE_PREFIX) for uri in files]
    return session.read.option("mergeSchema", "true").parquet(*files)


def _scorer(raw: bytes, keep: list[str]) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A mapInPandas function: ``keep`` columns plus the booster's score of each row (``train.predict``)."""

    def score(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import xgboost as xgb

        from ml.train import predict

        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        for frame in frames:
            out = frame[keep].copy()
            out[SCORE_COLUMN] = predict(booster, frame) if len(frame) else np.zeros(0)
            yield out

    return score


def _summarizer(
    raw: bytes, profile: str, target: str
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A mapInPandas function: per partition one ``drift.summarize_batch`` row (JSON), plus the labelled rows'
    (label, score) pairs."""

    def summarize(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import xgboost as xgb

        from ml import drift
        from ml.train import predict

        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        reference = json.loads(profile)
        merged: drift.BatchSummary | None = None
        for frame in frames:
            scores = predict(booster, frame) if len(frame) else np.zeros(0)
            part = drift.summarize_batch(reference, frame, scores)
            merged = part if merged is None else merged.merge(part)
            labelled = frame[target].notna().to_numpy()
            yield pd.DataFrame(
                {
                    "summary": pd.Series([None] * int(labelled.sum()), dtype=object),
                    LABEL_COLUMN: frame.loc[labelled, target].to_numpy(dtype="float64"),
                    SCORE_COLUMN: scores[labelled],
                }
            )
        if merged is not None:
            yield pd.DataFrame(
                {"summary": [json.dumps(merged.to_dict())], LABEL_COLUMN: [np.nan], SCORE_COLUMN: [np.nan]}
            )

    return summarize


def with_scores(frame: DataFrame, booster: xgb.Booster, keep: list[str]) -> DataFrame:
    """``frame``'s ``keep`` columns and the booster's score per row, as a Spark job (classic or Connect)."""
    from pyspark.sql.types import DoubleType, StructField, StructType

    fields = [frame.schema[name] for name in keep]
    schema = StructType([*fields, StructField(SCORE_COLUMN, DoubleType(), False)])
    return frame.mapInPandas(_scorer(bytes(booster.save_raw("ubj")), keep), schema)


def weighted_metrics(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, threshold: float
) -> dict[str, float]:
    """``ml.evaluate.classification_metrics`` of rows given as (label, score, count) groups."""
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y = np.asarray(labels, dtype=int)
    w = np.asarray(weights, dtype="float64")
    s = np.clip(np.asarray(scores, dtype="float64"), 1e-7, 1 - 1e-7)
    predicted = (s >= threshold).astype(int)
    rows, positives = float(w.sum()), float(w[y == 1].sum())
    both = 0 < positives < rows
    return {
        "roc_auc": float(roc_auc_score(y, s, sample_weight=w)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, s, sample_weight=w)) if both else float("nan"),
        "log_loss": float(log_loss(y, s, sample_weight=w, labels=[0, 1])),
        "brier": float(brier_score_loss(y, s, sample_weight=w)),
        "precision": float(precision_score(y, predicted, sample_weight=w, zero_division=0)),
        "recall": float(recall_score(y, predicted, sample_weight=w, zero_division=0)),
        "f1": float(f1_score(y, predicted, sample_weight=w, zero_division=0)),
        "rows": rows,
        "positive_rate": positives / rows if rows else float("nan"),
    }


class SparkEngine:
    """The loop's data-heavy work as Spark jobs; results equal the local engine's within a stated tolerance."""

    name = "spark"

    def __init__(self, config: LooplineConfig, paths: Paths) -> None:
        self.config = config
        self.paths = paths
        self.lake = Lake.for_config(config, paths)

    @property
    def spark(self) -> SparkConfig:
        return self.config.engine.spark

    def read(self, batches: list[str], session: SparkSession | None = None) -> DataFrame:
        """The dataset's accepted batches as a DataFrame (on the data session unless one is given)."""
        return read_batches(session or data_session(self.spark), self.lake, self.config.dataset.name, batches)

    def validate(self, batches: list[str], run_name: str) -> quality.GateResult:
        """The dataset's GE suite over the batches, on GE's Spark execution engine (Data Docs built)."""
        from ml.steps import data_docs_dir

        with spark_mode(data_session(self.spark)) as session:
            frame = self.read(batches, session)
            return quality.validate(frame, self.config.suite_path(), data_docs_dir(self.paths), run_name)

    def ingest(self, batch: str, source: Path, others: list[str]) -> SparkBatch:
        """Landing file -> schema -> the batch's rows -> dedup (in the file, then against ``others``), on Spark.

        ``ml.ingest.clean_batch``'s rules and messages on a Spark DataFrame read by path: every CSV field is read
        as text and parsed as the local path parses it (numbers as doubles, the time as a UTC timestamp without
        zone, the target as 0/1 of ``positive_class``); ``BatchRejected`` names each problem (with row numbers
        for repeated ids). ``dataset.extra_columns`` and ``dataset.duplicate_ids`` apply as locally; rows keep
        the file's order.
        """
        with spark_mode(data_session(self.spark)) as session:
            return self._ingest(session, batch, source, others)

    def _ingest(self, session: SparkSession, batch: str, source: Path, others: list[str]) -> SparkBatch:
        from pyspark.sql import functions as F

        from ml.batches import window_of
        from ml.ingest import BatchRejected

        dataset = self.config.dataset
        if "infer" in (dataset.numeric_features, dataset.categorical_features):
            raise ValueError("engine spark ingests datasets whose features are listed, not inferred")
        reader = session.read.option("header", True).option("mode", "FAILFAST")
        fmt = dataset.source.format
        raw = reader.csv(str(source)) if fmt == "csv" else session.read.parquet(str(source))
        raw = raw.withColumn(ROW_COLUMN, F.monotonically_increasing_id()).persist()
        try:
            rows_read = raw.count()
            if rows_read > dataset.max_batch_rows:
                raise BatchRejected(
                    source,
                    [
                        f"{rows_read} rows exceed dataset.max_batch_rows={dataset.max_batch_rows}: "
                        "split the batch or raise the limit"
                    ],
                )
            numeric, categorical = list(dataset.numeric_features), list(dataset.categorical_features)
            time = [dataset.time_column] if dataset.time_column else []
            required = [dataset.id_column, *time, *numeric, *categorical, dataset.target]
            problems, warnings = self._column_problems([c for c in raw.columns if c != ROW_COLUMN])
            if any(c not in raw.columns for c in required):
                raise BatchRejected(source, problems)
            text = {c: F.col(c).cast("string") for c in required}
            parsed = {
                dataset.id_column: F.col(dataset.id_column),  # its type kept, as the local ingest does
                **{c: F.to_timestamp_ntz(text[c]) for c in time},
                **{c: F.trim(text[c]).cast("double") for c in numeric},
                **{c: text[c] for c in categorical},
            }
            bad = {
                dataset.id_column: text[dataset.id_column].isNull(),
                **{c: parsed[c].isNull() for c in time},
                **{c: text[c].isNotNull() & parsed[c].isNull() for c in numeric},
            }
            counts = raw.agg(
                *[F.count_if(flag).alias(f"bad:{c}") for c, flag in bad.items()],
                *[F.count(parsed[c]).alias(f"present:{c}") for c in [*numeric, *categorical]],
                F.collect_set(text[dataset.target]).alias("classes"),
            ).collect()[0]
            problems += [
                f"column {c}: {counts[f'bad:{c}']} "
                + ("empty id(s)" if c == dataset.id_column else f"bad value(s) {_examples(raw, c, flag)}")
                for c, flag in bad.items()
                if counts[f"bad:{c}"]
            ]
            problems += [
                f"column {c}: every value is empty (check the export)"
                for c in [*numeric, *categorical]
                if not counts[f"present:{c}"]
            ]
            positive = str(dataset.positive_class)
            classes = sorted(counts["classes"])
            normalised = {c: c.removesuffix(".0") for c in classes}
            if len(classes) > 2:
                problems.append(
                    f"column {dataset.target}: {len(classes)} classes {classes[:10]} found; "
                    "a binary target has two"
                )
            elif classes and positive not in normalised.values():
                problems.append(
                    f"column {dataset.target}: positive class {positive!r} never occurs "
                    f"(classes seen: {classes})"
                )
            if problems:
                raise BatchRejected(source, problems)
            target = F.regexp_replace(text[dataset.target], r"\.0$", "")
            parsed[dataset.target] = F.when(target.isNotNull(), (target == positive).cast("int"))
            clean = raw.select(*[parsed[c].alias(c) for c in required], ROW_COLUMN)
            if self.config.batching.by != "rows" and dataset.time_column:
                start, end = window_of(batch, self.config.batching)
                at = F.col(dataset.time_column)
                inside = (at >= F.lit(start.to_pydatetime()).cast("timestamp_ntz")) & (
                    at < F.lit(end.to_pydatetime()).cast("timestamp_ntz")
                )
                if source.stem == batch:
                    outside = clean.where(~inside).count()
                    if outside:
                        raise BatchRejected(
                            source,
                            [
                                f"column {dataset.time_column}: {outside} time(s) outside the batch window "
                                f"[{start:%Y-%m-%d}, {end:%Y-%m-%d}): move those rows to their own batch file"
                            ],
                        )
                clean = clean.where(inside)
            elif source.stem != batch:
                raise ValueError("engine spark ingests row batches only from one file per batch")
            kept, dropped, dedup_warnings = self._deduplicate(session, clean, raw, source, others)
        finally:
            raw.unpersist()
        return SparkBatch(kept, rows_read, dropped, warnings + dedup_warnings)

    def _column_problems(self, columns: list[str]) -> tuple[list[str], list[str]]:
        """The local ingest's verdicts on a file's ``columns``: problems (missing columns, and unexpected ones
        under ``dataset.extra_columns: refuse``) and warnings (unexpected columns dropped)."""
        from ml.ingest import required_columns

        required = required_columns(self.config, pd.DataFrame(columns=columns))
        missing = [c for c in required if c not in columns]
        extra = [c for c in columns if c not in required]
        problems: list[str] = []
        warnings: list[str] = []
        if missing:
            problems.append(
                f"missing required column(s) {', '.join(missing)}: restore them in the export, "
                "or remove them from dataset.*_features in the config"
            )
        if extra and self.config.dataset.extra_columns == "refuse":
            problems.append(
                f"unexpected column(s) {', '.join(extra)}: add them to dataset.numeric_features or "
                "dataset.categorical_features, or set dataset.extra_columns: drop to ignore them"
            )
        elif extra:
            warnings.append(
                f"dropped unexpected column(s) {', '.join(extra)} (add them to the config to use them)"
            )
        return problems, warnings

    def _deduplicate(
        self, session: SparkSession, clean: DataFrame, raw: DataFrame, source: Path, others: list[str]
    ) -> tuple[DataFrame, int, list[str]]:
        """``ml.ingest._deduplicate`` on Spark: the batch's rows each id once (persisted, in file order), how many
        rows went, and the warnings; ``BatchRejected`` names the ids and their file rows as locally.

        An exact repeat of a row is dropped (the first stays); an id on rows with different values, or held by
        one of ``others``, refuses the batch unless ``dataset.duplicate_ids`` is ``keep_last``: then the id's
        last row is kept and a row whose id another batch holds is dropped. ``raw`` is the landed file with
        ``ROW_COLUMN``, for row numbers.
        """
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        from ml.ingest import _MAX_EXAMPLES, BatchRejected

        dataset = self.config.dataset
        id_column, keep_last = dataset.id_column, dataset.duplicate_ids == "keep_last"
        values = [c for c in clean.columns if c != ROW_COLUMN]
        distinct = clean.groupBy(*values).agg(
            F.min(ROW_COLUMN).alias(ROW_COLUMN), F.count(F.lit(1)).alias(_COPIES)
        )
        by_id = Window.partitionBy(id_column)
        flagged = distinct.withColumn(_ID_ROWS, F.count(F.lit(1)).over(by_id)).withColumn(
            _ID_LAST, F.max(ROW_COLUMN).over(by_id)
        )
        if others:
            known = self.read(others, session).select(id_column).distinct().withColumn(_KNOWN, F.lit(True))
            flagged = flagged.join(known, id_column, "left").fillna(False, subset=[_KNOWN])
        else:
            flagged = flagged.withColumn(_KNOWN, F.lit(False))
        flagged = flagged.persist()
        try:
            conflicting, last, seen = F.col(_ID_ROWS) > 1, F.col(ROW_COLUMN) == F.col(_ID_LAST), F.col(_KNOWN)
            stats = flagged.agg(
                F.sum(_COPIES).alias("rows_in"),
                F.count_if(conflicting).alias("conflicting_rows"),
                F.count_if(conflicting & last).alias("conflicting_ids"),
                F.count_if(seen).alias("seen_rows"),
                F.count_if(seen & last).alias("seen_last"),
                F.count_distinct(F.when(seen, F.col(id_column))).alias("seen_ids"),
            ).collect()[0]
            rows_in = int(stats["rows_in"] or 0)
            conflicting_rows, conflicting_ids = int(stats["conflicting_rows"]), int(stats["conflicting_ids"])
            warnings: list[str] = []
            if keep_last:
                if conflicting_rows:
                    warnings.append(
                        f"dropped {conflicting_rows - conflicting_ids} earlier row(s) of {conflicting_ids} id(s) "
                        "repeated with different values (dataset.duplicate_ids: keep_last keeps each id's last row)"
                    )
                if stats["seen_last"]:
                    warnings.append(
                        f"dropped {stats['seen_last']} row(s) whose id is already in another batch of the lake"
                    )
            elif conflicting_rows or stats["seen_rows"]:
                shown = {
                    kind: _first_rows_of_ids(flagged.where(rows), id_column, _MAX_EXAMPLES)
                    for kind, rows in (("conflicting", conflicting), ("seen", seen))
                    if stats[f"{kind}_rows"]
                }
                file_rows = _file_rows(
                    raw, [m for ids in shown.values() for marks in ids.values() for m in marks]
                )
                problems = []
                if "conflicting" in shown:
                    problems.append(
                        f"column {id_column}: "
                        f"{_ids_and_rows(shown['conflicting'], conflicting_ids, file_rows)} with different "
                        "values: fix the export so each id has one row, or set dataset.duplicate_ids: "
                        "keep_last to keep each id's last row"
                    )
                seen_marks = sorted(
                    (m, value) for value, marks in shown.get("seen", {}).items() for m in marks
                )
                if "seen" in shown:
                    problems.append(
                        f"column {id_column}: "
                        f"{_ids_and_rows(shown['seen'], int(stats['seen_ids']), file_rows)} already in another "
                        "accepted batch of the lake: remove those rows from the export (a record is ingested "
                        "once), or set dataset.duplicate_ids: keep_last to drop them from this batch"
                    )
                raise BatchRejected(
                    source, problems, ids_elsewhere=[value for _, value in seen_marks[:_MAX_EXAMPLES]]
                )
            kept = flagged.where(last & ~seen).orderBy(ROW_COLUMN).select(*values).persist()
            dropped = rows_in - kept.count()
        finally:
            flagged.unpersist()
        if dropped:
            warnings.append(f"dropped {dropped} duplicate id(s) in column {id_column}")
        return kept, dropped, warnings

    def write_batch(self, batch: str, cleaned: SparkBatch, source: Path) -> Partition:
        """The cleaned rows as the batch's lake partition through ``Lake.write_stream`` (atomic, hashed), in
        chunks, with the local ingest's column types."""
        dataset = self.config.dataset
        types = {dataset.id_column: "object", dataset.target: "Int64"}
        types |= {c: "float64" for c in dataset.numeric_features}
        types |= {c: "object" for c in dataset.categorical_features}
        if dataset.time_column:
            types[dataset.time_column] = "datetime64[us]"
        chunks = _local_chunks(cleaned.frame, WRITE_CHUNK_ROWS, types)
        try:
            return self.lake.write_stream(dataset.name, batch, chunks, source=str(source))
        finally:
            cleaned.frame.unpersist()

    def split(self, batches: list[str], session: SparkSession) -> tuple[DataFrame, pd.DataFrame]:
        """Training rows (Spark) and the holdout (pandas): ``ml.train.split_holdout`` on Spark.

        The holdout is the latest ``holdout_fraction`` of the newest batch's labelled rows by event time, ties
        in file order (a stable sort); the training rows are the older batches and the rest of the newest.
        """
        from pyspark.sql import functions as F

        dataset = self.config.dataset
        labelled = F.col(dataset.target).isNotNull()
        newest = self.read(batches[-1:], session).where(labelled)
        newest = newest.withColumn(ROW_COLUMN, F.monotonically_increasing_id())
        order = [dataset.time_column, ROW_COLUMN] if dataset.time_column else [ROW_COLUMN]
        count = newest.count()
        held = count - round(count * (1 - self.config.training.holdout_fraction))
        holdout = (
            newest.orderBy(*[F.col(c).desc() for c in order]).limit(held).toPandas()
            if held
            else newest.limit(0).toPandas()
        )
        holdout = holdout.sort_values(order, kind="stable").reset_index(drop=True)
        rest = newest
        if held:
            first = holdout.iloc[0]
            before = F.col(ROW_COLUMN) < F.lit(int(first[ROW_COLUMN]))
            if dataset.time_column:
                at = F.lit(first[dataset.time_column]).cast(newest.schema[dataset.time_column].dataType)
                before = (F.col(dataset.time_column) < at) | ((F.col(dataset.time_column) == at) & before)
            rest = newest.where(before)
        rows = rest.drop(ROW_COLUMN)
        if len(batches) > 1:
            rows = (
                self.read(batches[:-1], session).where(labelled).unionByName(rows, allowMissingColumns=True)
            )
        return rows, holdout.drop(columns=[ROW_COLUMN])

    def _vocabulary(self, frame: DataFrame, spec: FeatureSpec) -> dict[str, list[str]]:
        """``ml.features.fit_vocabulary`` on Spark: the sorted categories seen, per categorical feature."""
        from pyspark.sql import functions as F

        if not spec.categorical:
            return {}
        row = frame.agg(
            *[F.collect_set(F.col(c).cast("string")).alias(c) for c in spec.categorical]
        ).collect()[0]
        return {column: sorted(row[column]) for column in spec.categorical}

    def _encoded(self, frame: DataFrame, spec: FeatureSpec, vocabulary: dict[str, list[str]]) -> DataFrame:
        """``ml.features.model_frame`` on Spark: float numerics, categoricals as vocabulary codes (unseen: null)."""
        from pyspark.sql import functions as F

        def code(column: str) -> Any:
            categories = vocabulary[column]
            if not categories:
                return F.lit(None).cast("double").alias(column)
            position = F.array_position(F.array(*map(F.lit, categories)), F.col(column).cast("string")) - 1
            return F.when(position >= 0, position.cast("double")).alias(column)

        return frame.select(
            *[F.col(c).cast("double").alias(c) for c in spec.numeric],
            *[code(c) for c in spec.categorical],
            F.col(self.config.dataset.target).cast("double").alias(LABEL_COLUMN),
        )

    def _fit(self, encoded: DataFrame, spec: FeatureSpec, params: dict[str, Any]) -> xgb.Booster:
        """SparkXGBClassifier with the local path's hyperparameters on exactly ``num_workers`` partitions."""
        from pyspark.sql import functions as F
        from xgboost.spark import SparkXGBClassifier

        stats = encoded.agg(
            F.count(F.lit(1)).alias("rows"), F.sum(LABEL_COLUMN).alias("positives")
        ).collect()[0]
        rows, positives = int(stats["rows"]), int(stats["positives"] or 0)
        if rows < 50:
            raise train.TrainingDataError(
                f"only {rows} labelled training rows: widen training.window_batches"
            )
        if positives in (0, rows):
            raise train.TrainingDataError(
                f"the training window has a single class ({positives} positives in {rows} rows): "
                "widen the window or check the target column"
            )
        workers = self.spark.num_workers
        extra = (
            {"scale_pos_weight": (rows - positives) / positives}
            if params["class_weight"] == "balanced"
            else {}
        )
        estimator = SparkXGBClassifier(
            features_col=spec.columns,
            label_col=LABEL_COLUMN,
            num_workers=workers,
            feature_names=spec.columns,
            feature_types=["q"] * len(spec.numeric) + ["c"] * len(spec.categorical),
            missing=np.nan,
            tree_method="hist",
            n_estimators=params["num_boost_round"],
            max_depth=params["max_depth"],
            learning_rate=params["learning_rate"],
            min_child_weight=params["min_child_weight"],
            subsample=params["subsample"],
            colsample_bytree=params["colsample_bytree"],
            reg_lambda=params["reg_lambda"],
            random_state=params["seed"],
            **extra,
        )
        # Exactly num_workers partitions (else SparkXGB shuffles once more), through a shuffle: barrier mode
        # refuses a stage whose RDD chain holds a union or coalesce, as the window's batches would.
        return estimator.fit(encoded.repartition(workers)).get_booster()

    def train(self, batches: list[str], params: dict[str, Any]) -> TrainedModel:
        """Split off the holdout, fit SparkXGBClassifier on the rest, profile the training rows and scores."""
        with spark_mode(classic_session(self.spark)) as session:
            return self._train(session, batches, params)

    def _train(self, session: SparkSession, batches: list[str], params: dict[str, Any]) -> TrainedModel:
        from pyspark.sql import functions as F

        config = self.config
        params = train.hyperparameters(config.training, params)
        rows, holdout = self.split(batches, session)
        rows = rows.persist()
        try:
            sample = rows.limit(100).toPandas()
            spec = resolve_features(config, sample.columns, sample.dtypes)
            vocabulary = self._vocabulary(rows, spec)
            booster = self._fit(self._encoded(rows, spec, vocabulary), spec, params)
            booster.set_attr(**{train.SPEC_ATTR: spec.to_json(), train.VOCAB_ATTR: json.dumps(vocabulary)})
            target = config.dataset.target
            scored = with_scores(rows, booster, [*spec.columns, target]).persist()
            try:
                count, columns = profile_columns(scored, spec, SCORE_COLUMN, config.drift.bins)
                histogram = (
                    scored.groupBy(
                        F.col(target).cast("int").alias("y"), F.round(SCORE_COLUMN, METRIC_DECIMALS)
                    )
                    .count()
                    .toPandas()
                )
            finally:
                scored.unpersist()
        finally:
            rows.unpersist()
        y, s, w = (histogram.iloc[:, i].to_numpy() for i in range(3))
        importance = train.feature_importance(booster)
        scored_holdout = Holdout.scored(booster, holdout, config.dataset.id_column, target)
        profile = _profile_document(
            count, columns, config.drift.bins, importance, scored_holdout.calibration()
        )
        return TrainedModel(
            booster=booster,
            spec=spec,
            profile=profile,
            train_metrics=weighted_metrics(y, s, w, config.gate.decision_threshold),
            importance=importance,
            train_rows=count,
            holdout=scored_holdout,
            example=sample[[*spec.columns, target]],
            lineage={
                "loopline.engine": "spark",
                "loopline.spark.master": self.spark.master,
                "loopline.spark.num_workers": str(self.spark.num_workers),
                "loopline.spark.version": session.version,
                "loopline.partitions": ",".join(batches),
                **train.boosting_tags(count),
            },
        )

    def monitor(self, batch: str, booster: xgb.Booster, profile: dict[str, Any]) -> MonitoredBatch:
        """Drift of one batch and of the booster's scores on it against ``profile``, in one Spark pass.

        Each partition scores its rows and summarises them (``drift.summarize_batch``); the driver merges the
        summaries (exact: they add counts) and compares (``drift.compare_summary``), as the local path does.
        The labelled rows' (label, score) pairs come back with the summaries for the realised performance.
        """
        with spark_mode(data_session(self.spark)) as session:
            return self._monitor(self.read([batch], session), batch, booster, profile)

    def _monitor(
        self, frame: DataFrame, batch: str, booster: xgb.Booster, profile: dict[str, Any]
    ) -> MonitoredBatch:
        target = self.config.dataset.target
        wanted = [*drift.summary_columns(profile), *train.feature_spec_of(booster).columns, target]
        present = [c for c in dict.fromkeys(wanted) if c in frame.columns]
        schema = f"summary string, {LABEL_COLUMN} double, {SCORE_COLUMN} double"
        raw, document = bytes(booster.save_raw("ubj")), json.dumps(profile)
        parts = frame.select(*present).mapInPandas(_summarizer(raw, document, target), schema).toPandas()
        summaries = [drift.BatchSummary.from_dict(json.loads(t)) for t in parts["summary"].dropna()]
        summary = (
            drift.merge_summaries(summaries)
            if summaries
            else drift.summarize_batch(profile, frame.limit(0).toPandas(), np.zeros(0))
        )
        result = drift.compare_summary(profile, summary, batch, self.config.drift)
        labelled = parts[parts["summary"].isna()]
        realised = (
            performance.realised_performance(
                labelled[LABEL_COLUMN].to_numpy(dtype=int), labelled[SCORE_COLUMN].to_numpy()
            )
            if len(labelled)
            else None
        )
        return MonitoredBatch(drift=result, realised=realised, rows=summary.rows)

    def score(self, batch: str, booster: xgb.Booster, model_version: str) -> dict[str, Any]:
        """Score one batch as a Spark job and write its predictions partition (replaced on re-run)."""
        from ml.evaluate import classification_metrics
        from ml.steps import predictions_table

        dataset = self.config.dataset
        keep = [c for c in (dataset.id_column, dataset.time_column) if c]
        with spark_mode(data_session(self.spark)) as session:
            frame = self.read([batch], session)
            scored = with_scores(frame, booster, [*keep, dataset.target]).toPandas()
        out = scored[keep].copy()
        out["score"] = scored[SCORE_COLUMN].to_numpy(dtype="float64")
        out["model_version"] = model_version
        partition = self.lake.write(predictions_table(self.config), batch, out)
        summary: dict[str, Any] = {
            "batch": batch,
            "scored": True,
            "rows": partition.rows,
            "champion_version": model_version,
        }
        labelled = scored[dataset.target].notna().to_numpy()
        if labelled.any():
            summary["roc_auc"] = classification_metrics(
                scored.loc[labelled, dataset.target].astype(int).to_numpy(),
                out["score"].to_numpy()[labelled],
                self.config.gate.decision_threshold,
            )["roc_auc"]
        return summary


def _profile_document(
    rows: int,
    columns: dict[str, Any],
    bins: int,
    importance: dict[str, float],
    calibration: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any]:
    """``drift.assemble_profile``'s document (importance, calibration) with every column profiled on Spark."""
    features = {name: column for name, column in columns.items() if name != drift.SCORE}
    document = drift.assemble_profile(
        features, np.zeros(0), rows, bins, importance=importance, calibration=calibration
    )
    document["columns"][drift.SCORE] = columns[drift.SCORE]
    return document


@dataclass
class SparkBatch:
    """A landed batch cleaned on Spark (``ml.ingest.clean_batch``'s rules): rows for the gate and the lake."""

    frame: DataFrame
    rows_read: int
    duplicates_dropped: int = 0
    warnings: list[str] = field(default_factory=list)


def _examples(frame: DataFrame, column: str, bad: Any) -> str:
    """Up to five offending raw values of ``column``, for a rejection message."""
    values = [row[0] for row in frame.where(bad).select(column).limit(5).collect()]
    return ", ".join(repr(v) for v in values)


_COPIES, _ID_ROWS, _ID_LAST, _KNOWN = "__copies__", "__id_rows__", "__id_last__", "__known__"
"""Deduplication's helper columns: copies of an exact row, distinct rows of its id, the id's last row, held by
another batch."""


def _first_rows_of_ids(rows: DataFrame, id_column: str, limit: int) -> dict[Any, list[int]]:
    """The first ``limit`` ids of ``rows`` by first appearance, each with its first ``limit`` ``ROW_COLUMN``
    values in order (a small collect, whatever the number of rows)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rank = F.row_number().over(Window.partitionBy(id_column).orderBy(ROW_COLUMN))
    firsts = (
        rows.select(id_column, ROW_COLUMN)
        .withColumn("__rank__", rank)
        .where(F.col("__rank__") <= limit)
        .groupBy(id_column)
        .agg(
            F.min(ROW_COLUMN).alias("__first__"), F.sort_array(F.collect_list(ROW_COLUMN)).alias("__marks__")
        )
        .orderBy("__first__")
        .limit(limit)
        .collect()
    )
    return {row[id_column]: list(row["__marks__"]) for row in firsts}


def _file_rows(raw: DataFrame, marks: list[int]) -> dict[int, int]:
    """The file's data row (1 = first) of each ``ROW_COLUMN`` value in ``marks``.

    ``monotonically_increasing_id`` puts the partition index in the upper 31 bits and the record's position in
    its partition in the lower 33, so a row's number is the rows of the partitions before it plus that position.
    """
    from pyspark.sql import functions as F

    sizes = raw.groupBy(F.shiftright(ROW_COLUMN, 33).alias("part")).count().collect()
    offsets, total = {}, 0
    for part, count in sorted((int(row["part"]), int(row["count"])) for row in sizes):
        offsets[part], total = total, total + count
    return {mark: offsets[mark >> 33] + (mark & (2**33 - 1)) + 1 for mark in marks}


def _ids_and_rows(shown: dict[Any, list[int]], total: int, file_rows: dict[int, int]) -> str:
    """``ml.ingest._ids_and_rows``'s text: ``total`` ids, the shown ones with their file rows."""
    parts = [
        f"{value!r} at row(s) {', '.join(str(file_rows[mark]) for mark in marks)}"
        for value, marks in shown.items()
    ]
    more = f" and {total - len(shown)} more" if total > len(shown) else ""
    return f"{total} id(s): " + "; ".join(parts) + more


def _local_chunks(frame: DataFrame, rows: int, dtypes: dict[str, str]) -> Iterator[pd.DataFrame]:
    """``frame``'s rows on the driver as pandas frames of at most ``rows`` rows (one Spark partition at a time)."""
    from itertools import islice

    records = frame.toLocalIterator(prefetchPartitions=True)
    while chunk := list(islice(records, rows)):
        yield pd.DataFrame.from_records(chunk, columns=frame.columns).astype(dtypes)
