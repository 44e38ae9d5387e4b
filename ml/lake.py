"""The Parquet lake: one partition per batch, written atomically, identified by a content hash.

Layout under ``$LOOPLINE_HOME/lake``::

    <table>/batch=<key>/data.parquet   the rows (written to a temporary name, then renamed)
    <table>/batch=<key>/_meta.json     rows, content hash, source file, time written (a cache, see below)
    <table>/batch=<key>/.lock          held by the one process writing the partition

Tables are ``<dataset>`` (accepted batches) and ``<dataset>__predictions`` (scores of the champion). A
partition is visible only once its data file is renamed into place, so a reader never sees half a batch and a
re-run replaces a partition instead of duplicating it. The data file is the truth: ``partition`` hashes it and
trusts ``_meta.json`` only when the hashes agree (a writer killed between the two renames leaves stale metadata
next to the new data). Writers of one partition take its lock and first delete the temporary files that killed
writers left behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DATA_FILE = "data.parquet"
ROW_GROUP_ROWS = 131_072
"""Rows per Parquet row group: a streaming reader holds about one row group of the columns it reads."""
SCAN_BUFFER_BYTES = 1 << 16
"""Read buffer per column of a streaming read: pages are read as decoded, not whole column chunks at once."""
META_FILE = "_meta.json"
LOCK_FILE = ".lock"


class LakeError(RuntimeError):
    """A lake read or write that cannot be done; the message names the partition and the fix."""


def atomic_write_bytes(target: Path, payload: bytes) -> None:
    """Write ``payload`` to ``target`` via a temporary file in the same folder and an atomic rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_json(target: Path, document: Any) -> None:
    """Write a JSON document atomically (pretty, keys in order)."""
    atomic_write_bytes(target, (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode())


def content_hash(payload: bytes) -> str:
    """The sha256 of a partition's bytes: equal contents, equal hash."""
    return hashlib.sha256(payload).hexdigest()


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_file`` (released by the kernel if the holder is killed)."""
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(folder: Path) -> None:
    """Delete the temporary files of writers that were killed (only called under the partition's lock)."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            entry.unlink(missing_ok=True)


@dataclass(frozen=True)
class Partition:
    """One batch of one table in the lake."""

    table: str
    batch: str
    path: Path
    rows: int
    sha256: str

    @property
    def data_file(self) -> Path:
        return self.path / DATA_FILE


FOOTER_CACHE_FILES = 256
"""Partition files whose parsed footer a ``Lake`` keeps (a few KiB each)."""


@dataclass(frozen=True)
class Footer:
    """What a partition's Parquet footer says, parsed once: its schema, rows and each column's size in memory."""

    schema: pa.Schema
    rows: int
    memory_bytes: tuple[tuple[str, int], ...]
    """Per column, as (name, bytes): rows x width for fixed-width types, else (text) the uncompressed Parquet
    size plus an 8-byte offset per row."""


def _read_footer(data_file: Path) -> Footer:
    """Parse a Parquet file's footer into a ``Footer`` (pyarrow's metadata objects are dropped here)."""
    meta = pq.ParquetFile(data_file).metadata
    arrow = meta.schema.to_arrow_schema()
    sizes: list[tuple[str, int]] = []
    for index, name in enumerate(arrow.names):
        try:
            width = arrow.field(name).type.bit_width // 8
        except ValueError:
            width = 0
        if width:
            sizes.append((name, width * meta.num_rows))
        else:
            stored = sum(
                meta.row_group(g).column(index).total_uncompressed_size for g in range(meta.num_row_groups)
            )
            sizes.append((name, stored + 8 * meta.num_rows))
    return Footer(arrow, meta.num_rows, tuple(sizes))


class Lake:
    """Reads and writes the partitions under one lake folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Parsed footers by data file, each with the (size, mtime_ns, inode) it was parsed at, least recently
        # used first. pyarrow's footer objects are reference cycles freed only by the garbage collector, so a
        # loop asking for schemas and sizes would otherwise pile them up (and parse them again every time).
        self._footers: OrderedDict[Path, tuple[tuple[int, int, int], Footer]] = OrderedDict()
        self._footers_lock = threading.Lock()

    def footer(self, data_file: Path) -> Footer:
        """The parsed footer of a partition's data file, parsed again only when the file changed."""
        stat = data_file.stat()
        signature = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._footers_lock:
            cached = self._footers.get(data_file)
            if cached is not None and cached[0] == signature:
                self._footers.move_to_end(data_file)
                return cached[1]
        parsed = _read_footer(data_file)
        with self._footers_lock:
            self._footers[data_file] = (signature, parsed)
            self._footers.move_to_end(data_file)
            while len(self._footers) > FOOTER_CACHE_FILES:
                self._footers.popitem(last=False)
        return parsed

    def partition_dir(self, table: str, batch: str) -> Path:
        return self.root / table / f"batch={batch}"

    def write(self, table: str, batch: str, frame: pd.DataFrame, source: str | None = None) -> Partition:
        """Replace the partition ``table/batch`` with ``frame``, atomically; returns it with its hash."""
        buffer = io.BytesIO()
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False),
            buffer,
            compression="zstd",
            row_group_size=ROW_GROUP_ROWS,
        )
        payload = buffer.getvalue()
        return self._commit(table, batch, source, len(frame), content_hash(payload), payload)

    def write_stream(
        self, table: str, batch: str, chunks: Iterable[pd.DataFrame | pa.Table], source: str | None = None
    ) -> Partition:
        """Replace ``table/batch`` with the concatenation of ``chunks`` (DataFrames or Arrow tables of one
        schema), written as they come (bounded memory).

        Same guarantees as ``write``: under the partition's lock the rows go to a temporary file in its folder,
        hashed while written, and become visible by one rename.
        """
        folder = self.partition_dir(table, batch)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _exclusive(folder / LOCK_FILE):
                _remove_leftovers(folder)
                handle, tmp_name = tempfile.mkstemp(prefix=f".{DATA_FILE}.", suffix=".tmp", dir=folder)
                try:
                    rows, digest = _write_chunks(handle, chunks, folder)
                    os.replace(tmp_name, folder / DATA_FILE)
                finally:
                    Path(tmp_name).unlink(missing_ok=True)
                self._write_meta(folder, table, batch, source, rows, digest)
        except OSError as exc:
            raise _write_error(folder, exc) from exc
        return Partition(table, batch, folder, rows, digest)

    def _commit(
        self, table: str, batch: str, source: str | None, rows: int, digest: str, data: bytes
    ) -> Partition:
        """Put a partition's data and metadata in place under its lock."""
        folder = self.partition_dir(table, batch)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _exclusive(folder / LOCK_FILE):
                _remove_leftovers(folder)
                atomic_write_bytes(folder / DATA_FILE, data)
                self._write_meta(folder, table, batch, source, rows, digest)
        except OSError as exc:
            raise _write_error(folder, exc) from exc
        return Partition(table, batch, folder, rows, digest)

    @staticmethod
    def _write_meta(folder: Path, table: str, batch: str, source: str | None, rows: int, digest: str) -> None:
        atomic_write_json(
            folder / META_FILE,
            {
                "table": table,
                "batch": batch,
                "rows": rows,
                "sha256": digest,
                "source": source,
                "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )

    def batches(self, table: str) -> list[str]:
        """Keys of the complete partitions of a table, oldest first."""
        base = self.root / table
        if not base.is_dir():
            return []
        return sorted(
            entry.name.removeprefix("batch=")
            for entry in base.iterdir()
            if entry.name.startswith("batch=") and (entry / DATA_FILE).is_file()
        )

    def partition(self, table: str, batch: str) -> Partition:
        """The stored partition, with its rows and the hash of its data file; LakeError if it is not in the lake.

        The rows come from ``_meta.json`` when it describes this very file, else from the Parquet footer.
        """
        folder = self.partition_dir(table, batch)
        try:
            handle = (folder / DATA_FILE).open("rb")
        except FileNotFoundError:
            raise LakeError(
                f"no partition {table}/batch={batch} in {self.root} (ingest that batch first)"
            ) from None
        with handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            meta = _read_meta(folder / META_FILE)
            if meta.get("sha256") == digest and isinstance(meta.get("rows"), int):
                rows = int(meta["rows"])
            else:  # a writer died between renaming the data file and its metadata: the data file is the truth
                handle.seek(0)
                rows = pq.ParquetFile(handle).metadata.num_rows
        return Partition(table, batch, folder, rows, digest)

    def files(self, table: str, batches: Iterable[str]) -> list[Path]:
        """The data files of the given batches, in batch order; LakeError names a missing one."""
        files = []
        for batch in batches:
            data_file = self.partition_dir(table, batch) / DATA_FILE
            if not data_file.is_file():
                raise LakeError(
                    f"no partition {table}/batch={batch} in {self.root} (ingest that batch first)"
                )
            files.append(data_file)
        if not files:
            raise LakeError(f"no batches requested from table {table!r}")
        return files

    def read(self, table: str, batches: Iterable[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows of the given batches (only ``columns`` when given), in batch order.

        Rows of several row groups convert column by column (no consolidation copy into one block), the Arrow
        memory released as it goes. A single-chunk column would become a read-only view of Arrow memory that
        pandas cannot write into, so such (small) reads convert the usual way.
        """
        arrow = self.read_arrow(table, batches, columns)
        if any(column.num_chunks == 1 for column in arrow.columns):
            return arrow.to_pandas()
        return arrow.to_pandas(split_blocks=True, self_destruct=True)

    def read_arrow(
        self,
        table: str,
        batches: Iterable[str],
        columns: Sequence[str] | None = None,
        dictionary: Sequence[str] = (),
    ) -> pa.Table:
        """``read`` as an Arrow table (no pandas conversion); text columns named in ``dictionary`` come
        dictionary-encoded, as Parquet stores them (no string copied); other columns named there are unaffected."""
        files = self.files(table, batches)
        tables = [
            pq.read_table(
                f, columns=list(columns) if columns else None, read_dictionary=list(dictionary) or None
            )
            for f in files
        ]
        return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]

    def schema(self, table: str, batch: str) -> pa.Schema:
        """The Arrow schema of a partition (from its Parquet footer)."""
        return self.footer(self.files(table, [batch])[0]).schema

    def scan(
        self,
        table: str,
        batches: Iterable[str],
        columns: Sequence[str] | None,
        batch_rows: int,
        dictionary: Sequence[str] = (),
    ) -> Iterator[tuple[str, int, pa.RecordBatch]]:
        """Stream the batches' rows as Arrow record batches of at most ``batch_rows`` rows (only ``columns``).

        Yields ``(batch key, offset of the first row within that partition, record batch)`` in row order,
        decoding one partition at a time, ``batch_rows`` rows per read, only when the consumer asks for them,
        so memory stays near one record batch of the chosen columns (plus a page of each). ``dictionary`` as in
        ``read_arrow``.
        """
        # Not pyarrow datasets: their scanner decodes whole row groups ahead of a slow consumer (scoring), even
        # with every readahead at 0 (~10 row groups, ~300 MiB, queued for a 64 MiB budget). Nor ParquetFile's
        # default pre_buffer, which keeps every column chunk read so far until the file is closed.
        keys = list(batches)
        for key, data_file in zip(keys, self.files(table, keys), strict=True):
            offset = 0
            with pq.ParquetFile(
                data_file,
                read_dictionary=list(dictionary) or None,
                pre_buffer=False,
                buffer_size=SCAN_BUFFER_BYTES,
            ) as parquet:
                for record_batch in parquet.iter_batches(
                    batch_size=batch_rows, columns=list(columns) if columns is not None else None
                ):
                    if record_batch.num_rows:
                        yield key, offset, record_batch
                        offset += record_batch.num_rows

    def footer_rows(self, table: str, batches: Iterable[str]) -> int:
        """Rows of the given batches, from their Parquet footers (no data read, no hashing)."""
        return sum(self.footer(f).rows for f in self.files(table, batches))

    def memory_estimate(
        self, table: str, batches: Iterable[str], columns: Sequence[str] | None = None
    ) -> int:
        """Bytes the batches' ``columns`` (default all) take in memory, from the Parquet footers alone.

        Rows x columns x bytes: fixed-width types count their width, others (text) their uncompressed Parquet
        size per row plus an 8-byte offset.
        """
        chosen = set(columns) if columns is not None else None
        return sum(
            size
            for data_file in self.files(table, batches)
            for name, size in self.footer(data_file).memory_bytes
            if chosen is None or name in chosen
        )

    def ids_in(self, table: str, batches: Iterable[str], id_column: str) -> set[Any]:
        """The ids already stored in the given batches."""
        found: set[Any] = set()
        for batch in batches:
            data_file = self.partition_dir(table, batch) / DATA_FILE
            found.update(pq.read_table(data_file, columns=[id_column]).column(0).to_pylist())
        return found


class _HashingSink:
    """A binary file that also feeds every byte written to a hash (the partition's content hash)."""

    def __init__(self, raw: Any, digest: Any) -> None:
        self.raw, self.digest, self.closed = raw, digest, False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.closed = True

    def tell(self) -> int:
        return self.raw.tell()


def _write_chunks(handle: int, chunks: Iterable[pd.DataFrame | pa.Table], folder: Path) -> tuple[int, str]:
    """Write DataFrame or Arrow chunks as one Parquet file to an open descriptor; returns (rows, sha256)."""
    rows, digest = 0, hashlib.sha256()
    with os.fdopen(handle, "wb") as raw:
        writer: pq.ParquetWriter | None = None
        sink = _HashingSink(raw, digest)
        try:
            for chunk in chunks:
                arrow = (
                    chunk
                    if isinstance(chunk, pa.Table)
                    else pa.Table.from_pandas(chunk, preserve_index=False)
                )
                if writer is None:
                    writer = pq.ParquetWriter(
                        sink, arrow.schema, compression="zstd", use_dictionary=_text_columns(arrow.schema)
                    )
                writer.write_table(arrow, row_group_size=ROW_GROUP_ROWS)
                rows += len(chunk)
        except BaseException:
            if writer is not None:  # finish the writer into nowhere: the temporary file is deleted anyway
                sink.raw = io.BytesIO()
                writer.close()
            raise
        if writer is None:
            raise LakeError(f"no rows to write to {folder}: the stream was empty")
        writer.close()
        raw.flush()
        os.fsync(raw.fileno())
    return rows, digest.hexdigest()


def _text_columns(schema: pa.Schema) -> list[str]:
    """The columns worth Parquet's dictionary encoding: text (numbers' dictionaries mostly overflow and are
    dropped after the work is done: writing scores takes 3x as long and twice the bytes)."""
    return [
        field.name
        for field in schema
        if pa.types.is_string(field.type)
        or pa.types.is_large_string(field.type)
        or pa.types.is_dictionary(field.type)
    ]


def _write_error(folder: Path, exc: OSError) -> LakeError:
    return LakeError(
        f"cannot write lake partition {folder}: {exc} (check that the folder is writable by the user "
        "running Loopline and the disk has space, then re-run)"
    )


def _read_meta(meta_file: Path) -> dict[str, Any]:
    """A partition's metadata, or {} when it is missing or unreadable (it is a cache of the data file)."""
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
