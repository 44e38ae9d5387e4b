"""Helpers of the reliability suite: private homes, a champion trained once, snapshots, and the counted cases.

Every case runs inside ``case(category, name, home)``: it counts as tried on entry and as held when its body
passes, and the lake and the registry of ``home`` are snapshotted before and after, so "records lost" is computed,
not claimed (lake rows of partitions that vanished or changed, model versions, aliases and history entries that
vanished). ``conftest.py`` prints the figures at the end of the pytest session.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = {
    "bad_input": "bad-input cases tried/held",
    "fault": "faults injected/survived",
    "concurrency": "concurrency cases/held",
    "security": "security checks run/held",
}


@dataclass
class Figures:
    """What the suite tried, what held, and what was lost, over the whole session."""

    tried: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)
    records_compared: int = 0
    cases_compared: int = 0
    records_lost: int = 0
    losses: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


FIGURES = Figures()


@dataclass(frozen=True)
class Home:
    """A private LOOPLINE_HOME with its config and paths (and the demo scenario landed in it, if any)."""

    config: Any
    paths: Any
    scenario: Any = None


@dataclass(frozen=True)
class Snapshot:
    """The lake's partitions (by real content hash) and the registry's versions, aliases and history."""

    partitions: dict[tuple[str, str], tuple[str, int]]
    versions: dict[str, str]
    aliases: dict[str, str]
    history: tuple[str, ...]

    def records(self) -> int:
        return sum(rows for _, rows in self.partitions.values()) + len(self.versions) + len(self.history)

    def lost_since(self, before: Snapshot) -> tuple[int, list[str]]:
        """Records present in ``before`` that are gone or changed now (lake rows, versions, history entries)."""
        lost, what = 0, []
        for key, (digest, rows) in before.partitions.items():
            if self.partitions.get(key, ("", 0))[0] != digest:
                lost += rows
                what.append(f"lake partition {key[0]}/batch={key[1]} ({rows} rows) vanished or changed")
        for version in set(before.versions) - set(self.versions):
            lost += 1
            what.append(f"model version {version} vanished")
        if self.history[: len(before.history)] != before.history:
            missing = [h for h in before.history if h not in self.history]
            lost += max(1, len(missing))
            what.append(f"registry history rewritten ({len(missing)} entries gone)")
        for alias, version in self.aliases.items():
            if version not in self.versions:
                lost += 1
                what.append(f"alias {alias} points at missing version {version}")
        return lost, what


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lake_state(lake_root: Path) -> dict[tuple[str, str], tuple[str, int]]:
    """Every complete partition of every table, keyed by (table, batch): the sha256 of its data file's bytes
    (computed here, not read from the lake's metadata, which must agree) and its rows."""
    from ml.lake import Lake

    lake = Lake(lake_root)
    found: dict[tuple[str, str], tuple[str, int]] = {}
    if not lake_root.is_dir():
        return found
    for table in sorted(p.name for p in lake_root.iterdir() if p.is_dir()):
        for batch in lake.batches(table):
            partition = lake.partition(table, batch)
            actual = file_sha256(partition.data_file)
            assert actual == partition.sha256, (
                f"{partition.data_file}: metadata hash does not match its bytes"
            )
            found[(table, batch)] = (actual, partition.rows)
    return found


def registry_state(home: Home) -> tuple[dict[str, str], dict[str, str], tuple[str, ...]]:
    """The model's versions (version -> run id), aliases and history entries; empty before the first version."""
    from mlflow.exceptions import MlflowException

    from ml import registry

    registry.connect(home.config, home.paths)
    try:
        model = registry._client().get_registered_model(home.config.model_name)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}:
            return {}, {}, ()
        raise
    versions = {v["version"]: v["run_id"] for v in registry.versions(home.config)}
    history = tuple(json.dumps(e, sort_keys=True) for e in registry.history(home.config))
    return versions, {str(k): str(v) for k, v in dict(model.aliases).items()}, history


def snapshot(home: Home, with_registry: bool = True) -> Snapshot:
    versions, aliases, history = registry_state(home) if with_registry else ({}, {}, ())
    return Snapshot(lake_state(home.paths.lake), versions, aliases, history)


@contextmanager
def case(
    category: str,
    name: str,
    home: Home | None = None,
    registry: bool = True,
    since: Snapshot | None = None,
    known_defect: str | None = None,
) -> Iterator[None]:
    """One counted case: tried on entry, held if the body passes and nothing recorded before was lost.

    With ``home``, its lake and registry are compared before (or ``since``) and after the body.
    ``known_defect`` names the fix an xfail case waits for (shown when it does not hold).
    """
    assert category in CATEGORIES, category
    FIGURES.tried[category] += 1
    before = since or (snapshot(home, registry) if home is not None else None)
    try:
        yield
        if home is not None and before is not None:
            after = snapshot(home, registry)
            lost, what = after.lost_since(before)
            FIGURES.records_compared += before.records()
            FIGURES.cases_compared += 1
            FIGURES.records_lost += lost
            FIGURES.losses += [f"{name}: {w}" for w in what]
            assert not lost, f"{name}: records lost: {what}"
    except BaseException as exc:
        if isinstance(exc, pytest.skip.Exception):
            FIGURES.tried[category] -= 1
        else:
            FIGURES.failed.append(
                f"{category}: {name}" + (f" [xfail: {known_defect}]" if known_defect else "")
            )
        raise
    FIGURES.held[category] += 1


def assert_untouched(before: Snapshot, after: Snapshot) -> None:
    """The lake's accepted partitions, the registry's versions, aliases (the champion) and history are the same."""
    assert after.partitions == before.partitions, "the lake's accepted partitions changed"
    assert after.versions == before.versions, "the registry's versions changed"
    assert after.aliases == before.aliases, "an alias (the champion) moved"
    assert after.history == before.history, "the registry history changed"


@contextmanager
def loopline_env(folder: Path, **extra: str) -> Iterator[Home]:
    """LOOPLINE_HOME=folder, LOOPLINE_CONFIG=loopline.yaml (and ``extra``) for the duration; yields the Home."""
    from ml.config import Paths, load_config

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOPLINE_HOME", str(folder))
        patch.setenv("LOOPLINE_CONFIG", str(ROOT / "loopline.yaml"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, value in extra.items():
            patch.setenv(key, value)
        yield Home(load_config(ROOT / "loopline.yaml"), Paths.from_env())


def train_once(home: Home, end_batch: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Plan, gate, train, evaluate and promote through ml.steps (as loopline_train does); returns the pieces."""
    from ml import steps

    config, paths = home.config, home.paths
    window = steps.plan_training(config, paths, end_batch, None)
    summary = steps.validate_window(config, paths, window["batches"])
    trained = steps.train_challenger(
        config, paths, window["batches"], overrides or {"num_boost_round": 80}, summary, "reliability", {}
    )
    evaluation = steps.evaluate_challenger(config, paths, window["batches"], trained["version"])
    promotion = steps.promote_challenger(config, paths, trained["version"], evaluation, True, "reliability")
    return {"window": window, "trained": trained, "evaluation": evaluation, "promotion": promotion}


def scenario_of(months: int, rows_per_month: int = 1200) -> Any:
    """The suite's demo data: 1,200 loans a month unless told, a shift from month 7, no incident month."""
    from ml import demo_data

    return demo_data.Scenario(
        months=months, rows_per_month=rows_per_month, shift_from_month=7, incident_months=()
    )


def migrated_mlflow_store(target: Path) -> Path:
    """An empty MLflow SQLite store with its schema migrated (~10 s once; a copy of it opens at once)."""
    from mlflow import MlflowClient

    target.parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(f"sqlite:///{target}").search_experiments()
    return target


def build_champion_home(folder: Path, store_template: Path, months: int) -> Any:
    """Land ``months`` demo months in a new home, ingest months 1-3 and train champion v1 on them.

    The home's MLflow store starts as a copy of ``store_template``. Returns the scenario.
    """
    from ml import demo_data, registry, steps

    scenario = scenario_of(months)
    with loopline_env(folder) as home:
        home.paths.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store_template, home.paths.mlflow_db)
        demo_data.write_landing(scenario, home.paths.landing / "loans")
        for month in (1, 2, 3):
            steps.ingest_batch(home.config, home.paths, scenario.batch_key(month))
        result = train_once(home)
        assert result["promotion"]["promoted"], result["evaluation"]
        assert registry.champion(home.config).version == "1"
    return scenario


@contextmanager
def entered(folder: Path, scenario: Any) -> Iterator[Home]:
    """The environment of an existing home, with its scenario, for the duration."""
    from dataclasses import replace

    with loopline_env(folder) as bare:
        yield replace(bare, scenario=scenario)


def free_ports_in(first: int, last: int, count: int = 1) -> list[int]:
    """``count`` distinct ports of [first, last] nobody listens on at 127.0.0.1 (the suite's own range).

    Ports picked for servers that start later must be picked together: a free port is only reserved once its
    server binds it, so two separate picks can return the same port."""
    import random

    ports = list(range(first, last + 1))
    random.shuffle(ports)
    found: list[int] = []
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"fewer than {count} free ports in {first}-{last}")


def free_port_in(first: int, last: int) -> int:
    """A port of [first, last] nobody listens on at 127.0.0.1."""
    return free_ports_in(first, last)[0]


def child_env() -> dict[str, str]:
    """The environment of a child Python that imports Loopline from this checkout."""
    return dict(
        os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'plugins'}", MLFLOW_DISABLE_TELEMETRY="true"
    )
