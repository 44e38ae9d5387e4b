"""Airflow notifiers that deliver Loopline's drift alerts: local alert log (always), webhook, email."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier


class DriftAlertNotifier(BaseNotifier):
    """Deliver one alert document (see ``ml.alerts.build_alert``) to every configured channel.

    ``ml.alerts.deliver`` writes the local alert log first, so an unreachable webhook or SMTP server never loses
    an alert; a delivery failure is re-raised (``AlertNotDelivered``, naming each channel and why) after every
    channel has been tried, so the task fails visibly. A grouped alert is only logged.
    """

    template_fields = ("alert",)

    def __init__(self, alert: dict[str, Any], grouped: bool = False) -> None:
        super().__init__()
        self.alert = alert
        self.grouped = grouped

    def notify(self, context: Any) -> None:
        """Log the alert, then send it to the webhook and e-mail configured in ``alerts``."""
        from ml import alerts
        from ml.config import Paths, load_config

        config, paths = load_config(), Paths.from_env()
        document = {**self.alert, "grouped": self.grouped}
        dag_run = context.get("dag_run") if context else None
        if dag_run is not None:
            document["airflow_run"] = f"{dag_run.dag_id}/{dag_run.run_id}"
        if self.grouped:
            self.log.info("alert grouped with an earlier one for the same condition: %s", document["title"])
        else:
            self.log.warning("%s", document["text"])
        delivered = alerts.deliver(config.alerts, paths.alert_log, document)
        self.log.info("alert delivered to: %s", "; ".join(delivered))
