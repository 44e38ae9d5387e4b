"""The loop's steps in process, with the real lake, Great Expectations, XGBoost and MLflow (SQLite)."""

from __future__ import annotations

import pytest

from ml import demo_data, registry, steps
from ml.ingest import BatchRejected


@pytest.fixture
def landed(config, paths, scenario):
    demo_data.write_landing(scenario, paths.landing / "loans")
    return scenario


def _train(config, paths, end_batch=None, overrides=None, promote=True):
    window = steps.plan_training(config, paths, end_batch, None)
    summary = steps.validate_window(config, paths, window["batches"])
    trained = steps.train_challenger(config, paths, window["batches"], overrides or {}, summary, "t", {})
    evaluation = steps.evaluate_challenger(config, paths, window["batches"], trained["version"])
    return (
        trained,
        evaluation,
        steps.promote_challenger(config, paths, trained["version"], evaluation, promote, "t"),
    )


def test_loop_in_process(config, paths, landed) -> None:
    for month in (1, 2, 3):
        steps.ingest_batch(config, paths, landed.batch_key(month))
    again = steps.ingest_batch(config, paths, landed.batch_key(3))
    assert again["sha256"] == steps.lake_of(paths).partition("loans", landed.batch_key(3)).sha256
    assert steps.lake_of(paths).batches("loans") == [landed.batch_key(m) for m in (1, 2, 3)]

    trained, evaluation, promotion = _train(config, paths)
    assert promotion["promoted"] and promotion["champion_version"] == trained["version"] == "1"
    assert registry.champion(config).version == "1"
    run_tags = registry._client().get_run(trained["run_id"]).data.tags
    assert run_tags["loopline.engine"] == "local" and run_tags["loopline.out_of_core"] == "no"

    # A crippled challenger (one shallow tree) must not replace the champion.
    worse, evaluation, promotion = _train(config, paths, overrides={"num_boost_round": 1, "max_depth": 1})
    assert not evaluation["promote"] and not promotion["promoted"]
    assert registry.champion(config).version == "1"
    tags = {v["version"]: v["tags"] for v in registry.versions(config)}
    assert tags[worse["version"]]["gate"] == "rejected"
    assert "rejected" in tags[worse["version"]]["gate_reason"]

    # promote=false trains and evaluates but leaves the champion.
    _, evaluation, promotion = _train(config, paths, promote=False)
    assert registry.champion(config).version == "1"
    assert not promotion["promoted"]

    # The incident batch is quarantined, the lake and champion untouched.
    with pytest.raises(BatchRejected, match="interest_rate"):
        steps.ingest_batch(config, paths, landed.batch_key(5))
    assert landed.batch_key(5) not in steps.lake_of(paths).batches("loans")
    assert (paths.quarantine / "loans" / landed.batch_key(5) / "reason.json").is_file()
    with pytest.raises(FileNotFoundError, match="quarantine"):
        steps.ingest_batch(config, paths, landed.batch_key(5))

    stable = steps.monitor_batch(config, paths, landed.batch_key(3))
    assert stable["verdict"] == "no_drift"
    for month in (4, 6, 7):
        steps.ingest_batch(config, paths, landed.batch_key(month))
    shifted = steps.monitor_batch(config, paths, landed.batch_key(7))
    assert shifted["verdict"] == "drift" and shifted["retrain"]
    assert shifted["top_features"]
    assert shifted["realised_performance"]["rows"] > 0
    assert 0.5 < shifted["realised_performance"]["roc_auc"] < 1
    scored = steps.score_batch(config, paths, landed.batch_key(7))
    assert scored["rows"] > 0 and scored["champion_version"] == "1"

    history = registry.champion_moves(config)
    assert [(h["from"], h["to"]) for h in history] == [(None, "1")]


def test_rollback_restores_the_previous_champion_and_history_shows_both(config, paths, landed) -> None:
    for month in (1, 2, 3):
        steps.ingest_batch(config, paths, landed.batch_key(month))
    _train(config, paths)
    second, _, _ = _train(config, paths, overrides={"seed": 7}, promote=False)
    assert registry.champion(config).version == "1"
    registry.promote(
        config,
        registry.VersionRef(config.model_name, second["version"], second["run_id"]),
        "1",
        "forced for the test",
        "test",
    )
    assert registry.champion(config).version == second["version"]
    with pytest.raises(registry.PromotionConflict):
        registry.promote(config, registry.VersionRef(config.model_name, "1", ""), "1", "stale", "test")
    assert registry.rollback(config, None, "test") == (second["version"], "1")
    assert registry.champion(config).version == "1"
    moves = [(m["from"], m["to"]) for m in registry.champion_moves(config)]
    assert moves == [(None, "1"), ("1", second["version"]), (second["version"], "1")]


def test_two_racing_promotions_leave_one_consistent_champion(config, paths, landed) -> None:
    import threading

    for month in (1, 2, 3):
        steps.ingest_batch(config, paths, landed.batch_key(month))
    _train(config, paths)
    racers = [_train(config, paths, overrides={"seed": seed}, promote=False)[0] for seed in (3, 4)]
    outcomes: dict[str, str] = {}

    def race(trained: dict) -> None:
        ref = registry.VersionRef(config.model_name, trained["version"], trained["run_id"])
        try:
            registry.promote(config, ref, "1", "race", f"racer-{trained['version']}")
            outcomes[trained["version"]] = "won"
        except registry.PromotionConflict:
            outcomes[trained["version"]] = "refused"

    threads = [threading.Thread(target=race, args=(trained,)) for trained in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["refused", "won"]
    winner = next(v for v, outcome in outcomes.items() if outcome == "won")
    assert registry.champion(config).version == winner
    attempts = [m for m in registry.history(config) if m["alias"] == "champion" and m["reason"] != "promoted"]
    assert sorted(m["outcome"] for m in attempts if m["by"].startswith("racer-")) == ["moved", "refused"]


def test_the_loop_streams_out_of_core_through_the_same_steps(config, paths, landed) -> None:
    """engine.out_of_core: always (record batches of 1000 rows): same step results, run tagged out of core."""
    engine = config.engine.model_copy(update={"out_of_core": "always", "batch_rows": 1000})
    streaming = config.model_copy(update={"engine": engine})
    for month in (1, 2, 3):
        steps.ingest_batch(streaming, paths, landed.batch_key(month))
    trained, evaluation, promotion = _train(streaming, paths)
    assert promotion["promoted"] and evaluation["challenger_roc_auc"] > 0.6
    assert trained["train_rows"] + trained["holdout_rows"] == 3 * 1500
    run = registry._client().get_run(trained["run_id"])
    assert run.data.tags["loopline.out_of_core"] == "yes"
    assert run.data.params["train_rows"] == str(trained["train_rows"])
    for month in (4, 6, 7):
        steps.ingest_batch(streaming, paths, landed.batch_key(month))
    shifted = steps.monitor_batch(streaming, paths, landed.batch_key(7))
    assert shifted["verdict"] == "drift" and shifted["top_features"]
    assert shifted["realised_performance"]["rows"] > 0
    scored = steps.score_batch(streaming, paths, landed.batch_key(7))
    assert (
        scored["out_of_core"]
        and scored["rows"] == steps.lake_of(paths).partition("loans", landed.batch_key(7)).rows
    )
