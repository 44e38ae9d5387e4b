"""Shared homes of the reliability suite, and its figures (cases tried and held, records lost) at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from reliability_support import CATEGORIES, FIGURES, build_champion_home, migrated_mlflow_store


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty migrated MLflow SQLite store; every home and server of the suite starts from a copy."""
    return migrated_mlflow_store(tmp_path_factory.mktemp("mlflow-template") / "mlflow.db")


@pytest.fixture(scope="session")
def stable_champion(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path
) -> tuple[Path, Any]:
    """A home with months 1-4 landed, 1-3 ingested and champion v1, shared by the modules that never move the
    champion (each enters it with ``reliability_support.entered``). Returns (folder, scenario)."""
    folder = tmp_path_factory.mktemp("stable-champion")
    return folder, build_champion_home(folder, mlflow_store_template, months=4)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures of the reliability suite when any of its cases ran."""
    if not sum(FIGURES.tried.values()):
        return
    write = terminalreporter.write_line
    terminalreporter.section("Loopline reliability figures")
    for category, label in CATEGORIES.items():
        if FIGURES.tried[category]:
            write(f"{label}: {FIGURES.tried[category]}/{FIGURES.held[category]}")
    write(
        f"records lost: {FIGURES.records_lost} ({FIGURES.records_compared} lake rows, model versions and history "
        f"entries compared before/after {FIGURES.cases_compared} cases)"
    )
    for line in FIGURES.losses:
        write(f"  lost: {line}")
    for line in FIGURES.failed:
        write(f"  did not hold: {line}")
    for line in FIGURES.notes:
        write(f"  note: {line}")
