"""Sweep reports: the result files (CSV, JSON), the Markdown table and the plots.

The rows come from :func:`diffjax.app.evaluate.run_pareto_sweep`, marked with the
frontier of :mod:`diffjax.metrics.pareto`. Files are written atomically, so an
interrupted sweep leaves the rows it finished. Matplotlib is used through
:class:`matplotlib.figure.Figure` and the Agg canvas directly, so no pyplot global
state or display backend is touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from diffjax.files import write_figure_atomic, write_text_atomic
from diffjax.metrics.pareto import pareto_front, row_value

__all__ = [
    "METRIC_COLUMNS",
    "PARETO_COLUMNS",
    "format_pareto_table",
    "plot_quality_vs_nfe",
    "plot_quality_vs_seconds",
    "write_rows",
]

METRIC_COLUMNS = (
    "num_samples",
    "features",
    "fid",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "density",
    "coverage",
    "class_agreement",
)
"""The columns of one evaluation (``evaluate_samples``' fields), in every sweep's CSV."""

PARETO_COLUMNS = (
    "sampler",
    "nfe_target",
    "nfe",
    "num_steps",
    "guidance_scale",
    *METRIC_COLUMNS,
    "seconds_per_image",
    "compile_seconds",
    "num_nonfinite",
    "pareto_nfe",
    "pareto_seconds",
)
"""Columns of the sweep CSV, in order (the JSON rows hold these and a few labels more)."""


def _csv_cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | tuple):
        return ",".join(f"{x:g}" for x in v)
    return v


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def write_rows(
    out_dir: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    meta: Mapping[str, Any] | None = None,
    name: str = "pareto",
    columns: Sequence[str] = PARETO_COLUMNS,
) -> tuple[str, str]:
    """Writes ``rows`` to ``out_dir/name.csv`` and ``out_dir/name.json``, atomically.

    Each file is written to a temporary file and renamed, so a sweep that writes after
    every row and dies keeps all completed rows in valid files. NaN becomes an empty CSV
    cell and JSON ``null``.

    Args:
      out_dir: Output folder (created).
      rows: Result rows; the CSV holds ``columns``, the JSON every key.
      meta: Extra JSON fields (command, machine, ...), stored beside ``rows``.
      name: File stem.
      columns: The CSV columns, in order (missing keys give empty cells).

    Returns:
      ``(csv_path, json_path)``.
    """
    out_dir = os.fspath(out_dir)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    csv_path = os.path.join(out_dir, f"{name}.csv")
    json_path = os.path.join(out_dir, f"{name}.json")
    write_text_atomic(csv_path, buf.getvalue())
    payload = {**(meta or {}), "rows": [dict(r) for r in rows]}
    write_text_atomic(json_path, json.dumps(_json_safe(payload), indent=2) + "\n")
    return csv_path, json_path


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _guidance(v: Any) -> str:
    return "none" if v is None else f"{float(v):g}"


def format_pareto_table(rows: Sequence[Mapping[str, Any]], quality_label: str = "FID") -> str:
    """A Markdown table of sweep rows sorted by sampler, guidance and NFE.

    ``*`` marks a point on the (NFE, quality) front, ``+`` on the (seconds, quality) front.
    """
    has_agreement = any(r.get("class_agreement") is not None for r in rows)
    head = ["sampler", "w", "NFE", "steps", quality_label, "KID", "prec", "rec"]
    head += ["class agr."] if has_agreement else []
    head += ["ms/image", "front"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ordered = sorted(
        rows,
        key=lambda r: (str(r["sampler"]), _guidance(r.get("guidance_scale")), int(r["nfe"])),
    )
    for r in ordered:
        kid = r.get("kid_mean")
        kid_s = "-" if kid is None else f"{kid:.3g} ± {r['kid_std']:.2g}"
        marks = ("*" if r.get("pareto_nfe") else "") + ("+" if r.get("pareto_seconds") else "")
        sec = r.get("seconds_per_image")
        cells = [
            str(r["sampler"]),
            _guidance(r.get("guidance_scale")),
            str(r["nfe"]),
            str(r["num_steps"]),
            _fmt(r.get("fid"), ".2f"),
            kid_s,
            _fmt(r.get("precision"), ".3f"),
            _fmt(r.get("recall"), ".3f"),
        ]
        if has_agreement:
            agr = r.get("class_agreement")
            cells.append("-" if agr is None else f"{agr:.1%}")
        cells += ["-" if sec is None else f"{1e3 * sec:.2f}", marks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(width: float = 6.4, height: float = 4.4) -> Any:
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _series(
    rows: Sequence[Mapping[str, Any]], x: str, quality: str
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        xv, yv = row_value(r, x), row_value(r, quality)
        if math.isnan(xv) or math.isnan(yv):
            continue
        groups.setdefault((str(r["sampler"]), _guidance(r.get("guidance_scale"))), []).append(
            (xv, yv)
        )
    return {k: sorted(v) for k, v in sorted(groups.items())}


def _label(sampler: str, guidance: str, several: bool) -> str:
    return f"{sampler} (w={guidance})" if several else sampler


def _front_points(
    rows: Sequence[Mapping[str, Any]], x: str, quality: str
) -> list[tuple[float, float]]:
    return sorted(
        (row_value(r, x), row_value(r, quality))
        for r, on in zip(rows, pareto_front(rows, x, quality), strict=True)
        if on
    )


def _plot(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    x: str,
    xlabel: str,
    *,
    lines: bool,
    quality: str,
    quality_label: str,
    title: str,
) -> str:
    """Quality against ``x``, one series per (sampler, guidance), the front marked."""
    fig = _figure()
    ax = fig.add_subplot()
    series = _series(rows, x, quality)
    several = len({g for _, g in series}) > 1
    for (sampler, guidance), pts in series.items():
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-" if lines else "o", ms=4 if lines else 5,
                label=_label(sampler, guidance, several))
    front = _front_points(rows, x, quality)
    if front:
        fx, fy = zip(*front, strict=True)
        if not lines:
            ax.step(fx, fy, where="post", color="k", lw=1.2, label="Pareto frontier")
        ax.plot(fx, fy, "o", ms=10, mfc="none", mec="k",
                label="Pareto-optimal" if lines else None)
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    if lines:  # label the requested NFE budgets
        ticks = sorted({float(r.get("nfe_target", r[x])) for r in rows})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    finite = [v for v in (row_value(r, quality) for r in rows) if not math.isnan(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(quality_label)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return write_figure_atomic(fig, path)


def plot_quality_vs_nfe(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    quality: str = "fid",
    quality_label: str = "FID",
    title: str = "",
) -> str:
    """Plots quality against NFE, one line per sampler (and guidance scale), to a PNG.

    Points on the (NFE, quality) front are circled. Axes are logarithmic in NFE and,
    when all values are positive, in quality.

    Returns:
      The PNG path.
    """
    return _plot(rows, path, "nfe", "network evaluations (NFE)", lines=True,
                 quality=quality, quality_label=quality_label, title=title)


def plot_quality_vs_seconds(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    quality: str = "fid",
    quality_label: str = "FID",
    title: str = "",
) -> str:
    """Scatter of quality against seconds per image with the Pareto frontier drawn (PNG).

    The frontier is the staircase through the non-dominated points: every point above or
    to the right of it is beaten by a point on it.

    Returns:
      The PNG path.
    """
    return _plot(rows, path, "seconds_per_image",
                 "seconds per image (sampling, after compilation)", lines=False,
                 quality=quality, quality_label=quality_label, title=title)
