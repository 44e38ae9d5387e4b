"""From a landed file to a clean batch: find it, read it, enforce the schema, apply the duplicate-id policy.

Every problem with the data raises ``BatchRejected`` with a message that names the file, the column, the rows
and the fix; the caller quarantines the batch. Nothing here writes to the lake.

A SQL source (``dataset.source.format: sql``) is landed one batch window at a time: ``landing_path`` reads the
rows whose time column lies in the window from the table or query, with the window's bounds as bound
parameters (never formatted into the SQL), and writes them as ``<batch>.parquet`` under the landing zone; the
rest of ingestion (schema, dedup, gate, quarantine of that snapshot) is the same as for a landed file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.batches import check_key, row_range_of, window_of
from ml.config import LooplineConfig, Paths
from ml.features import resolve_features

if TYPE_CHECKING:
    from sqlalchemy import Engine

_MAX_EXAMPLES = 5
_EVERYTHING = (datetime(1900, 1, 1), datetime(2200, 1, 1))


class BatchRejected(ValueError):
    """A batch that must not enter the lake; ``problems`` lists each reason.

    ``ids_elsewhere`` holds a few of the batch's ids that another accepted batch already holds, so that the
    caller, which knows the lake, can name that batch.
    """

    def __init__(self, source: Path | str, problems: list[str], ids_elsewhere: Iterable[object] = ()) -> None:
        self.source = str(source)
        self.problems = problems
        self.ids_elsewhere = list(ids_elsewhere)
        super().__init__(f"{source}: batch rejected:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class CleanBatch:
    """A batch ready for the quality gate and the lake, with what was done to it."""

    batch: str
    source: Path
    frame: pd.DataFrame
    rows_read: int
    duplicates_dropped: int = 0
    warnings: list[str] = field(default_factory=list)


def landing_path(config: LooplineConfig, paths: Paths, batch: str, *, extract: bool = True) -> Path:
    """The landed file that holds ``batch``; refuses a malformed batch key and any path outside the landing zone.

    For a SQL source it is the window's snapshot ``<batch>.parquet``, read from the database first unless
    ``extract`` is False (a window without rows raises FileNotFoundError, like a batch file not yet landed).
    """
    check_key(batch, config.batching)
    landing = paths.landing.resolve()
    source = config.dataset.source
    base = (landing / (source.path or config.dataset.name)).resolve()
    if not base.is_relative_to(landing):
        raise BatchRejected(
            base, [f"dataset.source.path resolves outside the landing zone {landing}: move the data into it"]
        )
    if source.format == "sql":
        snapshot = base / f"{batch}.parquet"
        if extract:
            extract_sql_batch(config, snapshot, batch)
        return snapshot
    if base.is_dir() or not base.suffix:
        candidate = (base / f"{batch}.{source.format}").resolve()
        if not candidate.is_relative_to(landing):
            raise BatchRejected(candidate, [f"batch file resolves outside the landing zone {landing}"])
        return candidate
    return base


class SqlSourceError(ValueError):
    """A SQL source that cannot be read as configured; the message names the source and the fix."""


def expand_url(url: str) -> str:
    """``${VAR}`` in a SQLAlchemy URL replaced from the environment; an unset variable is an error."""
    missing = [name for name in re.findall(r"\$\{(\w+)\}", url) if name not in os.environ]
    if missing:
        raise SqlSourceError(f"the SQL URL names unset environment variable(s) {', '.join(missing)}")
    return re.sub(r"\$\{(\w+)\}", lambda m: os.environ[m.group(1)], url)


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg2 unless psycopg 3 is installed (SQLAlchemy 2.1 defaults to psycopg 3)."""
    import importlib.util

    from sqlalchemy import make_url

    parsed = make_url(url)
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def read_sql_window(
    engine: Engine,
    start: datetime,
    end: datetime,
    *,
    table: str | None = None,
    query: str | None = None,
    time_column: str | None = None,
    columns: list[str] | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """The rows with ``start <= time < end`` of a table or a query, at most ``limit`` of them.

    ``table`` (``name`` or ``schema.name``) is reflected, its ``time_column`` selects the window and only
    ``columns`` (default all) are read; ``query`` is SQL text whose only inputs are ``:start`` and ``:end``.
    Both bounds are always bound parameters, never part of the SQL text. Aware bounds are compared as UTC;
    they are passed naive to a ``timestamp without time zone`` column and to SQLite.
    """
    from sqlalchemy import MetaData, Table, bindparam, select, text
    from sqlalchemy.exc import ArgumentError, NoSuchTableError

    if (table is None) == (query is None):
        raise SqlSourceError("give exactly one of a table or a query as the SQL source")
    with engine.connect() as connection:
        if table is not None:
            schema, _, name = table.rpartition(".")
            try:
                reflected = Table(name, MetaData(), schema=schema or None, autoload_with=connection)
            except NoSuchTableError:
                raise SqlSourceError(f"no table {table} in {redact_url(str(engine.url))}") from None
            wanted = [time_column or "", *(columns or [])]
            missing = [c for c in wanted if c not in reflected.c]
            if missing:
                raise SqlSourceError(f"table {table} has no column(s) {', '.join(map(repr, missing))}")
            moment = reflected.c[time_column]
            picked = [reflected.c[c] for c in columns] if columns else [reflected]
            statement: Any = (
                select(*picked)
                .where(moment >= bindparam("start"), moment < bindparam("end"))
                .order_by(moment)
            )
            aware = bool(getattr(moment.type, "timezone", False)) and connection.dialect.name != "sqlite"
        else:
            try:
                statement = text(query or "").bindparams(bindparam("start"), bindparam("end"))
            except ArgumentError as exc:
                raise SqlSourceError(
                    f"the query must use :start and :end as bound parameters ({exc})"
                ) from None
            aware = connection.dialect.name != "sqlite"
        bounds = {name: _bound(moment_of, aware) for name, moment_of in (("start", start), ("end", end))}
        result = connection.execution_options(stream_results=True).execute(statement, bounds)
        rows = result.fetchmany(limit) if limit is not None else result.fetchall()
        frame = pd.DataFrame([tuple(row) for row in rows], columns=list(result.keys()))
        result.close()
    for column in frame.columns:
        present = frame[column].dropna()
        if len(present) and isinstance(present.iloc[0], Decimal):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def _bound(moment: datetime, aware: bool) -> datetime:
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime() if aware else stamp.tz_localize(None).to_pydatetime()


def sql_engine(url: str) -> Engine:
    """An engine for a SQL source (``${VAR}`` expanded, ``postgresql://`` mapped to an installed driver)."""
    from sqlalchemy import create_engine

    return create_engine(normalise_url(expand_url(url)), pool_pre_ping=True)


def extract_sql_batch(config: LooplineConfig, target: Path, batch: str) -> Path:
    """Read ``batch``'s time window from the SQL source into the Parquet snapshot ``target`` (replaced).

    At most ``dataset.max_batch_rows + 1`` rows are read, so an oversized window is refused by ``read_source``
    without exhausting memory. An empty window raises FileNotFoundError and writes nothing.
    """
    source = config.dataset.source
    assert source.url is not None and config.dataset.time_column is not None
    start, end = window_of(batch, config.batching)
    engine = sql_engine(source.url)
    origin = f"{redact_url(str(engine.url))} {source.table or 'query'}"
    try:
        frame = read_sql_window(
            engine,
            start.to_pydatetime(),
            end.to_pydatetime(),
            table=source.table,
            query=source.query,
            time_column=config.dataset.time_column,
            limit=config.dataset.max_batch_rows + 1,
        )
    finally:
        engine.dispose()
    if frame.empty:
        raise FileNotFoundError(
            f"{origin}: no rows with {config.dataset.time_column} in [{start:%Y-%m-%d}, {end:%Y-%m-%d}) "
            f"(has batch {batch} landed in the source yet?)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), partial)
    os.replace(partial, target)
    return target


def discover_batches(config: LooplineConfig, paths: Paths) -> list[str]:
    """Every batch key present in the landing zone, oldest first."""
    from ml.batches import batch_key_for

    if config.dataset.source.format == "sql":
        return _sql_batches(config)
    probe = {"month": "1970-01", "week": "1970-W01", "day": "1970-01-01", "rows": "000000"}[
        config.batching.by
    ]
    landing = landing_path(config, paths, probe)
    fmt = config.dataset.source.format
    if landing.stem == probe:
        return sorted(p.stem for p in landing.parent.glob(f"*.{fmt}") if not p.name.startswith("."))
    frame = read_source(landing, fmt)
    if config.batching.by == "rows":
        count = -(-len(frame) // config.batching.rows_per_batch)
        return [f"{index:06d}" for index in range(count)]
    assert config.dataset.time_column is not None
    times = pd.to_datetime(frame[config.dataset.time_column], errors="coerce", utc=True).dropna()
    return sorted({batch_key_for(moment, config.batching) for moment in times.dt.tz_localize(None)})


def _sql_batches(config: LooplineConfig) -> list[str]:
    """The batch keys of every row of a SQL source (only the time column of a table is read)."""
    from ml.batches import batch_key_for

    source, time_column = config.dataset.source, config.dataset.time_column
    assert source.url is not None and time_column is not None
    engine = sql_engine(source.url)
    try:
        frame = read_sql_window(
            engine,
            *_EVERYTHING,
            table=source.table,
            query=source.query,
            time_column=time_column,
            columns=[time_column] if source.table else None,
        )
    finally:
        engine.dispose()
    if frame.empty:
        return []
    times = pd.to_datetime(frame[time_column], errors="coerce", utc=True).dropna()
    return sorted({batch_key_for(moment, config.batching) for moment in times.dt.tz_localize(None)})


def read_source(path: Path, file_format: str, max_rows: int | None = None) -> pd.DataFrame:
    """Read a landed CSV or Parquet file (a SQL source's window snapshot is Parquet); unreadable files raise
    BatchRejected saying why.

    With ``max_rows`` (``dataset.max_batch_rows`` for a one-batch file), a larger file is refused after reading
    at most ``max_rows + 1`` rows (CSV) or only its footer (Parquet), so a runaway export cannot exhaust memory.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such batch file in the landing zone (has the batch landed yet?)")
    if path.stat().st_size == 0:
        raise BatchRejected(path, ["the file is empty (0 bytes): re-export the batch"])
    try:
        if file_format == "csv":
            frame = pd.read_csv(
                path,
                dtype_backend="numpy_nullable",
                on_bad_lines="error",
                low_memory=False,
                nrows=None if max_rows is None else max_rows + 1,
            )
            frame = frame.convert_dtypes(dtype_backend="numpy_nullable")
        else:
            if max_rows is not None:
                _refuse_above(path, pq.ParquetFile(path).metadata.num_rows, max_rows)
            frame = pq.read_table(path).to_pandas()
    except pd.errors.EmptyDataError:
        raise BatchRejected(path, ["the file has no header and no rows: re-export the batch"]) from None
    except pd.errors.ParserError as exc:
        raise BatchRejected(path, [f"malformed CSV: {exc} (fix or re-export that line)"]) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise BatchRejected(path, [f"not a readable Parquet file: {exc} (re-export the batch)"]) from None
    if frame.empty:
        raise BatchRejected(path, ["the file has a header but no rows: re-export the batch"])
    if max_rows is not None:
        _refuse_above(path, len(frame), max_rows)
    if file_format == "csv" and frame[frame.columns[-1]].isna().any():
        _check_csv_fields(path, len(frame.columns))
    return frame


def _refuse_above(path: Path, rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise BatchRejected(
            path,
            [
                f"more than dataset.max_batch_rows={max_rows} rows ({rows} read): "
                "split the batch or raise the limit"
            ],
        )


def _check_csv_fields(path: Path, expected: int) -> None:
    """Refuse records with fewer fields than the header, which pandas silently fills with missing values.

    A short record is what a file cut off mid-write (or a broken export) looks like; it always leaves the last
    column missing, so this second, strict parse only runs when that column has missing values.
    """
    short: list[tuple[int, int, str]] = []

    def keep(row: pacsv.InvalidRow) -> str:
        short.append((int(row.number or 0) - 1, row.actual_columns, row.text))
        return "skip"

    try:
        pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, autogenerate_column_names=True, skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=keep),
            convert_options=pacsv.ConvertOptions(include_columns=["f0"], column_types={"f0": pa.string()}),
        )
    except pa.ArrowInvalid as exc:
        raise BatchRejected(path, [f"malformed CSV: {exc} (fix or re-export the file)"]) from None
    if short:
        shown = [
            f"row {number}: {fields} field(s) where the header has {expected} ({text[:80]!r})"
            for number, fields, text in short[:_MAX_EXAMPLES]
        ]
        more = f" and {len(short) - len(shown)} more" if len(short) > len(shown) else ""
        raise BatchRejected(
            path,
            [
                f"{len(short)} truncated or malformed line(s): " + "; ".join(shown) + more,
                "fix those lines or re-export the batch (a file cut off while it was written looks like this)",
            ],
        )


def clean_batch(
    config: LooplineConfig,
    frame: pd.DataFrame,
    batch: str,
    source: Path,
    known_ids: AbstractSet[object] | None = None,
) -> CleanBatch:
    """Enforce the schema on a landed frame and keep the rows of ``batch`` only, each id once.

    ``known_ids`` are the ids of the lake's other accepted batches. A column outside the schema follows
    ``dataset.extra_columns``; repeated ids follow ``dataset.duplicate_ids`` (``_deduplicate``). Row numbers in
    messages count the file's data rows from 1.
    """
    dataset = config.dataset
    rows_read = len(frame)
    if rows_read > dataset.max_batch_rows:
        raise BatchRejected(
            source,
            [
                f"{rows_read} rows exceed dataset.max_batch_rows={dataset.max_batch_rows}: "
                "split the batch or raise the limit"
            ],
        )
    if not frame.index.equals(pd.RangeIndex(rows_read)):
        frame = frame.reset_index(drop=True)
    required = required_columns(config, frame)
    problems: list[str] = []
    warnings: list[str] = []
    missing = [c for c in required if c not in frame.columns]
    if missing:
        problems.append(
            f"missing required column(s) {', '.join(missing)}: restore them in the export, "
            "or remove them from dataset.*_features in the config"
        )
    extra = [c for c in frame.columns if c not in required]
    if extra and dataset.extra_columns == "refuse":
        problems.append(
            f"unexpected column(s) {', '.join(extra)}: add them to dataset.numeric_features or "
            "dataset.categorical_features, or set dataset.extra_columns: drop to ignore them"
        )
    elif extra:
        warnings.append(
            f"dropped unexpected column(s) {', '.join(extra)} (add them to the config to use them)"
        )
    if missing:
        raise BatchRejected(source, problems)
    out, parse_problems = _parse_columns(config, frame)
    problems += parse_problems
    if problems:
        raise BatchRejected(source, problems)
    out = _rows_of_batch(config, out, batch, source, whole_file=source.stem == batch)
    out, duplicates, dedup_warnings = _deduplicate(config, out, source, known_ids or set())
    return CleanBatch(batch, source, out, rows_read, duplicates, warnings + dedup_warnings)


def required_columns(config: LooplineConfig, frame: pd.DataFrame) -> list[str]:
    """The columns a batch of ``frame``'s shape must hold: the id, the target, the features, the time."""
    dataset = config.dataset
    spec = resolve_features(config, frame.columns, frame.dtypes)
    time = [dataset.time_column] if dataset.time_column else []
    return [dataset.id_column, dataset.target, *spec.columns, *time]


def readable_rows(config: LooplineConfig, frame: pd.DataFrame, batch: str, whole_file: bool) -> pd.DataFrame:
    """What a refused batch still offers to the data-quality suite: its schema columns that are present, parsed
    as ``clean_batch`` parses them (values it would refuse become missing), each exact duplicate row once.

    Missing columns stay missing, so the suite reports them. A file of several batches gives the rows of
    ``batch`` (all of them when its time column is missing too); a batch's own file gives every row.
    """
    out, _ = _parse_columns(config, frame.reset_index(drop=True))
    time_column = config.dataset.time_column
    if not whole_file and config.batching.by == "rows":
        first, last = row_range_of(batch, config.batching)
        out = out.iloc[first:last]
    elif not whole_file and time_column in out.columns:
        start, end = window_of(batch, config.batching)
        out = out[(out[time_column] >= start) & (out[time_column] < end)]
    return out.drop_duplicates().reset_index(drop=True)


def _parse_columns(config: LooplineConfig, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The schema columns present in ``frame``, parsed to the lake's types, and what could not be parsed."""
    dataset = config.dataset
    spec = resolve_features(config, frame.columns, frame.dtypes)
    present = set(frame.columns)
    problems: list[str] = []
    out = pd.DataFrame(index=frame.index)
    if dataset.id_column in present:
        ids = frame[dataset.id_column]
        out[dataset.id_column] = ids.astype("object").where(ids.notna(), None)
        null_ids = out[dataset.id_column].isna()
        if null_ids.any():
            problems.append(
                f"column {dataset.id_column}: {int(null_ids.sum())} empty id(s) at {_rows(null_ids)}"
            )
    if dataset.time_column in present:
        out[dataset.time_column], problem = _parse_time(frame[dataset.time_column], dataset.time_column)
        problems += [problem] if problem else []
    for column in (c for c in spec.numeric if c in present):
        out[column], problem = _parse_numeric(frame[column], column)
        problems += [problem] if problem else []
    for column in (c for c in spec.categorical if c in present):
        values = frame[column].astype("object")
        out[column] = values.where(values.notna(), None).map(lambda v: None if v is None else str(v))
    if dataset.target in present:
        out[dataset.target], problem = _parse_target(
            frame[dataset.target], dataset.target, dataset.positive_class
        )
        problems += [problem] if problem else []
    problems += [
        f"column {column}: every value is empty (check the export)"
        for column in spec.columns
        if column in out.columns and out[column].isna().all()
    ]
    return out, problems


def _deduplicate(
    config: LooplineConfig, frame: pd.DataFrame, source: Path, known_ids: AbstractSet[object]
) -> tuple[pd.DataFrame, int, list[str]]:
    """Each id once: ``frame`` without repeated ids, how many rows went, and the warnings to log.

    A row that repeats another exactly (same id, same values: a record delivered twice) is always dropped. An
    id on rows with different values, or already in another accepted batch (``known_ids``), refuses the batch
    unless ``dataset.duplicate_ids`` is ``keep_last``: then the id's last row in the file is kept, and a row whose
    id another batch holds is dropped (an accepted partition is never rewritten, so the first accepted wins).
    """
    dataset = config.dataset
    id_column, keep_last = dataset.id_column, dataset.duplicate_ids == "keep_last"
    rows_in = len(frame)
    problems: list[str] = []
    warnings: list[str] = []
    repeated = frame[id_column].duplicated(keep=False)
    if repeated.any():
        exact = frame[repeated].duplicated(keep="first")
        frame = frame.drop(index=exact.index[exact])
        conflicting = frame[id_column].duplicated(keep=False)
        if conflicting.any() and keep_last:
            ids = frame.loc[conflicting, id_column].nunique()
            warnings.append(
                f"dropped {int(conflicting.sum()) - ids} earlier row(s) of {ids} id(s) repeated with different "
                "values (dataset.duplicate_ids: keep_last keeps each id's last row)"
            )
            frame = frame[~frame[id_column].duplicated(keep="last")]
        elif conflicting.any():
            problems.append(
                f"column {id_column}: {_ids_and_rows(frame[conflicting], id_column)} with different values: "
                "fix the export so each id has one row, or set dataset.duplicate_ids: keep_last to keep "
                "each id's last row"
            )
    seen = frame[id_column].isin(known_ids) if known_ids else pd.Series(False, index=frame.index)
    if seen.any() and keep_last:
        warnings.append(f"dropped {int(seen.sum())} row(s) whose id is already in another batch of the lake")
        frame = frame[~seen]
    elif seen.any():
        problems.append(
            f"column {id_column}: {_ids_and_rows(frame[seen], id_column)} already in another accepted batch "
            "of the lake: remove those rows from the export (a record is ingested once), or set "
            "dataset.duplicate_ids: keep_last to drop them from this batch"
        )
    if problems:
        raise BatchRejected(source, problems, ids_elsewhere=frame.loc[seen, id_column].head(_MAX_EXAMPLES))
    dropped = rows_in - len(frame)
    if dropped:
        warnings.append(f"dropped {dropped} duplicate id(s) in column {id_column}")
    return frame.reset_index(drop=True), dropped, warnings


def _ids_and_rows(rows: pd.DataFrame, id_column: str) -> str:
    """The first few ids of ``rows`` with their data rows (1-based), e.g. ``2 id(s): 'L1' at rows 3, 9; ...``."""
    rows_of = rows.groupby(id_column, sort=False).groups
    shown = [
        f"{value!r} at row(s) {', '.join(str(int(i) + 1) for i in labels[:_MAX_EXAMPLES])}"
        for value, labels in list(rows_of.items())[:_MAX_EXAMPLES]
    ]
    more = f" and {len(rows_of) - len(shown)} more" if len(rows_of) > len(shown) else ""
    return f"{len(rows_of)} id(s): " + "; ".join(shown) + more


def _rows(mask: pd.Series) -> str:
    """Human row numbers (1 = first data row) of the first few True entries."""
    positions = [int(i) + 1 for i in mask.to_numpy().nonzero()[0][:_MAX_EXAMPLES]]
    more = int(mask.sum()) - len(positions)
    return "row(s) " + ", ".join(map(str, positions)) + (f" and {more} more" if more > 0 else "")


def _parse_numeric(values: pd.Series, column: str) -> tuple[pd.Series, str | None]:
    parsed = pd.to_numeric(values.astype("object"), errors="coerce").astype("float64")
    bad = values.notna() & parsed.isna()
    if bad.any():
        examples = ", ".join(repr(v) for v in values[bad].head(_MAX_EXAMPLES).tolist())
        return (
            parsed,
            f"column {column}: non-numeric value(s) {examples} at {_rows(bad)} (fix them or leave empty)",
        )
    return parsed, None


def _parse_time(values: pd.Series, column: str) -> tuple[pd.Series, str | None]:
    parsed = pd.to_datetime(values.astype("object"), errors="coerce", utc=True, format="mixed")
    parsed = parsed.dt.tz_localize(None).astype("datetime64[us]")
    bad = parsed.isna()
    if bad.any():
        examples = ", ".join(repr(v) for v in values[bad].head(_MAX_EXAMPLES).tolist())
        return (
            parsed,
            f"column {column}: missing or unparsable time(s) {examples} at {_rows(bad)} (use ISO 8601)",
        )
    return parsed, None


def _parse_target(values: pd.Series, column: str, positive: object) -> tuple[pd.Series, str | None]:
    # Plain lists, not Series.map: pandas turns a mapped None back into NaN, which would label a row 0.
    text: list[str | None] = [None if pd.isna(v) else str(v) for v in values.astype("object").tolist()]
    classes = sorted({v for v in text if v is not None})
    if len(classes) > 2:
        return (
            values,
            f"column {column}: {len(classes)} classes {classes[:10]} found; a binary target has two",
        )
    if str(positive) not in classes and classes:
        # A numeric positive class may be written as 1.0 by some exporters.
        normalised = {c: c.removesuffix(".0") for c in classes}
        if str(positive) not in normalised.values():
            return (
                values,
                f"column {column}: positive class {positive!r} never occurs (classes seen: {classes})",
            )
        text = [None if v is None else normalised[v] for v in text]
    labelled = [None if v is None else int(v == str(positive)) for v in text]
    return pd.Series(pd.array(labelled, dtype="Int64"), index=values.index), None


def _rows_of_batch(
    config: LooplineConfig, frame: pd.DataFrame, batch: str, source: Path, whole_file: bool
) -> pd.DataFrame:
    """The rows that belong to ``batch``: by time window, or by row range when batching by rows."""
    if config.batching.by == "rows":
        if whole_file:
            return frame
        first, last = row_range_of(batch, config.batching)
        if first >= len(frame):
            raise FileNotFoundError(
                f"{source}: has {len(frame)} rows; batch {batch} (rows {first}..) has not landed"
            )
        return frame.iloc[first:last]
    time_column = config.dataset.time_column
    assert time_column is not None
    start, end = window_of(batch, config.batching)
    inside = (frame[time_column] >= start) & (frame[time_column] < end)
    if whole_file:
        if not inside.all():
            outside = ~inside
            examples = ", ".join(str(v) for v in frame.loc[outside, time_column].head(_MAX_EXAMPLES))
            raise BatchRejected(
                source,
                [
                    f"column {time_column}: {int(outside.sum())} time(s) outside the batch window "
                    f"[{start:%Y-%m-%d}, {end:%Y-%m-%d}) such as {examples} at {_rows(outside)}: "
                    "move those rows to their own batch file"
                ],
            )
        return frame
    return frame[inside]
