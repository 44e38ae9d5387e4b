from __future__ import annotations

from pathlib import Path

import pytest

from ml.config import ConfigError, load_config

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "c.yaml"
    file.write_text(text)
    return file


def test_default_config_loads() -> None:
    config = load_config(ROOT / "loopline.yaml")
    assert config.dataset.name == "loans"
    assert config.model_name == "loans_default_classifier"
    assert config.suite_path() == ROOT / "expectations" / "loans.json"


MINIMAL = """
dataset:
  name: shop
  source: {path: shop.csv}
  id_column: id
  target: churned
batching: {by: rows, rows_per_batch: 100}
"""


def test_minimal_config_infers_features_and_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.dataset.numeric_features == "infer"
    assert config.model_name == "shop_classifier"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.max_dept: unknown key"):
        load_config(_write(tmp_path, MINIMAL + "training: {max_dept: 3}\n"))


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.max_depth"):
        load_config(_write(tmp_path, MINIMAL + "training: {max_depth: deep}\n"))


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.target: required key is missing"):
        load_config(_write(tmp_path, MINIMAL.replace("  target: churned\n", "")))


def test_time_batching_needs_time_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="time_column"):
        load_config(_write(tmp_path, MINIMAL.replace("by: rows", "by: month")))


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOOPLINE_CONFIG"):
        load_config(tmp_path / "nope.yaml")


def test_serving_section_defaults_and_errors_are_named(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL))
    assert (config.serving.host, config.serving.port, config.serving.capture_full_policy) == (
        "127.0.0.1",
        8600,
        "block",
    )
    assert config.serving.labels.schedule == "@daily" and config.serving.monitoring.window == "batch"
    tuned = load_config(
        _write(tmp_path, MINIMAL + "serving: {workers: 2, labels: {join_lookback_days: 7}}\n")
    )
    assert (tuned.serving.workers, tuned.serving.labels.join_lookback_days) == (2, 7)
    with pytest.raises(ConfigError, match=r"serving\.capture_full_policy"):
        load_config(_write(tmp_path, MINIMAL + "serving: {capture_full_policy: panic}\n"))
    with pytest.raises(ConfigError, match=r"serving\.labels\.shedule: unknown key"):
        load_config(_write(tmp_path, MINIMAL + "serving: {labels: {shedule: '@hourly'}}\n"))


def test_sql_source_needs_time_batching(tmp_path: Path) -> None:
    sql = MINIMAL.replace(
        "source: {path: shop.csv}", "source: {format: sql, url: 'sqlite:///x.db', table: orders}"
    )
    with pytest.raises(ConfigError, match="reads one time window per batch"):
        load_config(_write(tmp_path, sql))


def test_max_boosting_rows_takes_a_count_auto_or_null(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, MINIMAL)).engine.max_boosting_rows == "auto"
    chosen = load_config(_write(tmp_path, MINIMAL + "engine: {max_boosting_rows: 2000000}\n"))
    assert chosen.engine.max_boosting_rows == 2_000_000
    assert (
        load_config(
            _write(tmp_path, MINIMAL + "engine: {max_boosting_rows: null}\n")
        ).engine.max_boosting_rows
        is None
    )
    with pytest.raises(ConfigError, match=r"engine\.max_boosting_rows.*at least 1000, auto or null"):
        load_config(_write(tmp_path, MINIMAL + "engine: {max_boosting_rows: 10}\n"))
    with pytest.raises(ConfigError, match=r"engine\.max_boosting_rows"):
        load_config(_write(tmp_path, MINIMAL + "engine: {max_boosting_rows: some}\n"))
