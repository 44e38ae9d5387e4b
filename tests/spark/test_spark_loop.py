"""The walking skeleton with ``engine: spark``: the replay walks a small demo history through the DAGs' steps.

``ml.replay`` calls the same ``ml.steps`` functions the DAG tasks call: ingest (the quality gate), the
training window and its gate, training, evaluation, promotion, scoring and monitoring. With ``engine.kind:
spark`` the window gate, training, scoring and drift run as Spark jobs on the session of ``conftest.py``. The
history (the batch-by-rows replay of ``tests/unit/test_replay.py``, by month): three bootstrap months, an
incident month, a quiet month, the planted shift (the retrain), one more shifted month for the new champion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ml.demo_data import Scenario

SCENARIO = Scenario(months=7, rows_per_month=2000, shift_from_month=6, incident_months=(4,))
BOOTSTRAP = 3
FIRST, SECOND, THIRD, INCIDENT, QUIET, SHIFTED, AFTER = (SCENARIO.batch_key(m) for m in range(1, 8))


@pytest.fixture(scope="module")
def loop(spark: Any, spark_loopline_config: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The replay's report over the scenario, run once with the Spark engine, plus its config and paths."""
    from ml import demo_data, replay
    from ml.config import Paths

    config = spark_loopline_config
    root = tmp_path_factory.mktemp("spark-loop")
    source = Paths(root / "source")
    demo_data.write_landing(SCENARIO, source.landing / config.dataset.name)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("LOOPLINE_HOME", str(root / "loop"))
        report = replay.replay(config, source, root / "loop", bootstrap=BOOTSTRAP, echo=print)
    print(report["timing"])
    rows = {row["batch"]: row for row in report["batches"]}
    return {"report": report, "rows": rows, "config": config, "paths": Paths(root / "loop")}


def _connected(loop: dict[str, Any]) -> Any:
    from ml import registry

    registry.connect(loop["config"], loop["paths"])
    return registry


def test_ingest_accepts_clean_months_and_quarantines_the_incident(loop: dict[str, Any]) -> None:
    from ml.steps import lake_of

    rows, paths = loop["rows"], loop["paths"]
    assert [batch for batch, row in rows.items() if row["accepted"]] == [
        FIRST,
        SECOND,
        THIRD,
        QUIET,
        SHIFTED,
        AFTER,
    ]
    assert all(row["rows"] == SCENARIO.rows_per_month for row in rows.values() if row["accepted"])
    assert rows[INCIDENT]["note"].startswith("quarantined: missing required column(s) interest_rate")
    assert INCIDENT not in lake_of(paths).batches("loans")
    assert (paths.quarantine / "loans" / INCIDENT / "reason.json").is_file()


def test_first_champion_trained_on_spark_after_the_window_gate(loop: dict[str, Any]) -> None:
    import mlflow

    registry = _connected(loop)
    config, paths = loop["config"], loop["paths"]
    assert loop["rows"][THIRD]["retrain_outcome"].startswith("v1 promoted")
    versions = {v["version"]: v for v in registry.versions(config)}
    assert set(versions) == {"1", "2"}
    first = mlflow.get_run(versions["1"]["run_id"]).data.tags
    assert first["loopline.engine"] == "spark" and first["loopline.spark.master"] == "local[2]"
    assert first["loopline.partitions"] == f"{FIRST},{SECOND},{THIRD}"
    assert versions["1"]["tags"]["gate"] == "passed" and versions["1"]["tags"]["compared_with"] == "none"
    gate = paths.reports / "quality" / "loans" / f"window-{FIRST}..{THIRD}.json"
    assert gate.is_file() and (paths.reports / "data_docs" / "index.html").is_file()
    first_move = registry.champion_moves(config)[0]
    assert (first_move["from"], first_move["to"]) == (None, "1")


def test_quiet_month_is_scored_and_raises_no_alert(loop: dict[str, Any]) -> None:
    from ml.steps import lake_of

    quiet = loop["rows"][QUIET]
    assert (quiet["verdict"], quiet["alert"], quiet["retrain"]) == ("no_drift", False, False)
    assert quiet["champion_version"] == "1" and quiet["champion_roc_auc"] == quiet["static_roc_auc"]
    assert 0.6 < quiet["champion_roc_auc"] < 1
    predictions = lake_of(loop["paths"]).read("loans__predictions", [QUIET])
    assert len(predictions) == SCENARIO.rows_per_month and set(predictions["model_version"]) == {"1"}
    assert predictions["score"].between(0, 1).all()


def test_planted_shift_alerts_and_its_retrain_is_promoted(loop: dict[str, Any]) -> None:
    import mlflow

    registry = _connected(loop)
    config, paths = loop["config"], loop["paths"]
    shifted = loop["rows"][SHIFTED]
    assert shifted["verdict"] == "drift" and shifted["severity"] == "critical" and shifted["alert"]
    assert {"credit_score", "interest_rate"} <= set(shifted["top_features"])
    assert Path(shifted["report"]).is_file()
    assert SHIFTED in paths.alert_log.read_text()
    assert shifted["retrain"] and shifted["retrain_outcome"].startswith("v2 promoted")
    tags = {v["version"]: v for v in registry.versions(config)}["2"]
    assert tags["tags"]["gate"] == "passed" and tags["tags"]["rule.min_improvement"] == "pass"
    assert tags["tags"]["compared_with"] == "1"
    run_tags = mlflow.get_run(tags["run_id"]).data.tags
    assert run_tags["loopline.engine"] == "spark" and run_tags["loopline.trigger"] == "drift"
    assert run_tags["loopline.partitions"] == f"{THIRD},{QUIET},{SHIFTED}"
    assert (paths.reports / "quality" / "loans" / f"window-{THIRD}..{SHIFTED}.json").is_file()
    assert [(m["from"], m["to"]) for m in registry.champion_moves(config)] == [(None, "1"), ("1", "2")]
    assert registry.champion(config).version == "2"


def test_retrained_champion_beats_the_static_model_after_the_shift(loop: dict[str, Any]) -> None:
    after = loop["rows"][AFTER]
    assert after["champion_version"] == "2" and not after["retrain"]  # in the cooldown
    assert after["champion_roc_auc"] > after["static_roc_auc"]
    summary = loop["report"]["summary"]
    assert (summary["quarantined"], summary["promotions"]) == (1, 2)
