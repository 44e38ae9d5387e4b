"""Airflow plugin: an extra link on loopline_train's tasks that opens the challenger's MLflow run."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink


class MlflowRunLink(BaseOperatorLink):
    """'MLflow run': the run that trained this DAG run's challenger (computed when the task finishes)."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        trained = ti_key.xcom_pull(task_ids="train") if hasattr(ti_key, "xcom_pull") else None
        if not trained or not trained.get("run_id"):
            return ""
        from ml.config import load_config

        base = load_config().registry.ui_url.rstrip("/")
        return f"{base}/#/experiments/{trained.get('experiment_id', '0')}/runs/{trained['run_id']}"


class LooplinePlugin(AirflowPlugin):
    """Registers Loopline's extra links so the API server can show them."""

    name = "loopline"
    operator_extra_links: ClassVar[list[BaseOperatorLink]] = [MlflowRunLink()]
