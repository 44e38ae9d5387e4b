"""The Parquet lake: one partition per batch, written atomically, identified by a content hash.

The lake is a folder (``$LOOPLINE_HOME/lake`` by default, or a shared filesystem) or a prefix on an
S3-compatible object store (``s3://bucket/prefix``, see ``LakeConfig``). Layout under its root::

    <table>/batch=<key>/data.parquet   the rows (written to a temporary name, then renamed)
    <table>/batch=<key>/_meta.json     rows, content hash, source file, time written (a cache, see below)
    <table>/batch=<key>/.lock          held by the one process writing the partition

Tables are ``<dataset>`` (accepted batches) and ``<dataset>__predictions`` (scores of the champion). A
partition is visible only once its data file is renamed into place, so a reader never sees half a batch and a
re-run replaces a partition instead of duplicating it. The data file is the truth: ``partition`` hashes it and
trusts ``_meta.json`` only when the hashes agree (a writer killed between the two renames leaves stale metadata
next to the new data). Writers of one partition take its lock and first delete the temporary files that killed
writers left behind.

On an object store there is no rename and no lock: the data goes to a temporary key in the partition's prefix,
then one server-side copy puts it in place (an object appears whole or not at all), then the temporary key is
deleted. Two writers of one partition at once (Airflow runs one per batch) each leave a whole file, the last
one wins, and ``partition`` still trusts only metadata whose hash matches. Temporary keys older than an hour
are killed writers' and are deleted by the next writer of that partition.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from ml.config import LooplineConfig, Paths

DATA_FILE = "data.parquet"
ROW_GROUP_ROWS = 131_072
"""Rows per Parquet row group: a streaming reader holds about one row group of the columns it reads."""
SCAN_BUFFER_BYTES = 1 << 16
"""Read buffer per column of a streaming read: pages are read as decoded, not whole column chunks at once."""
META_FILE = "_meta.json"
LOCK_FILE = ".lock"
OBJECT_STORE_PREFIX = "s3://"
LEFTOVER_AGE_S = 3600.0
"""On an object store, temporary keys older than this are a killed writer's (a live writer's are younger)."""
HASH_CHUNK_BYTES = 1 << 20

DataWriter = Callable[[Any], tuple[int, str]]
"""Writes a partition's data file to an open binary stream (a file object or a pyarrow NativeFile); returns
(rows, sha256)."""
MetaMaker = Callable[[int, str], bytes]
"""The metadata document of a partition, from its rows and sha256."""


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
    atomic_write_bytes(target, json_bytes(document))


def json_bytes(document: Any) -> bytes:
    """A JSON document as Loopline stores it: pretty, keys in order, newline-terminated."""
    return (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()


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
    path: str
    """Where the partition is: its folder, or its ``s3://`` prefix."""
    rows: int
    sha256: str

    @property
    def data_file(self) -> str:
        """The partition's data file, as a path or an ``s3://`` URI (what lineage records)."""
        return f"{self.path}/{DATA_FILE}"


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


def _read_footer(source: pa.NativeFile) -> Footer:
    """Parse a Parquet file's footer into a ``Footer`` (pyarrow's metadata objects are dropped here)."""
    meta = pq.ParquetFile(source).metadata
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


def object_store(endpoint_url: str | None = None, region: str | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem for an S3-compatible store: ``endpoint_url`` (default $AWS_ENDPOINT_URL_S3, else
    $AWS_ENDPOINT_URL, else AWS) and ``region``; credentials from the standard AWS variables or files."""
    endpoint = endpoint_url or _exported_endpoint()
    options: dict[str, Any] = {}
    if endpoint:
        parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    return pafs.S3FileSystem(
        region=region
        or os.environ.get("AWS_REGION", "").strip()
        or os.environ.get("AWS_DEFAULT_REGION", "").strip()
        or "us-east-1",
        connect_timeout=10,
        request_timeout=120,
        **options,
    )


class Lake:
    """Reads and writes the partitions under one lake root: a folder, or an ``s3://bucket/prefix``."""

    def __init__(
        self,
        root: Path | str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        filesystem: pafs.FileSystem | None = None,
    ) -> None:
        self.on_object_store = isinstance(root, str) and root.startswith(OBJECT_STORE_PREFIX)
        if self.on_object_store:
            self._base = str(root).removeprefix(OBJECT_STORE_PREFIX).strip("/")
            self.root: Path | str = OBJECT_STORE_PREFIX + self._base
            if not self._base:
                raise LakeError(f"lake {root!r}: name a bucket, as in s3://bucket/prefix")
            self.fs: pafs.FileSystem = filesystem or object_store(endpoint_url, region)
            endpoint = endpoint_url or _exported_endpoint() or f"AWS {getattr(self.fs, 'region', '')}".strip()
            self._where = f"{self.root} (S3 endpoint {endpoint})"
        else:
            self.root = Path(root)
            self._base = os.path.abspath(self.root)
            self.fs = filesystem or pafs.LocalFileSystem()
            self._where = str(self.root)
        # Parsed footers by data file, each with the (size, mtime_ns) it was parsed at, least recently used
        # first. pyarrow's footer objects are reference cycles freed only by the garbage collector, so a loop
        # asking for schemas and sizes would otherwise pile them up (and parse them again every time).
        self._footers: OrderedDict[str, tuple[tuple[int, int], Footer]] = OrderedDict()
        self._footers_lock = threading.Lock()
        self._bucket_seen = not self.on_object_store

    def _check_bucket(self) -> None:
        """LakeError unless the lake's bucket exists (some stores would create it on the first write, and a
        mistyped bucket would look like an empty lake)."""
        if self._bucket_seen:
            return
        bucket = self._base.split("/", 1)[0]
        if self._file_info(bucket).type != pafs.FileType.Directory:
            raise LakeError(
                f"the lake's bucket {bucket!r} does not exist at {self._where}: create it (the compose file's "
                "object-store init does) or fix lake.uri / LOOPLINE_LAKE_URI"
            )
        self._bucket_seen = True

    @classmethod
    def for_config(cls, config: LooplineConfig | None, paths: Paths) -> Lake:
        """The lake a config names (``lake.uri``), else $LOOPLINE_LAKE_URI's, else the home's folder."""
        lake = config.lake if config else None
        return cls(
            paths.lake_location(config),
            endpoint_url=lake.endpoint_url if lake else None,
            region=lake.region if lake else None,
        )

    # -- locations ---------------------------------------------------------------------------------------

    def _folder(self, table: str, batch: str) -> str:
        return f"{self._base}/{table}/batch={batch}"

    def _uri(self, path: str) -> str:
        return f"{OBJECT_STORE_PREFIX}{path}" if self.on_object_store else path

    def partition_dir(self, table: str, batch: str) -> Path:
        """The folder of a partition of a folder lake (an object store has prefixes, not folders)."""
        if self.on_object_store:
            raise LakeError(f"{self._where} is an object store: partitions have no local folder")
        return Path(self._folder(table, batch))

    def uris(self, table: str, batches: Iterable[str]) -> list[str]:
        """The data files of the given batches as paths or ``s3://`` URIs (for other engines to read)."""
        return [self._uri(path) for path in self.files(table, batches)]

    # -- reading -----------------------------------------------------------------------------------------

    def _file_info(self, path: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(path)
        except OSError as exc:
            raise self._access_error(exc) from exc

    def _access_error(self, exc: OSError, writing: bool = False) -> LakeError:
        """A failed read or write of the lake, with what to check."""
        if self.on_object_store:
            fix = (
                "check the endpoint, that the bucket exists and that the credentials in AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY may {'write to' if writing else 'read'} it"
            )
        elif writing:
            fix = "check that the folder is writable by the user running Loopline and the disk has space"
        else:
            fix = "check that the folder is readable by the user running Loopline"
        if writing:
            return LakeError(f"cannot write to the lake at {self._where}: {exc} ({fix}, then re-run)")
        return LakeError(f"cannot read the lake at {self._where}: {exc} ({fix})")

    def footer(self, data_file: str | Path) -> Footer:
        """The parsed footer of a partition's data file, parsed again only when the file changed."""
        key = str(data_file)
        info = self._file_info(key)
        signature = (info.size or 0, info.mtime_ns or 0)
        with self._footers_lock:
            cached = self._footers.get(key)
            if cached is not None and cached[0] == signature:
                self._footers.move_to_end(key)
                return cached[1]
        with self.fs.open_input_file(key) as source:
            parsed = _read_footer(source)
        with self._footers_lock:
            self._footers[key] = (signature, parsed)
            self._footers.move_to_end(key)
            while len(self._footers) > FOOTER_CACHE_FILES:
                self._footers.popitem(last=False)
        return parsed

    def batches(self, table: str) -> list[str]:
        """Keys of the complete partitions of a table, oldest first."""
        self._check_bucket()
        selector = pafs.FileSelector(f"{self._base}/{table}", recursive=True, allow_not_found=True)
        try:
            found = self.fs.get_file_info(selector)
        except OSError as exc:
            raise self._access_error(exc) from exc
        keys = []
        for info in found:
            folder, _, name = info.path.rpartition("/")
            parent = folder.rpartition("/")[2]
            if name == DATA_FILE and info.type == pafs.FileType.File and parent.startswith("batch="):
                keys.append(parent.removeprefix("batch="))
        return sorted(keys)

    def partition(self, table: str, batch: str) -> Partition:
        """The stored partition, with its rows and the hash of its data file; LakeError if it is not in the lake.

        The rows come from ``_meta.json`` when it describes this very file, else from the Parquet footer.
        """
        folder = self._folder(table, batch)
        data_file = f"{folder}/{DATA_FILE}"
        if self._file_info(data_file).type != pafs.FileType.File:
            raise self._missing(table, batch)
        digest = hashlib.sha256()
        with self.fs.open_input_stream(data_file) as handle:
            while chunk := handle.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
        meta = self._read_meta(f"{folder}/{META_FILE}")
        if meta.get("sha256") == digest.hexdigest() and isinstance(meta.get("rows"), int):
            rows = int(meta["rows"])
        else:  # a writer died between putting the data file and its metadata: the data file is the truth
            rows = self.footer(data_file).rows
        return Partition(table, batch, self._uri(folder), rows, digest.hexdigest())

    def _missing(self, table: str, batch: str) -> LakeError:
        return LakeError(f"no partition {table}/batch={batch} in {self._where} (ingest that batch first)")

    def _read_meta(self, meta_file: str) -> dict[str, Any]:
        """A partition's metadata, or {} when it is missing or unreadable (it is a cache of the data file)."""
        try:
            with self.fs.open_input_stream(meta_file) as handle:
                meta = json.loads(handle.read())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def files(self, table: str, batches: Iterable[str]) -> list[str]:
        """The data files of the given batches, in batch order; LakeError names a missing one."""
        keys = list(batches)
        if not keys:
            raise LakeError(f"no batches requested from table {table!r}")
        self._check_bucket()
        files = [f"{self._folder(table, batch)}/{DATA_FILE}" for batch in keys]
        try:
            infos = self.fs.get_file_info(files)
        except OSError as exc:
            raise self._access_error(exc) from exc
        for batch, info in zip(keys, infos, strict=True):
            if info.type != pafs.FileType.File:
                raise self._missing(table, batch)
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
        tables = [
            pq.read_table(
                f,
                columns=list(columns) if columns else None,
                read_dictionary=list(dictionary) or None,
                filesystem=self.fs,
            )
            for f in self.files(table, batches)
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
            with (
                self.fs.open_input_file(data_file) as source,
                pq.ParquetFile(
                    source,
                    read_dictionary=list(dictionary) or None,
                    pre_buffer=False,
                    buffer_size=SCAN_BUFFER_BYTES,
                ) as parquet,
            ):
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
        keys = list(batches)
        for data_file in self.files(table, keys) if keys else []:
            found.update(
                pq.read_table(data_file, columns=[id_column], filesystem=self.fs).column(0).to_pylist()
            )
        return found

    # -- writing -----------------------------------------------------------------------------------------

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
        digest = content_hash(payload)

        def put(raw: Any) -> tuple[int, str]:
            raw.write(payload)
            return len(frame), digest

        return self._put(table, batch, source, put)

    def write_stream(
        self, table: str, batch: str, chunks: Iterable[pd.DataFrame | pa.Table], source: str | None = None
    ) -> Partition:
        """Replace ``table/batch`` with the concatenation of ``chunks`` (DataFrames or Arrow tables of one
        schema), written as they come (bounded memory).

        Same guarantees as ``write``: the rows go to a temporary file in the partition's folder (prefix),
        hashed while written, and become visible at once, whole.
        """
        folder = self._folder(table, batch)
        return self._put(table, batch, source, lambda raw: _write_parquet(raw, chunks, self._uri(folder)))

    def _put(self, table: str, batch: str, source: str | None, write_data: DataWriter) -> Partition:
        """Put a partition in place: ``write_data(stream) -> (rows, sha256)`` writes its data file, then its
        metadata follows."""
        folder = self._folder(table, batch)
        self._check_bucket()

        def meta_of(rows: int, digest: str) -> bytes:
            return _meta_document(table, batch, source, rows, digest)

        try:
            if self.on_object_store:
                rows, digest = self._put_object(folder, write_data, meta_of)
            else:
                rows, digest = _put_local(Path(folder), write_data, meta_of)
        except OSError as exc:
            raise self._access_error(exc, writing=True) from exc
        return Partition(table, batch, self._uri(folder), rows, digest)

    def _put_object(self, folder: str, write_data: DataWriter, meta_of: MetaMaker) -> tuple[int, str]:
        """Write the data file to a temporary key, copy it into place server-side (whole or not at all), then put
        its metadata (one PUT)."""
        self._remove_stale_objects(folder)
        temporary = f"{folder}/.{DATA_FILE}.{secrets.token_hex(8)}.tmp"
        try:
            with self.fs.open_output_stream(temporary) as out:
                rows, digest = write_data(out)
            self.fs.move(temporary, f"{folder}/{DATA_FILE}")
        except BaseException:
            with suppress(OSError):  # best effort: must not hide the error at hand
                self.fs.delete_file(temporary)
            raise
        with self.fs.open_output_stream(f"{folder}/{META_FILE}") as out:
            out.write(meta_of(rows, digest))
        return rows, digest

    def _remove_stale_objects(self, folder: str) -> None:
        """Delete the temporary keys that killed writers left in ``folder`` (only those over an hour old)."""
        listed = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        cutoff = (time.time() - LEFTOVER_AGE_S) * 1e9
        for info in listed:
            if (
                info.base_name.startswith(".")
                and info.base_name.endswith(".tmp")
                and (info.mtime_ns or 0) < cutoff
            ):
                with suppress(OSError):  # best effort: must not hide the error at hand
                    self.fs.delete_file(info.path)


def _exported_endpoint() -> str:
    """The S3 endpoint the environment names ($AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL), or ""."""
    return os.environ.get("AWS_ENDPOINT_URL_S3", "").strip() or os.environ.get("AWS_ENDPOINT_URL", "").strip()


def _put_local(folder: Path, write_data: DataWriter, meta_of: MetaMaker) -> tuple[int, str]:
    """Under the partition's lock, write its data file to a temporary name, fsync, rename it into place, then
    write its metadata the same way."""
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / LOCK_FILE):
        _remove_leftovers(folder)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{DATA_FILE}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(handle, "wb") as raw:
                rows, digest = write_data(raw)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp_name, folder / DATA_FILE)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        atomic_write_bytes(folder / META_FILE, meta_of(rows, digest))
    return rows, digest


def _meta_document(table: str, batch: str, source: str | None, rows: int, digest: str) -> bytes:
    written_at = datetime.now(UTC).isoformat(timespec="seconds")
    return json_bytes(
        {
            "table": table,
            "batch": batch,
            "rows": rows,
            "sha256": digest,
            "source": source,
            "written_at": written_at,
        }
    )


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


def _write_parquet(raw: Any, chunks: Iterable[pd.DataFrame | pa.Table], where: str) -> tuple[int, str]:
    """Write DataFrame or Arrow chunks as one Parquet file to an open binary stream; returns (rows, sha256)."""
    rows, digest = 0, hashlib.sha256()
    writer: pq.ParquetWriter | None = None
    sink = _HashingSink(raw, digest)
    try:
        for chunk in chunks:
            arrow = (
                chunk if isinstance(chunk, pa.Table) else pa.Table.from_pandas(chunk, preserve_index=False)
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
        raise LakeError(f"no rows to write to {where}: the stream was empty")
    writer.close()
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
