"""The user journeys of the README in a real browser: the Airflow UI (ML engineer) and the MLflow UI (reviewer).

Tests run in file order on one logged-in page: the trigger test needs the form the test before it opened.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from ml.demo import DAG_IDS

pytestmark = pytest.mark.e2e
PAGE_TIMEOUT_MS = 60_000
TRAIN_PARAMS = {
    "end_batch": "Last batch of the window",
    "window_batches": "Batches in the window",
    "num_boost_round": "Boosting rounds",
    "max_depth": "Max tree depth",
    "learning_rate": "Learning rate",
    "promote": "Promote if the gate passes",
}
SHARED_METRICS = [
    "train_roc_auc",
    "holdout_roc_auc",
    "holdout_pr_auc",
    "holdout_log_loss",
    "holdout_brier",
    "holdout_precision",
    "holdout_recall",
    "holdout_f1",
    "champion_holdout_roc_auc",
]


def _shot(page: Any, live: dict[str, Any], name: str) -> None:
    page.screenshot(path=str(live["screenshots"] / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def airflow_page(browser: Any, live: dict[str, Any]) -> Iterator[Any]:
    """A page logged in to the Airflow UI through its login form."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(live["airflow_url"] + "/")
    expect(page).to_have_url(re.compile(r"/auth/login"))
    _shot(page, live, "airflow-01-login")
    page.get_by_label("Username").fill(live["username"])
    page.get_by_label("Password").fill(live["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(re.compile(r"/auth/login"))
    yield page
    context.close()


@pytest.fixture(scope="module")
def mlflow_page(browser: Any, live: dict[str, Any]) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 1500})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    yield page
    context.close()


def test_airflow_login_shows_the_four_loopline_dags(airflow_page: Any, live: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = airflow_page
    page.goto(live["airflow_url"] + "/dags")
    for dag_id in DAG_IDS:
        expect(page.get_by_role("link", name=dag_id, exact=True).first).to_be_visible()
    _shot(page, live, "airflow-02-dags")


def test_train_trigger_form_offers_its_params(airflow_page: Any, live: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = airflow_page
    page.goto(live["airflow_url"] + "/dags/loopline_train")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Trigger Dag - loopline_train")).to_be_visible()
    expect(dialog.get_by_text("Run Parameters")).to_be_visible()
    for name, title in TRAIN_PARAMS.items():  # each field: the param's input, shown with its title
        field = dialog.get_by_role("group").filter(has=page.locator(f"[name=element_{name}]")).last
        expect(field).to_contain_text(title)
    expect(dialog.locator("[name=element_promote]")).to_be_checked()
    _shot(page, live, "airflow-03-trigger-form")
    dialog.get_by_role("button", name="Advanced Options").click()
    for name in TRAIN_PARAMS:  # the Configuration JSON the form builds
        expect(dialog).to_contain_text(f'"{name}"')


def test_trigger_train_from_the_form_and_the_run_succeeds(airflow_page: Any, live: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = airflow_page
    dialog = page.get_by_role("dialog")
    # Opening Advanced Options may fold Run Parameters (an animated accordion): read the settled state from
    # the section's button, not from a field that can still be visible mid-animation.
    run_parameters = dialog.get_by_role("button", name="Run Parameters")
    if run_parameters.get_attribute("aria-expanded") != "true":
        run_parameters.click()
    expect(run_parameters).to_have_attribute("aria-expanded", "true")
    for name in TRAIN_PARAMS:
        expect(dialog.locator(f"[name=element_{name}]")).to_be_visible()
    dialog.locator("[name=element_end_batch]").fill("2025-03")
    dialog.locator("[name=element_num_boost_round]").fill("40")
    _shot(page, live, "airflow-04-trigger-filled")
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    expect(page).to_have_url(re.compile(r"/dags/loopline_train/runs/manual__"))
    run_id = urllib.parse.unquote(page.url.rsplit("/runs/", 1)[1].split("?")[0].strip("/"))
    state = page.get_by_test_id("state-badge").first
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        text = state.inner_text().strip().lower()
        if text in ("success", "failed"):
            break
        time.sleep(5)
        page.reload()
    _shot(page, live, "airflow-05-run")
    expect(state).to_have_text(re.compile("success", re.I))
    # The form's values reached the run.
    token = requests.post(
        f"{live['airflow_url']}/auth/token",
        json={"username": live["username"], "password": live["password"]},
        timeout=30,
    ).json()["access_token"]
    run = requests.get(
        f"{live['airflow_url']}/api/v2/dags/loopline_train/dagRuns/{urllib.parse.quote(run_id)}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    assert run["state"] == "success"
    assert run["conf"]["end_batch"] == "2025-03" and run["conf"]["num_boost_round"] == 40


def _experiment_id(live: dict[str, Any]) -> str:
    found = requests.get(
        f"{live['mlflow_url']}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": live["config"].experiment_name},
        timeout=30,
    )
    found.raise_for_status()
    return str(found.json()["experiment"]["experiment_id"])


def test_mlflow_runs_share_the_metric_names(mlflow_page: Any, live: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = mlflow_page
    experiment_id = _experiment_id(live)
    page.goto(f"{live['mlflow_url']}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    expect(page.get_by_text("loans 2025-01..2025-03 [manual]").filter(visible=True).first).to_be_visible()
    _shot(page, live, "mlflow-01-runs")
    found = requests.post(
        f"{live['mlflow_url']}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment_id]},
        timeout=30,
    ).json()["runs"]
    assert len(found) >= 2  # the loop's first champion and the run triggered from the Airflow form
    for index, run in enumerate(found, start=1):
        logged = {metric["key"] for metric in run["data"]["metrics"]}
        expected = [m for m in SHARED_METRICS if not m.startswith("champion_") or m in logged]
        assert set(expected) <= logged
        page.goto(f"{live['mlflow_url']}/#/experiments/{experiment_id}/runs/{run['info']['run_id']}")
        expect(page.get_by_text(f"Metrics ({len(logged)})")).to_be_visible()
        for metric in expected:
            expect(page.get_by_text(metric, exact=True).filter(visible=True).first).to_be_visible()
        page.get_by_text("holdout_f1", exact=True).filter(visible=True).first.scroll_into_view_if_needed()
        _shot(page, live, f"mlflow-02-run-{index}")


def test_mlflow_registered_model_shows_the_champion_alias(mlflow_page: Any, live: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = mlflow_page
    name = live["config"].model_name
    page.goto(f"{live['mlflow_url']}/#/models/{name}")
    expect(page.get_by_text("Registered Models").first).to_be_visible()
    expect(page.get_by_text(name).first).to_be_visible()
    champion = requests.get(
        f"{live['mlflow_url']}/api/2.0/mlflow/registered-models/alias",
        params={"name": name, "alias": "champion"},
        timeout=30,
    ).json()["model_version"]["version"]
    alias = page.locator('[data-component-type="tag"][title="champion"]')  # the "@ champion" chip
    expect(alias).to_have_count(1)
    expect(page.get_by_role("row").filter(has_text=f"Version {champion}").locator(alias)).to_have_count(1)
    alias.scroll_into_view_if_needed()
    _shot(page, live, "mlflow-03-registered-model")
