"""The data-quality gate on a Spark DataFrame: the same suite, severities and ``GateResult`` as ``ml.quality``.

``validate_frame`` is ``ml.quality.validate`` with the data source chosen by the frame's type (GE's Spark
execution engine for a Spark DataFrame, classic or Connect; pandas otherwise). It reuses ``ml.quality``'s suite
loading, severities and result types; the GE run itself differs from ``quality.validate`` only in the data
source, so ``quality.validate`` can become a call to this function (see docs/engines.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ml import quality
from ml.quality import FailedExpectation, GateResult, SuiteError

log = logging.getLogger(__name__)
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}


def _suite(gx: Any, suite_path: Path) -> Any:
    """The suite file as a GE ExpectationSuite, every expectation with its severity (unknown types refused)."""
    document = quality.load_suite(suite_path)
    for item in document["expectations"]:
        item["severity"] = quality._severity_of(item)
    suite = gx.ExpectationSuite(
        **{k: v for k, v in document.items() if k in {"name", "expectations", "meta"}}
    )
    if len(suite.expectations) != len(document["expectations"]):
        kept = {e.expectation_type for e in suite.expectations}
        lost = [e.get("type") for e in document["expectations"] if e.get("type") not in kept]
        raise SuiteError(f"{suite_path}: Great Expectations does not know expectation type(s) {lost}")
    return suite


def _is_pandas(frame: Any) -> bool:
    import pandas as pd

    return isinstance(frame, pd.DataFrame)


def _run(gx: Any, context: Any, suite: Any, frame: Any, docs_dir: Path | None, run_name: str | None) -> Any:
    """Validate through a dataframe asset; with ``docs_dir`` through a Checkpoint that updates Data Docs."""
    source = (
        context.data_sources.add_pandas("loopline")
        if _is_pandas(frame)
        else context.data_sources.add_spark("loopline")
    )
    definition = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole")
    if docs_dir is None:
        return definition.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format=RESULT_FORMAT
        )
    from great_expectations.core.run_identifier import RunIdentifier

    context.add_data_docs_site(
        quality.DATA_DOCS_SITE,
        {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    suite = context.suites.add(suite)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(data=definition, suite=suite, name=f"{suite.name}-validation")
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite.name}-checkpoint",
            validation_definitions=[validation],
            actions=[
                gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[quality.DATA_DOCS_SITE])
            ],
            result_format=RESULT_FORMAT,
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name))
    return next(iter(outcome.run_results.values()))


def _failure(outcome: Any) -> FailedExpectation:
    config = outcome.expectation_config
    details = outcome.result or {}
    if outcome.exception_info and outcome.exception_info.get("raised_exception"):
        examples: list[Any] = [str(outcome.exception_info.get("exception_message", "")).splitlines()[0][:200]]
    else:
        examples = [quality._plain(v) for v in details.get("partial_unexpected_list") or []][:5]
        if not examples and "observed_value" in details:
            examples = [f"observed {quality._plain(details['observed_value'])}"]
    return FailedExpectation(
        expectation=config.type,
        column=config.kwargs.get("column"),
        severity=str(getattr(config.severity, "value", config.severity)),
        unexpected_percent=details.get("unexpected_percent"),
        examples=examples,
    )


def validate_frame(
    frame: Any, suite_path: Path, docs_dir: Path | None = None, run_name: str | None = None
) -> GateResult:
    """Validate a Spark (or pandas) DataFrame against the suite; the verdict of ``ml.quality.validate``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    suite = _suite(gx, suite_path)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    result = _run(gx, context, suite, frame, docs_dir, run_name)
    gate = GateResult(suite=suite.name, evaluated=len(result.results), raw=result.to_json_dict())
    if docs_dir is not None:
        gate.data_docs = str(docs_dir / "index.html")
    for failure in (_failure(o) for o in result.results if not o.success):
        (gate.critical if failure.severity == "critical" else gate.warnings).append(failure)
    for warning in gate.warnings:
        log.warning("data-quality warning: %s", warning.describe())
    return gate
