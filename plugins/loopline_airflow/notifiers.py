"""Airflow notifiers that deliver Loopline's drift alerts: local alert log (always), webhook, email."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier


class DriftAlertNotifier(BaseNotifier):
    """Deliver one alert document (see ``ml.alerts.build_alert``) to every configured channel.

    The local alert log is always written first, so an unreachable webhook never loses an alert; a delivery
    failure is logged and re-raised after the other channels have been tried.
    """

    template_fields = ("alert",)

    def __init__(self, alert: dict[str, Any], grouped: bool = False) -> None:
        super().__init__()
        self.alert = alert
        self.grouped = grouped

    def notify(self, context: Any) -> None:
        from ml import alerts
        from ml.config import Paths, load_config

        config, paths = load_config(), Paths.from_env()
        document = {**self.alert, "grouped": self.grouped}
        dag_run = context.get("dag_run") if context else None
        if dag_run is not None:
            document["airflow_run"] = f"{dag_run.dag_id}/{dag_run.run_id}"
        alerts.append_to_log(paths.alert_log, document)
        if self.grouped:
            self.log.info("alert grouped with an earlier one for the same condition: %s", document["title"])
            return
        self.log.warning("%s", document["text"])
        failures = []
        if config.alerts.webhook_url:
            try:
                alerts.send_webhook(config.alerts.webhook_url, document)
            except Exception as exc:
                failures.append(f"webhook {config.alerts.webhook_url}: {exc}")
        if config.alerts.email_to and config.alerts.smtp_host:
            try:
                alerts.send_email(config.alerts, document)
            except Exception as exc:
                failures.append(f"email via {config.alerts.smtp_host}: {exc}")
        if failures:
            raise RuntimeError("alert written to the local log but not delivered to: " + "; ".join(failures))
