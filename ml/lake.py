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


class Lake:
    """Reads and writes the partitions under one lake folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def partition_dir(self, table: str, batch: str) -> Path:
        return self.root / table / f"batch={batch}"

    def write(self, table: str, batch: str, frame: pd.DataFrame, source: str | None = None) -> Partition:
        """Replace the partition ``table/batch`` with ``frame``, atomically; returns it with its hash."""
        folder = self.partition_dir(table, batch)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression="zstd")
        payload = buffer.getvalue()
        digest = content_hash(payload)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _exclusive(folder / LOCK_FILE):
                _remove_leftovers(folder)
                atomic_write_bytes(folder / DATA_FILE, payload)
                atomic_write_json(
                    folder / META_FILE,
                    {
                        "table": table,
                        "batch": batch,
                        "rows": len(frame),
                        "sha256": digest,
                        "source": source,
                        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    },
                )
        except OSError as exc:
            raise LakeError(
                f"cannot write lake partition {folder}: {exc} (check that the folder is writable by the user "
                "running Loopline and the disk has space, then re-run)"
            ) from exc
        return Partition(table, batch, folder, len(frame), digest)

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

    def read(self, table: str, batches: Iterable[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows of the given batches (only ``columns`` when given), in batch order."""
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
        tables = [pq.read_table(f, columns=list(columns) if columns else None) for f in files]
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def ids_in(self, table: str, batches: Iterable[str], id_column: str) -> set[Any]:
        """The ids already stored in the given batches."""
        found: set[Any] = set()
        for batch in batches:
            data_file = self.partition_dir(table, batch) / DATA_FILE
            found.update(pq.read_table(data_file, columns=[id_column]).column(0).to_pylist())
        return found


def _read_meta(meta_file: Path) -> dict[str, Any]:
    """A partition's metadata, or {} when it is missing or unreadable (it is a cache of the data file)."""
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
