"""loopline_train: gate, train, evaluate against the champion, promote.

Runs when drift emits a ``loopline_retrain_request`` Asset event, or from the trigger form. One run at a time
(max_active_runs=1), so two requests never race for the champion. Tasks:

1. ``plan``: the training window, the ``window_batches`` accepted batches ending at ``end_batch`` (default:
   the newest; for a drift request, the drifted batch), so the window includes the drifted data.
2. ``quality_gate``: Great Expectations on the whole window; a critical failure fails the run.
3. ``train``: XGBoost on the window minus the holdout (the newest share of the newest batch); logs params,
   metrics, the model (signature, input example), the lake partitions as dataset inputs with their content
   hashes, the reference profile; registers a new model version.
4. ``evaluate``: challenger and champion on the same holdout; the promotion gate's verdict and reason go to the
   run and to version tags.
5. ``promote``: moves the ``champion`` alias only if the gate passed, the ``promote`` param is on, and the
   champion is still the one evaluated against.

Every task retries (``RETRIES``: 3 times, exponential backoff from 15 s, capped at 5 min), so an MLflow server
that is down for a few minutes during training or promotion delays the run instead of failing it. Data errors
(quality gate, training data) and a champion that moved since the evaluation fail at once (``no_retry_on``). A
retried ``promote`` is safe: ``ml.registry.promote`` completes a move the failed try left half-done and never
moves the alias twice. The human ``approval`` never retries (a retry would ask again).

With ``promotion.require_approval: true`` in the config, ``needs_review`` and ``approval`` (an
ApprovalOperator showing the gate report) stand before ``promote``: Approve promotes, Reject (or no answer
within ``promotion.approval_timeout_hours``) keeps the champion; ``record_review`` tags the version.
"""

from __future__ import annotations

from datetime import timedelta

# Parse speed (docs/architecture.md, "Parse time"): the dag-processor imports a DAG file's top-level
# airflow.* imports once, in its long-lived process, so the modules needed at parse time are named here (the first two
# for promotion.require_approval).
import airflow.providers.standard.decorators.short_circuit
import airflow.providers.standard.operators.hitl
import airflow.sdk.definitions.decorators  # noqa: F401
import pendulum
from airflow.sdk import dag, task

from loopline_airflow.assets import RETRAIN_REQUEST
from loopline_airflow.runtime import form_param, reviewer_of
from loopline_links import MlflowRunLink
from ml.dag_settings import dag_settings

SETTINGS = dag_settings()
APPROVAL = SETTINGS.require_approval
# Tries after the first, ~15-30 s, 30-60 s, 1-2 min apart (Airflow adds jitter): about 4 minutes of MLflow outage.
RETRIES = {
    "retries": 3,
    "retry_delay": pendulum.duration(seconds=15),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": pendulum.duration(minutes=5),
}
REVIEW_BODY = """
### Gate report

{% set e = ti.xcom_pull(task_ids='evaluate') %}{% set t = ti.xcom_pull(task_ids='train') %}
Challenger **v{{ t['version'] }}** (MLflow run `{{ t['run_id'] }}`) vs champion **v{{ e['champion_version'] }}**
on {{ e['holdout_rows'] }} holdout rows: **{{ e['reason'] }}**

| rule | value | threshold | verdict |
|---|---|---|---|
{% for r in e['rules'] %}| {{ r['name'] }} | {{ '%.4f' % r['value'] if r['value'] is not none else 'n/a' }} | \
{{ r['threshold'] }} | {{ 'pass' if r['passed'] else 'FAIL' }} |
{% endfor %}

Approve moves the `champion` alias to v{{ t['version'] }}; Reject keeps the champion and tags the version.
"""


@dag(
    dag_id="loopline_train",
    schedule=[RETRAIN_REQUEST],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    default_args=RETRIES,
    max_active_runs=1,
    tags=["loopline", "training"],
    doc_md=__doc__,
    params={
        "end_batch": form_param(
            None,
            "Empty: the newest accepted batch (or the drifted batch of a request).",
            type=["null", "string"],
            title="Last batch of the window",
        ),
        "window_batches": form_param(
            None,
            "Empty: training.window_batches from the config.",
            type=["null", "integer"],
            minimum=1,
            title="Batches in the window",
        ),
        "num_boost_round": form_param(None, type=["null", "integer"], minimum=1, title="Boosting rounds"),
        "max_depth": form_param(
            None, type=["null", "integer"], minimum=1, maximum=16, title="Max tree depth"
        ),
        "learning_rate": form_param(
            None, type=["null", "number"], exclusiveMinimum=0, maximum=1, title="Learning rate"
        ),
        "promote": form_param(
            True,
            "Off: train, evaluate and register only; the champion stays.",
            type="boolean",
            title="Promote if the gate passes",
        ),
    },
)
def loopline_train() -> None:
    @task
    def plan(**context) -> dict:  # noqa: ANN003
        """Which batches to train on, and why this run started."""
        from loopline_airflow.runtime import setup, trigger_of
        from ml import steps

        params = context["params"]
        config, paths = setup()
        trigger, extra = trigger_of(context)
        end_batch = params.get("end_batch") or extra.get("batch")
        window = steps.plan_training(config, paths, end_batch, params.get("window_batches"))
        return {**window, "trigger": trigger, "reason": extra.get("reason", f"{trigger} run")}

    @task
    def quality_gate(window: dict) -> dict:
        """Great Expectations on the training window."""
        from loopline_airflow.runtime import no_retry_on, setup
        from ml import steps
        from ml.quality import QualityGateFailed

        config, paths = setup()
        return no_retry_on(QualityGateFailed)(steps.validate_window)(config, paths, window["batches"])

    @task
    def train(window: dict, quality: dict, **context) -> dict:  # noqa: ANN003
        """Fit, log to MLflow and register the challenger."""
        from loopline_airflow.runtime import no_retry_on, setup
        from ml import steps
        from ml.train import TrainingDataError

        params = context["params"]
        config, paths = setup()
        overrides = {k: params.get(k) for k in ("num_boost_round", "max_depth", "learning_rate")}
        dag_run = context["dag_run"]
        run_name = (
            f"{config.dataset.name} {window['batches'][0]}..{window['end_batch']} [{window['trigger']}]"
        )
        tags = {
            "airflow.dag_id": dag_run.dag_id,
            "airflow.run_id": dag_run.run_id,
            "loopline.trigger": window["trigger"],
            "loopline.reason": window["reason"][:500],
            "loopline.dataset": config.dataset.name,
        }
        return no_retry_on(TrainingDataError)(steps.train_challenger)(
            config, paths, window["batches"], overrides, quality, run_name, tags
        )

    @task
    def evaluate(window: dict, challenger: dict) -> dict:
        """Challenger vs champion on the same holdout; the gate's verdict."""
        from loopline_airflow.runtime import setup
        from ml import steps

        config, paths = setup()
        return steps.evaluate_challenger(config, paths, window["batches"], challenger["version"])

    @task
    def promote(challenger: dict, evaluation: dict, **context) -> dict:  # noqa: ANN003
        """Move the champion alias when the gate passed and promotion is on."""
        from loopline_airflow.runtime import no_retry_on, setup
        from ml import steps
        from ml.registry import PromotionConflict

        config, paths = setup()
        dag_run = context["dag_run"]
        actor = f"airflow:{dag_run.dag_id}/{dag_run.run_id}"
        review = context["ti"].xcom_pull(task_ids="approval", key="review") if APPROVAL else None
        if review:
            actor += f" approved by {reviewer_of(review)}"
        return no_retry_on(PromotionConflict)(steps.promote_challenger)(
            config,
            paths,
            challenger["version"],
            evaluation,
            bool(context["params"].get("promote", True)),
            actor,
        )

    window = plan()
    quality = quality_gate(window)
    challenger = train(window, quality)
    evaluation = evaluate(window, challenger)
    for produced in (challenger, evaluation):
        produced.operator.operator_extra_links = [MlflowRunLink()]
    if not APPROVAL:
        promote(challenger, evaluation)
        return

    from loopline_airflow.review import PromotionApproval

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def needs_review(evaluation: dict, **context) -> bool:  # noqa: ANN003
        """Ask a human only when the gate passed and the run may promote."""
        return bool(evaluation["promote"]) and bool(context["params"].get("promote", True))

    approval = PromotionApproval(
        task_id="approval",
        subject="Promote {{ dag.dag_id }} challenger v{{ ti.xcom_pull(task_ids='train')['version'] }} to champion?",
        body=REVIEW_BODY,
        response_timeout=timedelta(hours=SETTINGS.approval_timeout_hours),
        retries=0,
    )

    @task(trigger_rule="all_done")
    def record_review(challenger: dict, **context) -> dict:  # noqa: ANN003
        """Tag the version with the human decision (approved, rejected or unanswered)."""
        from loopline_airflow.runtime import setup
        from ml import registry

        config, paths = setup()
        registry.connect(config, paths)
        review = context["ti"].xcom_pull(task_ids="approval", key="review")
        if not review:
            return {"review": "not asked"}
        decision = "approved" if "Approve" in review.get("chosen_options", []) else "rejected"
        by = reviewer_of(review)
        registry.tag_version(config, challenger["version"], {"review": decision, "reviewed_by": by})
        return {"review": decision, "by": by}

    gate_passed = needs_review(evaluation)
    promoted = promote(challenger, evaluation)
    gate_passed >> approval >> promoted
    promoted >> record_review(challenger)


loopline_train()
