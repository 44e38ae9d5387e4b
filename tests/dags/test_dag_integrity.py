"""Every DAG file imports, the four ids exist, and no DAG file imports heavy libraries at its top level."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
EXPECTED = {"loopline_ingest", "loopline_train", "loopline_monitor", "loopline_score", "loopline_feedback"}
HEAVY = ("pandas", "numpy", "mlflow", "great_expectations", "xgboost", "sklearn", "scipy", "pyarrow")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("airflow")
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("LOOPLINE_CONFIG", str(ROOT / "loopline.yaml"))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_every_dag_file_imports(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED


def test_dags_are_documented_tagged_and_not_catching_up(dagbag) -> None:
    for dag_id in EXPECTED:
        dag = dagbag.dags[dag_id]
        assert dag.doc_md and "loopline" in dag.tags
        assert dag.catchup is False


def test_train_has_trigger_form_params_and_one_run_at_a_time(dagbag) -> None:
    dag = dagbag.dags["loopline_train"]
    assert {"end_batch", "window_batches", "num_boost_round", "max_depth", "learning_rate", "promote"} <= set(
        dag.params
    )
    assert dag.max_active_runs == 1


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_import_at_top_level(dag_file: Path) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=f"{ROOT / 'plugins'}{os.pathsep}{ROOT}",
        LOOPLINE_CONFIG=str(ROOT / "loopline.yaml"),
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(dag_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY), f"{dag_file.name} imports {sorted(imported & set(HEAVY))} at parse time"
