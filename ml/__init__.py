"""Loopline: the retraining loop library (no Airflow imports here)."""
