"""The replay walks the demo history with the same functions the DAGs call, and shows the loop's value."""

from __future__ import annotations

import json

from ml import demo_data
from ml.cli import main
from ml.demo_data import Scenario


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
