"""The Assets that chain Loopline's DAGs (names are part of the public interface; do not rename)."""

from __future__ import annotations

from airflow.sdk import Asset

LAKE = Asset(name="loopline_lake", uri="loopline://lake/accepted")
"""A batch was accepted into the lake; extra: {"batch", "rows", "sha256"}."""

PREDICTIONS = Asset(name="loopline_predictions", uri="loopline://lake/predictions")
"""A batch was scored by the champion; extra: {"batch", "champion_version"}."""

RETRAIN_REQUEST = Asset(name="loopline_retrain_request", uri="loopline://requests/retrain")
"""Drift asked for a new model; extra: {"batch", "reason", "features"}. Schedules loopline_train."""
