"""A seeded generator of consumer-loan applications, delivered as monthly batch files.

The data is realistic enough to exercise every part of the loop: numeric and categorical features, missing
values, a default rate of about 12%, an event timestamp and a unique id. Scenario knobs plant what the loop
must notice: a covariate shift (riskier applicants arrive), a concept shift (the same applicant becomes riskier
through the broker channel and at high debt-to-income) and a data-quality incident batch.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ml.lake import atomic_write_bytes

NUMERIC_FEATURES = [
    "annual_income",
    "loan_amount",
    "credit_score",
    "age",
    "debt_to_income",
    "employment_years",
    "open_accounts",
    "delinquencies_2y",
    "interest_rate",
]
CATEGORICAL_FEATURES = ["home_ownership", "purpose", "region", "channel"]
ID_COLUMN = "loan_id"
TIME_COLUMN = "applied_at"
TARGET = "defaulted"

_PURPOSES = ["debt_consolidation", "credit_card", "home_improvement", "car", "medical", "small_business"]
_PURPOSE_RISK = np.array([0.1, 0.0, -0.2, -0.3, 0.3, 0.6])
_HOMES = ["RENT", "MORTGAGE", "OWN"]
_REGIONS = ["north", "south", "east", "west"]
_CHANNELS = ["online", "branch", "broker"]


@dataclass(frozen=True)
class Scenario:
    """What the generated history looks like; months count from 1."""

    months: int = 12
    rows_per_month: int = 4000
    start: str = "2025-01"
    shift_from_month: int | None = 8
    covariate_shift: bool = True
    concept_shift: bool = True
    incident_months: tuple[int, ...] = (5,)
    duplicate_rate: float = 0.002
    seed: int = 7
    shift_strength: float = 1.0
    extra: dict[str, float] = field(default_factory=dict)

    def batch_key(self, month: int) -> str:
        """The YYYY-MM key of a 1-based month of the scenario."""
        return str(pd.Period(self.start, freq="M") + (month - 1))

    def is_shifted(self, month: int) -> bool:
        return self.shift_from_month is not None and month >= self.shift_from_month


def generate_month(scenario: Scenario, month: int) -> pd.DataFrame:
    """One month of applications, deterministic for a scenario and month."""
    rng = np.random.default_rng([scenario.seed, month])
    n = scenario.rows_per_month
    shifted = scenario.is_shifted(month)
    cov = scenario.shift_strength if shifted and scenario.covariate_shift else 0.0
    concept = scenario.shift_strength if shifted and scenario.concept_shift else 0.0

    period = pd.Period(scenario.batch_key(month), freq="M")
    start = period.start_time
    seconds = int((period.end_time - start).total_seconds())
    applied_at = start + pd.to_timedelta(np.sort(rng.integers(0, seconds, n)), unit="s")

    income = np.exp(rng.normal(11.0 - 0.15 * cov, 0.45, n)).round(-2)
    loan_amount = np.clip(rng.lognormal(9.4 + 0.2 * cov, 0.6, n), 1000, 60000).round(-2)
    credit_score = np.clip(rng.normal(690 - 45 * cov, 55, n), 300, 850).round()
    age = np.clip(rng.normal(40, 11, n), 18, 85).round()
    dti = np.clip(rng.beta(2.2, 6.0 - 1.5 * cov, n), 0, 0.95).round(4)
    employment_years = np.clip(rng.gamma(2.0, 3.0, n), 0, 45).round(1)
    open_accounts = rng.poisson(6 + 2 * cov, n).astype(float)
    delinquencies = rng.poisson(0.25 + 0.2 * cov, n).astype(float)
    home = rng.choice(_HOMES, n, p=[0.4, 0.45, 0.15])
    purpose_idx = rng.choice(len(_PURPOSES), n, p=[0.35, 0.2, 0.15, 0.12, 0.08, 0.10])
    region = rng.choice(_REGIONS, n)
    channel_p = np.array([0.55, 0.30, 0.15]) if not cov else np.array([0.35, 0.25, 0.40])
    channel = rng.choice(_CHANNELS, n, p=channel_p)
    interest_rate = np.clip(
        0.05 + (760 - credit_score) / 2000 + 0.05 * dti + rng.normal(0, 0.01, n), 0.03, 0.36
    ).round(4)

    logit = (
        -2.3
        - 0.012 * (credit_score - 690)
        + 3.0 * (dti - 0.27)
        + 0.5 * np.log(loan_amount / income * 10)
        + 0.35 * delinquencies
        - 0.03 * (employment_years - 6)
        + _PURPOSE_RISK[purpose_idx]
        + np.where(home == "OWN", -0.3, 0.0)
    )
    if concept:
        # The world changes: broker-sourced loans and heavy debt load default far more often,
        # while the credit score loses much of its meaning.
        logit = (
            logit
            + concept * (1.6 * (channel == "broker") + 5.0 * np.clip(dti - 0.3, 0, None))
            + concept * 0.008 * (credit_score - 690)
        )
    defaulted = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    employment = employment_years.copy()
    employment[rng.random(n) < 0.05] = np.nan
    income_with_gaps = income.copy()
    income_with_gaps[rng.random(n) < 0.02] = np.nan

    first_id = month * 1_000_000
    frame = pd.DataFrame(
        {
            ID_COLUMN: [f"L{first_id + i:09d}" for i in range(n)],
            TIME_COLUMN: applied_at,
            "annual_income": income_with_gaps,
            "loan_amount": loan_amount,
            "credit_score": credit_score,
            "age": age,
            "debt_to_income": dti,
            "employment_years": employment,
            "open_accounts": open_accounts,
            "delinquencies_2y": delinquencies,
            "interest_rate": interest_rate,
            "home_ownership": home,
            "purpose": np.array(_PURPOSES)[purpose_idx],
            "region": region,
            "channel": channel,
            TARGET: defaulted,
        }
    )
    if scenario.duplicate_rate > 0:
        dupes = frame.sample(frac=scenario.duplicate_rate, random_state=int(rng.integers(1 << 31)))
        frame = pd.concat([frame, dupes]).sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)
    if month in scenario.incident_months:
        frame = _corrupt(frame, rng)
    return frame


def _corrupt(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A broken upstream export: a column gone, nulls where none belong, impossible values."""
    broken = frame.drop(columns=["interest_rate"]).copy()
    n = len(broken)
    broken.loc[rng.random(n) < 0.3, "credit_score"] = np.nan
    broken.loc[rng.random(n) < 0.05, "age"] = -1
    broken.loc[rng.random(n) < 0.05, "loan_amount"] = 9_999_999
    return broken


def write_landing(scenario: Scenario, folder: Path, file_format: str = "csv") -> list[Path]:
    """Write every month of a scenario as ``<folder>/<YYYY-MM>.<format>``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for month in range(1, scenario.months + 1):
        target = folder / f"{scenario.batch_key(month)}.{file_format}"
        atomic_write_bytes(target, _serialise(generate_month(scenario, month), file_format))
        written.append(target)
    return written


def write_row_stream(scenario: Scenario, target: Path, file_format: str = "csv") -> Path:
    """Write every month of a scenario, in order, into one file without the time column.

    This is a dataset for ``batching.by: rows`` (no time column): with ``duplicate_rate=0`` and
    ``batching.rows_per_batch = rows_per_month``, row batch ``00000k`` holds exactly month ``k + 1``. An incident
    month keeps its nulls and impossible values; its dropped column is empty for that month's rows.
    """
    months = [generate_month(scenario, month) for month in range(1, scenario.months + 1)]
    columns = [ID_COLUMN, *NUMERIC_FEATURES, *CATEGORICAL_FEATURES, TARGET]
    stream = pd.concat(months, ignore_index=True)[columns]
    atomic_write_bytes(target, _serialise(stream, file_format))
    return target


def write_row_stream_dataset(
    scenario: Scenario, landing: Path, config_dir: Path, base_config: Path, file_format: str = "csv"
) -> Path:
    """Set the demo up as a dataset batched by rows; returns the config file written to ``config_dir``.

    Writes ``<landing>/loans_stream.<format>`` (``write_row_stream``), the demo suite minus its time-column
    expectations, and a copy of ``base_config`` (the demo config) with no time column, ``batching.by: rows`` and
    ``rows_per_batch = rows_per_month``.
    """
    source = f"loans_stream.{file_format}"
    write_row_stream(scenario, landing / source, file_format)
    raw = yaml.safe_load(base_config.read_text())
    dataset = raw["dataset"]
    suite_name = dataset.get("expectation_suite") or f"expectations/{dataset['name']}.json"
    suite = json.loads((base_config.parent / suite_name).read_text())
    kept = [e for e in suite["expectations"] if e.get("kwargs", {}).get("column") != TIME_COLUMN]
    config_dir.mkdir(parents=True, exist_ok=True)
    suite_file = config_dir / "loans_stream.json"
    atomic_write_bytes(suite_file, json.dumps({**suite, "expectations": kept}, indent=2).encode())
    dataset |= {
        "time_column": None,
        "source": {"path": source, "format": file_format},
        "expectation_suite": str(suite_file),
    }
    raw["batching"] = {"by": "rows", "rows_per_batch": scenario.rows_per_month, "schedule": None}
    config_file = config_dir / "loopline.yaml"
    atomic_write_bytes(config_file, yaml.safe_dump(raw, sort_keys=False).encode())
    return config_file


def _serialise(frame: pd.DataFrame, file_format: str) -> bytes:
    if file_format == "csv":
        return frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S").encode()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
