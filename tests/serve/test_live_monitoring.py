"""Live-traffic monitoring: requests sent through a real ``loopline serve`` and captured in its store are
compared with the champion's reference profile; a shifted stream alerts (through the real notifier), a stable
one stays quiet, an empty window says so, and labels that join add the realised AUC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from serve_support import Server, records_of


def _send(server: Server, frame: pd.DataFrame) -> int:
    """Every row of ``frame`` (without the target) through POST /predict, 100 records per request."""
    records = records_of(frame.drop(columns=["defaulted"]))
    with requests.Session() as session:
        for start in range(0, len(records), 100):
            answer = server.predict(records[start : start + 100], session)
            assert answer.status_code == 200, answer.text
    return len(records)


def _window(home: Any, month: int) -> tuple[str, Any, Any]:
    from ml.serve.monitoring import live_windows

    ((name, start, end),) = live_windows(home.config, [home.scenario.batch_key(month)])
    return name, start, end


@pytest.mark.e2e
def test_shifted_live_stream_alerts_and_a_stable_one_stays_quiet(
    champion_home, start_server, tmp_path
) -> None:
    from loopline_airflow.notifiers import DriftAlertNotifier
    from ml.alerts import for_result
    from ml.serve import labels
    from ml.serve.monitoring import monitor_live_window
    from ml.serve.store import migrate

    home = champion_home
    store = f"sqlite:///{tmp_path / 'live.db'}"
    server = start_server(home, store_url=store, flush_interval=0.05)
    server.wait_ready()
    stable = pd.read_csv(home.paths.landing / "loans" / f"{home.scenario.batch_key(4)}.csv")
    shifted = pd.read_csv(home.paths.landing / "loans" / f"{home.scenario.batch_key(8)}.csv")
    assert home.scenario.is_shifted(8) and not home.scenario.is_shifted(4)
    sent = _send(server, stable) + _send(server, shifted)
    server.terminate()  # SIGTERM flushes every capture before the process exits
    migrate(store)

    with home.active():
        quiet = monitor_live_window(home.config, home.paths, *_window(home, 4), store_url=store)
        drifted = monitor_live_window(home.config, home.paths, *_window(home, 8), store_url=store)
        empty = monitor_live_window(home.config, home.paths, *_window(home, 1), store_url=store)
        assert quiet["rows"] + drifted["rows"] == sent
        assert quiet["verdict"] == "no_drift", quiet["drift_reason"]
        assert for_result(home.config, home.paths.alert_log, quiet, "retrain") is None
        assert drifted["verdict"] == "drift" and drifted["severity"] in {"warning", "critical"}
        assert drifted["top_features"] and drifted["scores"] == "served" and not drifted["retrain"]
        assert drifted["report_html"].endswith("live-2025-08.html")
        assert json.loads(Path(drifted["report_json"]).read_text())["context"]["served_versions"] == "1"
        assert drifted["realised_performance"] is None  # no labels yet
        assert (empty["verdict"], empty["rows"]) == ("no_traffic", 0)
        assert "no live traffic in window" in empty["reason"]

        document, grouped = for_result(home.config, home.paths.alert_log, drifted, "retrain")
        assert not grouped and "live traffic 2025-08" in document["title"]
        DriftAlertNotifier(document, grouped=grouped).notify({})
        logged = [json.loads(line) for line in home.paths.alert_log.read_text().splitlines()]
        assert logged[-1]["source"] == "live" and logged[-1]["batch"] == "live-2025-08"

        outcome = shifted[["loan_id", "defaulted"]].assign(label_time="2025-12-01T00:00:00Z")
        loaded = labels.load_frame(home.config, store, outcome, source="test")
        assert loaded["matched"] > 500
        labelled = monitor_live_window(home.config, home.paths, *_window(home, 8), store_url=store)
    realised = labelled["realised_performance"]
    assert realised["rows"] == shifted["loan_id"].nunique()
    assert 0.5 < realised["roc_auc"] <= 1 and realised["ece"] is not None


@pytest.mark.fast
def test_live_windows_follow_the_batches_or_the_last_days(tmp_path) -> None:
    from datetime import UTC, datetime

    from serve_support import config_with

    from ml.config import load_config
    from ml.serve.monitoring import live_windows

    config = load_config(config_with(tmp_path))
    assert live_windows(config, ["2025-02"]) == [
        ("live-2025-02", datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC))
    ]
    days = load_config(config_with(tmp_path, serving={"monitoring": {"window": "days", "window_days": 3}}))
    ((name, start, end),) = live_windows(days, ["2025-02"], "2025-03-10T12:00:00Z")
    assert (name, end - start) == ("live-20250307-20250310", end - datetime(2025, 3, 7, 12, tzinfo=UTC))


@pytest.mark.fast
def test_an_empty_store_is_no_traffic_not_an_error(tmp_path) -> None:
    from serve_support import CONFIG_FILE

    from ml.config import Paths, load_config
    from ml.serve.monitoring import monitor_live_window

    config = load_config(CONFIG_FILE)
    result = monitor_live_window(config, Paths(tmp_path / "home"), "live-2025-02", "2025-02-01", "2025-03-01")
    assert (result["verdict"], result["rows"], result["retrain"]) == ("no_traffic", 0, False)
    assert result["reason"] == "no live traffic in window [2025-02-01 00:00, 2025-03-01 00:00) UTC"
