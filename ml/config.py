"""The one typed configuration of Loopline, and where its state lives.

A config file (YAML) describes one tabular binary-classification dataset and how the loop treats it. It is
found, in order, from an explicit path, ``$LOOPLINE_CONFIG``, or ``loopline.yaml`` in the working directory.
All state lives under ``$LOOPLINE_HOME`` (default ``.loopline/`` in the working directory); see ``Paths``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# (defined in the stdlib-only ml.dag_settings, which the DAG files read at parse time; re-exported here)
from ml.dag_settings import DEFAULT_CONFIG_FILE as DEFAULT_CONFIG_FILE
from ml.dag_settings import home_from_env
from ml.dag_settings import resolve_config_path as resolve_config_path


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """Where batches come from: landed files (a folder of ``<batch>.<format>`` or one file batched by time), or
    a SQL table or query read one batch window at a time (``format: sql``) with bound parameters only."""

    path: str | None = Field(
        default=None,
        description="csv/parquet (required): file or folder, relative to the landing zone (absolute paths must "
        "lie in it); sql: folder under the landing zone for each window's snapshot (default: the dataset name).",
    )
    format: Literal["csv", "parquet", "sql"] = "csv"
    url: str | None = Field(
        default=None,
        description="sql: SQLAlchemy URL of the source database; ${VAR} is read from the environment "
        "(keep passwords out of the file).",
    )
    table: str | None = Field(
        default=None, description="sql: table (or schema.table) whose dataset.time_column selects the window."
    )
    query: str | None = Field(
        default=None, description="sql, instead of table: SQL text whose inputs are :start and :end only."
    )

    @model_validator(mode="after")
    def _complete(self) -> SourceConfig:
        if self.format != "sql":
            if not self.path:
                raise ValueError(f"dataset.source.path is required for format {self.format}")
            if self.url or self.table or self.query:
                raise ValueError("dataset.source.url/table/query belong to format: sql")
            return self
        if not self.url:
            raise ValueError("dataset.source.format is sql: set dataset.source.url (a SQLAlchemy URL)")
        if (self.table is None) == (self.query is None):
            raise ValueError("dataset.source.format is sql: set exactly one of dataset.source.table or query")
        if self.query is not None:
            missing = [p for p in ("start", "end") if not re.search(rf"(?<![:\w]):{p}\b", self.query)]
            if missing:
                raise ValueError(
                    "dataset.source.query must select its window with the bound parameters :start and :end "
                    f"(missing: {', '.join(':' + m for m in missing)}); never format values into the SQL"
                )
        return self


class DatasetConfig(_Strict):
    """The table: its columns and their roles."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    source: SourceConfig
    id_column: str
    time_column: str | None = None
    target: str
    positive_class: str | int | bool = 1
    numeric_features: list[str] | Literal["infer"] = "infer"
    categorical_features: list[str] | Literal["infer"] = "infer"
    expectation_suite: str | None = Field(
        default=None, description="GE suite JSON; default expectations/<name>.json next to the config."
    )
    max_batch_rows: int = Field(default=5_000_000, gt=0)
    extra_columns: Literal["refuse", "drop"] = Field(
        default="refuse",
        description="A column that is neither the id, the time, the target nor a feature: refuse the batch, "
        "or drop the column.",
    )
    duplicate_ids: Literal["refuse", "keep_last"] = Field(
        default="refuse",
        description="Exact duplicate rows are always dropped. An id on rows with different values: refuse the "
        "batch, or keep its last row. An id already in another accepted batch: refuse, or drop this batch's "
        "row (accepted partitions never change).",
    )


class BatchingConfig(_Strict):
    """How the stream of rows is cut into batches (one lake partition each)."""

    by: Literal["month", "week", "day", "rows"] = "month"
    rows_per_batch: int = Field(default=100_000, gt=0)
    schedule: str | None = Field(
        default=None, description="Cron or preset for loopline_ingest; null: runs are triggered per batch."
    )


class TrainingConfig(_Strict):
    """The training window and XGBoost's hyperparameters (each overridable in the trigger form)."""

    window_batches: int = Field(
        default=3, ge=1, description="Batches in the training window, holdout included."
    )
    holdout_fraction: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Latest share (by event time) of the newest batch kept for evaluation.",
    )
    num_boost_round: int = Field(default=200, ge=1)
    max_depth: int = Field(default=4, ge=1, le=16)
    learning_rate: float = Field(default=0.1, gt=0, le=1)
    min_child_weight: float = Field(default=1.0, ge=0)
    subsample: float = Field(default=0.9, gt=0, le=1)
    colsample_bytree: float = Field(default=0.9, gt=0, le=1)
    reg_lambda: float = Field(default=1.0, ge=0)
    class_weight: Literal["none", "balanced"] = Field(
        default="none",
        description="balanced sets scale_pos_weight to negatives/positives (scores less calibrated).",
    )
    seed: int = 42


class GateConfig(_Strict):
    """When a challenger may become champion."""

    min_roc_auc: float = Field(default=0.6, ge=0, le=1)
    min_pr_auc: float = Field(default=0.0, ge=0, le=1)
    min_improvement: float = Field(
        default=0.0, description="Challenger AUC minus champion AUC must reach this."
    )
    decision_threshold: float = Field(default=0.5, gt=0, lt=1)
    bootstrap_rounds: int = Field(default=200, ge=0)
    bootstrap_lower_bound: float = Field(
        default=0.0,
        description="The 5th percentile of the paired AUC difference must lie above this: at 0 a challenger "
        "no better than the champion is promoted about 5% of the time (a one-sided 95% bound).",
    )
    slice_min_rows: int = Field(default=200, ge=10, description="Slices with fewer holdout rows are skipped.")
    slice_tolerance: float = Field(
        default=0.05, ge=0, description="No slice's AUC may fall more than this below the champion's."
    )


class PromotionConfig(_Strict):
    """Who or what may move the champion."""

    require_approval: bool = Field(
        default=False, description="loopline_train waits for a human Approve/Reject in the Airflow UI."
    )
    approval_timeout_hours: float = Field(
        default=72, gt=0, description="Unanswered approvals reject after this."
    )


class DriftConfig(_Strict):
    """When a batch counts as drifted, and how often the loop may retrain.

    A column drifts at a severity when its effect size (PSI, or JS distance when ``js_*`` is set) reaches that
    severity's threshold and its test (KS for numeric, chi-square for categorical, plus the missing rate) is
    significant at ``alpha`` after the ``correction`` across all columns. A batch whose AUC fell
    ``performance_drop_*`` points below the champion's reference is at least at that severity too.
    """

    bins: int = Field(default=10, ge=2, le=100)
    psi_info: float = Field(default=0.03, gt=0, description="PSI for severity info (noted, never alerts).")
    psi_warning: float = Field(default=0.1, gt=0)
    psi_critical: float = Field(default=0.25, gt=0)
    js_info: float | None = Field(
        default=None, gt=0, le=1, description="JS distance that also reaches info; null: PSI only."
    )
    js_warning: float | None = Field(default=None, gt=0, le=1)
    js_critical: float | None = Field(default=None, gt=0, le=1)
    alpha: float = Field(
        default=0.05, gt=0, lt=1, description="Significance level after the multiple-testing correction."
    )
    correction: Literal["holm", "bh", "none"] = Field(
        default="holm", description="holm (family-wise), bh (Benjamini-Hochberg, false discovery rate), none."
    )
    weighting: Literal["equal", "importance"] = Field(
        default="equal",
        description="importance: weight the drifted share by the champion's feature importance.",
    )
    drift_share: float = Field(
        default=0.3, gt=0, le=1, description="Share of features drifted for dataset drift."
    )
    min_rows: int = Field(default=500, ge=1, description="Below this the verdict is insufficient_data.")
    performance_drop_warning: float = Field(
        default=0.03,
        gt=0,
        le=1,
        description="AUC points below the reference (the champion's holdout) that make a batch at least warning "
        "when the drop is also significant at alpha: its realised AUC when labelled, else its label-free "
        "estimate against the holdout's estimate.",
    )
    performance_drop_critical: float = Field(
        default=0.07, gt=0, le=1, description="AUC points below the reference that make a batch critical."
    )
    retrain_on: Literal["warning", "critical"] = "critical"
    cooldown_batches: int = Field(
        default=2, ge=0, description="Batches after a retrain request with no new one."
    )
    max_retrains: int = Field(
        default=3, ge=1, description="At most this many retrain requests within rate_window_batches batches."
    )
    rate_window_batches: int = Field(default=12, ge=1, description="The window of the retrain rate limit.")
    auto_retrain: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> DriftConfig:
        if self.psi_critical <= self.psi_warning:
            raise ValueError("drift.psi_critical must be greater than drift.psi_warning")
        if self.psi_info >= self.psi_warning:
            raise ValueError(
                f"drift.psi_info ({self.psi_info}) must be below drift.psi_warning ({self.psi_warning})"
            )
        js = [v for v in (self.js_info, self.js_warning, self.js_critical) if v is not None]
        if js != sorted(set(js)):
            raise ValueError("drift.js_info < drift.js_warning < drift.js_critical must hold for those set")
        if self.performance_drop_warning > self.performance_drop_critical:
            raise ValueError(
                f"drift.performance_drop_warning ({self.performance_drop_warning}) must not exceed "
                f"drift.performance_drop_critical ({self.performance_drop_critical})"
            )
        return self


class AlertsConfig(_Strict):
    """Where drift alerts go; the local alert log is always written."""

    webhook_url: str | None = None
    email_to: list[str] = Field(default_factory=list)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = Field(default=False, description="Upgrade the SMTP connection with STARTTLS first.")
    smtp_user: str | None = Field(default=None, description="Log in to the SMTP server as this user.")
    smtp_password_env: str = Field(
        default="LOOPLINE_SMTP_PASSWORD",
        description="Environment variable holding smtp_user's password (never the password itself).",
    )
    email_from: str = "loopline@localhost"
    runbook_url: str = "docs/runbook.md"


class LabelsConfig(_Strict):
    """Where delayed labels come from and how they join to captured predictions (``serving.labels``)."""

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


class LiveMonitoringConfig(_Strict):
    """How loopline_monitor watches the captured live traffic (``serving.monitoring``)."""

    enabled: bool = Field(default=True, description="Monitor live traffic after each lake batch.")
    window: Literal["batch", "days"] = Field(
        default="batch",
        description="batch: the triggering batch's time window (by event time); days: the last window_days "
        "days up to the run.",
    )
    window_days: int = Field(default=7, ge=1, description="window: days: length of the window.")


class ServingConfig(_Strict):
    """``loopline serve``, its prediction store, delayed labels and live monitoring (``serving:``)."""

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
    token_env: str = Field(
        default="LOOPLINE_SERVE_TOKEN", description="Environment variable holding the token."
    )
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
    labels: LabelsConfig = LabelsConfig()
    monitoring: LiveMonitoringConfig = LiveMonitoringConfig()


class LakeConfig(_Strict):
    """Where the lake's Parquet partitions live: a folder, or an S3-compatible object store shared by workers."""

    uri: str | None = Field(
        default=None,
        description="A folder, or s3://bucket/prefix on an S3-compatible object store (AWS S3, MinIO, "
        "SeaweedFS, ...); default $LOOPLINE_LAKE_URI, else $LOOPLINE_HOME/lake. Credentials come from the "
        "standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never from this file.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint of a non-AWS store, e.g. http://minio:9000; default $AWS_ENDPOINT_URL_S3, "
        "else $AWS_ENDPOINT_URL, else AWS itself.",
    )
    region: str | None = Field(default=None, description="S3 region; default $AWS_REGION, else us-east-1.")

    @model_validator(mode="after")
    def _known_scheme(self) -> LakeConfig:
        if self.uri and "://" in self.uri and not self.uri.startswith(OBJECT_STORE_SCHEMES):
            raise ValueError(
                f"lake.uri {self.uri!r}: use a folder or s3://bucket/prefix "
                f"(schemes: {', '.join(OBJECT_STORE_SCHEMES)})"
            )
        return self


OBJECT_STORE_SCHEMES = ("s3://",)
"""Lake URIs that name an object store (an S3-compatible one) instead of a folder."""


class RegistryConfig(_Strict):
    """MLflow: where runs and models go. Tracking URI defaults to SQLite under LOOPLINE_HOME."""

    model_name: str | None = Field(
        default=None, description="Registered model name; default <dataset>_classifier."
    )
    tracking_uri: str | None = None
    experiment: str | None = None
    ui_url: str = Field(
        default="http://127.0.0.1:5000", description="MLflow UI base URL, for links from Airflow and alerts."
    )


class SparkConfig(_Strict):
    """Where the ``spark`` engine runs its jobs (a classic session; Spark Connect for the data steps)."""

    master: str = Field(
        default="local[2]", description="Spark master URL: local[N], spark://host:port, k8s://https://host."
    )
    connect_url: str | None = Field(
        default=None,
        description="Spark Connect URL (sc://host:port) for ingestion, the gate and profiles; training "
        "always uses a classic session (XGBoost on Spark needs the SparkContext).",
    )
    num_workers: int = Field(default=2, ge=1, description="XGBoost workers (Spark task slots used at once).")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark conf, key -> value.")


class EngineConfig(_Strict):
    """Which engine runs the data-heavy work of each step; the DAG files are the same for every engine."""

    kind: Literal["local", "spark"] = Field(
        default="local",
        description="local: pandas/pyarrow/XGBoost in the task's process, out of core past the memory "
        "budget; spark: Apache Spark jobs (needs the loopline[spark] extra and Java 17).",
    )
    memory_budget_mb: int = Field(
        default=2048,
        ge=64,
        description="Local engine: a window whose in-memory size exceeds this streams in record batches "
        "and trains out of core.",
    )
    batch_rows: int = Field(
        default=250_000, ge=1000, description="Local engine: rows per record batch when streaming."
    )
    out_of_core: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Local engine: auto streams past memory_budget_mb; always/never force the choice "
        "(always: check the streaming path on small data; never: trust the worker's memory).",
    )
    max_boosting_rows: int | Literal["auto"] | None = Field(
        default="auto",
        description="Local engine, streamed training: boosting takes at most this many of the window's "
        "training rows, a sample by a hash of the id column (the same rows on every run; the profile and "
        "the training metrics still cover every row). auto: what half of memory_budget_mb holds at "
        "XGBoost's ~40 bytes of state per row (the only state that grows with the window); null: every row.",
    )
    spark: SparkConfig = SparkConfig()

    @field_validator("max_boosting_rows")
    @classmethod
    def _positive_rows(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1000:
            raise ValueError(f"engine.max_boosting_rows is {value}: use at least 1000, auto or null")
        return value


class LooplineConfig(_Strict):
    """The whole configuration of one dataset's loop."""

    dataset: DatasetConfig
    batching: BatchingConfig = BatchingConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    promotion: PromotionConfig = PromotionConfig()
    drift: DriftConfig = DriftConfig()
    alerts: AlertsConfig = AlertsConfig()
    registry: RegistryConfig = RegistryConfig()
    serving: ServingConfig = ServingConfig()
    engine: EngineConfig = EngineConfig()
    lake: LakeConfig = LakeConfig()
    config_path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _time_column_for_time_batches(self) -> LooplineConfig:
        if self.batching.by != "rows" and not self.dataset.time_column:
            raise ValueError(
                f"batching.by is {self.batching.by!r} but dataset.time_column is not set: "
                "set dataset.time_column or use batching.by: rows"
            )
        if self.dataset.source.format == "sql" and self.batching.by == "rows":
            raise ValueError(
                "dataset.source.format is sql, which reads one time window per batch: "
                "use batching.by month, week or day"
            )
        return self

    @property
    def model_name(self) -> str:
        return self.registry.model_name or f"{self.dataset.name}_classifier"

    @property
    def experiment_name(self) -> str:
        return self.registry.experiment or f"loopline/{self.dataset.name}"

    def suite_path(self) -> Path:
        """The Great Expectations suite file of this dataset."""
        base = self.config_path.parent if self.config_path else Path.cwd()
        if self.dataset.expectation_suite:
            return (base / self.dataset.expectation_suite).resolve()
        return (base / "expectations" / f"{self.dataset.name}.json").resolve()


def load_config(path: str | os.PathLike[str] | None = None) -> LooplineConfig:
    """Read and validate a config file; errors name the file, the key and what to change."""
    file = resolve_config_path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found (pass --config FILE or set LOOPLINE_CONFIG)")
    return parse_config(file.read_bytes(), file)


def parse_config(content: str | bytes, file: Path) -> LooplineConfig:
    """Validate the YAML ``content`` of the config file ``file``; errors as for ``load_config``."""
    try:
        raw: Any = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return LooplineConfig.model_validate({**raw, "config_path": file})
    except ValidationError as exc:
        raise ConfigError(f"{file}: invalid config:\n{_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (remove it or check its spelling)")
        elif err["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            lines.append(f"  - {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


@dataclass(frozen=True)
class Paths:
    """Every folder Loopline writes, all under one home."""

    home: Path

    @classmethod
    def from_env(cls) -> Paths:
        """$LOOPLINE_HOME, or .loopline in the working directory."""
        return cls(home_from_env())

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def lake(self) -> Path:
        """The lake's folder when it is kept under the home (the default; see ``lake_location``)."""
        return self.home / "lake"

    def lake_location(self, config: LooplineConfig | None = None) -> str | Path:
        """Where the lake is: the config's ``lake.uri``, else $LOOPLINE_LAKE_URI, else the home's folder."""
        chosen = (config.lake.uri if config else None) or os.environ.get("LOOPLINE_LAKE_URI", "").strip()
        if not chosen:
            return self.lake
        if chosen.startswith(OBJECT_STORE_SCHEMES):
            return chosen
        if "://" in chosen:
            raise ConfigError(
                f"LOOPLINE_LAKE_URI={chosen!r}: use a folder or s3://bucket/prefix (schemes: "
                f"{', '.join(OBJECT_STORE_SCHEMES)})"
            )
        return Path(chosen).expanduser()

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def state(self) -> Path:
        return self.home / "state"

    @property
    def alert_log(self) -> Path:
        return self.state / "alerts.jsonl"

    @property
    def demo(self) -> Path:
        return self.home / "demo"

    def tracking_uri(self, config: LooplineConfig) -> str:
        """The MLflow tracking URI: the config's, else SQLite under the home."""
        return (
            config.registry.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{self.mlflow_db}"
        )
