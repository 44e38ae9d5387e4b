"""Shared fixtures: a private LOOPLINE_HOME per test, the demo config, small demo batches."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True, scope="session")
def _default_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test that picks no home of its own writes under the session's tmp folder, never the checkout's."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOOPLINE_HOME", str(tmp_path_factory.mktemp("default-home")))
        yield


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LOOPLINE_HOME and the default config, for this test only."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("LOOPLINE_HOME", str(folder))
    monkeypatch.setenv("LOOPLINE_CONFIG", str(ROOT / "loopline.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


@pytest.fixture
def config(home: Path):
    from ml.config import load_config

    return load_config(ROOT / "loopline.yaml")


@pytest.fixture
def paths(home: Path):
    from ml.config import Paths

    return Paths.from_env()


@pytest.fixture(scope="session")
def scenario():
    from ml.demo_data import Scenario

    return Scenario(months=10, rows_per_month=1500, shift_from_month=7, incident_months=(5,))
