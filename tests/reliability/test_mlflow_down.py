"""The MLflow tracking server fails while Loopline trains and promotes (a real ``mlflow server``, SQLite backend,
``--serve-artifacts``, on 127.0.0.1 in 28700-28799; the tasks reach it over HTTP only, as in production).

Faults: the server is stopped (SIGTERM) in the middle of a training run, it is down when a promotion runs, and it
hangs (SIGSTOP) during a promotion. Each time the step must fail fast with an error naming the server, leave no
registered version without its model, no alias on a missing version, the champion where it was, and a re-run
after the server is back must complete. The client gets short timeouts and one retry (a task's settings).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    FIGURES,
    Home,
    assert_untouched,
    case,
    free_port_in,
    loopline_env,
    scenario_of,
    snapshot,
)

from ml import registry, steps
from ml.config import Paths
from ml.stack import Stack, start_mlflow_server

pytestmark = pytest.mark.e2e
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
FAIL_FAST = 90.0  # seconds a step may take to fail against a dead or hung server


@dataclass
class MlflowServer:
    """One ``mlflow server`` process this test starts, stops, freezes and restarts."""

    stack: Stack
    backend: Path
    artifacts: Path
    port: int
    name: str = "mlflow-fault"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        start_mlflow_server(
            self.stack,
            self.name,
            f"sqlite:///{self.backend}",
            self.port,
            artifacts_destination=self.artifacts,
        )

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 20 s), as an orchestrator stops a server."""
        self.stack.stop(timeout=20, names=[self.name])

    def signal_all(self, sig: signal.Signals) -> None:
        os.killpg(self.stack.running()[self.name], sig)

    def listening_addresses(self) -> set[str]:
        import psutil

        root = psutil.Process(self.stack.running()[self.name])
        found = set()
        for process in [root, *root.children(recursive=True)]:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found.add(connection.laddr.ip)
        return found


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path
) -> Iterator[tuple[Home, Any]]:
    """A home whose registry is a live MLflow server; months 1-3 ingested (lake and GE are local)."""
    from ml import demo_data

    folder = tmp_path_factory.mktemp("mlflow-down")
    backend = folder / "server" / "mlflow.db"
    backend.parent.mkdir(parents=True)
    shutil.copyfile(mlflow_store_template, backend)
    server = MlflowServer(Stack(Paths(folder / "server")), backend, folder / "server" / "artifacts", 0)
    server.port = free_port_in(28700, 28799)
    scenario = scenario_of(4)
    with loopline_env(folder / "home", MLFLOW_TRACKING_URI=server.url, **CLIENT_ENV) as bare:
        home = Home(bare.config, bare.paths, scenario)
        server.start()
        try:
            demo_data.write_landing(scenario, home.paths.landing / "loans")
            for month in (1, 2, 3):
                steps.ingest_batch(home.config, home.paths, scenario.batch_key(month))
            yield home, server
        finally:
            server.stop()


def _consistent(home: Home, champion: str | None) -> list[dict[str, Any]]:
    """Every version's model loads, every alias names an existing version, the champion is ``champion``."""
    registry.connect(home.config, home.paths)
    versions = registry.versions(home.config)
    for version in versions:
        ref = registry.VersionRef(home.config.model_name, version["version"], version["run_id"])
        assert registry.load_model(ref) is not None, f"version {ref.version} has no loadable model"
    aliases = dict(registry._client().get_registered_model(home.config.model_name).aliases)
    known = {v["version"] for v in versions}
    assert set(map(str, aliases.values())) <= known, f"an alias points at a missing version: {aliases}"
    current = registry.champion(home.config)
    assert (current.version if current else None) == champion
    return versions


def _running_runs(backend: Path) -> set[str]:
    try:
        with sqlite3.connect(f"file:{backend}?mode=ro", uri=True, timeout=1) as db:
            return {row[0] for row in db.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'")}
    except sqlite3.Error:
        return set()


def _stop_when_a_run_starts(server: MlflowServer, known: set[str], stopped: threading.Event) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if _running_runs(server.backend) - known:
            server.stop()
            stopped.set()
            return
        time.sleep(0.02)


def _assert_names_the_server(error: BaseException, server: MlflowServer) -> None:
    text = f"{error!r} {error}"
    assert str(server.port) in text, f"the error does not name the MLflow server:\n{text[:2000]}"
    assert any(word in text for word in ("Connection refused", "Max retries exceeded", "timed out")), text[
        :2000
    ]


def test_server_stops_during_training_then_down_during_promotion(served: tuple[Home, Any]) -> None:
    home, server = served
    with case("security", "the MLflow server binds 127.0.0.1 only"):
        assert server.listening_addresses() == {"127.0.0.1"}, server.listening_addresses()
    window = steps.plan_training(home.config, home.paths, None, None)["batches"]
    first = steps.train_challenger(
        home.config, home.paths, window, {"num_boost_round": 60}, None, "first", {}
    )
    registry.promote(
        home.config,
        registry.VersionRef(home.config.model_name, first["version"], first["run_id"]),
        None,
        "first",
        "t",
    )
    pending = steps.train_challenger(
        home.config, home.paths, window, {"num_boost_round": 60}, None, "pending", {}
    )
    before = snapshot(home)

    with case("fault", "MLflow server stopped (SIGTERM) in the middle of training"):
        stopped = threading.Event()
        watcher = threading.Thread(
            target=_stop_when_a_run_starts, args=(server, _running_runs(server.backend), stopped), daemon=True
        )
        watcher.start()
        started = time.monotonic()
        with pytest.raises(Exception) as raised:
            steps.train_challenger(
                home.config, home.paths, window, {"num_boost_round": 60}, None, "killed", {}
            )
        assert time.monotonic() - started < FAIL_FAST, "training hung on a dead server"
        watcher.join(timeout=60)
        assert stopped.is_set(), "the server was not stopped during the run"
        _assert_names_the_server(raised.value, server)
        FIGURES.notes.append(
            f"training with MLflow gone fails with: {str(raised.value).splitlines()[0][:220]}"
        )

    with case("fault", "MLflow server down when a promotion runs"):
        started = time.monotonic()
        evaluation = {"promote": True, "reason": "forced by the fault test", "champion_version": "1"}
        with pytest.raises(Exception) as raised:
            steps.promote_challenger(home.config, home.paths, pending["version"], evaluation, True, "fault")
        assert time.monotonic() - started < FAIL_FAST, "promotion hung on a dead server"
        _assert_names_the_server(raised.value, server)

    server.start()
    with case("fault", "after the restart: registry consistent, champion untouched", home, since=before):
        _consistent(home, "1")
        after = snapshot(home)
        assert after.aliases["champion"] == before.aliases["champion"] == "1"
        assert after.history[: len(before.history)] == before.history
        dangling = _running_runs(server.backend)
        assert not dangling & set(after.versions.values()), "a version of the interrupted run was registered"
        FIGURES.notes.append(
            f"MLflow stopped mid-training: {len(dangling)} run(s) left RUNNING on the server, no version of it"
        )
    with case("fault", "re-run of training and promotion after the restart completes", home):
        again = steps.train_challenger(
            home.config, home.paths, window, {"num_boost_round": 60}, None, "re-run", {}
        )
        promoted = steps.promote_challenger(
            home.config, home.paths, pending["version"], evaluation, True, "fault re-run"
        )
        assert promoted["promoted"] and promoted["champion_version"] == pending["version"]
        versions = _consistent(home, pending["version"])
        assert versions[-1]["version"] == again["version"]
        aliases = dict(registry._client().get_registered_model(home.config.model_name).aliases)
        assert str(aliases["challenger"]) == again["version"]
        assert registry.champion_moves(home.config)[-1]["to"] == pending["version"]


def test_server_hangs_during_promotion(served: tuple[Home, Any]) -> None:
    home, server = served
    current = registry.champion(home.config)
    assert current is not None
    newest = registry.versions(home.config)[-1]["version"]
    assert newest != current.version
    before = snapshot(home)
    evaluation = {"promote": True, "reason": "forced by the fault test", "champion_version": current.version}
    with case("fault", "MLflow server hung (SIGSTOP) during a promotion"):
        server.signal_all(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(Exception) as raised:
                steps.promote_challenger(home.config, home.paths, newest, evaluation, True, "fault")
            assert time.monotonic() - started < FAIL_FAST, "promotion hung on a hung server"
        finally:
            server.signal_all(signal.SIGCONT)
        _assert_names_the_server(raised.value, server)
    with case("fault", "after the hang: champion untouched; the re-run promotes", home, since=before):
        _consistent(home, current.version)
        assert_untouched(before, snapshot(home))
        done = steps.promote_challenger(home.config, home.paths, newest, evaluation, True, "fault re-run")
        assert done["promoted"]
        _consistent(home, newest)
