"""loopline_feedback: load the delayed labels of each window and join them to the captured live predictions.

Scheduled by ``serving.labels.schedule`` (default daily), one run per data interval, idempotent: a re-run
loads the same labels (an upsert keyed by entity id, the latest label time winning) and replaces the window's
join report. ``load_labels`` reads the window's labels from the landing zone (``serving.labels.path``, e.g.
``loans_labels/2025-03-01.csv``) or from a SQL table read with bound parameters; it counts invalid, duplicated,
conflicting, late, stale and unmatched labels. ``join`` joins the labels to the predictions captured by
``loopline serve`` over the last ``serving.labels.join_lookback_days`` days and reports labelled, missing and
duplicated predictions with the realised metrics (AUC, calibration) on the labelled ones. The monitor reads
the same joined rows through ``ml.serve.monitoring.live_window``.
"""

from __future__ import annotations

# Parse speed (docs/architecture.md, "Parse time"): the dag-processor imports a DAG file's top-level
# airflow.* imports once, in its long-lived process, so the modules needed at parse time are named here.
import airflow.sdk.definitions.decorators  # noqa: F401
import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from ml.dag_settings import dag_settings


@dag(
    dag_id="loopline_feedback",
    # Data intervals (not trigger times): each run covers [data_interval_start, data_interval_end).
    schedule=CronDataIntervalTimetable(dag_settings().feedback_schedule, timezone="UTC"),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=30)},
    max_active_runs=1,
    tags=["loopline", "feedback"],
    doc_md=__doc__,
)
def loopline_feedback() -> None:
    @task
    def load_labels(data_interval_start=None, data_interval_end=None) -> dict:  # noqa: ANN001
        """Upsert this window's labels into the prediction store; counts what was found."""
        from airflow.sdk.exceptions import AirflowSkipException

        from loopline_airflow.runtime import setup
        from ml.serve import labels

        config, paths = setup()
        result = labels.load_window(config, paths, data_interval_start, data_interval_end)
        if not result["loaded"]:
            raise AirflowSkipException(result["reason"])
        return result

    @task(trigger_rule="none_failed")
    def join(data_interval_end=None) -> dict:  # noqa: ANN001
        """Join labels to the live predictions of the lookback window; store and return the report."""
        from loopline_airflow.runtime import setup
        from ml.serve import labels
        from ml.serve.settings import settings_for

        config, paths = setup()
        lookback = settings_for(config).labels.join_lookback_days
        start = data_interval_end - pendulum.duration(days=lookback)
        return labels.join_report(config, paths, start, data_interval_end)

    load_labels() >> join()


loopline_feedback()
