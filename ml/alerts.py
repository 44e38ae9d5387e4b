"""Drift alerts: what on-call reads. Built here, delivered by the Airflow notifiers in ``plugins/``.

An alert names the dataset, the batch, the severity, the top drifted features with their scores, a drop of the
champion's AUC when it reached warning or critical, the action the platform took, where the report is and which
runbook section applies. Every alert is appended to ``$LOOPLINE_HOME/state/alerts.jsonl``; a repeat of the same
condition within the cooldown is marked grouped. On-call acknowledges an alert by its id (``loopline alerts
ack``); acknowledgements are appended to ``alert_acks.jsonl`` beside the alert log. Neither file is ever rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import smtplib
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import partial
from html import escape
from pathlib import Path
from typing import Any

import requests

from ml.config import AlertsConfig, LooplineConfig


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
    performance_drop: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The alert document: the same fields go to the log, the webhook and the email.

    ``performance_drop`` is the monitor result's (``drift.with_performance``); the alert names it when it
    reached warning or critical, and the title says "performance drop" when the data alone did not alert.
    """
    at = datetime.now(UTC).isoformat(timespec="seconds")
    identifier = _derived_id(at, dataset, batch, severity)
    features = ", ".join(f"{f['column']} (PSI {f['psi']:.2f})" for f in top_features) or "none"
    dropped = performance_drop if _alerting(performance_drop) else None
    what = "performance drop" if dropped and not _alerting_level(dropped.get("data_severity")) else "drift"
    title = f"[{severity.upper()}] {what} in {dataset} batch {batch}"
    text = (
        f"{title}\nTop drifted features: {features}\n"
        + (f"Prediction score PSI: {score_psi:.2f}\n" if score_psi is not None else "")
        + (f"Performance: {describe_drop(dropped)}\n" if dropped else "")
        + f"Champion: {model} v{champion_version}\nAction taken: {action}\nReport: {report}\n"
        f"Runbook: {runbook}#responding-to-a-drift-alert\nAcknowledge: loopline alerts ack {identifier}"
    )
    return {
        "id": identifier,
        "at": at,
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
        "performance_drop": dropped,
        "title": title,
        "text": text,
    }


def _alerting_level(severity: str | None) -> bool:
    return severity in ("warning", "critical")


def _alerting(drop: dict[str, Any] | None) -> bool:
    return drop is not None and _alerting_level(drop.get("severity"))


def describe_drop(drop: dict[str, Any]) -> str:
    """One line for a performance drop: which AUC (realised or estimated), its value, the reference, the drop."""
    return f"{drop['summary']} ({drop['severity']})"


def for_result(
    config: LooplineConfig, alert_log: Path, result: dict[str, Any], retrain_action: str
) -> tuple[dict[str, Any], bool] | None:
    """The alert for a monitor result (``steps.monitor_batch``, or a live window with ``source: live``) and
    whether it repeats a recent one (grouped); None when the verdict is not drift.

    ``retrain_action`` is the action line when the policy requested a retrain; otherwise the policy's reason.
    """
    if result.get("verdict") != "drift":
        return None
    document = build_alert(
        dataset=config.dataset.name,
        batch=result["batch"],
        severity=result["severity"],
        top_features=result["top_features"],
        score_psi=result.get("score_psi"),
        action=retrain_action if result.get("retrain") else result["reason"],
        report=result["report_html"],
        runbook=config.alerts.runbook_url,
        model=config.model_name,
        champion_version=result.get("champion_version"),
        performance_drop=result.get("performance_drop"),
    )
    if result.get("source") == "live":
        document["source"] = "live"
        document["title"] = document["title"].replace(" batch live-", " live traffic ")
        document["text"] = document["title"] + document["text"][document["text"].index("\n") :]
    return document, is_repeat(alert_log, document, result.get("recent_batches", []))


def retrain_action(result: dict[str, Any], request: dict[str, Any] | None, train_runs_url: str) -> str:
    """The alert's action line for a monitor result: the retrain request this monitor run emitted, or why none.

    ``request`` is what ``request_retrain`` returned (``policy.record_request``'s entry: ``batch``,
    ``requested_at``), None when it emitted nothing. The loopline_train run that the request's Asset event
    schedules gets its id only after the event, so the line links to that DAG's runs (``train_runs_url``).
    """
    if not result.get("retrain"):
        return str(result["reason"])
    if request is None:
        return "retrain wanted, but no request was emitted (the request_retrain task did not succeed)"
    line = f"retrain requested at {request['requested_at']}"
    if request["batch"] != result["batch"]:
        line += f" for batch {request['batch']}, the newest of this monitor run"
    return f"{line}: see {train_runs_url}"


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
    _append_line(alert_log, alert)


def _append_line(file: Path, document: dict[str, Any]) -> None:
    """Append ``document`` as one JSON line in a single ``O_APPEND`` write, then fsync.

    One write per line: concurrent appenders never interleave, and a crash leaves whole lines only.
    """
    file.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(document, default=str) + "\n").encode()
    descriptor = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(descriptor, line)
        if written != len(line):
            raise OSError(f"short write to {file}: {written} of {len(line)} bytes")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_lines(file: Path) -> list[dict[str, Any]]:
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def _derived_id(at: str, dataset: str, batch: str, severity: str) -> str:
    return hashlib.sha256("\0".join((at, dataset, batch, severity)).encode()).hexdigest()[:10]


def alert_id(alert: dict[str, Any]) -> str:
    """The alert's short id: the one it was logged with, or (logged before alerts had ids) derived the same way."""
    if alert.get("id"):
        return str(alert["id"])
    return _derived_id(str(alert["at"]), str(alert["dataset"]), str(alert["batch"]), str(alert["severity"]))


def acks_file(alert_log: Path) -> Path:
    """The append-only log of acknowledgements, beside the alert log."""
    return alert_log.with_name("alert_acks.jsonl")


def acknowledge(alert_log: Path, identifier: str, by: str, note: str | None = None) -> dict[str, Any]:
    """Record that ``by`` acknowledged the alert ``identifier``; returns the record.

    Raises ``ValueError`` when no logged alert has that id. Acknowledging again adds a record (the newest counts).
    """
    if identifier not in {alert_id(alert) for alert in _read_lines(alert_log)}:
        raise ValueError(
            f"no alert with id {identifier!r} in {alert_log} (`loopline alerts list` shows the ids)"
        )
    record = {"id": identifier, "at": datetime.now(UTC).isoformat(timespec="seconds"), "by": by, "note": note}
    _append_line(acks_file(alert_log), record)
    return record


def logged_alerts(
    alert_log: Path, since: datetime | None = None, unacked_only: bool = False
) -> list[dict[str, Any]]:
    """The logged alerts, oldest first, each with its ``id`` and ``ack`` (its newest acknowledgement, or None).

    ``since`` keeps the alerts raised at or after it; ``unacked_only`` drops the acknowledged ones.
    """
    acks = {record["id"]: record for record in _read_lines(acks_file(alert_log))}
    found = []
    for alert in _read_lines(alert_log):
        identifier = alert_id(alert)
        if since is not None and datetime.fromisoformat(alert["at"]) < since:
            continue
        if unacked_only and identifier in acks:
            continue
        found.append({**alert, "id": identifier, "ack": acks.get(identifier)})
    return found


def drift_report(folder: Path, batch: str | None = None) -> tuple[Path, Path]:
    """The (HTML, JSON) drift report of ``batch`` (a lake batch, or ``live-<batch>``) in ``folder``, or the newest
    one written when ``batch`` is None. Raises ``FileNotFoundError`` saying what is there instead."""
    pages = sorted(folder.rglob("*.html"), key=lambda page: page.stat().st_mtime) if folder.is_dir() else []
    if batch is not None:
        pages = [page for page in pages if page.stem == batch]
    if not pages:
        known = sorted({page.stem for page in folder.rglob("*.html")}) if folder.is_dir() else []
        wanted = f"for batch {batch} " if batch else ""
        raise FileNotFoundError(
            f"no drift report {wanted}under {folder}"
            + (f" (reports exist for: {', '.join(known)})" if known else " (no batch was monitored yet)")
        )
    return pages[-1], pages[-1].with_suffix(".json")


def send_webhook(url: str, alert: dict[str, Any], timeout: float = 10.0) -> None:
    """POST the alert as JSON; ``text`` makes it Slack-compatible. Raises on a non-2xx answer."""
    response = requests.post(url, json={"text": alert["text"], "loopline": alert}, timeout=timeout)
    response.raise_for_status()


class DeliveryError(RuntimeError):
    """One channel could not take the alert; the message names the channel, the server and the fix."""


class AlertNotDelivered(RuntimeError):
    """At least one channel failed after every channel was tried; ``failures`` names each one."""

    def __init__(self, alert: dict[str, Any], alert_log: Path, logged: bool, failures: list[str]) -> None:
        self.failures = failures
        where = (
            f"written to the local log {alert_log}" if logged else f"NOT written to the local log {alert_log}"
        )
        super().__init__(f"alert {alert['title']!r} {where} but not delivered to: " + "; ".join(failures))


def deliver(config: AlertsConfig, alert_log: Path, alert: dict[str, Any]) -> list[str]:
    """Append the alert to the local log, then send it to the webhook and by e-mail when configured.

    An alert marked ``grouped`` is only logged. Every channel is tried even when an earlier one fails (the log
    first, so an unreachable server never loses the alert); then ``AlertNotDelivered`` names each failure.
    Returns the channels that took the alert.
    """
    delivered: list[str] = []
    failures: list[str] = []
    logged = False
    try:
        append_to_log(alert_log, alert)
        logged = True
        delivered.append(f"log {alert_log}")
    except OSError as exc:
        failures.append(f"local log {alert_log}: {exc}")
    channels: list[tuple[str, Callable[[], None]]] = []
    if not alert.get("grouped"):
        if config.webhook_url:
            channels.append(
                (f"webhook {config.webhook_url}", partial(send_webhook, config.webhook_url, alert))
            )
        if config.smtp_host and config.email_to:
            channels.append((f"email to {', '.join(config.email_to)}", partial(send_email, config, alert)))
    for name, send in channels:
        try:
            send()
            delivered.append(name)
        except Exception as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        raise AlertNotDelivered(alert, alert_log, logged, failures)
    return delivered


def email_message(config: AlertsConfig, alert: dict[str, Any]) -> EmailMessage:
    """The alert as an e-mail: subject = the alert's title, plain text body with an HTML alternative."""
    message = EmailMessage()
    message["Subject"] = alert["title"]
    message["From"] = config.email_from
    message["To"] = ", ".join(config.email_to)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="loopline.alerts")
    message["X-Loopline-Dataset"] = alert["dataset"]
    message["X-Loopline-Batch"] = alert["batch"]
    message["X-Loopline-Severity"] = alert["severity"]
    message.set_content(_email_text(alert))
    message.add_alternative(_email_html(alert), subtype="html")
    return message


def send_email(config: AlertsConfig, alert: dict[str, Any], timeout: float = 10.0) -> None:
    """Send the alert over SMTP to ``alerts.email_to``; raises ``DeliveryError`` saying what failed and where."""
    if not config.smtp_host or not config.email_to:
        return
    server = f"SMTP server {config.smtp_host}:{config.smtp_port}"
    password = os.environ.get(config.smtp_password_env) if config.smtp_user else None
    if config.smtp_user and not password:
        raise DeliveryError(
            f"{server}: alerts.smtp_user is {config.smtp_user!r} but ${config.smtp_password_env} is not set "
            "(export the password there, or change alerts.smtp_password_env)"
        )
    try:
        with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=timeout) as smtp:
            if config.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if config.smtp_user and password:
                smtp.login(config.smtp_user, password)
            refused = smtp.send_message(email_message(config, alert))
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"{server} refused every recipient: {_refusals(exc.recipients)}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(
            f"{server} failed: {type(exc).__name__}: {exc} "
            "(check alerts.smtp_host, alerts.smtp_port, alerts.smtp_starttls and alerts.smtp_user, "
            "and that the server is up)"
        ) from exc
    if refused:
        raise DeliveryError(f"{server} refused {_refusals(refused)}; the other recipients got the alert")


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(
        f"{to} ({code} {reply.decode(errors='replace')})" for to, (code, reply) in refused.items()
    )


def _feature_rows(alert: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Per top feature: name, PSI, severity, corrected p-value, new categories (as display strings)."""
    rows = []
    for feature in alert["top_features"]:
        p_value = feature.get("p_value")
        rows.append(
            (
                str(feature["column"]),
                f"{feature['psi']:.2f}",
                str(feature.get("severity") or "-"),
                "-" if p_value is None else f"{p_value:.2g}",
                ", ".join(map(str, feature.get("new_categories") or [])) or "-",
            )
        )
    return rows


_FEATURE_HEADER = ("feature", "PSI", "severity", "p (corrected)", "new categories")


def _email_facts(alert: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The labelled lines of the e-mail: what drifted (before the feature table), then what was done and where."""
    identity = [
        ("Dataset", alert["dataset"]),
        ("Batch", alert["batch"]),
        ("Severity", alert["severity"]),
        ("Champion", f"{alert['model']} v{alert['champion_version']}"),
    ]
    outcome = []
    if _alerting(alert.get("performance_drop")):
        outcome.append(("Performance", describe_drop(alert["performance_drop"])))
    if alert.get("score_psi") is not None:
        outcome.append(("Prediction score PSI", f"{alert['score_psi']:.2f}"))
    outcome += [("Action taken", alert["action"]), ("Report", alert["report"]), ("Runbook", alert["runbook"])]
    if alert.get("airflow_run"):
        outcome.append(("Airflow run", alert["airflow_run"]))
    outcome.append(("Acknowledge", f"loopline alerts ack {alert_id(alert)}"))
    return identity, outcome


def _email_text(alert: dict[str, Any]) -> str:
    rows = [_FEATURE_HEADER, *_feature_rows(alert)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_FEATURE_HEADER))]
    table = [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    identity, outcome = _email_facts(alert)
    facts = [[f"{label}: {value}" for label, value in part] for part in (identity, outcome)]
    return "\n".join(
        [
            alert["title"],
            "",
            *facts[0],
            "",
            "Top drifted features:",
            *table,
            "",
            *facts[1],
            "",
            _next_step(alert),
            "",
        ]
    )


def _email_html(alert: dict[str, Any]) -> str:
    def cell(label: str, value: str) -> str:
        if label in ("Report", "Runbook"):
            target = Path(value).as_uri() if value.startswith("/") else value
            return f'<a href="{escape(target, quote=True)}">{escape(value)}</a>'
        return escape(value)

    def table(facts: list[tuple[str, str]]) -> str:
        rows = "".join(f"<tr><th align='left'>{escape(k)}</th><td>{cell(k, v)}</td></tr>" for k, v in facts)
        return f"<table cellpadding='4'>{rows}</table>"

    identity, outcome = (table(part) for part in _email_facts(alert))
    header = "".join(f"<th align='left'>{escape(name)}</th>" for name in _FEATURE_HEADER)
    features = "".join(
        "<tr>" + "".join(f"<td>{escape(value)}</td>" for value in row) + "</tr>"
        for row in _feature_rows(alert)
    )
    return (
        f"<html><body><h2>{escape(alert['title'])}</h2>{identity}<h3>Top drifted features</h3>"
        f"<table border='1' cellpadding='4' cellspacing='0'><tr>{header}</tr>{features}</table>"
        f"{outcome}<p>{escape(_next_step(alert))}</p></body></html>"
    )


def _next_step(alert: dict[str, Any]) -> str:
    return (
        f"Next: open the report (`loopline report --batch {alert['batch']}`); if this is an upstream data bug, run "
        "`loopline retrain pause` before the loop learns it. Every step is in the runbook section above."
    )
