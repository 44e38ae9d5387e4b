"""Drift reports: a JSON document for machines and an HTML page for people, written atomically."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ml.drift import SCORE, DriftResult
from ml.lake import atomic_write_bytes, atomic_write_json


def write_drift_report(folder: Path, result: DriftResult, context: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<batch>.json`` and ``<batch>.html`` into ``folder``; returns both paths."""
    document = {"context": context, **result.to_dict()}
    json_path = folder / f"{result.batch}.json"
    html_path = folder / f"{result.batch}.html"
    atomic_write_json(json_path, document)
    atomic_write_bytes(html_path, _html(result, context).encode())
    return json_path, html_path


def _html(result: DriftResult, context: dict[str, Any]) -> str:
    rows = []
    for feature in sorted(result.features, key=lambda f: f.psi, reverse=True):
        name = "prediction score" if feature.column == SCORE else feature.column
        bars = "".join(
            f"<tr><td>{html.escape(label)}</td><td>{ref:.3f}</td><td>{cur:.3f}</td></tr>"
            for label, ref, cur in zip(
                feature.labels, feature.reference_shares, feature.current_shares, strict=False
            )
        )
        rows.append(
            f"<tr class='{feature.severity}'><td>{html.escape(name)}</td><td>{feature.kind}</td>"
            f"<td>{feature.psi:.3f}</td><td>{feature.js_distance:.3f}</td>"
            f"<td>{feature.missing_rate_reference:.3f} &rarr; {feature.missing_rate_current:.3f}</td>"
            f"<td>{html.escape(', '.join(feature.new_categories)) or '-'}</td><td>{feature.severity}</td>"
            f"<td><details><summary>bins</summary><table><tr><th>bin</th><th>reference</th><th>current</th></tr>"
            f"{bars}</table></details></td></tr>"
        )
    meta = "".join(
        f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in context.items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Drift report {html.escape(result.batch)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}} tr.critical{{background:#fdd}} tr.warning{{background:#ffd}}</style>
</head><body>
<h1>Drift report: batch {html.escape(result.batch)}</h1>
<p>Verdict <b>{result.verdict}</b>, severity <b>{result.severity}</b>, {result.rows} rows,
{result.drift_share:.0%} of features drifted.</p>
<ul>{meta}</ul>
<table><tr><th>column</th><th>kind</th><th>PSI</th><th>JS distance</th><th>missing rate</th>
<th>new categories</th><th>severity</th><th>distribution</th></tr>
{"".join(rows)}</table></body></html>
"""
