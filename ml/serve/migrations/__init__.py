"""Alembic migrations of the prediction store (run them with ``ml.serve.store.migrate``)."""
