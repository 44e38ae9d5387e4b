"""Alembic environment of the prediction store: always called with a connection by ``ml.serve.store``."""

from __future__ import annotations

from alembic import context

from ml.serve.store import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the store's migrations through ml.serve.store.migrate(url), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
