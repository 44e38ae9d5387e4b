"""Service settings and the token: defaults, overrides, and where the token may (not) come from."""

from __future__ import annotations

import stat

import pytest
from serve_support import CONFIG_FILE

pytestmark = pytest.mark.fast


@pytest.fixture
def config():
    from ml.config import load_config

    return load_config(CONFIG_FILE)


def test_settings_defaults_and_overrides(config, tmp_path) -> None:
    from ml.config import Paths
    from ml.serve.settings import settings_for, store_url_of

    settings = settings_for(config)
    assert (settings.host, settings.workers, settings.capture_full_policy) == ("127.0.0.1", 1, "block")
    changed = settings_for(config, port=28611, workers=None, capture_flush_interval_seconds=0.1)
    assert (changed.port, changed.workers, changed.capture_flush_interval_seconds) == (28611, 1, 0.1)
    assert store_url_of(settings, Paths(tmp_path)) == f"sqlite:///{tmp_path / 'serve' / 'predictions.db'}"
    with pytest.raises(ValueError, match="capture_full_policy"):
        settings_for(config, capture_full_policy="panic")


def test_token_sources_in_order(config, tmp_path, monkeypatch) -> None:
    from ml.config import Paths
    from ml.serve.auth import TokenError, ensure_token_file, resolve_token
    from ml.serve.settings import settings_for

    paths = Paths(tmp_path / "home")
    monkeypatch.delenv("LOOPLINE_SERVE_TOKEN", raising=False)
    with pytest.raises(TokenError, match="LOOPLINE_SERVE_TOKEN"):
        resolve_token(settings_for(config), paths)
    generated = ensure_token_file(paths)
    assert stat.S_IMODE(generated.stat().st_mode) == 0o600
    assert ensure_token_file(paths) == generated
    assert resolve_token(settings_for(config), paths) == generated.read_text().strip()

    monkeypatch.setenv("LOOPLINE_SERVE_TOKEN", "from-the-environment-123")
    assert resolve_token(settings_for(config), paths) == "from-the-environment-123"
    monkeypatch.setenv("LOOPLINE_SERVE_TOKEN", "short")
    with pytest.raises(TokenError, match="shorter than 16"):
        resolve_token(settings_for(config), paths)

    secret = tmp_path / "secret"
    secret.write_text("from-a-secrets-file-456\n")
    secret.chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        resolve_token(settings_for(config, token_file=str(secret)), paths)
    secret.chmod(0o600)
    assert resolve_token(settings_for(config, token_file=str(secret)), paths) == "from-a-secrets-file-456"


def test_environment_overrides_the_file_and_arguments_override_both(config) -> None:
    from ml.serve.settings import settings_for

    environ = {"LOOPLINE_SERVE_PORT": "28650", "LOOPLINE_SERVE_STORE_URL": "postgresql://u@db/p"}
    settings = settings_for(config, environ=environ)
    assert (settings.port, settings.store_url) == (28650, "postgresql://u@db/p")
    assert settings_for(config, environ=environ, port=28651).port == 28651
    assert settings_for(config, environ={}).port == config.serving.port == 8600
    with pytest.raises(ValueError, match="port"):
        settings_for(config, environ={"LOOPLINE_SERVE_PORT": "eighty"})
