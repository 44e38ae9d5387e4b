"""The prediction store: captured predictions, delayed labels, feedback-window reports.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "loopline_predictions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("record_index", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(256), nullable=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("features", _JSON, nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("decision", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("warnings", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_loopline_predictions"),
        sa.UniqueConstraint(
            "request_id", "record_index", name="uq_loopline_predictions_request_id_record_index"
        ),
    )
    op.create_index(
        "ix_loopline_predictions_dataset_event_time", "loopline_predictions", ["dataset", "event_time"]
    )
    op.create_index(
        "ix_loopline_predictions_dataset_entity_id", "loopline_predictions", ["dataset", "entity_id"]
    )

    op.create_table(
        "loopline_labels",
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(256), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("label_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "entity_id", name="pk_loopline_labels"),
    )
    op.create_index("ix_loopline_labels_dataset_label_time", "loopline_labels", ["dataset", "label_time"])

    op.create_table(
        "loopline_feedback_windows",
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("report", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("dataset", "window_start", "window_end", name="pk_loopline_feedback_windows"),
    )


def downgrade() -> None:
    op.drop_table("loopline_feedback_windows")
    op.drop_index("ix_loopline_labels_dataset_label_time", table_name="loopline_labels")
    op.drop_table("loopline_labels")
    op.drop_index("ix_loopline_predictions_dataset_entity_id", table_name="loopline_predictions")
    op.drop_index("ix_loopline_predictions_dataset_event_time", table_name="loopline_predictions")
    op.drop_table("loopline_predictions")
