"""Crash-safety of alias moves: a promotion or rollback interrupted between its steps leaves a consistent
registry, and a retry completes it.

A move is three writes to the MLflow registry (``ml.registry._move``): the history entry ("pending"), the alias,
the entry again ("moved"). Each test injects a fault at one exact step of a real MLflow SQLite store: an exception
raised by the client call itself (the process "dies" there: nothing after it runs), or, once, ``os._exit`` in a
child process, so the kernel releases the alias lock as it would for a killed task. Then it checks what readers
see (``history``, ``champion_moves``, ``champion``) and that a retry converges to one recorded move.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import ROOT, Home, case, child_env, loopline_env, snapshot

from ml import registry

VERSIONS = ("1", "2", "3")


class Crash(Exception):
    """The process dying at the injected step."""


@pytest.fixture
def home(tmp_path: Path, mlflow_store_template: Path) -> Iterator[Home]:
    """A private home whose registry holds versions 1-3 (gate passed), champion v1."""
    with loopline_env(tmp_path / "home") as home:
        home.paths.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_store_template, home.paths.mlflow_db)
        experiment = registry.connect(home.config, home.paths)
        client = registry._client()
        client.create_registered_model(home.config.model_name)
        for _ in VERSIONS:
            run = client.create_run(experiment)
            client.create_model_version(
                home.config.model_name,
                source=f"{run.info.artifact_uri}/model",
                run_id=run.info.run_id,
                tags={"gate": "passed"},
            )
        registry.promote(home.config, _ref(home, "1"), None, "first champion", "test")
        yield home


def _ref(home: Home, version: str) -> registry.VersionRef:
    return registry.VersionRef(home.config.model_name, version, "")


def _recorded(home: Home) -> list[dict]:
    """The history entries exactly as written (no reconciliation)."""
    tags = registry._client().get_registered_model(home.config.model_name).tags
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith("history.")]


def _promoted_at(home: Home, version: str) -> str | None:
    return registry._client().get_model_version(home.config.model_name, version).tags.get("promoted_at")


def _consistent(home: Home) -> str:
    """The champion alias and the last recorded champion move agree; returns the champion's version."""
    current = registry.champion(home.config)
    assert current is not None
    assert registry.champion_moves(home.config)[-1]["to"] == current.version, (
        "history disagrees with the alias"
    )
    return current.version


def crash_before_alias_move(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 2 fails: the pending entry is written, the champion alias never moves."""
    from mlflow import MlflowClient

    def set_alias(self: MlflowClient, name: str, alias: str, version: str) -> None:
        raise Crash(f"died before moving {alias} to v{version}")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_alias)


def crash_after_alias_move(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 3 fails: the alias has moved, the entry still says "pending"."""
    real = registry._write_entry

    def write_entry(config, key: str, entry: dict) -> None:
        if entry["outcome"] == registry.MOVED:
            raise Crash(f"died after moving {entry['alias']} to v{entry['to']}")
        real(config, key, entry)

    monkeypatch.setattr(registry, "_write_entry", write_entry)


def test_crash_before_the_alias_moves_then_the_retry_completes(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(home)
    crash_before_alias_move(monkeypatch)
    with case("fault", "promotion crashed between its history entry and the alias move", home):
        with pytest.raises(Crash):
            registry.promote(home.config, _ref(home, "2"), "1", "gate passed", "train-1")
        assert _consistent(home) == "1", "the champion moved although the move crashed before it"
        assert registry.history(home.config)[-1] | {"at": None} == {
            "at": None,
            "alias": "champion",
            "from": "1",
            "to": "2",
            "reason": "gate passed",
            "by": "train-1",
            "outcome": "pending",
        }
        assert _promoted_at(home, "2") is None
    monkeypatch.undo()  # the retry runs in a healthy process
    with case(
        "fault", "retry after a crash before the alias move completes the same move", home, since=before
    ):
        registry.promote(home.config, _ref(home, "2"), "1", "gate passed", "train-1 (retry)")
        assert _consistent(home) == "2"
        recorded = _recorded(home)
        assert len(recorded) == len(before.history) + 1, "the retry recorded the move twice"
        assert (recorded[-1]["from"], recorded[-1]["to"], recorded[-1]["outcome"]) == ("1", "2", "moved")
        assert _promoted_at(home, "2") is not None


def test_crash_after_the_alias_moved_then_the_retry_completes(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(home)
    crash_after_alias_move(monkeypatch)
    with case("fault", "promotion crashed after the alias moved, before its history said so", home):
        with pytest.raises(Crash):
            registry.promote(home.config, _ref(home, "2"), "1", "gate passed", "train-1")
        assert _recorded(home)[-1]["outcome"] == "pending"
        # readers reconcile the pending entry with the alias: the move happened
        assert _consistent(home) == "2"
        assert registry.history(home.config)[-1]["outcome"] == "moved"
    monkeypatch.undo()
    with case("fault", "retry after a crash past the alias move finds it done", home, since=before):
        registry.promote(home.config, _ref(home, "2"), "1", "gate passed", "train-1 (retry)")
        recorded = _recorded(home)
        assert len(recorded) == len(before.history) + 1, "the retry recorded a second move or a refusal"
        assert (recorded[-1]["to"], recorded[-1]["outcome"]) == ("2", "moved")
        assert _consistent(home) == "2" and _promoted_at(home, "2") is not None


def test_a_move_that_never_happened_is_settled_by_the_next_one(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(
        home
    )  # a pending entry is in flight, not yet a record: compare with the state before it
    crash_before_alias_move(monkeypatch)
    with pytest.raises(Crash):
        registry.promote(home.config, _ref(home, "2"), "1", "gate passed", "train-1")
    monkeypatch.undo()
    with case("fault", "another promotion after a crashed one settles it as abandoned", home, since=before):
        registry.promote(home.config, _ref(home, "3"), "1", "gate passed", "train-2")
        outcomes = [(e["from"], e["to"], e["outcome"]) for e in _recorded(home)]
        assert outcomes == [(None, "1", "moved"), ("1", "2", "abandoned"), ("1", "3", "moved")]
        assert [(m["from"], m["to"]) for m in registry.champion_moves(home.config)] == [
            (None, "1"),
            ("1", "3"),
        ]
        assert _consistent(home) == "3"
        # the abandoned move is not a previous champion: rolling back goes to v1
        assert registry.rollback(home.config, None, "test") == ("3", "1")
        assert _consistent(home) == "1"


def test_rollback_crashes_and_retries_converge(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.promote(home.config, _ref(home, "2"), "1", "gate passed", "train-1")
    entries = len(_recorded(home))
    with case("fault", "rollback crashed before the alias move; the retry resumes it", home):
        with monkeypatch.context() as patch:
            crash_before_alias_move(patch)
            with pytest.raises(Crash):
                registry.rollback(home.config, None, "cli:oncall")
        assert _consistent(home) == "2"
        assert registry.rollback(home.config, None, "cli:oncall") == ("2", "1")
        assert _consistent(home) == "1"
        assert [(e["from"], e["to"], e["outcome"]) for e in _recorded(home)[entries:]] == [
            ("2", "1", "moved")
        ]
    entries = len(_recorded(home))
    with case("fault", "rollback crashed after the alias move; the retry with --to finds it done", home):
        with monkeypatch.context() as patch:
            crash_after_alias_move(patch)
            with pytest.raises(Crash):
                registry.rollback(home.config, "2", "cli:oncall")
        assert _consistent(home) == "2"
        assert registry.rollback(home.config, "2", "cli:oncall") == ("1", "2")
        assert [(e["from"], e["to"], e["outcome"]) for e in _recorded(home)[entries:]] == [
            ("1", "2", "moved")
        ]


CHILD = """
import os, sys
from mlflow import MlflowClient
from ml import registry
from ml.config import Paths, load_config

real = MlflowClient.set_registered_model_alias


def set_alias(self, name, alias, version):
    real(self, name, alias, version)
    os._exit(9)  # killed right after the alias moved, holding the alias lock


MlflowClient.set_registered_model_alias = set_alias
config = load_config()
registry.connect(config, Paths.from_env())
registry.promote(config, registry.VersionRef(config.model_name, "3", ""), "1", "gate passed", "killed-task")
"""


def test_a_task_killed_mid_move_leaves_the_lock_free_and_the_retry_completes(home: Home) -> None:
    before = snapshot(home)
    with case("fault", "process killed (os._exit) after the alias move; the retry completes", home):
        done = subprocess.run(
            [sys.executable, "-c", CHILD],
            env=child_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 9, done.stderr[-2000:]
        assert _recorded(home)[-1]["outcome"] == "pending"
        assert _consistent(home) == "3"
        # the lock died with the process: this promotion does not block, and it is the retry of that move
        registry.promote(home.config, _ref(home, "3"), "1", "gate passed", "killed-task (retry)")
        recorded = _recorded(home)
        assert len(recorded) == len(before.history) + 1
        assert (recorded[-1]["from"], recorded[-1]["to"], recorded[-1]["outcome"]) == ("1", "3", "moved")
        assert _consistent(home) == "3"
