"""The service's bearer token: where it comes from, and a generated one for local use.

Order: ``serving.token_file`` (a file holding only the token), else the environment variable
``serving.token_env`` (default ``LOOPLINE_SERVE_TOKEN``), else ``$LOOPLINE_HOME/serve/token`` when it exists
(``ensure_token_file`` creates one, mode 0600). No token, no service: ``run`` refuses to start without one.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ml.config import Paths
from ml.serve.settings import ServeSettings, serve_dir

MIN_TOKEN_LENGTH = 16


class TokenError(RuntimeError):
    """No usable token; the message says how to provide one."""


def default_token_file(paths: Paths) -> Path:
    return serve_dir(paths) / "token"


def ensure_token_file(paths: Paths) -> Path:
    """The generated token file under the home (created once, readable by its owner only)."""
    file = default_token_file(paths)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return file


def _read(file: Path) -> str:
    if not file.is_file():
        raise TokenError(f"token file {file} does not exist")
    if file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"token file {file} is readable by others: chmod 600 {file}")
    return file.read_text().strip()


def resolve_token(settings: ServeSettings, paths: Paths) -> str:
    """The bearer token every request but /health must carry."""
    if settings.token_file:
        token, origin = _read(Path(settings.token_file).expanduser()), f"file {settings.token_file}"
    elif os.environ.get(settings.token_env):
        token, origin = os.environ[settings.token_env].strip(), f"${settings.token_env}"
    elif default_token_file(paths).is_file():
        token, origin = _read(default_token_file(paths)), str(default_token_file(paths))
    else:
        raise TokenError(
            f"no API token: set ${settings.token_env}, or serving.token_file, or create "
            f"{default_token_file(paths)} (ml.serve.auth.ensure_token_file)"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"the token from {origin} is shorter than {MIN_TOKEN_LENGTH} characters")
    return token
