"""loopline_ingest: one landed batch -> one accepted lake partition.

For its batch (the ``batch`` param, or the batch its data interval starts in) the run reads the landed file,
enforces the schema, drops duplicate ids, runs the Great Expectations gate and writes the lake partition
atomically. A re-run replaces the partition, never duplicates it. A batch that fails the gate is quarantined
(``loopline quarantine list``) and the run fails; the lake is untouched and no Asset event is emitted. On
success the ``loopline_lake`` Asset event (extra: batch, rows, sha256) schedules loopline_monitor and
loopline_score.
"""

from __future__ import annotations

# Parse speed (docs/architecture.md, "Parse time"): the dag-processor imports a DAG file's top-level
# airflow.* imports once, in its long-lived process, so the modules needed at parse time are named here.
import airflow.sdk.definitions.decorators  # noqa: F401
import pendulum
from airflow.sdk import dag, task

from loopline_airflow.assets import LAKE
from loopline_airflow.runtime import batch_param
from ml.dag_settings import dag_settings


@dag(
    dag_id="loopline_ingest",
    schedule=dag_settings().ingest_schedule,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retry_delay": pendulum.duration(seconds=15)},
    max_active_runs=4,
    tags=["loopline", "ingest"],
    doc_md=__doc__,
    params={
        "batch": batch_param(
            "Batch key to ingest (e.g. 2025-03). Empty: the batch of the run's data interval."
        ),
    },
)
def loopline_ingest() -> None:
    @task(outlets=[LAKE], retries=1)
    def ingest(**context) -> dict:  # noqa: ANN003
        """Landing file -> schema -> dedup -> quality gate -> lake partition."""
        from loopline_airflow.runtime import batch_for_run, no_retry_on, setup
        from ml import steps
        from ml.ingest import BatchRejected
        from ml.quality import QualityGateFailed

        config, paths = setup()
        batch = batch_for_run(context, context["params"].get("batch"))
        run = no_retry_on(BatchRejected, QualityGateFailed, FileNotFoundError)(steps.ingest_batch)
        result = run(config, paths, batch)
        context["outlet_events"][LAKE].extra = {
            "batch": batch,
            "rows": result["rows"],
            "sha256": result["sha256"],
        }
        return result

    ingest()


loopline_ingest()
