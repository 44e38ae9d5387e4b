"""``--config`` is accepted after the subcommand too (``loopline replay --config x.yaml``), and wins there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ml import cli

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def other_config(home: Path, tmp_path: Path) -> Path:
    """The demo config with another dataset name (the default config stays in $LOOPLINE_CONFIG)."""
    raw = yaml.safe_load((ROOT / "loopline.yaml").read_text())
    raw["dataset"]["name"] = "otherset"
    raw["dataset"]["expectation_suite"] = str(ROOT / "expectations" / "loans.json")
    file = tmp_path / "other.yaml"
    file.write_text(yaml.safe_dump(raw))
    return file


def test_replay_takes_config_after_the_subcommand(
    other_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ml import replay

    seen: dict[str, Any] = {}

    def fake_replay(config: Any, paths: Any, home: Path, **_: Any) -> dict[str, Any]:
        seen["dataset"] = config.dataset.name
        return {"dataset": config.dataset.name}

    monkeypatch.setattr(replay, "replay", fake_replay)
    monkeypatch.setattr(replay, "write_outputs", lambda report, json_path, plot: seen.update(json=json_path))
    monkeypatch.setattr(replay, "dump", lambda report: "{}")
    out = tmp_path / "o.json"
    argv = ["replay", "--config", str(other_config), "--json", str(out), "--home", str(tmp_path / "r")]
    assert cli.main(argv) == 0
    assert seen == {"dataset": "otherset", "json": out}
    assert "replaying otherset" in capsys.readouterr().out


def test_expectations_suggest_takes_config_after_the_subcommand(
    other_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml import steps

    seen: list[str] = []

    def fake_suggest(config: Any, paths: Any, batches: list[str] | None) -> dict[str, Any]:
        seen.append(config.dataset.name)
        return {"expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "x"}}]}

    monkeypatch.setattr(steps, "suggest_expectations", fake_suggest)
    out = tmp_path / "suite.json"
    assert cli.main(["expectations", "suggest", "--config", str(other_config), "--out", str(out)]) == 0
    assert seen == ["otherset"] and out.is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["quarantine", "list", "--config", "{other}"],
        ["--config", "{other}", "quarantine", "list"],  # the global form still works
        ["--config", "{default}", "quarantine", "list", "--config", "{other}"],  # the subcommand's wins
    ],
    ids=["after", "global", "both"],
)
def test_quarantine_list_reads_the_named_config(
    argv: list[str], other_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = {"other": str(other_config), "default": str(ROOT / "loopline.yaml")}
    assert cli.main([arg.format(**names) for arg in argv]) == 0
    assert capsys.readouterr().out.strip() == "no quarantined batches of otherset"


def test_report_and_nested_alert_commands_take_config_after_the_subcommand(
    other_config: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", "--config", str(other_config)]) == 2
    assert f"no drift report under {home / 'reports' / 'drift' / 'otherset'}" in capsys.readouterr().err
    for argv in (["alerts", "list", "--config", "x.yaml"], ["alerts", "--config", "x.yaml", "ack", "abc"]):
        assert cli.build_parser().parse_args(argv).config == "x.yaml"
    assert cli.build_parser().parse_args(["alerts", "list"]).config is None
