"""The replay walks the demo history with the same functions the DAGs call, and shows the loop's value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml import demo_data, steps
from ml.cli import main
from ml.config import Paths
from ml.demo_data import Scenario

ROOT = Path(__file__).resolve().parents[2]


def test_replay_beats_the_static_model_after_the_drift(config, paths, tmp_path) -> None:
    scenario = Scenario(months=10, rows_per_month=2500, shift_from_month=6, incident_months=(4,))
    demo_data.write_landing(scenario, paths.landing / "loans")
    report_file, plot_file = tmp_path / "replay.json", tmp_path / "replay.png"
    code = main(
        ["replay", "--json", str(report_file), "--plot", str(plot_file), "--home", str(tmp_path / "r")]
    )
    assert code == 0
    report = json.loads(report_file.read_text())
    rows = {row["batch"]: row for row in report["batches"]}
    assert not rows[scenario.batch_key(4)]["accepted"]
    assert rows[scenario.batch_key(5)]["verdict"] == "no_drift"
    shifted = rows[scenario.batch_key(6)]
    assert shifted["alert"] and shifted["retrain"]
    after = [rows[scenario.batch_key(m)] for m in range(7, 11)]
    loop = sum(r["champion_roc_auc"] for r in after) / len(after)
    static = sum(r["static_roc_auc"] for r in after) / len(after)
    assert loop > static + 0.02
    assert plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The replay never touches the real landing zone or lake.
    assert sorted(p.name for p in (paths.landing / "loans").iterdir()) == [
        f"{scenario.batch_key(m)}.csv" for m in range(1, 11)
    ]
    assert not paths.lake.exists()


def test_replay_of_a_dataset_batched_by_rows_without_time_column(paths, tmp_path) -> None:
    scenario = Scenario(
        months=8, rows_per_month=2000, shift_from_month=6, incident_months=(4,), duplicate_rate=0.0
    )
    config_file = demo_data.write_row_stream_dataset(
        scenario, paths.landing, tmp_path / "config", ROOT / "loopline.yaml"
    )
    report_file, replay_home = tmp_path / "replay.json", tmp_path / "r"
    argv = ["--config", str(config_file), "replay", "--json", str(report_file), "--home", str(replay_home)]
    assert main(argv) == 0
    report = json.loads(report_file.read_text())
    assert report["batching"] == "rows"
    batches = {row["batch"]: row for row in report["batches"]}
    assert list(batches) == [f"{index:06d}" for index in range(8)]

    incident = batches["000003"]  # month 4: nulls and impossible values, one column empty
    assert not incident["accepted"] and incident["rows"] is None
    assert incident["note"].startswith("quarantined by the quality gate:")
    assert all(column in incident["note"] for column in ("credit_score", "age", "loan_amount"))
    accepted = [row for row in batches.values() if row["accepted"]]
    assert all(row["rows"] == 2000 for row in accepted)
    assert batches["000002"]["retrain_outcome"].startswith("v1 promoted")

    scored = [batches[key] for key in ("000004", "000005", "000006", "000007")]
    for row in scored:
        assert row["verdict"] in ("no_drift", "drift") and row["severity"] is not None
        assert 0.5 < row["champion_roc_auc"] < 1 and 0.5 < row["static_roc_auc"] < 1
        assert row["drift_share"] is not None and row["score_psi"] is not None
        assert Path(row["report"]).is_file() and set(row["seconds"]) >= {"ingest", "score", "monitor"}
    quiet, shifted = batches["000004"], batches["000005"]
    assert (quiet["verdict"], quiet["alert"], quiet["retrain"]) == ("no_drift", False, False)
    # the champion still is the first model (the score step's AUC is binned: ml.evaluate.histogram_roc_auc)
    assert quiet["champion_roc_auc"] == pytest.approx(quiet["static_roc_auc"], abs=1e-4)
    assert shifted["verdict"] == "drift" and shifted["severity"] == "critical" and shifted["alert"]
    assert {"credit_score", "interest_rate"} <= set(shifted["top_features"])
    assert shifted["retrain"] and shifted["retrain_outcome"].startswith("v2 promoted")
    assert shifted["seconds"]["retrain"] > 0
    for row in scored[2:]:
        assert row["champion_version"] == "2" and row["champion_roc_auc"] > row["static_roc_auc"]

    summary = report["summary"]
    assert summary["batches"] == 8 and summary["quarantined"] == 1 and summary["promotions"] == 2
    assert summary["alerts"] == sum(row["alert"] for row in batches.values())
    alert_log = replay_home / "state" / "alerts.jsonl"
    assert len(alert_log.read_text().splitlines()) == summary["alerts"]
    assert report["timing"]["rows_accepted"] == 7 * 2000
    # Each row batch holds exactly the rows of its month, in order.
    lake = steps.lake_of(Paths(replay_home))
    expected_ids = demo_data.generate_month(scenario, 6)[demo_data.ID_COLUMN].tolist()
    assert lake.read("loans", ["000005"])[demo_data.ID_COLUMN].tolist() == expected_ids
