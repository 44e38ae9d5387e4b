"""A real stack and a real browser: headless Chromium from Debian's ``chromium`` package, driven by Playwright.

The stack is the embedded profile after a small loop (three months ingested, a first champion trained), plus the
MLflow UI over its store. Screenshots go to ``$LOOPLINE_HOME/screenshots``. Without Chromium the tests skip with
the command that installs it, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium"
AIRFLOW_PORT, MLFLOW_PORT = 28490, 28510
UI_TIMEOUT_MS = 60_000


def unavailable(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium (never a downloaded browser build)."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        unavailable(f"Chromium is not installed at {CHROMIUM}; install it with: {INSTALL}")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        unavailable(f"Playwright for Python is not installed ({exc}); it is in the dev extra")
    expect.set_options(timeout=UI_TIMEOUT_MS)  # the UIs of a busy 2-core machine can take more than 5 s
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The embedded stack with three months ingested and a first champion, and the MLflow UI; stopped afterwards.

    A shortened loop (the monitor and score DAGs stay paused; the demo and tests/e2e cover them): what the UIs
    need is the DAGs, runs in MLflow and a champion.
    """
    from ml import demo_data, registry
    from ml.airflow_client import AirflowClient
    from ml.demo import DAG_IDS
    from ml.stack import Stack, free_port, start_airflow, start_mlflow_ui

    home = tmp_path_factory.mktemp("browser")
    scenario = demo_data.Scenario(months=3, rows_per_month=1500, shift_from_month=None, incident_months=())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOOPLINE_HOME", str(home))
        env.setenv("LOOPLINE_CONFIG", str(ROOT / "loopline.yaml"))
        from ml.config import Paths, load_config

        config, paths = load_config(), Paths.from_env()
        # The home's own store. Set (not deleted) so that it is undone afterwards: mlflow.set_tracking_uri
        # exports MLFLOW_TRACKING_URI, which would otherwise point later tests at this store.
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{paths.mlflow_db}")
        assert config.config_path is not None
        demo_data.write_landing(scenario, paths.landing / config.dataset.source.path)
        registry.connect(config, paths)
        stack = Stack(paths)
        try:
            endpoints = start_airflow(stack, config.config_path, free_port(AIRFLOW_PORT))
            client = AirflowClient(endpoints.airflow_url, endpoints.username, endpoints.password)
            client.wait_for_dags(DAG_IDS)
            for dag_id in ("loopline_monitor", "loopline_score"):
                client.session.patch(
                    f"{client.base_url}/api/v2/dags/{dag_id}", json={"is_paused": True}, timeout=30
                ).raise_for_status()
            ingests = [
                client.trigger("loopline_ingest", {"batch": scenario.batch_key(month)})
                for month in range(1, scenario.months + 1)
            ]
            assert [client.wait_run("loopline_ingest", run)["state"] for run in ingests] == ["success"] * 3
            first = client.wait_run("loopline_train", client.trigger("loopline_train", {}))
            assert first["state"] == "success", first
            mlflow_url = start_mlflow_ui(stack, paths.tracking_uri(config), free_port(MLFLOW_PORT))
            screenshots = home / "screenshots"
            screenshots.mkdir()
            yield {
                "airflow_url": endpoints.airflow_url,
                "mlflow_url": mlflow_url,
                "username": endpoints.username,
                "password": endpoints.password,
                "config": config,
                "paths": paths,
                "screenshots": screenshots,
            }
        finally:
            stack.stop()
            print(f"\nbrowser screenshots: {home / 'screenshots'}")
