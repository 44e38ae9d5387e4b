"""The settings of the scoring service, the prediction store and the label feedback.

They are the ``serving:`` section of the config file (``ml.config.ServingConfig``; ``ServeSettings`` and
``LabelsSettings`` are its names here). ``settings_for`` starts from that section, then applies
``LOOPLINE_SERVE_<FIELD>`` environment variables (e.g. ``LOOPLINE_SERVE_PORT=8700``,
``LOOPLINE_SERVE_STORE_URL=postgresql://...``), then keyword overrides (the CLI's ``--host``, ``--port``,
``--workers`` ...); each later source wins, and the result is validated like the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ml.config import LabelsConfig, LooplineConfig, Paths, ServingConfig

ServeSettings = ServingConfig
LabelsSettings = LabelsConfig
DEFAULT_TOKEN_ENV = ServingConfig.model_fields["token_env"].default
ENV_PREFIX = "LOOPLINE_SERVE_"


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``LOOPLINE_SERVE_<FIELD>`` variables for the top-level (non-section) fields of ``serving``."""
    environ = os.environ if environ is None else environ
    found = {}
    for name, field in ServingConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue
        value = environ.get(ENV_PREFIX + name.upper())
        if value is not None and value != "":
            found[name] = value
    return found


def settings_for(
    config: LooplineConfig, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> ServeSettings:
    """The service settings: ``config.serving``, then ``LOOPLINE_SERVE_*`` variables, then non-None overrides."""
    base = config.serving.model_dump()
    base.update(env_overrides(environ))
    base.update({key: value for key, value in overrides.items() if value is not None})
    return ServingConfig.model_validate(base)


def serve_dir(paths: Paths) -> Path:
    """$LOOPLINE_HOME/serve: the default store, the token file, spill files and per-worker metrics."""
    return paths.home / "serve"


def default_store_url(paths: Paths) -> str:
    """SQLite under the home."""
    return f"sqlite:///{serve_dir(paths) / 'predictions.db'}"


def store_url_of(settings: ServeSettings, paths: Paths) -> str:
    """The configured prediction store, or the SQLite default."""
    return settings.store_url or default_store_url(paths)
