"""The human review of a promotion: Airflow's ApprovalOperator, with its answer kept in XCom either way."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

REVIEW_KEY = "review"


class PromotionApproval(ApprovalOperator):
    """Approve/Reject a challenger in the Airflow UI; the answer is pushed to XCom ``review`` on both paths.

    (ApprovalOperator's Reject path skips downstream tasks without pushing its return value.)
    """

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" not in event:
            context["ti"].xcom_push(
                key=REVIEW_KEY,
                value={
                    "chosen_options": list(event.get("chosen_options") or []),
                    "responded_by_user": event.get("responded_by_user"),
                    "responded_at": str(event.get("responded_at")),
                },
            )
        return super().execute_complete(context, event)
