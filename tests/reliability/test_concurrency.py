"""Concurrency and idempotency: re-runs, a backfill run twice, racing alias moves in separate processes, and two
``loopline_train`` runs requested at once through the real scheduler.

The module trains its own champion (the race moves it). A backfill replays what the DAGs do per batch:
``loopline_ingest`` (``ml.steps.ingest_batch``), then ``loopline_monitor`` (``ml.steps.monitor_batch``, and
``ml.policy.record_request`` when it says retrain, as the ``request_retrain`` task does). The last test starts the
embedded profile's Airflow (``ml.stack.start_airflow``) over the same home.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    FIGURES,
    ROOT,
    Home,
    assert_untouched,
    build_champion_home,
    case,
    child_env,
    entered,
    lake_state,
    snapshot,
)

from ml import policy, registry, steps
from ml.airflow_client import AirflowClient
from ml.stack import Stack, free_port, start_airflow

BACKFILL = ["2025-06", "2025-07", "2025-08"]
WORKER = Path(__file__).with_name("reliability_workers.py")
AIRFLOW_PORT = 28760
TRAIN = "loopline_train"
RETRAIN_REQUEST = "loopline_retrain_request"  # plugins/loopline_airflow/assets.py


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[Home]:
    folder = tmp_path_factory.mktemp("concurrency")
    scenario = build_champion_home(folder, mlflow_store_template, months=8)
    with entered(folder, scenario) as home:
        yield home


def _backfill(home: Home, batches: list[str]) -> list[dict]:
    """Ingest, monitor and (when the policy says so) request a retrain for each batch, oldest first."""
    monitored = []
    for batch in batches:
        steps.ingest_batch(home.config, home.paths, batch)
        result = steps.monitor_batch(home.config, home.paths, batch)
        if result["retrain"]:
            features = [f["column"] for f in result["top_features"]]
            policy.record_request(home.paths, batch, result["reason"], features)
        monitored.append(result)
    return monitored


def test_rerunning_ingest_for_the_same_batch_changes_nothing(home: Home) -> None:
    batch = "2025-04"
    first = steps.ingest_batch(home.config, home.paths, batch)
    before = snapshot(home)
    with case("concurrency", "re-run of loopline_ingest for the same batch", home):
        again = steps.ingest_batch(home.config, home.paths, batch)
        assert again["sha256"] == first["sha256"] and again["rows"] == first["rows"]
        assert_untouched(before, snapshot(home))


def test_backfill_twice_gives_the_same_lake_and_no_spurious_retrain_request(home: Home) -> None:
    with case("concurrency", "backfill of past batches (first pass)", home):
        first = _backfill(home, BACKFILL)
        requested = policy.past_requests(home.paths)
        assert [r["batch"] for r in requested] == ["2025-07"], [(r["batch"], r["reason"]) for r in first]
        assert next(r for r in first if r["batch"] == "2025-08")["reason"].startswith("no retrain: cooldown")
    lake_after_first = lake_state(home.paths.lake)
    before = snapshot(home)
    with case("concurrency", "backfill of the same batches again", home):
        second = _backfill(home, BACKFILL)
        assert lake_state(home.paths.lake) == lake_after_first, "the lake changed on the second backfill"
        assert_untouched(before, snapshot(home))
        assert not [r["batch"] for r in second if r["retrain"]], "a spurious retrain request"
        assert policy.past_requests(home.paths) == requested
        by_batch = {r["batch"]: r["reason"] for r in second}
        assert by_batch["2025-07"] == "no retrain: already requested for batch 2025-07"
        assert by_batch["2025-08"].startswith("no retrain: cooldown")
        assert [r["verdict"] for r in second] == [r["verdict"] for r in first]


def test_racing_promotions_in_processes_one_wins_and_history_records_both(home: Home, tmp_path: Path) -> None:
    """Two processes promote different challengers over the same champion at the same moment.

    The challengers are new versions of the champion's own model (registering costs ~50 ms; training would not
    change what is raced: the alias).
    """
    champion_before = registry.champion(home.config)
    assert champion_before is not None and champion_before.version == "1"
    client = registry._client()
    source = client.get_model_version(home.config.model_name, "1").source
    racers = [
        {"version": str(v.version), "run_id": champion_before.run_id}
        for v in (
            client.create_model_version(home.config.model_name, source, champion_before.run_id)
            for _ in range(2)
        )
    ]
    go = tmp_path / "go"
    with case("concurrency", "two alias moves racing (separate processes)", home):
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    "race",
                    r["version"],
                    r["run_id"],
                    str(go),
                    f"racer-{r['version']}",
                ],
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for r in racers
        ]
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        go.touch()
        outcomes = {}
        for racer, process in zip(racers, processes, strict=True):
            _, err = process.communicate(timeout=120)
            assert process.returncode in (0, 3), err[-2000:]
            outcomes[racer["version"]] = "won" if process.returncode == 0 else "refused"
        assert sorted(outcomes.values()) == ["refused", "won"], outcomes
        winner = next(v for v, outcome in outcomes.items() if outcome == "won")
        loser = next(v for v, outcome in outcomes.items() if outcome == "refused")
        assert registry.champion(home.config).version == winner
        attempts = [h for h in registry.history(home.config) if h["by"].startswith("racer-")]
        assert [(h["by"], h["outcome"], h["from"], h["to"]) for h in attempts] == [
            (f"racer-{winner}", "moved", "1", winner),
            (f"racer-{loser}", "refused", winner, loser),
        ], attempts
        assert f"champion is now v{winner}, not v1 as evaluated" in attempts[1]["reason"]
        moves = registry.champion_moves(home.config)
        assert moves[-1]["to"] == registry.champion(home.config).version, "history disagrees with the alias"


@pytest.fixture(scope="module")
def airflow(home: Home) -> Iterator[AirflowClient]:
    """The embedded profile's Airflow over the module's home, with only loopline_train unpaused (less load)."""
    stack = Stack(home.paths)
    try:
        endpoints = start_airflow(stack, ROOT / "loopline.yaml", free_port(AIRFLOW_PORT))
        client = AirflowClient(endpoints.airflow_url, endpoints.username, endpoints.password)
        client.wait_for_dags([TRAIN], timeout=180)
        for dag in client._call("GET", "/dags", params={"limit": 100})["dags"]:
            client._call("PATCH", f"/dags/{dag['dag_id']}", json={"is_paused": dag["dag_id"] != TRAIN})
        yield client
    finally:
        stack.stop(timeout=20)


def _post_retrain_request(client: AirflowClient, extra: dict[str, Any]) -> None:
    """What ``loopline_monitor``'s ``request_retrain`` emits, posted as an asset event through the REST API."""
    found = client._call("GET", "/assets", params={"name_pattern": RETRAIN_REQUEST})["assets"]
    [asset_id] = [a["id"] for a in found if a["name"] == RETRAIN_REQUEST]
    client._call("POST", "/assets/events", json={"asset_id": asset_id, "extra": extra})


def _interval(client: AirflowClient, run_id: str) -> tuple[datetime, datetime]:
    """From the first task's start to the last task's end of one run."""
    tasks = [t for t in client.task_instances(TRAIN, run_id).values() if t["start_date"] and t["end_date"]]
    assert tasks, f"{run_id}: no task ran"
    return (
        min(datetime.fromisoformat(t["start_date"]) for t in tasks),
        max(datetime.fromisoformat(t["end_date"]) for t in tasks),
    )


@pytest.mark.e2e
def test_a_manual_run_and_a_drift_request_at_once_run_one_at_a_time(
    home: Home, airflow: AirflowClient
) -> None:
    """Runs last (it moves the champion). Both requests reach the scheduler within milliseconds."""
    client = airflow
    batch = steps.lake_of(home.paths).batches("loans")[-1]
    moves_before = len(registry.champion_moves(home.config))
    started = time.monotonic()
    with case("concurrency", "manual loopline_train and a drift request at once (real scheduler)", home):
        reason = "concurrency test: drift at the same moment as a manual run"
        extra = {**policy.record_request(home.paths, batch, reason, ["income"]), "trigger": "drift"}
        manual = client.trigger(TRAIN, {"num_boost_round": 40})
        _post_retrain_request(client, extra)
        # The scheduler holds the request (queued, not dropped) until the manual run ends: max_active_runs=1.
        assert client.wait_run(TRAIN, manual, timeout=900)["state"] == "success", manual
        drift = client.wait_new_run(TRAIN, {manual}, timeout=120)
        assert drift is not None, "the retrain request created no loopline_train run"
        assert client.wait_run(TRAIN, drift["dag_run_id"], timeout=900)["state"] == "success"
        run_ids = [manual, drift["dag_run_id"]]
        first, second = sorted(run_ids, key=lambda run_id: _interval(client, run_id)[0])
        assert _interval(client, first)[1] <= _interval(client, second)[0], "the two runs overlapped"
        assert client.xcom(TRAIN, drift["dag_run_id"], "plan")["trigger"] == "drift"

        # the second run was gated against the champion the first one left
        promoted = [r for r in (first, second) if client.xcom(TRAIN, r, "promote")["promoted"]]
        moves = registry.champion_moves(home.config)
        champion_after_first = moves[moves_before if first in promoted else moves_before - 1]["to"]
        compared_with = client.xcom(TRAIN, second, "evaluate")["champion_version"]
        assert compared_with == champion_after_first, (compared_with, champion_after_first)

        # the alias and the history agree: one "moved" entry per promoting run, in order, nothing else
        assert [m["by"] for m in moves[moves_before:]] == [f"airflow:{TRAIN}/{r}" for r in promoted]
        assert registry.champion(home.config).version == moves[-1]["to"]
        ours = [h for h in registry.history(home.config) if h["by"].startswith(f"airflow:{TRAIN}/")]
        assert {h["outcome"] for h in ours} <= {"moved"}, ours
    seconds = time.monotonic() - started
    FIGURES.notes.append(
        f"manual run + drift request at once: one after the other, {len(promoted)} promoted, {seconds:.0f} s"
    )
