"""loopline_score: score a batch with the champion (``models:/<name>@champion``) and write its predictions.

Scheduled on the ``loopline_lake`` Asset (every accepted batch is scored), and triggerable with a ``batch``
param to re-score a past batch, e.g. after a rollback. Predictions go to the lake table
``<dataset>__predictions``, one partition per batch, replaced on re-run, tagged with the champion version.
"""

from __future__ import annotations

# Parse speed (docs/architecture.md, "Parse time"): the dag-processor imports a DAG file's top-level
# airflow.* imports once, in its long-lived process, so the modules needed at parse time are named here.
import airflow.sdk.definitions.decorators  # noqa: F401
import pendulum
from airflow.sdk import dag, task

from loopline_airflow.assets import LAKE, PREDICTIONS
from loopline_airflow.runtime import batch_param


@dag(
    dag_id="loopline_score",
    schedule=[LAKE],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retry_delay": pendulum.duration(seconds=15)},
    max_active_runs=1,
    tags=["loopline", "scoring"],
    doc_md=__doc__,
    params={
        "batch": batch_param("Batch key to (re)score; empty: the triggering batches."),
    },
)
def loopline_score() -> None:
    @task(outlets=[PREDICTIONS], retries=1)
    def score(**context) -> list[dict]:  # noqa: ANN003
        """Predictions of the champion for each batch of this run."""
        from airflow.sdk.exceptions import AirflowSkipException

        from loopline_airflow.runtime import batches_from_events, setup
        from ml import steps

        config, paths = setup()
        params = context["params"]
        batches = [params["batch"]] if params.get("batch") else batches_from_events(context, LAKE.name)
        if not batches:
            raise AirflowSkipException("no batch to score: set the 'batch' parameter")
        results = [steps.score_batch(config, paths, batch) for batch in batches]
        scored = [r for r in results if r.get("scored")]
        if not scored:
            raise AirflowSkipException("; ".join(f"{r['batch']}: {r['reason']}" for r in results))
        context["outlet_events"][PREDICTIONS].extra = {
            "batches": [r["batch"] for r in scored],
            "champion_version": scored[-1]["champion_version"],
        }
        return results

    score()


loopline_score()
