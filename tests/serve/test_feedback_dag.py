"""loopline_feedback: parses without heavy imports, and one real run (``dag.test``) loads and joins a window."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from serve_support import CONFIG_FILE, ROOT

DAG_FILE = ROOT / "dags" / "loopline_feedback.py"
HEAVY = ("pandas", "numpy", "mlflow", "great_expectations", "xgboost", "sklearn", "scipy", "pyarrow")


def _env(airflow_home: Path, home: Path, dags: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
            "LOOPLINE_HOME": str(home),
            "LOOPLINE_CONFIG": str(CONFIG_FILE),
            "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT}",
        }
    )
    return env


@pytest.mark.fast
def test_the_dag_parses_without_heavy_imports(tmp_path: Path) -> None:
    env = _env(tmp_path / "airflow", tmp_path / "home", tmp_path / "dags")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(DAG_FILE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.e2e
def test_a_run_loads_the_window_labels_and_joins_them(tmp_path: Path) -> None:
    import asyncio
    import time
    import uuid

    from ml.config import Paths, load_config
    from ml.serve.capture import CaptureItem, CaptureWriter
    from ml.serve.settings import default_store_url
    from ml.serve.store import migrate, now

    home, airflow_home, dags = tmp_path / "home", tmp_path / "airflow", tmp_path / "dags"
    dags.mkdir(parents=True)
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    config, paths = load_config(CONFIG_FILE), Paths(home)
    url = default_store_url(paths)
    migrate(url)
    writer = CaptureWriter(url, "loans", flush_interval=0.05)
    writer.start()
    for i in range(6):
        moment = datetime(2025, 2, 20 + i, tzinfo=UTC)
        item = CaptureItem(
            time.monotonic(), uuid.uuid4().hex, now(), [{"credit_score": 650.0}], [f"L{i}"], [moment],
            [0.1 * (i + 1)], [i >= 4], 0.5, config.model_name, "1", 1.0, [[]],
        )  # fmt: skip
        asyncio.run(writer.submit(item))
    writer.close()
    landed = paths.landing / "loans_labels"
    landed.mkdir(parents=True)
    (landed / "2025-03-01.csv").write_text(
        "loan_id,defaulted,label_time\n"
        "L0,0,2025-03-01T08:00:00Z\nL4,1,2025-03-01T09:00:00Z\nL5,1,2025-03-01T09:30:00Z\n"
        "L5,1,2025-03-01T10:00:00Z\nX9,0,2025-03-01T11:00:00Z\n"
    )
    env = _env(airflow_home, home, dags)
    migrated = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    script = textwrap.dedent(
        f"""
        import importlib.util, json, pendulum
        spec = importlib.util.spec_from_file_location("feedback", {str(dags / DAG_FILE.name)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        run = module.loopline_feedback().test(logical_date=pendulum.datetime(2025, 3, 2, tz="UTC"))
        states = {{ti.task_id: str(ti.state) for ti in run.get_task_instances()}}
        print("RESULT " + json.dumps({{"run": str(run.state), "tasks": states,
              "interval": [str(run.data_interval_start), str(run.data_interval_end)]}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["run"].endswith("success"), done.stdout[-3000:]
    assert result["tasks"] == {"load_labels": "success", "join": "success"}
    assert result["interval"][0].startswith("2025-03-01") and result["interval"][1].startswith("2025-03-02")

    from sqlalchemy import select

    from ml.serve.store import FeedbackWindow, Label, engine_for

    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            stored = dict(connection.execute(select(Label.entity_id, Label.label)).all())
            report = connection.execute(select(FeedbackWindow.report)).scalar_one()
    finally:
        engine.dispose()
    assert stored == {"L0": 0, "L4": 1, "L5": 1, "X9": 0}
    assert (report["predictions"], report["labelled_entities"], report["missing_labels"]) == (6, 3, 3)
