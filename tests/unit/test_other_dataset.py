"""Issue 2: any tabular binary-classification dataset needs a config file and an expectation suite, nothing else.

A churn dataset unlike the demo: other column names, features inferred, a text target whose positive class is
"churned" (~5% of rows), missing values, categorical columns, no time column (batches of rows). It goes through
ingest, the quality gate with a suite suggested for it, training and evaluation, in process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ml import demo_data, registry, steps
from ml.config import load_config
from ml.demo_data import Scenario

ROWS_PER_BATCH = 1500
RENAMED = {
    "loan_id": "customer_ref",
    "annual_income": "yearly_spend",
    "loan_amount": "basket_value",
    "credit_score": "engagement_score",
    "age": "tenure_months",
    "debt_to_income": "support_ratio",
    "employment_years": "years_active",
    "open_accounts": "products_held",
    "delinquencies_2y": "late_payments",
    "interest_rate": "discount_rate",
    "home_ownership": "plan",
    "purpose": "acquisition_source",
    "region": "market",
    "channel": "contact_channel",
    "defaulted": "status",
}


def _churn_rows(batches: int, positive_rate: float = 0.05) -> pd.DataFrame:
    """The demo's rows recoded as churn data: ~``positive_rate`` churned, no time column, rows in file order."""
    scenario = Scenario(
        months=batches,
        rows_per_month=2 * ROWS_PER_BATCH,
        shift_from_month=None,
        incident_months=(),
        duplicate_rate=0.0,
    )
    frame = pd.concat(
        [demo_data.generate_month(scenario, m) for m in range(1, batches + 1)], ignore_index=True
    )
    rng = np.random.default_rng(3)
    positives = frame["defaulted"] == 1
    keep_share = positive_rate * (~positives).sum() / ((1 - positive_rate) * positives.sum())
    frame = frame[~positives | (rng.random(len(frame)) < keep_share)].head(batches * ROWS_PER_BATCH)
    frame = frame.drop(columns=["applied_at"]).rename(columns=RENAMED)
    frame["status"] = np.where(frame["status"] == 1, "churned", "stayed")
    frame["plan"] = frame["plan"].map({"RENT": "basic", "MORTGAGE": "plus", "OWN": "family"})
    return frame.reset_index(drop=True)


@pytest.fixture
def churn(home: Path, tmp_path: Path):
    """The churn config (and a one-line starting suite) and its landed stream of 4 batches of rows."""
    rows = _churn_rows(batches=4)
    landing = home / "landing"
    landing.mkdir(parents=True)
    rows.to_csv(landing / "churn.csv", index=False)
    folder = tmp_path / "churn-config"
    folder.mkdir()
    starting_suite = {
        "name": "churn",
        "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "customer_ref"}}],
    }
    (folder / "churn.json").write_text(json.dumps(starting_suite))
    raw = {
        "dataset": {
            "name": "churn",
            "source": {"path": "churn.csv", "format": "csv"},
            "id_column": "customer_ref",
            "time_column": None,
            "target": "status",
            "positive_class": "churned",
            "numeric_features": "infer",
            "categorical_features": "infer",
            "expectation_suite": "churn.json",
        },
        "batching": {"by": "rows", "rows_per_batch": ROWS_PER_BATCH},
        "training": {"window_batches": 3, "num_boost_round": 80},
        "gate": {"min_roc_auc": 0.6},
        "registry": {"model_name": "churn_classifier"},
    }
    config_file = folder / "loopline.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    return load_config(config_file), rows


def test_a_churn_dataset_goes_through_ingest_gate_training_and_evaluation(churn, paths) -> None:
    config, rows = churn
    assert 0.03 < (rows["status"] == "churned").mean() < 0.07
    for batch in ("000000", "000001", "000002"):
        ingested = steps.ingest_batch(config, paths, batch)
        assert ingested["rows"] == ROWS_PER_BATCH
    lake = steps.lake_of(paths)
    window = lake.read("churn", ["000000", "000001", "000002"])
    assert set(window["status"].dropna().unique()) == {0, 1}  # "churned" is the positive class 1
    assert window["status"].sum() == (rows["status"].head(3 * ROWS_PER_BATCH) == "churned").sum()

    suite = steps.suggest_expectations(config, paths)
    config.suite_path().write_text(json.dumps(suite))
    typed = {e["kwargs"]["column"] for e in suite["expectations"] if e["type"].endswith("_in_type_list")}
    assert {"yearly_spend", "status"} <= typed
    categories = {
        e["kwargs"]["column"]: e["kwargs"]["value_set"]
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_in_set"
    }
    assert categories["plan"] == ["basic", "family", "plus"] and categories["status"] == [0, 1]
    # The next batch passes the ingest gate with the suggested suite.
    assert steps.ingest_batch(config, paths, "000003")["rows"] == ROWS_PER_BATCH

    plan = steps.plan_training(config, paths, None, None)
    assert plan["batches"] == ["000001", "000002", "000003"]
    summary = steps.validate_window(config, paths, plan["batches"])
    trained = steps.train_challenger(config, paths, plan["batches"], {}, summary, "churn", {})
    evaluation = steps.evaluate_challenger(config, paths, plan["batches"], trained["version"])
    promotion = steps.promote_challenger(config, paths, trained["version"], evaluation, True, "test")
    assert evaluation["promote"] and promotion["promoted"], evaluation["reason"]
    assert evaluation["challenger_roc_auc"] > 0.65

    ref = registry.champion(config)
    assert ref is not None and ref.name == "churn_classifier"
    model = registry.load_model(ref)
    inputs = set(model.metadata.get_input_schema().input_names())
    assert inputs == set(RENAMED.values()) - {"customer_ref", "status"}  # every other column, inferred
    fresh = rows.tail(50).drop(columns=["customer_ref", "status"])
    fresh.loc[fresh.index[:5], "plan"] = None  # missing categories score too
    scores = registry.predict(model, fresh)
    assert scores.shape == (50,) and np.isfinite(scores).all()
