"""The whole loop through the real Airflow scheduler (LocalExecutor, SQLite), driven only over the REST API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ml import registry
from ml.demo import DemoOptions, run_demo
from ml.steps import lake_of

pytestmark = pytest.mark.e2e
OPTIONS = DemoOptions(
    months=9, rows_per_month=2500, shift_from_month=7, incident_month=5, bootstrap_months=3, port=28180
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from ml.config import Paths, load_config

    home = tmp_path_factory.mktemp("loop")
    root = Path(__file__).resolve().parents[2]
    with pytest.MonkeyPatch.context() as env:  # undone after the module: later tests get their own homes
        env.setenv("LOOPLINE_HOME", str(home))
        env.setenv("LOOPLINE_CONFIG", str(root / "loopline.yaml"))
        config, paths = load_config(), Paths.from_env()
        lines: list[str] = []
        summary = run_demo(config, paths, OPTIONS, echo=lines.append)
        print("\n".join(lines))
        yield {"summary": summary, "config": config, "paths": paths}


def _timeline(demo: dict) -> dict[str, dict]:
    return {entry["batch"]: entry for entry in demo["summary"]["timeline"]}


def test_first_champion_exists_under_the_alias(demo: dict) -> None:
    registry.connect(demo["config"], demo["paths"])
    assert registry.champion(demo["config"]) is not None
    first = demo["summary"]["champion_history"][0]
    assert first["from"] is None and first["to"] == "1"
    assert first["by"].startswith("airflow:loopline_train/manual__")


def test_stable_months_raise_no_alert(demo: dict) -> None:
    timeline = _timeline(demo)
    for batch in ("2025-04", "2025-06"):
        assert timeline[batch]["monitor"]["verdict"] == "no_drift"
    alerted = {alert["batch"] for alert in demo["summary"]["alerts"]}
    assert not alerted & {"2025-01", "2025-02", "2025-03", "2025-04", "2025-06"}


def test_shifted_month_alerts_and_its_asset_event_creates_a_train_run(demo: dict) -> None:
    timeline = _timeline(demo)
    assert timeline["2025-07"]["monitor"]["verdict"] == "drift"
    assert "2025-07" in {alert["batch"] for alert in demo["summary"]["alerts"]}
    alert_log = demo["paths"].alert_log.read_text()
    assert "2025-07" in alert_log and "retrain requested" in alert_log
    drift_runs = [
        run
        for run in demo["summary"]["dag_runs"]
        if run["dag_id"] == "loopline_train"
        and run["triggered_by"] == "asset event from loopline_monitor (2025-07)"
    ]
    assert len(drift_runs) == 1 and drift_runs[0]["state"] == "success"
    assert timeline["2025-07"]["train"]["run_id"] == drift_runs[0]["run_id"]


def test_cooldown_prevents_a_retrain_storm(demo: dict) -> None:
    train_runs = [run for run in demo["summary"]["dag_runs"] if run["dag_id"] == "loopline_train"]
    assert (
        len(train_runs) == 2
    )  # the first champion (manual) and one drift request; 2025-08/09 are in cooldown


def test_champion_moves_only_when_the_challenger_is_better(demo: dict) -> None:
    config = demo["config"]
    registry.connect(config, demo["paths"])
    tags = {v["version"]: v["tags"] for v in registry.versions(config)}
    promoted = {move["to"] for move in demo["summary"]["champion_history"]}
    for version, version_tags in tags.items():
        assert (version_tags.get("gate") == "passed") == (version in promoted) or version_tags.get(
            "promotion"
        )
        if version in promoted and version != "1":
            assert version_tags["rule.min_improvement"] == "pass"
    for entry in demo["summary"]["timeline"]:
        train = entry.get("train")
        if train and not train["promoted"]:
            assert registry.champion(config).version != train["version"]


def test_incident_batch_fails_the_gate_and_changes_nothing(demo: dict) -> None:
    timeline = _timeline(demo)
    assert timeline["2025-05"]["ingest"] == "failed"
    assert demo["summary"]["batches_quarantined"] == ["2025-05"]
    lake = lake_of(demo["paths"])
    assert "2025-05" not in lake.batches("loans")
    assert (demo["paths"].quarantine / "loans" / "2025-05" / "reason.json").is_file()
    # No monitor, score or train run was caused by the incident batch.
    assert not any("(2025-05)" in run["triggered_by"] for run in demo["summary"]["dag_runs"])
    # The champion before and after the incident is the same v1.
    arrival = {row["batch"]: row["champion_at_arrival"] for row in demo["summary"]["champion_metrics"]}
    assert arrival["2025-04"] == arrival["2025-06"] == "1"


def test_summary_is_written(demo: dict) -> None:
    summary_file = demo["paths"].demo / "summary.json"
    assert summary_file.is_file()
    metrics = demo["summary"]["champion_metrics"]
    assert {row["batch"] for row in metrics} >= {"2025-04", "2025-07"}
