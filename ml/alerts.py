"""Drift alerts: what on-call reads. Built here, delivered by the Airflow notifiers in ``plugins/``.

An alert names the dataset, the batch, the severity, the top drifted features with their scores, the action
the platform took, where the report is and which runbook section applies. Every alert is appended to
``$LOOPLINE_HOME/state/alerts.jsonl``; a repeat of the same condition within the cooldown is marked grouped.
"""

from __future__ import annotations

import json
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import requests

from ml.config import AlertsConfig


def build_alert(
    *,
    dataset: str,
    batch: str,
    severity: str,
    top_features: list[dict[str, Any]],
    score_psi: float | None,
    action: str,
    report: str,
    runbook: str,
    model: str,
    champion_version: str | None,
) -> dict[str, Any]:
    """The alert document: the same fields go to the log, the webhook and the email."""
    features = ", ".join(f"{f['column']} (PSI {f['psi']:.2f})" for f in top_features) or "none"
    title = f"[{severity.upper()}] drift in {dataset} batch {batch}"
    text = (
        f"{title}\nTop drifted features: {features}\n"
        + (f"Prediction score PSI: {score_psi:.2f}\n" if score_psi is not None else "")
        + f"Champion: {model} v{champion_version}\nAction taken: {action}\nReport: {report}\n"
        f"Runbook: {runbook}#responding-to-a-drift-alert"
    )
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": dataset,
        "batch": batch,
        "severity": severity,
        "top_features": top_features,
        "score_psi": score_psi,
        "action": action,
        "report": report,
        "runbook": f"{runbook}#responding-to-a-drift-alert",
        "model": model,
        "champion_version": champion_version,
        "title": title,
        "text": text,
    }


def is_repeat(alert_log: Path, alert: dict[str, Any], recent_batches: list[str]) -> bool:
    """True when an alert of the same severity and features was already sent for one of ``recent_batches``."""
    if not alert_log.is_file():
        return False
    features = {f["column"] for f in alert["top_features"]}
    for line in alert_log.read_text().splitlines():
        past = json.loads(line)
        if (
            past.get("dataset") == alert["dataset"]
            and past.get("batch") in recent_batches
            and past.get("severity") == alert["severity"]
            and {f["column"] for f in past.get("top_features", [])} == features
        ):
            return True
    return False


def append_to_log(alert_log: Path, alert: dict[str, Any]) -> None:
    """Append one alert as a JSON line (the log is never rewritten)."""
    alert_log.parent.mkdir(parents=True, exist_ok=True)
    with alert_log.open("a") as handle:
        handle.write(json.dumps(alert, default=str) + "\n")


def send_webhook(url: str, alert: dict[str, Any], timeout: float = 10.0) -> None:
    """POST the alert as JSON; ``text`` makes it Slack-compatible. Raises on a non-2xx answer."""
    response = requests.post(url, json={"text": alert["text"], "loopline": alert}, timeout=timeout)
    response.raise_for_status()


def send_email(config: AlertsConfig, alert: dict[str, Any]) -> None:
    """Send the alert over SMTP to ``alerts.email_to``."""
    if not config.smtp_host or not config.email_to:
        return
    message = EmailMessage()
    message["Subject"] = alert["title"]
    message["From"] = config.email_from
    message["To"] = ", ".join(config.email_to)
    message.set_content(alert["text"])
    with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)
