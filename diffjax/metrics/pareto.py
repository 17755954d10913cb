"""The quality-vs-cost Pareto frontier: which sampler configurations are worth using.

A sampler claim ("X is better than Y") means little at one step count: samplers trade
quality for network evaluations (NFE) and wall-clock time differently. A sweep over
samplers x NFE (:func:`diffjax.app.evaluate.run_pareto_sweep`) yields one row per
configuration; the rows worth using are the *Pareto-optimal* ones, those that no other
row beats on both axes (:func:`pareto_front`). The result files, tables and plots of a
sweep are in :mod:`diffjax.app.reports`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["best_per_nfe", "mark_pareto", "pareto_front", "row_value"]

def row_value(point: Mapping[str, Any], key: str) -> float:
    """``point[key]`` as a float, NaN for ``None`` (a metric that was not measured)."""
    if key not in point:
        raise KeyError(f"point {dict(point)} has no {key!r}")
    v = point[key]
    return math.nan if v is None else float(v)


def pareto_front(points: Sequence[Mapping[str, Any]], x: str, y: str) -> list[bool]:
    """Marks the points that no other point dominates, lower being better on both axes.

    ``q`` dominates ``p`` when ``q[x] <= p[x]`` and ``q[y] <= p[y]`` with at least one
    strict inequality. Points with equal coordinates do not dominate each other, so all
    copies of an optimal point are marked. Points with a missing (None) or NaN coordinate
    are never on the front and dominate nothing.

    Args:
      points: Mappings holding the keys ``x`` and ``y`` (e.g. ``"seconds_per_image"`` and
        ``"fid"``).
      x: Key of the first cost.
      y: Key of the second cost.

    Returns:
      One bool per point, True for the non-dominated ones.
    """
    coords = [(row_value(p, x), row_value(p, y)) for p in points]
    valid = [not (math.isnan(a) or math.isnan(b)) for a, b in coords]

    def dominates(q: tuple[float, float], p: tuple[float, float]) -> bool:
        return q[0] <= p[0] and q[1] <= p[1] and q != p

    # O(n^2): sweeps have tens to hundreds of points.
    ok = [c for c, v in zip(coords, valid, strict=True) if v]
    return [v and not any(dominates(q, c) for q in ok) for c, v in zip(coords, valid, strict=True)]


def mark_pareto(rows: Sequence[dict[str, Any]], quality: str = "fid") -> None:
    """Sets ``pareto_nfe`` and ``pareto_seconds`` on each row (in place).

    The fronts are taken over all rows (every sampler and guidance scale together):
    ``(nfe, quality)`` and ``(seconds_per_image, quality)``, lower being better.
    """
    for key, axis in (("pareto_nfe", "nfe"), ("pareto_seconds", "seconds_per_image")):
        for row, on in zip(rows, pareto_front(rows, axis, quality), strict=True):
            row[key] = on


def best_per_nfe(
    rows: Sequence[Mapping[str, Any]], quality: str = "fid"
) -> list[dict[str, Any]]:
    """For each requested NFE, the row with the lowest ``quality`` (NaN rows ignored).

    Rows are grouped by ``nfe_target`` (the NFE asked for; a sampler whose steps cost
    several evaluations may have used fewer). Returns dicts with ``nfe_target``,
    ``sampler``, ``nfe``, ``guidance_scale`` and the quality value, sorted by NFE.
    """
    best: dict[int, Mapping[str, Any]] = {}
    for r in rows:
        q = row_value(r, quality)
        if math.isnan(q):
            continue
        key = int(r.get("nfe_target", r["nfe"]))
        if key not in best or q < row_value(best[key], quality):
            best[key] = r
    return [
        {
            "nfe_target": k,
            "sampler": best[k]["sampler"],
            "nfe": best[k]["nfe"],
            "guidance_scale": best[k].get("guidance_scale"),
            quality: best[k][quality],
        }
        for k in sorted(best)
    ]
