"""Drift alerts: the document on-call reads, grouping, the local log, the webhook and the Airflow notifier."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from ml import alerts

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]
TOP = [{"column": "credit_score", "psi": 0.66, "severity": "critical"}, {"column": "channel", "psi": 0.3}]


def make_alert(batch: str = "2025-08", features: list[dict] | None = None) -> dict:
    """A critical drift alert on the demo dataset, as the monitor DAG builds it."""
    return alerts.build_alert(
        dataset="loans",
        batch=batch,
        severity="critical",
        top_features=features or TOP,
        score_psi=0.77,
        action="retrain requested (asset loopline_retrain_request -> loopline_train)",
        report="/x/reports/drift/loans/2025-08.html",
        runbook="docs/runbook.md",
        model="loans_default_classifier",
        champion_version="1",
    )


def test_alert_says_what_drifted_how_much_what_was_done_and_what_next() -> None:
    text = make_alert()["text"]
    for expected in (
        "[CRITICAL] drift in loans batch 2025-08",
        "credit_score (PSI 0.66)",
        "retrain requested",
        "2025-08.html",
        "runbook.md#responding-to-a-drift-alert",
        "v1",
    ):
        assert expected in text


def test_repeat_within_the_cooldown_is_grouped(tmp_path: Path) -> None:
    log = tmp_path / "alerts.jsonl"
    first = make_alert("2025-08")
    assert not alerts.is_repeat(log, first, [])
    alerts.append_to_log(log, first)
    assert alerts.is_repeat(log, make_alert("2025-09"), ["2025-08"])
    assert not alerts.is_repeat(log, make_alert("2025-09"), ["2025-07"])
    other_features = make_alert("2025-09", [{"column": "age", "psi": 0.5}])
    assert not alerts.is_repeat(log, other_features, ["2025-08"])
    assert len(log.read_text().splitlines()) == 1


def use_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alerts_section: dict) -> Path:
    """Point LOOPLINE_CONFIG at the demo config with this ``alerts`` section; returns the alert log's path."""
    raw = yaml.safe_load((ROOT / "loopline.yaml").read_text())
    raw["alerts"] = alerts_section
    raw["dataset"]["expectation_suite"] = str(ROOT / "expectations" / "loans.json")
    config_file = tmp_path / "loopline.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("LOOPLINE_CONFIG", str(config_file))
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "state" / "alerts.jsonl"


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook(http_server: Callable[[type[BaseHTTPRequestHandler]], str]) -> str:
    _Receiver.received = []
    return f"{http_server(_Receiver)}/hook"


def test_webhook_gets_a_slack_compatible_payload(webhook: str) -> None:
    alerts.send_webhook(webhook, make_alert())
    payload = _Receiver.received[0]
    assert payload["text"].startswith("[CRITICAL]")
    assert payload["loopline"]["top_features"][0]["column"] == "credit_score"


def test_notifier_logs_always_and_posts_unless_grouped(webhook: str, tmp_path: Path, monkeypatch) -> None:
    alert_log = use_config(tmp_path, monkeypatch, {"webhook_url": webhook})
    from loopline_airflow.notifiers import DriftAlertNotifier

    DriftAlertNotifier(make_alert()).notify({})
    DriftAlertNotifier(make_alert("2025-09"), grouped=True).notify({})
    logged = [json.loads(line) for line in alert_log.read_text().splitlines()]
    assert [(a["batch"], a["grouped"]) for a in logged] == [("2025-08", False), ("2025-09", True)]
    assert len(_Receiver.received) == 1


def test_unreachable_webhook_fails_loudly_but_the_log_keeps_the_alert(tmp_path: Path, monkeypatch) -> None:
    raw = yaml.safe_load((ROOT / "loopline.yaml").read_text())
    raw["alerts"] = {"webhook_url": "http://127.0.0.1:9/unreachable"}
    config_file = tmp_path / "loopline.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("LOOPLINE_CONFIG", str(config_file))
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path / "home"))
    from loopline_airflow.notifiers import DriftAlertNotifier

    with pytest.raises(RuntimeError, match="not delivered"):
        DriftAlertNotifier(make_alert()).notify({})
    assert "2025-08" in (tmp_path / "home" / "state" / "alerts.jsonl").read_text()


def test_alert_for_a_monitor_result_says_what_the_policy_did(config, paths) -> None:
    result = {
        "batch": "2025-08",
        "verdict": "drift",
        "severity": "critical",
        "top_features": TOP,
        "score_psi": 0.77,
        "retrain": True,
        "reason": "retrain requested: critical drift in batch 2025-08",
        "report_html": "/x/2025-08.html",
        "champion_version": "3",
        "recent_batches": ["2025-07"],
    }
    requested, grouped = alerts.for_result(config, paths.alert_log, result, "retrain requested (asset x)")
    assert requested["action"] == "retrain requested (asset x)" and not grouped
    assert requested["text"].startswith("[CRITICAL] drift in loans batch 2025-08\n")
    assert "loans_default_classifier v3" in requested["text"]
    alerts.append_to_log(paths.alert_log, {**requested, "batch": "2025-07"})
    cooled = {**result, "retrain": False, "reason": "no retrain: cooldown (2 batches)"}
    blocked, grouped = alerts.for_result(config, paths.alert_log, cooled, "unused")
    assert blocked["action"] == "no retrain: cooldown (2 batches)" and grouped
    live = {**result, "batch": "live-2025-08", "source": "live"}
    document, _ = alerts.for_result(config, paths.alert_log, live, "unused")
    assert (
        document["title"] == "[CRITICAL] drift in loans live traffic 2025-08" and document["source"] == "live"
    )
    assert document["text"].startswith(document["title"] + "\n")
    assert alerts.for_result(config, paths.alert_log, {**result, "verdict": "no_drift"}, "unused") is None


def test_the_action_line_says_what_this_monitor_run_did() -> None:
    runs = "http://airflow.internal:8080/dags/loopline_train/runs"
    request = {"batch": "2025-08", "requested_at": "2025-08-03T10:00:00+00:00", "reason": "critical drift"}
    wanted = {
        "batch": "2025-08",
        "retrain": True,
        "reason": "retrain requested: critical drift in batch 2025-08",
    }
    assert alerts.retrain_action(wanted, request, runs) == (
        "retrain requested at 2025-08-03T10:00:00+00:00: see http://airflow.internal:8080/dags/loopline_train/runs"
    )
    older = alerts.retrain_action({**wanted, "batch": "2025-07"}, request, runs)
    assert older.startswith("retrain requested at 2025-08-03T10:00:00+00:00 for batch 2025-08,")
    assert older.endswith(f"see {runs}")
    assert alerts.retrain_action(wanted, None, runs).startswith("retrain wanted, but no request was emitted")
    for reason in (
        "no retrain: cooldown (2 batches) after the request for batch 2025-07",
        "no retrain: automatic retraining is paused (loopline retrain resume)",
        "live traffic drift: alert only (retraining follows the lake batches)",
    ):
        assert (
            alerts.retrain_action({"batch": "2025-08", "retrain": False, "reason": reason}, None, runs)
            == reason
        )
