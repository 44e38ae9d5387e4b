"""ml.dag_settings: the parse-time config values, cached by config content and code, never masking a broken config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml import config as config_module
from ml import dag_settings as ds
from ml.config import ConfigError, load_config

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]
APPROVAL = "promotion: {require_approval: true, approval_timeout_hours: 6}\n"


@pytest.fixture
def config_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the default config in the test's home, named by $LOOPLINE_CONFIG."""
    file = home / "loopline.yaml"
    file.write_text((ROOT / "loopline.yaml").read_text())
    monkeypatch.setenv("LOOPLINE_CONFIG", str(file))
    return file


def _entries(home: Path) -> list[Path]:
    folder = home / "state" / "dag-settings"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _no_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any full validation fail the test: the values must come from the cache."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the config was validated again")

    monkeypatch.setattr(config_module, "parse_config", refuse)
    monkeypatch.setattr(config_module, "load_config", refuse)


def test_values_are_the_validated_configs(config_file: Path) -> None:
    config = load_config(config_file)
    settings = ds.dag_settings()
    assert settings == ds.DagSettings.from_config(config)
    assert settings.ingest_schedule is None and settings.feedback_schedule == "@daily"
    assert settings.require_approval is False and settings.approval_timeout_hours == 72


def test_a_miss_writes_one_entry_and_a_hit_skips_validation(
    config_file: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ds.dag_settings()
    [entry] = _entries(home)
    assert entry == ds.cache_file(config_file)
    assert json.loads(entry.read_text())["settings"] == first._asdict()
    _no_validation(monkeypatch)
    assert ds.dag_settings() == first
    assert _entries(home) == [entry]  # no temporary file left behind


def test_changed_content_is_a_miss_even_with_the_same_size_and_mtime(config_file: Path) -> None:
    text = config_file.read_text()
    assert ds.dag_settings().feedback_schedule == "@daily"
    before = config_file.stat()
    changed = text.replace('schedule: "@daily"', 'schedule: "@hourly"')
    assert len(changed) != len(text)
    changed = changed.replace("# Loopline's", "#Loopline's")  # the same size as before
    assert len(changed) == len(text)
    config_file.write_text(changed)
    os.utime(config_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert ds.dag_settings().feedback_schedule == "@hourly"


def test_a_broken_config_is_never_masked_by_the_cache(config_file: Path) -> None:
    ds.dag_settings()
    config_file.write_text(config_file.read_text() + "training: {max_dept: 3}\n")
    with pytest.raises(ConfigError, match=r"training\.max_dept: unknown key"):
        ds.dag_settings()
    config_file.write_text(config_file.read_text().replace("max_dept: 3", "max_depth: 3") + APPROVAL)
    settings = ds.dag_settings()
    assert settings.require_approval is True and settings.approval_timeout_hours == 6


def test_a_missing_config_names_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_CONFIG", str(home / "absent.yaml"))
    with pytest.raises(ConfigError, match=r"absent\.yaml: config file not found"):
        ds.dag_settings()


def test_changed_code_is_a_miss(config_file: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds.dag_settings()
    other_code = home / "config.py"
    other_code.write_text("# another version of ml/config.py\n")
    monkeypatch.setattr(ds, "CODE_FILES", (other_code, Path(ds.__file__)))
    validated = []
    real = config_module.parse_config

    def counted(content: bytes, file: Path) -> config_module.LooplineConfig:
        validated.append(file)
        return real(content, file)

    monkeypatch.setattr(config_module, "parse_config", counted)
    ds.dag_settings()
    assert validated == [config_file]


@pytest.mark.parametrize(
    "garbage", ["", "{not json", '{"fingerprint": 1}', '{"fingerprint": {}, "settings": 3}']
)
def test_an_unreadable_entry_is_a_miss_and_is_rewritten(config_file: Path, home: Path, garbage: str) -> None:
    expected = ds.dag_settings()
    [entry] = _entries(home)
    entry.write_text(garbage)
    assert ds.dag_settings() == expected
    assert json.loads(entry.read_text())["settings"] == expected._asdict()


def test_an_entry_with_other_fields_is_a_miss(config_file: Path, home: Path) -> None:
    expected = ds.dag_settings()
    [entry] = _entries(home)
    cached = json.loads(entry.read_text())
    entry.write_text(json.dumps({**cached, "settings": {**cached["settings"], "retired_field": 1}}))
    assert ds.dag_settings() == expected
    assert json.loads(entry.read_text())["settings"] == expected._asdict()


def test_each_config_file_has_its_own_entry(config_file: Path, home: Path) -> None:
    other = home / "other.yaml"
    other.write_text(config_file.read_text() + APPROVAL)
    assert ds.dag_settings().require_approval is False
    assert ds.dag_settings(other).require_approval is True
    assert len(_entries(home)) == 2
    assert ds.dag_settings().require_approval is False


def test_no_home_no_cache(config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path / "not-created"))
    assert ds.dag_settings().feedback_schedule == "@daily"
    assert not (tmp_path / "not-created").exists()


def test_a_failed_write_never_fails_the_parse(
    config_file: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    assert ds.dag_settings().feedback_schedule == "@daily"
    assert _entries(home) == []


def test_the_module_imports_neither_yaml_nor_pydantic() -> None:
    code = "import sys, ml.dag_settings; print(sorted({'yaml', 'pydantic', 'ml.config'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_config_keeps_its_public_names_and_validates_text(tmp_path: Path) -> None:
    assert config_module.resolve_config_path is ds.resolve_config_path
    assert config_module.DEFAULT_CONFIG_FILE == "loopline.yaml"
    file = tmp_path / "c.yaml"
    with pytest.raises(ConfigError, match=r"c\.yaml: invalid config:\n  - dataset: required key is missing"):
        config_module.parse_config(b"batching: {by: rows}\n", file)
    config = config_module.parse_config((ROOT / "loopline.yaml").read_bytes(), file)
    assert config.config_path == file and config.dataset.name == "loans"
