"""``loopline rollback`` without ``--to`` walks back through the champion history and never returns to a version
that a rollback left (v2 -> v1, then v1 -> the champion before v1, not back to v2). Real MLflow registry (SQLite)
in a temp folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from ml import cli, registry


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty migrated MLflow SQLite store (the migration takes seconds; a copy opens at once)."""
    from mlflow import MlflowClient

    target = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{target}").search_experiments()
    return target


@pytest.fixture
def model(config: Any, paths: Any, store_template: Path) -> Any:
    """Versions 1-5 of the model (gate passed), champion v1; returns the config."""
    paths.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store_template, paths.mlflow_db)
    experiment = registry.connect(config, paths)
    client = registry._client()
    client.create_registered_model(config.model_name)
    for _ in range(5):
        run = client.create_run(experiment)
        client.create_model_version(
            config.model_name, f"{run.info.artifact_uri}/model", run.info.run_id, tags={"gate": "passed"}
        )
    _promote(config, "1")
    return config


def _promote(config: Any, version: str) -> None:
    current = registry.champion(config)
    previous = current.version if current else None
    registry.promote(
        config, registry.VersionRef(config.model_name, version, ""), previous, "gate passed", "test"
    )


def _rollback(config: Any) -> tuple[str | None, str]:
    return registry.rollback(config, None, "test")


def test_a_second_rollback_does_not_undo_the_first(model: Any) -> None:
    _promote(model, "2")
    _promote(model, "3")
    assert _rollback(model) == ("3", "2")
    assert _rollback(model) == ("2", "1")  # not back to v3, which the first rollback left
    with pytest.raises(ValueError, match="champion v1 has no earlier champion that a rollback did not leave"):
        _rollback(model)
    assert registry.champion(model).version == "1"
    moves = [(m["from"], m["to"]) for m in registry.champion_moves(model)]
    assert moves == [(None, "1"), ("1", "2"), ("2", "3"), ("3", "2"), ("2", "1")]


def test_naming_a_left_version_with_to_still_works(model: Any) -> None:
    _promote(model, "2")
    assert _rollback(model) == ("2", "1")
    with pytest.raises(ValueError, match="--to VERSION"):
        _rollback(model)  # v1 -> v2 would undo the rollback
    assert registry.rollback(model, "2", "test") == ("1", "2")
    assert registry.champion(model).version == "2"


def test_after_a_new_promotion_rollback_returns_to_the_champion_before_it(model: Any) -> None:
    _promote(model, "2")
    _promote(model, "3")
    assert _rollback(model) == ("3", "2")
    _promote(model, "4")
    assert _rollback(model) == ("4", "2")
    assert _rollback(model) == ("2", "1")  # v4 and v3 were left by rollbacks


def test_cli_rollback_twice(model: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _promote(model, "2")
    assert cli.main(["rollback"]) == 0
    assert "v2 -> v1" in capsys.readouterr().out
    assert cli.main(["rollback"]) == 2
    assert "name one with --to VERSION" in capsys.readouterr().err
    assert registry.champion(model).version == "1"
