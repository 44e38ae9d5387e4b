"""Drift reports: a JSON document for machines and an HTML page for people, written atomically.

The HTML page has the verdict and its reason, a summary table (effect sizes, test, raw and corrected p-values,
severity per column) and, per column, the reference vs current distribution as an embedded PNG (matplotlib's
Agg canvas, no pyplot state, base64 data URI), so the page is one self-contained file. The JSON twin holds
everything the page shows, plot data included.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from ml.drift import RANK, SCORE, DriftResult, FeatureDrift
from ml.lake import atomic_write_bytes, atomic_write_json

_COLOURS = {"reference": "#7f8c8d", "current": "#2e86de"}
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} td:first-child,th:first-child{text-align:left}
tr.critical{background:#fdd} tr.warning{background:#ffd} tr.info{background:#eef5ff}
section{margin:1.5em 0;border-top:1px solid #ddd} .badge{padding:1px 6px;border-radius:4px}
.badge.critical{background:#e74c3c;color:#fff} .badge.warning{background:#f1c40f}
.badge.info{background:#3498db;color:#fff} .badge.none{background:#eee} .muted{color:#777}"""


def write_drift_report(folder: Path, result: DriftResult, context: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<batch>.json`` and ``<batch>.html`` into ``folder``; returns both paths."""
    document = {"context": context, **result.to_dict()}
    json_path = folder / f"{result.batch}.json"
    html_path = folder / f"{result.batch}.html"
    atomic_write_json(json_path, document)
    atomic_write_bytes(html_path, render_html(result, context).encode())
    return json_path, html_path


def _name(feature: FeatureDrift) -> str:
    return "prediction score" if feature.column == SCORE else feature.column


def _ordered(result: DriftResult) -> list[FeatureDrift]:
    return sorted(result.features, key=lambda f: (f.column != SCORE, -RANK[f.severity], -f.psi))


class _Plotter:
    """One Agg figure and axes reused for every column: far cheaper than a new figure per plot."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator, ScalarFormatter

        self._locator, self._formatter = MaxNLocator, ScalarFormatter
        self.figure = Figure(figsize=(6.0, 2.0), dpi=72)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_axes((0.08, 0.24, 0.9, 0.72))

    def png(self, feature: FeatureDrift) -> bytes:
        axes = self.axes
        for artist in [*axes.patches, *axes.collections, *axes.lines]:
            artist.remove()
        axes.containers.clear()
        plot = feature.plot or {}
        reference, current = plot.get("reference") or [0.0], plot.get("current") or [0.0]
        rotation = 0
        if plot.get("type") == "bins":
            edges = plot["edges"]
            axes.xaxis.set_major_locator(self._locator(6))
            axes.xaxis.set_major_formatter(self._formatter())
        else:  # one step per value or category, labelled under its middle
            edges = [i - 0.5 for i in range(len(reference) + 1)]
            labels = [label if len(label) <= 12 else label[:11] + "~" for label in plot.get("labels", [])]
            axes.set_xticks(list(range(len(labels))), labels)
            rotation = 20 if sum(len(label) for label in labels) > 60 else 0
        axes.stairs(reference, edges, fill=True, alpha=0.45, color=_COLOURS["reference"])
        axes.stairs(current, edges, linewidth=1.8, color=_COLOURS["current"])
        axes.set_xlim(edges[0], edges[-1])
        axes.set_ylim(0, max(*reference, *current, 1e-9) * 1.08)
        axes.yaxis.set_major_locator(self._locator(3))
        axes.tick_params(labelsize=7)
        axes.tick_params(axis="x", labelrotation=rotation)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        return buffer.getvalue()


def plot_png(feature: FeatureDrift) -> bytes:
    """Reference (grey, filled) vs current (blue) shares of one column as PNG bytes.

    Matplotlib's Agg canvas directly (no pyplot, no global backend switch); titles and legends live in the
    HTML, which keeps a plot at a few milliseconds.
    """
    return _Plotter().png(feature)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "&lt; 1e-15" if value < 1e-15 else f"{value:.2g}"


def _summary_row(feature: FeatureDrift) -> str:
    name = html.escape(_name(feature))
    new = html.escape(", ".join(feature.new_categories)) or "-"
    return (
        f"<tr class='{feature.severity}'><td><a href='#{html.escape(feature.column)}'>{name}</a></td>"
        f"<td>{feature.kind}</td><td><span class='badge {feature.severity}'>{feature.severity}</span></td>"
        f"<td>{feature.psi:.3f}</td><td>{feature.js_distance:.3f}</td><td>{feature.test}</td>"
        f"<td>{feature.statistic:.3g}</td><td>{_p(feature.p_value)}</td><td>{_p(feature.p_value_adjusted)}</td>"
        f"<td>{'yes' if feature.significant else 'no'}</td><td>{feature.effect_severity}</td>"
        f"<td>{feature.missing_rate_reference:.3f} &rarr; {feature.missing_rate_current:.3f}"
        f" (p {_p(feature.missing_p_value)})</td><td>{new}</td></tr>"
    )


def _section(feature: FeatureDrift, png: bytes) -> str:
    bins = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{ref:.3f}</td><td>{cur:.3f}</td></tr>"
        for label, ref, cur in zip(
            feature.labels, feature.reference_shares, feature.current_shares, strict=False
        )
    )
    return (
        f"<section id='{html.escape(feature.column)}'><h3>{html.escape(_name(feature))} "
        f"<span class='badge {feature.severity}'>{feature.severity}</span></h3>"
        f"<p class='muted'>{feature.rows} non-missing rows; PSI {feature.psi:.3f}, JS {feature.js_distance:.3f}; "
        f"{feature.test} statistic {feature.statistic:.3g}, p {_p(feature.p_value)}, corrected "
        f"{_p(feature.p_value_adjusted)} ({'significant' if feature.significant else 'not significant'}); "
        f"effect alone: {feature.effect_severity}</p>"
        "<p class='muted'>share of rows: <span style='color:#7f8c8d'>&#9632; reference</span> "
        "<span style='color:#2e86de'>&#9644; current</span></p>"
        f"<img alt='reference vs current distribution of {html.escape(_name(feature))}' src='{_data_uri(png)}'>"
        f"<details><summary>reference bins</summary><table><tr><th>bin</th><th>reference</th><th>current</th></tr>"
        f"{bins}</table></details></section>"
    )


def _performance(performance: dict[str, Any] | None) -> str:
    if not performance or performance.get("estimated_roc_auc") is None:
        return ""
    change = performance.get("estimated_change")
    reference = performance.get("reference_estimated_roc_auc")
    return (
        "<h2>Estimated performance (no labels needed)</h2>"
        f"<p>CBPE estimate of the champion's ROC AUC on this batch: <b>{performance['estimated_roc_auc']:.3f}</b>"
        f" &plusmn; {performance.get('standard_error') or 0:.3f}"
        + (f"; on the reference rows {reference:.3f} (change {change:+.3f})" if reference is not None else "")
        + (
            f"; realised on the reference rows {performance['reference_roc_auc']:.3f}"
            if performance.get("reference_roc_auc") is not None
            else ""
        )
        + f". Expected positive rate {performance.get('expected_positive_rate') or 0:.3f}. "
        "<span class='muted'>Assumes calibrated scores: it sees covariate shift, not concept shift.</span></p>"
    )


def render_html(result: DriftResult, context: dict[str, Any]) -> str:
    """The report page: verdict, reason, summary table, one plot per column (self-contained HTML)."""
    ordered = _ordered(result)
    plotter = _Plotter()
    sections = "".join(_section(feature, plotter.png(feature)) for feature in ordered)
    meta = "".join(
        f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in context.items()
    )
    shares = "".join(
        f"<tr><td>{level} or above</td><td>{share:.0%}</td></tr>" for level, share in result.shares.items()
    )
    title = f"Drift report: batch {html.escape(result.batch)}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head><body>
<h1>{title}</h1>
<p>Verdict <b>{result.verdict}</b>, severity <span class='badge {result.severity}'>{result.severity}</span>,
{result.rows} rows, {result.drift_share:.0%} of features drifted at warning or above ({result.weighting} weights).</p>
<p>{html.escape(result.reason)}</p>
<ul>{meta}</ul>
<p class='muted'>A column drifts at a severity only when its effect size (PSI or JS distance) reaches that
severity's threshold and its test (KS for numeric columns with the missing-rate test, chi-square for categorical
ones) is significant at alpha {result.alpha} after the {result.correction} correction across all columns.</p>
<table><tr><th>features drifted</th><th>{result.weighting} share</th></tr>{shares}</table>
{_performance(result.performance)}
<h2>Summary</h2>
<table><tr><th>column</th><th>kind</th><th>severity</th><th>PSI</th><th>JS</th><th>test</th><th>statistic</th>
<th>p</th><th>corrected p</th><th>significant</th><th>effect</th><th>missing rate</th><th>new categories</th></tr>
{"".join(_summary_row(feature) for feature in ordered)}</table>
<h2>Distributions</h2>
{sections}
</body></html>
"""
