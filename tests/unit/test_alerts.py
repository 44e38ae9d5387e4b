"""Drift alerts: the document on-call reads, grouping, the local log, the webhook and the Airflow notifier."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from ml import alerts

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]
TOP = [{"column": "credit_score", "psi": 0.66, "severity": "critical"}, {"column": "channel", "psi": 0.3}]


def _alert(batch: str = "2025-08", features: list[dict] | None = None) -> dict:
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
    text = _alert()["text"]
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
    first = _alert("2025-08")
    assert not alerts.is_repeat(log, first, [])
    alerts.append_to_log(log, first)
    assert alerts.is_repeat(log, _alert("2025-09"), ["2025-08"])
    assert not alerts.is_repeat(log, _alert("2025-09"), ["2025-07"])
    other_features = _alert("2025-09", [{"column": "age", "psi": 0.5}])
    assert not alerts.is_repeat(log, other_features, ["2025-08"])
    assert len(log.read_text().splitlines()) == 1


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
def webhook():
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.received = []
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_webhook_gets_a_slack_compatible_payload(webhook: str) -> None:
    alerts.send_webhook(webhook, _alert())
    payload = _Receiver.received[0]
    assert payload["text"].startswith("[CRITICAL]")
    assert payload["loopline"]["top_features"][0]["column"] == "credit_score"


def test_notifier_logs_always_and_posts_unless_grouped(webhook: str, tmp_path: Path, monkeypatch) -> None:
    raw = yaml.safe_load((ROOT / "loopline.yaml").read_text())
    raw["alerts"] = {"webhook_url": webhook}
    raw["dataset"]["expectation_suite"] = str(ROOT / "expectations" / "loans.json")
    config_file = tmp_path / "loopline.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("LOOPLINE_CONFIG", str(config_file))
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path / "home"))
    from loopline_airflow.notifiers import DriftAlertNotifier

    DriftAlertNotifier(_alert()).notify({})
    DriftAlertNotifier(_alert("2025-09"), grouped=True).notify({})
    logged = [
        json.loads(line) for line in (tmp_path / "home" / "state" / "alerts.jsonl").read_text().splitlines()
    ]
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
        DriftAlertNotifier(_alert()).notify({})
    assert "2025-08" in (tmp_path / "home" / "state" / "alerts.jsonl").read_text()
