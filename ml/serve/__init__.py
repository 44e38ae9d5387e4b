"""Online scoring and the feedback loop: ``loopline serve``, the prediction store, delayed labels.

Modules: ``server`` (run), ``app`` (the FastAPI app), ``schema`` (request validation and encoding),
``holder`` (the champion and its hot swap), ``capture`` (queue and writer), ``store`` (SQLAlchemy models and
Alembic migrations), ``metrics``, ``auth``, ``labels`` (delayed labels), ``monitoring`` (live-traffic frames
and their drift, realised performance and alerts), ``settings`` (the config's ``serving:`` section).
Importing this package is cheap: FastAPI, uvicorn, MLflow and XGBoost load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.config import LooplineConfig, Paths


def run(
    config: LooplineConfig,
    paths: Paths,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    **overrides: Any,
) -> None:
    """Serve the champion until SIGTERM (see ``ml.serve.server.run``)."""
    from ml.serve.server import run as _run

    _run(config, paths, host=host, port=port, workers=workers, **overrides)
