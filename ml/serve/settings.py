"""The settings of the scoring service, the prediction store and the label feedback.

They mirror the proposed ``serving:`` section of the config file. Until ``LooplineConfig`` has that section,
``settings_for`` starts from these defaults; once it has, from the config; keyword overrides (the CLI's
``--host``, ``--port``, ``--workers`` ...) win over both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ml.config import LooplineConfig, Paths

DEFAULT_TOKEN_ENV = "LOOPLINE_SERVE_TOKEN"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelsSettings(_Strict):
    """Where delayed labels come from and how they join to captured predictions."""

    source: Literal["file", "sql"] = Field(
        default="file", description="Labels from landed files or a SQL table."
    )
    path: str = Field(
        default="{dataset}_labels/{ds}.csv",
        description="File pattern under the landing zone; {dataset}, {ds} (window start date) are filled in.",
    )
    format: Literal["csv", "parquet"] = "csv"
    sql_url: str | None = Field(default=None, description="SQLAlchemy URL of the label source (source: sql).")
    sql_table: str | None = Field(default=None, description="Table with the labels (source: sql).")
    sql_query: str | None = Field(
        default=None,
        description="Instead of sql_table: a query using the bound parameters :start and :end only.",
    )
    id_column: str | None = Field(default=None, description="Entity id column; default dataset.id_column.")
    label_column: str | None = Field(default=None, description="Label column; default dataset.target.")
    time_column: str = Field(default="label_time", description="When the outcome became known.")
    join_lookback_days: int = Field(
        default=30, ge=1, description="The feedback DAG reports the join over predictions of this many days."
    )
    schedule: str = Field(default="@daily", description="Schedule of loopline_feedback.")


class ServeSettings(_Strict):
    """``loopline serve`` and its prediction store."""

    host: str = Field(
        default="127.0.0.1", description="Bind address; anything but loopback needs a TLS proxy."
    )
    port: int = Field(default=8600, ge=1, le=65535)
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="uvicorn worker processes; each loads and swaps the champion itself.",
    )
    max_batch_size: int = Field(default=1000, ge=1, description="Most records in one POST /predict.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often each worker checks where the champion alias points."
    )
    token_env: str = Field(default=DEFAULT_TOKEN_ENV, description="Environment variable holding the token.")
    token_file: str | None = Field(
        default=None,
        description="File holding the token (wins over token_env); default $LOOPLINE_HOME/serve/token if present.",
    )
    public_docs: bool = Field(default=False, description="Serve /docs and /openapi.json without the token.")
    store_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the prediction store; default SQLite $LOOPLINE_HOME/serve/predictions.db.",
    )
    capture: bool = Field(default=True, description="Write every scored record to the prediction store.")
    capture_queue_size: int = Field(
        default=10_000, ge=1, description="Requests waiting for the writer, at most."
    )
    capture_batch_rows: int = Field(default=2_000, ge=1, description="Rows per INSERT transaction, at most.")
    capture_flush_interval_seconds: float = Field(
        default=0.2,
        gt=0,
        le=60,
        description="A record waits at most this long before its INSERT; the crash-loss bound.",
    )
    capture_full_policy: Literal["block", "shed"] = Field(
        default="block",
        description="Queue full: block (wait, then 503: every 200 is captured) or shed (answer, count the drop).",
    )
    capture_block_timeout_seconds: float = Field(
        default=2.0, ge=0, description="block: how long a request waits for queue space before its 503."
    )
    shutdown_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="On SIGTERM: time to finish requests and flush; leftovers are spilled to a file.",
    )
    access_log: bool = Field(default=False, description="uvicorn access log (costs throughput).")
    labels: LabelsSettings = LabelsSettings()


def settings_for(config: LooplineConfig, **overrides: Any) -> ServeSettings:
    """The service settings: the config's ``serving`` section (when it exists), then non-None overrides."""
    section = getattr(config, "serving", None)
    if section is None:
        base: dict[str, Any] = {}
    elif isinstance(section, BaseModel):
        base = section.model_dump()
    else:
        base = dict(section)
    base.update({key: value for key, value in overrides.items() if value is not None})
    return ServeSettings.model_validate(base)


def serve_dir(paths: Paths) -> Path:
    """$LOOPLINE_HOME/serve: the default store, the token file, spill files and per-worker metrics."""
    return paths.home / "serve"


def default_store_url(paths: Paths) -> str:
    """SQLite under the home."""
    return f"sqlite:///{serve_dir(paths) / 'predictions.db'}"


def store_url_of(settings: ServeSettings, paths: Paths) -> str:
    """The configured prediction store, or the SQLite default."""
    return settings.store_url or default_store_url(paths)
