"""The few config values the DAG files read at parse time, without YAML or pydantic (standard library only).

Airflow's dag-processor parses every DAG file again and again; loading the whole config (YAML + pydantic
validation) costs more than the rest of a parse. ``dag_settings()`` reads the values the DAG files need
(schedules, approval) from a JSON cache under ``$LOOPLINE_HOME/state/dag-settings/``. Each entry holds the
fingerprint of what it was computed from: the config file's resolved path and the SHA-256 of its content, of
``ml/config.py`` (the code that validates it and holds its defaults) and of this module. On a miss (no entry,
another file, changed content or code, an unreadable entry) the config is validated in full by ``ml.config``,
exactly as the tasks load it, so a broken config fails the parse with the same error naming the key; the entry
is then rewritten atomically (a temporary file renamed over the old one). Nothing is cached when
``$LOOPLINE_HOME`` does not exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ml.config import LooplineConfig

DEFAULT_CONFIG_FILE = "loopline.yaml"
DEFAULT_HOME = ".loopline"
CODE_FILES = (Path(__file__).with_name("config.py"), Path(__file__))
"""The code that gives the settings their values: a change to either invalidates every cache entry."""
log = logging.getLogger(__name__)


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: the argument, then $LOOPLINE_CONFIG, then ./loopline.yaml."""
    chosen = path or os.environ.get("LOOPLINE_CONFIG") or DEFAULT_CONFIG_FILE
    return Path(chosen).expanduser().resolve()


def home_from_env() -> Path:
    """$LOOPLINE_HOME, or .loopline in the working directory."""
    return Path(os.environ.get("LOOPLINE_HOME", DEFAULT_HOME)).expanduser().resolve()


class DagSettings(NamedTuple):
    """What the DAG files take from the config when they are parsed (a NamedTuple: cheap to define)."""

    ingest_schedule: str | None
    """``batching.schedule``: loopline_ingest's schedule (None: triggered per batch)."""
    feedback_schedule: str
    """``serving.labels.schedule``: loopline_feedback's schedule."""
    require_approval: bool
    """``promotion.require_approval``: loopline_train waits for a human before promoting."""
    approval_timeout_hours: float
    """``promotion.approval_timeout_hours``: an unanswered approval rejects after this."""

    @classmethod
    def from_config(cls, config: LooplineConfig) -> DagSettings:
        """The parse-time values of a validated config."""
        return cls(
            ingest_schedule=config.batching.schedule,
            feedback_schedule=config.serving.labels.schedule,
            require_approval=config.promotion.require_approval,
            approval_timeout_hours=config.promotion.approval_timeout_hours,
        )


def dag_settings(path: str | os.PathLike[str] | None = None) -> DagSettings:
    """The parse-time settings of the config file (see ``resolve_config_path``): cached, else validated in full."""
    file = resolve_config_path(path)
    try:
        content = file.read_bytes()
    except OSError:
        return _validated(file, None)  # load_config names the missing or unreadable file
    fingerprint = _fingerprint(file, content)
    cache = cache_file(file)
    cached = _read_cache(cache, fingerprint)
    if cached is not None:
        return cached
    settings = _validated(file, content)
    _write_cache(cache, {"fingerprint": fingerprint, "settings": settings._asdict()})
    return settings


def cache_file(config_file: Path, home: Path | None = None) -> Path:
    """Where the settings of ``config_file`` are cached (one entry per config file)."""
    name = hashlib.sha256(str(config_file).encode()).hexdigest()[:16]
    return (home or home_from_env()) / "state" / "dag-settings" / f"{name}.json"


def _validated(file: Path, content: bytes | None) -> DagSettings:
    """Full validation with ``ml.config`` (of exactly ``content`` when given): raises its ConfigError."""
    from ml.config import load_config, parse_config

    config = load_config(file) if content is None else parse_config(content, file)
    return DagSettings.from_config(config)


def _fingerprint(file: Path, content: bytes) -> dict[str, Any]:
    return {
        "config_file": str(file),
        "config_sha256": hashlib.sha256(content).hexdigest(),
        "code_sha256": [hashlib.sha256(code.read_bytes()).hexdigest() for code in CODE_FILES],
    }


def _read_cache(cache: Path, fingerprint: dict[str, Any]) -> DagSettings | None:
    """The cached settings when the entry matches ``fingerprint`` exactly; None for anything else."""
    try:
        entry = json.loads(cache.read_text())
        if entry["fingerprint"] != fingerprint:
            return None
        values = entry["settings"]
        if set(values) != set(DagSettings._fields):
            return None
        return DagSettings(**values)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(cache: Path, entry: dict[str, Any]) -> None:
    """Write ``entry`` atomically; never fails the parse (a read-only or missing home just means no cache)."""
    home = cache.parents[2]
    if not home.is_dir():
        return
    import tempfile

    temp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name + ".", suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(entry, out)
        os.replace(temp, cache)
    except OSError as exc:
        log.debug("DAG settings not cached at %s: %s", cache, exc)
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
