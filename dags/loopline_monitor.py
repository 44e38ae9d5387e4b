"""loopline_monitor: compare each new batch with the champion's training reference; alert; request a retrain.

Scheduled on the ``loopline_lake`` Asset: it runs once per accepted batch (or once for several batches that
landed together). ``monitor`` computes per-feature and prediction-score drift against the reference profile
saved with the champion and writes an HTML and JSON report under $LOOPLINE_HOME/reports/drift.
``monitor_live`` does the same for the live traffic that ``loopline serve`` captured in each batch's time
window (feature and prediction drift vs the same reference, realised AUC and calibration once labels joined;
``no_traffic`` when nothing was captured); live drift alerts but never retrains. ``request_retrain`` emits the
``loopline_retrain_request`` Asset event that schedules loopline_train when the policy allows (severity,
cooldown, rate limit, pause); otherwise it is skipped and emits nothing. ``alert`` runs after it and sends drift
alerts through the DriftAlertNotifier (alert log, webhook, email; repeats within the cooldown are grouped),
each naming what was done: the retrain request's time and where its loopline_train run appears, or the
policy's reason for not retraining.
"""

from __future__ import annotations

# Parse speed (docs/architecture.md, "Parse time"): the dag-processor imports a DAG file's top-level
# airflow.* imports once, in its long-lived process, so the modules needed at parse time are named here.
import airflow.sdk.definitions.decorators  # noqa: F401
import pendulum
from airflow.sdk import dag, task

from loopline_airflow.assets import LAKE, RETRAIN_REQUEST


@dag(
    dag_id="loopline_monitor",
    schedule=[LAKE],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retry_delay": pendulum.duration(seconds=15)},
    max_active_runs=1,
    tags=["loopline", "monitoring"],
    doc_md=__doc__,
)
def loopline_monitor() -> None:
    @task
    def monitor(**context) -> list[dict]:  # noqa: ANN003
        """Drift of every batch named by the triggering lake events."""
        from loopline_airflow.runtime import batches_from_events, setup
        from ml import steps

        config, paths = setup()
        batches = batches_from_events(context, LAKE.name)
        if not batches:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("no lake event with a batch triggered this run")
        return [steps.monitor_batch(config, paths, batch) for batch in batches]

    @task
    def monitor_live(**context) -> list[dict]:  # noqa: ANN003
        """Drift and realised performance of the live traffic captured in each batch's window."""
        from loopline_airflow.runtime import batches_from_events, setup
        from ml.serve import monitoring

        config, paths = setup()
        batches = batches_from_events(context, LAKE.name)
        if not config.serving.monitoring.enabled or not batches:
            return []
        found = monitoring.monitor_live(config, paths, batches, context.get("run_after"))
        for result in found:
            print(f"{result['batch']}: {result['verdict']}: {result['reason']}")
        return found

    @task(trigger_rule="all_done")
    def alert(
        results: list[dict] | None,
        live: list[dict] | None,
        requested: dict | None,
        **context,  # noqa: ANN003
    ) -> list[dict]:
        """One alert per drifted batch or live window; the same condition within the cooldown is grouped.

        Runs after ``request_retrain`` (``requested``: its request, None when it emitted none), and when a
        monitor or the request fails too, so a failing live check never holds back a batch's alert.
        """
        from airflow.sdk.configuration import conf

        from loopline_airflow.notifiers import DriftAlertNotifier
        from loopline_airflow.runtime import setup
        from ml import alerts

        config, paths = setup()
        airflow_url = conf.get("api", "base_url", fallback="http://localhost:8080").rstrip("/")
        train_runs = f"{airflow_url}/dags/loopline_train/runs"
        sent = []
        for result in [*(results or []), *(live or [])]:
            action = alerts.retrain_action(result, requested, train_runs)
            found = alerts.for_result(config, paths.alert_log, result, action)
            if found is None:
                continue
            document, grouped = found
            DriftAlertNotifier(document, grouped=grouped).notify(context)
            sent.append({"batch": result["batch"], "severity": result["severity"], "grouped": grouped})
        return sent

    @task(outlets=[RETRAIN_REQUEST])
    def request_retrain(results: list[dict], **context) -> dict:  # noqa: ANN003
        """Emit the retrain request for the newest batch the policy allows; skip (no event) otherwise."""
        from airflow.sdk.exceptions import AirflowSkipException

        from loopline_airflow.runtime import setup
        from ml import policy

        wanted = [r for r in results if r.get("retrain")]
        if not wanted:
            raise AirflowSkipException("; ".join(f"{r['batch']}: {r['reason']}" for r in results))
        newest = wanted[-1]
        _, paths = setup()
        features = [f["column"] for f in newest["top_features"]]
        extra = policy.record_request(paths, newest["batch"], newest["reason"], features)
        context["outlet_events"][RETRAIN_REQUEST].extra = {**extra, "trigger": "drift"}
        return extra

    results = monitor()
    alert(results, monitor_live(), request_retrain(results))


loopline_monitor()
