"""Human approval of a promotion through Airflow's HITL ApprovalOperator, answered over the REST API; the runs
are requested with ``loopline retrain --reason`` against the real Airflow (its run note, conf and MLflow tag)."""

from __future__ import annotations

import contextlib
import getpass
import io
import re
import time
from pathlib import Path

import pytest
import yaml

from ml import cli, demo_data, registry
from ml.airflow_client import AirflowClient
from ml.stack import Stack, free_port, start_airflow

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):

    from ml.config import Paths, load_config

    home = tmp_path_factory.mktemp("approval")
    raw = yaml.safe_load((ROOT / "loopline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(ROOT / "expectations" / "loans.json")
    raw["promotion"] = {"require_approval": True, "approval_timeout_hours": 1}
    # The second review retrains the same window, so the challenger ties the champion; the default gate (the
    # bootstrap's 5th percentile must be above 0) rightly rejects a tie, and this test is about the review, not
    # the gate: let a tie through so the approval is asked.
    raw["gate"] = {**raw.get("gate", {}), "bootstrap_lower_bound": -0.01}
    config_file = home / "loopline.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    restore = pytest.MonkeyPatch()  # undone after the module: later tests get their own homes
    restore.setenv("LOOPLINE_HOME", str(home / "state"))
    restore.setenv("LOOPLINE_CONFIG", str(config_file))
    config, paths = load_config(), Paths.from_env()
    scenario = demo_data.Scenario(months=3, rows_per_month=2500, incident_months=())
    demo_data.write_landing(scenario, paths.landing / "loans")
    registry.connect(config, paths)
    running = Stack(paths)
    endpoints = start_airflow(running, config_file, free_port(28190))
    try:
        client = AirflowClient(endpoints.airflow_url, endpoints.username, endpoints.password)
        client.wait_for_dags(["loopline_ingest", "loopline_train"])
        for dag_id in ("loopline_ingest", "loopline_train", "loopline_monitor", "loopline_score"):
            client.unpause(dag_id)
        for month in (1, 2, 3):
            run_id = client.trigger("loopline_ingest", {"batch": scenario.batch_key(month)})
            assert client.wait_run("loopline_ingest", run_id)["state"] == "success"
        yield client, config
    finally:
        running.stop()
        restore.undo()


def _retrain(client: AirflowClient, reason: str) -> tuple[str, str]:
    """``loopline retrain --reason`` against the stack's Airflow (its password found under LOOPLINE_HOME):
    the run id it printed, and all it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["retrain", "--reason", reason, "--airflow-url", client.base_url]) == 0
    found = re.search(r"loopline_train run (\S+) requested: (\S+)", printed.getvalue())
    assert found, printed.getvalue()
    assert found.group(2) == f"{client.base_url}/dags/loopline_train/runs/{found.group(1)}"
    return found.group(1), printed.getvalue()


def _review(client: AirflowClient, option: str, reason: str) -> tuple[str, dict]:
    run_id, printed = _retrain(client, reason)
    assert "paused" not in printed
    requested = client.run("loopline_train", run_id)
    note = f"loopline retrain by {getpass.getuser()}: {reason}"
    assert requested["note"] == note and requested["conf"] == {"reason": note}
    client.wait_task_state("loopline_train", run_id, "approval", {"awaiting_input"}, timeout=400)
    pending = [p for p in client.pending_reviews() if p["task_instance"]["dag_run_id"] == run_id]
    assert len(pending) == 1
    assert "Gate report" in pending[0]["body"] and "min_roc_auc" in pending[0]["body"]
    # Answering within a second of the pause races Airflow 3.3's own bookkeeping (the executor's late
    # "success" event for the paused attempt marks the resumed task failed); a human never answers that fast.
    time.sleep(8)
    client.answer_review("loopline_train", run_id, "approval", option)
    return run_id, client.wait_run("loopline_train", run_id, timeout=300)


def test_approve_promotes_then_reject_keeps_the_champion(stack) -> None:
    import mlflow

    client, config = stack
    run_id, run = _review(client, "Approve", "labels of 2025-03 corrected")
    assert run["state"] == "success"
    assert registry.champion(config).version == "1"
    moves = registry.champion_moves(config)
    assert "approved by admin" in moves[-1]["by"]
    trained = client.xcom("loopline_train", run_id, "train")
    run_tags = mlflow.MlflowClient().get_run(trained["run_id"]).data.tags
    assert (run_tags["loopline.trigger"], run_tags["loopline.reason"]) == (
        "manual",
        f"loopline retrain by {getpass.getuser()}: labels of 2025-03 corrected",
    )
    link = client.extra_links("loopline_train", run_id, "train")["MLflow run"]
    assert link and link.endswith(f"/runs/{trained['run_id']}") and link.startswith(config.registry.ui_url)

    run_id, run = _review(client, "Reject", "try a deeper model")
    assert run["state"] == "success"
    states = {task: ti["state"] for task, ti in client.task_instances("loopline_train", run_id).items()}
    assert states["promote"] == "skipped" and states["record_review"] == "success"
    assert registry.champion(config).version == "1"
    tags = {v["version"]: v["tags"] for v in registry.versions(config)}
    assert tags["2"]["review"] == "rejected" and tags["2"]["gate"] == "passed"
    assert len(registry.champion_moves(config)) == 1


def test_retrain_of_a_dag_paused_in_airflow_says_when_it_starts(stack) -> None:
    client, _ = stack
    client.pause("loopline_train")  # the module's last test: its run stays queued until the stack stops
    run_id, printed = _retrain(client, "after the pause")
    assert "the DAG loopline_train is paused in Airflow: the run starts once it is unpaused" in printed
    assert client.run("loopline_train", run_id)["state"] == "queued"
