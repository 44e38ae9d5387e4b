"""Hot swap under load with two workers: promotion (alias poll), rollback (/admin/reload), and a version that
never passed the gate refused even when the alias is moved to it by hand."""

from __future__ import annotations

import itertools
import time

import pytest
import requests
from serve_support import TOKEN, Load, build_home, config_with, records_of

pytestmark = pytest.mark.e2e

POLL = 1.0
LOAD_BUDGET = 60.0  # loading a version on a busy 2-core machine; the swap itself is one assignment


@pytest.fixture(scope="module")
def swap_home(tmp_path_factory: pytest.TempPathFactory):
    """v1 is a deliberately weak champion (five stumps), so a full model beats it at the gate (no bootstrap
    rule: 450 holdout rows are too few for it to be sure of a 0.03 AUC gain)."""
    folder = tmp_path_factory.mktemp("swap-home")
    config_file = config_with(folder, gate={"bootstrap_rounds": 0})
    return build_home(folder / "home", first={"num_boost_round": 5, "max_depth": 1}, config_file=config_file)


def _versions_by_thread(load: Load) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for answer in sorted(load.answered, key=lambda a: a.received):
        out.setdefault(answer.thread, []).append(answer.version)
    return out


def test_swaps_under_load_without_a_failed_request(swap_home, start_server) -> None:
    from ml import registry, steps
    from ml.serve.notify import notify_reload

    config, paths = swap_home.config, swap_home.paths
    records = records_of(steps.lake_of(paths).read("loans", [swap_home.scenario.batch_key(4)]))[:400]
    challenger = swap_home.train(4, promote=False)
    assert challenger["evaluation"]["promote"], challenger["evaluation"]["reason"]
    v2 = challenger["version"]

    server = start_server(swap_home, workers=2, poll_interval=POLL)
    server.wait_ready(version="1")
    with Load(server, records, threads=4) as load:
        time.sleep(2)
        promoted_from = time.time()
        with swap_home.active():
            steps.promote_challenger(config, paths, v2, challenger["evaluation"], True, "test")
        promoted_at = time.time()
        server.wait_ready(version=v2, timeout=LOAD_BUDGET)
        all_swapped = time.time()
        time.sleep(2)

        with swap_home.active():
            assert registry.rollback(config, None, "test") == (v2, "1")
        rolled_back = time.time()
        reload = notify_reload(server.url, TOKEN, timeout=LOAD_BUDGET)
        # the worker that answers either swaps now or had already seen the alias move on its own poll
        assert reload is not None and reload["version"] == "1"
        assert reload["changed"] is True or reload["before"] == "1", reload
        server.wait_ready(version="1", timeout=LOAD_BUDGET)
        all_back = time.time()
        time.sleep(1)

    assert load.failures == []
    answered = load.answered
    time.sleep(1.5)  # each worker's counts reach the shared snapshots within a second
    metrics = requests.get(f"{server.url}/metrics", headers=server.headers, timeout=10).text
    assert "loopline_serve_workers 2" in metrics
    assert f'loopline_serve_requests_total{{path="/predict",code="200"}} {len(answered)}' in metrics
    assert metrics.count("loopline_serve_model_info{") == 2
    assert notify_reload("http://127.0.0.1:9", TOKEN, timeout=2) is None  # nobody there: logged, not raised
    assert len(answered) > 100
    assert {a.version for a in answered} == {"1", v2}
    for answer in answered:
        if answer.version == v2:  # v2 only ever answered while the alias named it
            assert promoted_from <= answer.received and answer.sent <= all_back + 0.5
        elif (
            answer.sent > promoted_at
        ):  # v1 after the promotion only until the swap, and again after rollback
            assert answer.sent <= all_swapped + 0.5 or answer.received >= rolled_back
    for versions in _versions_by_thread(load).values():  # each connection sees 1 -> v2 -> 1, never flapping
        changes = [b for a, b in itertools.pairwise(versions) if a != b]
        assert changes in ([v2, "1"], [v2], []), changes
    print(
        f"{len(answered)} answers; promotion to v{v2} served by every worker {all_swapped - promoted_at:.1f} s "
        f"after the alias moved (poll {POLL} s); rollback via /admin/reload in {all_back - rolled_back:.1f} s"
    )


def test_a_version_that_never_passed_the_gate_is_refused(swap_home, start_server) -> None:
    from ml import registry, steps

    weak = swap_home.train(4, {"num_boost_round": 1, "max_depth": 1})
    assert not weak["evaluation"]["promote"] and not weak["promotion"]["promoted"]
    server = start_server(swap_home, poll_interval=POLL)
    ready = server.wait_ready()
    serving = ready["model_version"]
    with swap_home.active():
        registry._client().set_registered_model_alias(
            swap_home.config.model_name, "champion", weak["version"]
        )
    try:
        reload = requests.post(f"{server.url}/admin/reload", headers=server.headers, timeout=60).json()
        assert reload["refused"] == weak["version"] and reload["version"] == serving
        assert "never champion before" in reload["reason"]
        time.sleep(POLL * 2)
        ready = requests.get(f"{server.url}/ready", headers=server.headers, timeout=10).json()
        assert ready["model_version"] == serving and weak["version"] in ready["refused_versions"]
        assert ready["alias_version"] == weak["version"]
        month = steps.lake_of(swap_home.paths).read("loans", [swap_home.scenario.batch_key(4)])
        record = records_of(month.head(1))[0]
        assert server.predict(record).json()["model_version"] == serving
        metrics = requests.get(f"{server.url}/metrics", headers=server.headers, timeout=10).text
        assert 'loopline_serve_model_events_total{event="refused"} 1' in metrics
    finally:
        with swap_home.active():
            registry._client().set_registered_model_alias(swap_home.config.model_name, "champion", serving)
