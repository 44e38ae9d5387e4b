"""The prediction store: SQLAlchemy 2.x models, engines, and Alembic migrations shipped in this package.

Three tables, created and upgraded only by the migrations in ``ml/serve/migrations`` (their own version table
``loopline_alembic_version``, so the store may share a database with MLflow or Airflow):

- ``loopline_predictions``: one row per scored record (request id and record index, entity id, event time,
  features as JSON, score, decision, threshold, model name and version, latency);
- ``loopline_labels``: the latest known outcome per (dataset, entity id), with its label time;
- ``loopline_feedback_windows``: the label-join report of each feedback window (replaced on re-run).

SQLite (the embedded default) runs in WAL mode with a busy timeout so that several worker processes and
readers share the file; PostgreSQL is reached through psycopg2 (``postgresql://`` URLs are mapped to it
unless psycopg 3 is installed). All timestamps are stored in UTC.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    column,
    create_engine,
    event,
    inspect,
    select,
    table,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ml.ingest import normalise_url
from ml.ingest import redact_url as redact

log = logging.getLogger(__name__)

VERSION_TABLE = "loopline_alembic_version"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 7_420_151_009  # pg_advisory_xact_lock key: one migration at a time per database

JsonType = JSON().with_variant(JSONB(), "postgresql")
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Prediction(Base):
    """One scored record, as answered."""

    __tablename__ = "loopline_predictions"
    __table_args__ = (
        UniqueConstraint("request_id", "record_index"),
        Index(None, "dataset", "event_time"),
        Index(None, "dataset", "entity_id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    record_index: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str | None] = mapped_column(String(256))
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    features: Mapped[dict[str, Any]] = mapped_column(JsonType)
    score: Mapped[float] = mapped_column(Double())
    decision: Mapped[bool] = mapped_column(Boolean())
    threshold: Mapped[float] = mapped_column(Double())
    model_name: Mapped[str] = mapped_column(String(256))
    model_version: Mapped[str] = mapped_column(String(32))
    latency_ms: Mapped[float] = mapped_column(Double())
    warnings: Mapped[list[str] | None] = mapped_column(JsonType)


class Label(Base):
    """The latest known outcome of one entity."""

    __tablename__ = "loopline_labels"
    __table_args__ = (Index(None, "dataset", "label_time"),)

    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    entity_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    label: Mapped[int] = mapped_column(Integer)
    label_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(1024))
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FeedbackWindow(Base):
    """The label-join report of one feedback window."""

    __tablename__ = "loopline_feedback_windows"

    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    report: Mapped[dict[str, Any]] = mapped_column(JsonType)


def engine_for(url: str, **kwargs: Any) -> Engine:
    """An engine for the store; SQLite gets its folder, WAL mode and a 30 s busy timeout."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # 16 KiB pages for a new store (no effect on an existing one): the capture's INSERTs rewrite index pages
    # with out-of-order keys in every transaction; larger pages mean fewer WAL frames per row (~25% less CPU).
    cursor.execute("PRAGMA page_size=16384")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writers of other workers
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes (not power loss) in WAL
    cursor.execute("PRAGMA busy_timeout=30000")
    # 64 MiB of page cache (allocated as used; default 2 MiB): with a small cache those index pages are read
    # again and spilled in every transaction.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("version_table", VERSION_TABLE)
    config.attributes["connection"] = connection
    return config


def migrate(url: str, revision: str = "head") -> str:
    """Create or upgrade the store's schema to ``revision`` (idempotent). Returns the revision reached."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command

    engine = engine_for(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            command.upgrade(_alembic_config(connection), revision)
        return current_revision(engine) or "base"
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Move the schema back to ``revision`` (``base`` drops every table of the store)."""
    from alembic import command

    engine = engine_for(url)
    try:
        with engine.begin() as connection:
            command.downgrade(_alembic_config(connection), revision)
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest migration shipped with this package."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the store's schema is at, or None before the first migration."""
    if not inspect(engine).has_table(VERSION_TABLE):
        return None
    with engine.connect() as connection:
        return connection.execute(select(column("version_num")).select_from(table(VERSION_TABLE))).scalar()


def check_schema(engine: Engine) -> None:
    """Fail with the fix when the store is not at the newest migration."""
    found, wanted = current_revision(engine), head_revision()
    if found != wanted:
        raise RuntimeError(
            f"prediction store {redact(engine.url.render_as_string(hide_password=False))} is at revision "
            f"{found or 'none'}, this Loopline needs {wanted}: run the migrations (ml.serve.store.migrate)"
        )


def utc(moment: datetime | None) -> datetime | None:
    """An aware UTC datetime (naive values, as SQLite returns them, are UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)
