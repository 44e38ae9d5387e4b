"""Loopline's Airflow adapters: Assets, runtime helpers for tasks, notifiers. Thin: the logic lives in ``ml``."""
