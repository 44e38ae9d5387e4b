"""A real Spark for the engine tests: pyspark from PyPI on the machine's Java 17, ``local[2]``, one session.

The lake holds four months of the demo's loans (cleaned by ``ml.ingest`` as in ``loopline_ingest``) plus one
broken month (``BROKEN``) that must fail the gate. The ingestion cases (``ingest_cases``) are landing files
ingested by the local engine once, for the Spark ingestion tests (classic and Connect) to compare with. Without
pyspark or Java the tests skip with the install command, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
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
    broken = demo_data.generate_month(scenario, 9)
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


class IngestCases:
    """Landing files of four batches, ingested by the local engine once; other engines' outcomes are checked
    against it: month 1, month 2 (with in-file duplicates and 20 ids already in month 1), a broken month that
    fails the GE gate and one without a required column."""

    ROWS = 1500
    ACCEPTED: ClassVar[list[str]] = ["2025-01", "2025-02"]
    BROKEN, NO_COLUMN = "2025-03", "2025-04"

    def __init__(self, config: Any, root: Path) -> None:
        from ml.config import EngineConfig

        self.root = root
        self.landing = root / "landing"
        self._write_landing(self.landing / config.dataset.name)
        self.local = self.run(config.model_copy(update={"engine": EngineConfig(kind="local")}), "local")

    def _write_landing(self, folder: Path) -> None:
        from ml import demo_data

        scenario = demo_data.Scenario(
            months=2, rows_per_month=self.ROWS, shift_from_month=None, incident_months=(), seed=5
        )
        first, second = (demo_data.generate_month(scenario, m) for m in (1, 2))
        repeated = first.head(20).assign(applied_at=second["applied_at"].iloc[:20].to_numpy())
        second = pd.concat([repeated, second]).sort_values("applied_at", kind="stable")
        rng = np.random.default_rng(1)
        broken = demo_data.generate_month(scenario, 3)
        broken.loc[rng.random(len(broken)) < 0.3, "credit_score"] = np.nan
        folder.mkdir(parents=True)
        for key, frame in [("2025-01", first), ("2025-02", second), (self.BROKEN, broken)]:
            frame.to_csv(folder / f"{key}.csv", index=False)
        demo_data.generate_month(scenario, 4).drop(columns=["age"]).to_csv(
            folder / f"{self.NO_COLUMN}.csv", index=False
        )

    def run(self, config: Any, name: str) -> dict[str, Any]:
        """Every batch through ``steps.ingest_batch`` in a fresh home ``name``: its summary, or what it raised."""
        from ml import steps
        from ml.config import Paths
        from ml.ingest import BatchRejected
        from ml.quality import QualityGateFailed

        paths = Paths(self.root / name)
        paths.home.mkdir(parents=True)
        paths.landing.symlink_to(self.landing, target_is_directory=True)
        outcomes: dict[str, Any] = {}
        for batch in [*self.ACCEPTED, self.BROKEN, self.NO_COLUMN]:
            try:
                outcomes[batch] = steps.ingest_batch(config, paths, batch, quarantine_moves_source=False)
            except (BatchRejected, QualityGateFailed) as exc:
                outcomes[batch] = exc
        return {"outcomes": outcomes, "paths": paths}

    def assert_partition_equal(self, other: dict[str, Any], batch: str) -> None:
        """Same summary and the same partition rows, order and column types as the local ingest."""
        from ml.steps import lake_of

        local, got = self.local["outcomes"][batch], other["outcomes"][batch]
        assert isinstance(got, dict), got
        for key in ("rows", "rows_read", "duplicates_dropped", "warnings"):
            assert got[key] == local[key], key
        assert got["rows"] == self.ROWS and len(got["sha256"]) == 64
        frames = [lake_of(o["paths"]).read("loans", [batch]) for o in (self.local, other)]
        pd.testing.assert_frame_equal(frames[1], frames[0])

    def assert_dedup(self, other: dict[str, Any]) -> None:
        """Month 2's in-file duplicates and the 20 ids already in month 1 were dropped."""
        got = other["outcomes"][self.ACCEPTED[1]]
        assert got["duplicates_dropped"] >= 20
        assert "dropped 20 row(s) whose id is already in another batch of the lake" in got["warnings"]

    def assert_refused_like_local(self, other: dict[str, Any]) -> None:
        """The broken month fails the gate on the same expectations, the other is rejected with the same
        message; both are quarantined and the lake holds the accepted months only."""
        from ml.ingest import BatchRejected
        from ml.quality import QualityGateFailed
        from ml.steps import lake_of

        local, got = self.local["outcomes"], other["outcomes"]
        broken = self.BROKEN
        assert isinstance(got[broken], QualityGateFailed) and isinstance(local[broken], QualityGateFailed)
        failures = [{(f.expectation, f.column) for f in o[broken].result.critical} for o in (local, got)]
        assert (
            failures[0] == failures[1]
            and ("expect_column_values_to_not_be_null", "credit_score") in failures[1]
        )
        assert isinstance(got[self.NO_COLUMN], BatchRejected)
        assert str(got[self.NO_COLUMN]) == str(local[self.NO_COLUMN])
        paths = other["paths"]
        assert lake_of(paths).batches("loans") == self.ACCEPTED
        for batch in (broken, self.NO_COLUMN):
            assert (paths.quarantine / "loans" / batch / "reason.json").is_file()


@pytest.fixture(scope="session")
def ingest_cases(spark_loopline_config: Any, tmp_path_factory: pytest.TempPathFactory) -> IngestCases:
    """The ingestion landing files and the local engine's outcomes on them (computed once per session)."""
    return IngestCases(spark_loopline_config, tmp_path_factory.mktemp("spark-ingest"))
