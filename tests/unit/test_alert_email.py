"""Drift alerts by e-mail, delivered through the DAG's notifier to a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from html import unescape
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from test_alerts import make_alert, use_config

from ml import alerts

pytestmark = pytest.mark.fast
REFUSED = "nobody@example.org"
TOP = [
    {
        "column": "credit_score",
        "psi": 0.6612,
        "severity": "critical",
        "p_value": 1.2e-40,
        "new_categories": [],
    },
    {
        "column": "channel",
        "psi": 0.3104,
        "severity": "warning",
        "p_value": 3.4e-05,
        "new_categories": ["crypto"],
    },
    {
        "column": "interest_rate",
        "psi": 0.1207,
        "severity": "warning",
        "p_value": 0.0021,
        "new_categories": [],
    },
]


@dataclass
class Inbox:
    """What the SMTP server received: one (envelope sender, envelope recipients, message) per mail."""

    port: int
    mails: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options) -> str:
        if address == REFUSED:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    """A real SMTP server on a free port of 127.0.0.1, for this test only."""
    received = Inbox(_free_port())
    controller = Controller(received, hostname="127.0.0.1", port=received.port)
    controller.start()
    yield received
    controller.stop()


def _email_config(port: int, to: list[str], **extra: object) -> dict:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "email_to": to,
        "email_from": "loopline@ops",
        **extra,
    }


def _dag_run():
    """The DagRun the Airflow task runner puts in the notifier's context."""
    from airflow.sdk.api.datamodels._generated import DagRun, DagRunState, DagRunType

    return DagRun(
        dag_id="loopline_monitor",
        run_id="asset_triggered__2025-09-01T00:00:00+00:00",
        logical_date=None,
        data_interval_start=None,
        data_interval_end=None,
        run_after=datetime(2025, 9, 1, tzinfo=UTC),
        start_date=None,
        end_date=None,
        run_type=DagRunType.ASSET_TRIGGERED,
        state=DagRunState.RUNNING,
        consumed_asset_events=[],
        partition_key=None,
    )


def _notify(alert: dict, grouped: bool = False) -> None:
    """What the monitor DAG's ``alert`` task does with one alert document."""
    from loopline_airflow.notifiers import DriftAlertNotifier

    DriftAlertNotifier(alert, grouped=grouped).notify({"dag_run": _dag_run()})


def _logged(alert_log: Path) -> list[dict]:
    return [json.loads(line) for line in alert_log.read_text().splitlines()]


def test_drift_alert_email_says_what_on_call_needs(inbox: Inbox, tmp_path: Path, monkeypatch) -> None:
    to = ["oncall@example.org", "ml-team@example.org"]
    alert_log = use_config(tmp_path, monkeypatch, _email_config(inbox.port, to))
    _notify(make_alert(features=TOP))

    [(sender, recipients, message)] = inbox.mails
    assert (sender, recipients) == ("loopline@ops", to)
    assert message["From"] == "loopline@ops"
    assert message["To"] == "oncall@example.org, ml-team@example.org"
    assert message["Subject"] == "[CRITICAL] drift in loans batch 2025-08"
    assert (message["X-Loopline-Dataset"], message["X-Loopline-Batch"]) == ("loans", "2025-08")
    assert message["X-Loopline-Severity"] == "critical" and message["Date"] and message["Message-ID"]
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for body in (text, unescape(html)):
        for expected in (
            "loans_default_classifier v1",
            "retrain requested (asset loopline_retrain_request -> loopline_train)",
            "/x/reports/drift/loans/2025-08.html",
            "docs/runbook.md#responding-to-a-drift-alert",
            "loopline_monitor/asset_triggered__2025-09-01T00:00:00+00:00",
            "loopline alerts ack ",
            "loopline report --batch 2025-08",
            "0.77",
            "1.2e-40",
            "crypto",
        ):
            assert expected in body, (expected, body)
    lines = text.splitlines()
    assert [line.split()[:3] for line in lines if line.startswith("  ") and "0." in line] == [
        ["credit_score", "0.66", "critical"],
        ["channel", "0.31", "warning"],
        ["interest_rate", "0.12", "warning"],
    ]
    assert 'href="file:///x/reports/drift/loans/2025-08.html"' in html
    assert "<td>credit_score</td><td>0.66</td><td>critical</td>" in html
    [entry] = _logged(alert_log)
    assert entry["batch"] == "2025-08" and entry["grouped"] is False
    assert entry["airflow_run"].startswith("loopline_monitor/")
    assert f"Acknowledge: loopline alerts ack {entry['id']}" in text


def test_smtp_server_down_keeps_the_alert_in_the_log_and_says_why(tmp_path: Path, monkeypatch) -> None:
    port = _free_port()  # nothing listens there
    alert_log = use_config(tmp_path, monkeypatch, _email_config(port, ["oncall@example.org"]))
    with pytest.raises(alerts.AlertNotDelivered) as failure:
        _notify(make_alert(features=TOP))
    message = str(failure.value)
    assert f"written to the local log {alert_log}" in message
    assert (
        f"email to oncall@example.org: SMTP server 127.0.0.1:{port} failed: ConnectionRefusedError" in message
    )
    assert "check alerts.smtp_host, alerts.smtp_port" in message
    [entry] = _logged(alert_log)
    assert entry["title"] == "[CRITICAL] drift in loans batch 2025-08" and entry["top_features"] == TOP


def test_refused_recipient_is_named_and_the_others_still_get_it(
    inbox: Inbox, tmp_path: Path, monkeypatch
) -> None:
    use_config(tmp_path, monkeypatch, _email_config(inbox.port, ["oncall@example.org", REFUSED]))
    with pytest.raises(alerts.AlertNotDelivered, match=rf"refused {REFUSED} \(550 5\.1\.1 no such mailbox\)"):
        _notify(make_alert(features=TOP))
    assert [recipients for _, recipients, _ in inbox.mails] == [["oncall@example.org"]]


def test_unreachable_webhook_does_not_stop_the_email(inbox: Inbox, tmp_path: Path, monkeypatch) -> None:
    webhook = "http://127.0.0.1:9/unreachable"
    section = _email_config(inbox.port, ["oncall@example.org"], webhook_url=webhook)
    alert_log = use_config(tmp_path, monkeypatch, section)
    with pytest.raises(alerts.AlertNotDelivered) as failure:
        _notify(make_alert(features=TOP))
    assert f"webhook {webhook}" in str(failure.value) and "email to" not in str(failure.value)
    assert [m["Subject"] for _, _, m in inbox.mails] == ["[CRITICAL] drift in loans batch 2025-08"]
    assert len(_logged(alert_log)) == 1


def test_grouped_alert_is_logged_but_not_mailed(inbox: Inbox, tmp_path: Path, monkeypatch) -> None:
    alert_log = use_config(tmp_path, monkeypatch, _email_config(inbox.port, ["oncall@example.org"]))
    _notify(make_alert("2025-08", TOP))
    _notify(make_alert("2025-09", TOP), grouped=True)
    assert [m["X-Loopline-Batch"] for _, _, m in inbox.mails] == ["2025-08"]
    assert [(e["batch"], e["grouped"]) for e in _logged(alert_log)] == [("2025-08", False), ("2025-09", True)]


@pytest.fixture
def login_inbox() -> Iterator[Inbox]:
    """A real SMTP server that only takes mail after AUTH as ``alerts`` / ``s3cret``."""

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
        def text(value: bytes | str) -> str:
            return value.decode() if isinstance(value, bytes) else value

        ok = isinstance(auth_data, LoginPassword) and (text(auth_data.login), text(auth_data.password)) == (
            "alerts",
            "s3cret",
        )
        return AuthResult(success=ok, handled=False)  # the server answers 235 or 535 itself

    received = Inbox(_free_port())
    controller = Controller(
        received,
        hostname="127.0.0.1",
        port=received.port,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    yield received
    controller.stop()


def test_smtp_login_with_the_password_from_the_environment(
    login_inbox: Inbox, tmp_path: Path, monkeypatch
) -> None:
    section = _email_config(login_inbox.port, ["oncall@example.org"], smtp_user="alerts")
    alert_log = use_config(tmp_path, monkeypatch, section)
    monkeypatch.delenv("LOOPLINE_SMTP_PASSWORD", raising=False)
    with pytest.raises(alerts.AlertNotDelivered, match=r"\$LOOPLINE_SMTP_PASSWORD is not set"):
        _notify(make_alert(features=TOP))
    monkeypatch.setenv("LOOPLINE_SMTP_PASSWORD", "wrong")
    with pytest.raises(alerts.AlertNotDelivered, match="SMTPAuthenticationError"):
        _notify(make_alert(features=TOP))
    assert login_inbox.mails == [] and len(_logged(alert_log)) == 2
    monkeypatch.setenv("LOOPLINE_SMTP_PASSWORD", "s3cret")
    _notify(make_alert(features=TOP))
    assert [m["Subject"] for _, _, m in login_inbox.mails] == ["[CRITICAL] drift in loans batch 2025-08"]
