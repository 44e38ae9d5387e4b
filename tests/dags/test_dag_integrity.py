"""Every DAG file imports, the four ids exist, and no DAG file imports heavy libraries at its top level."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _bag_with_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_text: str, *files: str):
    """One DagBag per file in ``files`` (all of dags/ without), parsed with ``config_text`` in a fresh home."""
    from airflow.dag_processing.dagbag import DagBag

    home = tmp_path / "home"
    home.mkdir()
    config = home / "loopline.yaml"
    config.write_text(config_text)
    monkeypatch.setenv("LOOPLINE_HOME", str(home))
    monkeypatch.setenv("LOOPLINE_CONFIG", str(config))
    folders = [ROOT / "dags" / name for name in files] or [ROOT / "dags"]
    return [DagBag(dag_folder=str(folder)) for folder in folders], config


def _default_config_with(extra_yaml: str = "", **replaced: str) -> str:
    """The default config's text with sections appended (a repeated top-level key wins) and lines replaced."""
    text = (ROOT / "loopline.yaml").read_text()
    for old, new in replaced.items():
        assert old in text
        text = text.replace(old, new)
    return text + extra_yaml


def test_a_broken_config_is_an_import_error_naming_the_key(dagbag, tmp_path, monkeypatch) -> None:
    files = ("loopline_ingest.py", "loopline_feedback.py", "loopline_train.py")
    broken = _default_config_with("training: {max_dept: 3}\n")
    bags, _ = _bag_with_config(tmp_path, monkeypatch, broken, *files)
    for name, bag in zip(files, bags, strict=True):
        [error] = bag.import_errors.values()
        assert "training.max_dept: unknown key" in error, f"{name}: {error}"


def test_a_config_broken_after_a_good_parse_still_fails_the_parse(dagbag, tmp_path, monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    [bag], config = _bag_with_config(tmp_path, monkeypatch, _default_config_with(), "loopline_ingest.py")
    assert bag.import_errors == {} and "loopline_ingest" in bag.dags
    config.write_text(_default_config_with(**{"schedule: null": "schedule: [weekly]"}))
    [error] = DagBag(dag_folder=str(ROOT / "dags" / "loopline_ingest.py")).import_errors.values()
    assert "batching.schedule" in error


def test_schedules_come_from_the_config(dagbag, tmp_path, monkeypatch) -> None:
    text = _default_config_with(**{"schedule: null": 'schedule: "@weekly"', '"@daily"': "'0 6 * * *'"})
    [bag], _ = _bag_with_config(tmp_path, monkeypatch, text)
    assert bag.import_errors == {}
    assert bag.dags["loopline_ingest"].schedule == "@weekly"
    assert bag.dags["loopline_feedback"].timetable.expression == "0 6 * * *"
    assert dagbag.dags["loopline_ingest"].schedule is None
    assert dagbag.dags["loopline_feedback"].timetable.expression == "0 0 * * *"  # @daily


def test_require_approval_adds_the_human_review(dagbag, tmp_path, monkeypatch) -> None:
    text = _default_config_with("promotion: {require_approval: true, approval_timeout_hours: 6}\n")
    [bag], _ = _bag_with_config(tmp_path, monkeypatch, text, "loopline_train.py")
    assert bag.import_errors == {}
    dag = bag.dags["loopline_train"]
    approval = dag.get_task("approval")
    assert type(approval).__name__ == "PromotionApproval"
    assert approval.response_timeout.total_seconds() == 6 * 3600
    assert {"needs_review", "record_review"} <= set(dag.task_dict)
    assert dag.get_task("promote").upstream_task_ids >= {"approval", "train", "evaluate"}
    assert "approval" not in dagbag.dags["loopline_train"].task_dict


MLFLOW_TASKS = ("train", "evaluate", "promote")


def _assert_retries_with_backoff(task: Any, where: str) -> None:
    """3 retries, each wait about twice the one before (from 15 s), none longer than a few minutes."""
    assert task.retries == 3, where
    assert task.retry_delay.total_seconds() == 15, where
    assert float(task.retry_exponential_backoff) == 2.0, where  # True would mean a factor of 1 in Airflow 3.3
    assert 60 <= task.max_retry_delay.total_seconds() <= 600, where


def test_train_tasks_that_talk_to_mlflow_retry_with_exponential_backoff(dagbag) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags["loopline_train"]
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))  # what the scheduler reads
    for task_id in MLFLOW_TASKS:
        _assert_retries_with_backoff(dag.get_task(task_id), task_id)
        _assert_retries_with_backoff(scheduled.get_task(task_id), f"{task_id} (serialized)")
    source = (ROOT / "dags" / "loopline_train.py").read_text()
    # data errors and a champion that moved since the evaluation fail at once: a retry cannot fix them
    for error in ("QualityGateFailed", "TrainingDataError", "PromotionConflict"):
        assert f"no_retry_on({error})" in source, error


def test_the_human_approval_is_never_retried(dagbag, tmp_path, monkeypatch) -> None:
    text = _default_config_with("promotion: {require_approval: true, approval_timeout_hours: 6}\n")
    [bag], _ = _bag_with_config(tmp_path, monkeypatch, text, "loopline_train.py")
    dag = bag.dags["loopline_train"]
    assert dag.get_task("approval").retries == 0
    for task_id in (*MLFLOW_TASKS, "record_review"):
        _assert_retries_with_backoff(dag.get_task(task_id), task_id)


def test_train_form_fields_validate_as_before(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = dagbag.dags["loopline_train"].params
    assert params["promote"] is True and params["max_depth"] is None
    schema = params.get_param("max_depth").schema
    assert schema["type"] == ["null", "integer"] and schema["maximum"] == 16
    assert params.get_param("max_depth").description is None
    assert params.get_param("end_batch").description.startswith("Empty: the newest accepted batch")
    for name, bad in (("max_depth", 17), ("learning_rate", 0), ("window_batches", 0), ("promote", "yes")):
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)
    assert params.get_param("learning_rate").resolve(0.05) == 0.05
    batch = dagbag.dags["loopline_ingest"].params.get_param("batch")
    assert batch.schema["title"] == "Batch" and batch.resolve("2025-03") == "2025-03"


def test_a_warm_parse_never_validates_the_whole_config(dagbag, tmp_path, monkeypatch) -> None:
    """The first parse validates the config and caches the parse-time settings; later parses only read them."""
    from airflow.dag_processing.dagbag import DagBag

    from ml import config as config_module

    [cold], _ = _bag_with_config(tmp_path, monkeypatch, _default_config_with())
    assert cold.import_errors == {}

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the whole config was validated at parse time")

    monkeypatch.setattr(config_module, "load_config", refuse)
    monkeypatch.setattr(config_module, "parse_config", refuse)
    warm = DagBag(dag_folder=str(ROOT / "dags"))
    assert warm.import_errors == {}
    assert set(warm.dag_ids) == EXPECTED


def test_monitor_alerts_after_the_retrain_request_and_even_when_it_is_skipped(dagbag) -> None:
    dag = dagbag.dags["loopline_monitor"]
    alert = dag.get_task("alert")
    assert alert.upstream_task_ids == {"monitor", "monitor_live", "request_retrain"}
    assert alert.trigger_rule == "all_done"
    assert dag.get_task("request_retrain").upstream_task_ids == {"monitor"}
