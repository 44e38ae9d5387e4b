"""A real Spark for the engine tests: pyspark from PyPI on the machine's Java 17, ``local[2]``, one session.

The lake holds four months of the demo's loans (cleaned by ``ml.ingest`` as in ``loopline_ingest``) plus one
broken month (``BROKEN``) that must fail the gate. The ingestion cases (``ingest_cases``) are landing files
ingested by the local engine once per dataset policy, for the Spark ingestion tests (classic and Connect) to
compare with. Without
pyspark or Java the tests skip with the install command, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, NoReturn

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install -e '.[spark]' (pyspark 4.1 and great-expectations[spark]) and a Java 17 runtime"
MONTHS = 4
ROWS_PER_MONTH = 1500
BROKEN = "2025-09"
BATCHES = [f"2025-0{m}" for m in range(1, MONTHS + 1)]
SHIFTED = "2025-08"
PARAMS = {"num_boost_round": 60}

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def unavailable(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the Spark tests must run)", pytrace=False)
    pytest.skip(reason)


def _java_works() -> bool:
    java = (
        Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        if os.environ.get("JAVA_HOME")
        else shutil.which("java")
    )
    if not java:
        return False
    return subprocess.run([str(java), "-version"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="session")
def spark_config() -> Any:
    """The test engine's Spark settings: local[2], no UI, two shuffle partitions."""
    try:
        import pyspark  # noqa: F401
        import xgboost.spark  # noqa: F401
    except ImportError as exc:
        unavailable(f"pyspark is not installed ({exc}): {INSTALL}")
    if not _java_works():
        unavailable(f"no working Java runtime: {INSTALL}")
    from ml.config import SparkConfig

    return SparkConfig(
        master="local[2]",
        num_workers=2,
        conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2", "spark.driver.memory": "1g"},
    )


@pytest.fixture(scope="session")
def spark(spark_config: Any) -> Iterator[Any]:
    """The process's classic session (the engine's own helper), stopped at the end of the test session."""
    from ml.engines import spark as engine_module

    session = engine_module.classic_session(spark_config)
    yield session
    session.stop()


def _write_lake(home: Path, config: Any) -> None:
    """The demo months through landing -> schema -> dedup, written as lake partitions; plus a broken month."""
    from ml import demo_data
    from ml.config import Paths
    from ml.ingest import clean_batch, read_source
    from ml.lake import Lake

    paths = Paths(home)
    scenario = demo_data.Scenario(
        months=8, rows_per_month=ROWS_PER_MONTH, shift_from_month=8, incident_months=(), seed=11
    )
    landing = paths.landing / "loans"
    files = demo_data.write_landing(scenario, landing)
    lake = Lake(paths.lake)
    for source in [*files[:MONTHS], files[-1]]:
        clean = clean_batch(config, read_source(source, "csv"), source.stem, source)
        lake.write("loans", source.stem, clean.frame, source=str(source))
    # No repeated records: corrupting one copy of one would make two records under one id, which ingest refuses.
    broken = demo_data.generate_month(replace(scenario, duplicate_rate=0), 9)
    rng = np.random.default_rng(3)
    broken.loc[rng.random(len(broken)) < 0.3, "credit_score"] = np.nan
    broken.loc[rng.random(len(broken)) < 0.05, "age"] = -1
    source = landing / f"{BROKEN}.csv"
    broken.to_csv(source, index=False)
    clean = clean_batch(config, read_source(source, "csv"), BROKEN, source)
    lake.write("loans", BROKEN, clean.frame, source=str(source))


@pytest.fixture(scope="session")
def spark_loopline_config(spark_config: Any) -> Any:
    """The embedded config (``loopline.yaml``) with ``engine.kind: spark`` on the test's Spark settings."""
    from ml.config import EngineConfig, load_config

    base = load_config(ROOT / "loopline.yaml")
    return base.model_copy(update={"engine": EngineConfig(kind="spark", spark=spark_config)})


@pytest.fixture(scope="session")
def spark_home(tmp_path_factory: pytest.TempPathFactory, spark_loopline_config: Any) -> tuple[Any, Any]:
    """(config with engine spark, paths) over a lake of demo months; shared by the whole directory."""
    from ml.config import Paths

    home = tmp_path_factory.mktemp("spark-home")
    _write_lake(home, spark_loopline_config)
    return spark_loopline_config, Paths(home)


@pytest.fixture(scope="session")
def engine(spark: Any, spark_home: tuple[Any, Any]) -> Any:
    from ml.engines.base import engine_for

    config, paths = spark_home
    return engine_for(config, paths)


@pytest.fixture(scope="session")
def window() -> SimpleNamespace:
    """The lake's batches by role: the training window, the broken month, the shifted month, training params."""
    return SimpleNamespace(batches=BATCHES, broken=BROKEN, shifted=SHIFTED, params=PARAMS)


@pytest.fixture(scope="session")
def trained(engine: Any) -> Any:
    """One SparkXGBClassifier training on the four months (the newest month's latest 30% held out)."""
    return engine.train(BATCHES, PARAMS)


SPLIT_BYTES = "64k"
"""``spark.sql.files.maxPartitionBytes`` while the cases are ingested on Spark: each landing file (~200 kB) is read
as several partitions, as a large file is, so row numbers and file order cross partitions."""


@contextmanager
def small_file_splits(session: Any) -> Iterator[None]:
    """Read files in ``SPLIT_BYTES`` partitions on ``session`` (classic or Connect) meanwhile."""
    key = "spark.sql.files.maxPartitionBytes"
    before = session.conf.get(key)
    session.conf.set(key, SPLIT_BYTES)
    try:
        yield
    finally:
        session.conf.set(key, before)


POLICIES: dict[str, dict[str, str]] = {
    "lenient": {"extra_columns": "drop", "duplicate_ids": "keep_last"},
    "strict": {"extra_columns": "refuse", "duplicate_ids": "refuse"},
}
"""``dataset`` settings of the ingestion cases: both policies at their non-default values, and the defaults."""


class IngestCases:
    """Landing files of six batches, ingested by the local engine once per policy (``POLICIES``); other engines'
    outcomes are checked against it:

    - ``2025-01``: a month with records delivered twice (exact repeats, always dropped);
    - ``2025-02``: the same, plus 20 rows whose ids month 1 holds (refused, or dropped under ``keep_last``);
    - ``2025-03``: a broken month that fails the GE gate; ``2025-04``: one without a required column;
    - ``2025-05``: an unexpected column (refused, or dropped under ``extra_columns: drop``);
    - ``2025-06``: five ids repeated later in the file with other values (one also repeated exactly after its
      correction) and three ids month 1 holds (refused naming ids and rows, or each id's last row kept).

    Each run ends by ingesting month 1 again (``RERUN``): its own partition is not another batch.
    """

    ROWS = 1500
    FIRST, KNOWN_IDS, BROKEN, NO_COLUMN, EXTRA, CONFLICT = (f"2025-0{m}" for m in range(1, 7))
    BATCHES: ClassVar[list[str]] = [FIRST, KNOWN_IDS, BROKEN, NO_COLUMN, EXTRA, CONFLICT]
    RERUN = "rerun"
    ACCEPTED: ClassVar[dict[str, list[str]]] = {
        "lenient": [FIRST, KNOWN_IDS, EXTRA, CONFLICT],
        "strict": [FIRST],
    }

    def __init__(self, config: Any, root: Path) -> None:
        from ml.config import EngineConfig

        self.root = root
        self.landing = root / "landing"
        self._write_landing(self.landing / config.dataset.name)
        local = config.model_copy(update={"engine": EngineConfig(kind="local")})
        self.local = {policy: self.run(local, "local", policy) for policy in POLICIES}

    def _write_landing(self, folder: Path) -> None:
        from ml import demo_data

        scenario = demo_data.Scenario(
            months=2, rows_per_month=self.ROWS, shift_from_month=None, incident_months=(), seed=5
        )
        first, second, extra, conflict = (demo_data.generate_month(scenario, m) for m in (1, 2, 5, 6))
        repeated = first.head(20).assign(applied_at=second["applied_at"].iloc[:20].to_numpy())
        second = pd.concat([repeated, second]).sort_values("applied_at", kind="stable")
        corrected = conflict.drop_duplicates("loan_id").sample(5, random_state=3)
        corrected = corrected.assign(age=corrected["age"] + 1)
        again = conflict[conflict["loan_id"] == corrected["loan_id"].iloc[0]].head(1)
        known = first.iloc[100:103].assign(applied_at=conflict["applied_at"].iloc[100:103].to_numpy())
        conflict = pd.concat([conflict, corrected, again, known]).sort_values("applied_at", kind="stable")
        rng = np.random.default_rng(1)
        broken = demo_data.generate_month(replace(scenario, duplicate_rate=0), 3)
        broken.loc[rng.random(len(broken)) < 0.3, "credit_score"] = np.nan
        no_column = demo_data.generate_month(scenario, 4).drop(columns=["age"])
        folder.mkdir(parents=True)
        for key, frame in [
            (self.FIRST, first),
            (self.KNOWN_IDS, second),
            (self.BROKEN, broken),
            (self.NO_COLUMN, no_column),
            (self.EXTRA, extra.assign(promo_code="X1")),
            (self.CONFLICT, conflict),
        ]:
            frame.to_csv(folder / f"{key}.csv", index=False)

    def run(self, config: Any, name: str, policy: str, session: Any = None) -> dict[str, Any]:
        """Every batch, then month 1 again, through ``steps.ingest_batch`` under ``POLICIES[policy]`` in a fresh
        home ``name-policy``: its summary, or what it raised. With the Spark ``session`` of ``config``, files
        are read in small partitions (``small_file_splits``)."""
        if session is not None:
            with small_file_splits(session):
                return self.run(config, name, policy)
        from ml import steps
        from ml.config import Paths
        from ml.ingest import BatchRejected
        from ml.quality import QualityGateFailed

        dataset = config.dataset.model_copy(update=POLICIES[policy])
        config = config.model_copy(update={"dataset": dataset})
        paths = Paths(self.root / f"{name}-{policy}")
        paths.home.mkdir(parents=True)
        paths.landing.symlink_to(self.landing, target_is_directory=True)
        outcomes: dict[str, Any] = {}
        for key, batch in [*zip(self.BATCHES, self.BATCHES, strict=True), (self.RERUN, self.FIRST)]:
            try:
                outcomes[key] = steps.ingest_batch(config, paths, batch, quarantine_moves_source=False)
            except (BatchRejected, QualityGateFailed) as exc:
                outcomes[key] = exc
        return {"outcomes": outcomes, "paths": paths, "policy": policy}

    def assert_partition_equal(self, other: dict[str, Any], batch: str) -> None:
        """Same summary and the same partition rows, order and column types as the local ingest."""
        from ml.steps import lake_of

        local = self.local[other["policy"]]
        want, got = local["outcomes"][batch], other["outcomes"][batch]
        assert isinstance(got, dict), got
        for key in ("rows", "rows_read", "duplicates_dropped", "warnings"):
            assert got[key] == want[key], key
        assert got["rows"] == self.ROWS and len(got["sha256"]) == 64
        frames = [lake_of(o["paths"]).read("loans", [batch]) for o in (local, other)]
        pd.testing.assert_frame_equal(frames[1], frames[0])

    def assert_accepted_like_local(self, other: dict[str, Any]) -> None:
        """Every batch the policy accepts has the local partition; re-ingesting month 1 rewrites the same one."""
        for batch in self.ACCEPTED[other["policy"]]:
            self.assert_partition_equal(other, batch)
        rerun, first = other["outcomes"][self.RERUN], other["outcomes"][self.FIRST]
        assert isinstance(rerun, dict), rerun
        assert rerun["sha256"] == first["sha256"] and rerun["rows"] == self.ROWS

    def assert_policy_applied(self, other: dict[str, Any]) -> None:
        """What each policy does to the cases, as the issue states it (checked on any engine's outcomes)."""
        if other["policy"] == "lenient":
            self._assert_dropped(other["outcomes"])
        else:
            self._assert_refused_with_reasons(other["outcomes"])

    def _assert_dropped(self, outcomes: dict[str, Any]) -> None:
        """Under ``keep_last``: month 2's ids held by month 1 dropped; month 6's corrections kept, earlier rows
        and exact repeats dropped; month 5's extra column dropped."""
        assert outcomes[self.KNOWN_IDS]["duplicates_dropped"] >= 20
        assert (
            "dropped 20 row(s) whose id is already in another batch of the lake"
            in outcomes[self.KNOWN_IDS]["warnings"]
        )
        warnings = outcomes[self.CONFLICT]["warnings"]
        assert any(w.startswith("dropped 5 earlier row(s) of 5 id(s) repeated") for w in warnings), warnings
        assert "dropped 3 row(s) whose id is already in another batch of the lake" in warnings
        assert any("promo_code" in w for w in outcomes[self.EXTRA]["warnings"])

    def assert_refused_like_local(self, other: dict[str, Any]) -> None:
        """The broken month fails the gate on the same expectations; every batch the schema check refuses is
        rejected with the local message (file, columns, ids, rows and the batch holding an id); all are
        quarantined and the lake holds the accepted months only."""
        from ml.ingest import BatchRejected
        from ml.quality import QualityGateFailed
        from ml.steps import lake_of

        policy = other["policy"]
        local, got = self.local[policy]["outcomes"], other["outcomes"]
        broken = self.BROKEN
        assert isinstance(got[broken], QualityGateFailed) and isinstance(local[broken], QualityGateFailed)
        failures = [{(f.expectation, f.column) for f in o[broken].result.critical} for o in (local, got)]
        assert (
            failures[0] == failures[1]
            and ("expect_column_values_to_not_be_null", "credit_score") in failures[1]
        )
        refused = [b for b in self.BATCHES if b != broken and b not in self.ACCEPTED[policy]]
        for batch in refused:
            assert isinstance(got[batch], BatchRejected), (batch, got[batch])
            assert str(got[batch]) == str(local[batch]), batch
            assert got[batch].ids_elsewhere == local[batch].ids_elsewhere, batch
        paths = other["paths"]
        assert lake_of(paths).batches("loans") == self.ACCEPTED[policy]
        for batch in (broken, *refused):
            assert (paths.quarantine / "loans" / batch / "reason.json").is_file()

    def _assert_refused_with_reasons(self, outcomes: dict[str, Any]) -> None:
        """Under the default policies the refusals say what the issue asks: the file, the column, the ids with
        their rows, the batch that holds an id, and the setting that would accept the batch."""
        assert [
            str(outcomes[b]).count("batch rejected") for b in (self.KNOWN_IDS, self.EXTRA, self.CONFLICT)
        ] == [
            1,
            1,
            1,
        ]
        known = str(outcomes[self.KNOWN_IDS])
        assert f"{self.KNOWN_IDS}.csv: batch rejected" in known
        assert (
            "column loan_id: 20 id(s): 'L" in known
            and " and 15 more already in another accepted batch" in known
        )
        assert "is in batch 2025-01" in known and "duplicate_ids: keep_last" in known
        extra = str(outcomes[self.EXTRA])
        assert "unexpected column(s) promo_code" in extra and "extra_columns: drop" in extra
        conflict = str(outcomes[self.CONFLICT])
        assert "5 id(s): 'L" in conflict and "with different values" in conflict
        assert "column loan_id: 3 id(s): 'L" in conflict and "is in batch 2025-01" in conflict


@pytest.fixture(scope="module", params=list(POLICIES))
def policy(request: pytest.FixtureRequest) -> str:
    """Each of ``POLICIES`` in turn, for a module's ingestion tests."""
    return str(request.param)


@pytest.fixture(scope="session")
def ingest_cases(spark_loopline_config: Any, tmp_path_factory: pytest.TempPathFactory) -> IngestCases:
    """The ingestion landing files and the local engine's outcomes on them (computed once per session)."""
    return IngestCases(spark_loopline_config, tmp_path_factory.mktemp("spark-ingest"))
