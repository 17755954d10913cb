"""Classifier-free guidance sweeps: the fidelity-diversity trade-off, measured.

Raising the guidance scale ``w`` (guided eps = ``(1 + w) eps_cond - w eps_uncond``, Ho &
Salimans 2021) makes samples look more like their class and less varied. A sweep makes
that trade visible with numbers: for each scale, :func:`guidance_sweep` samples ``N``
images with balanced class labels from the *same* initial noise, and evaluates them with
:func:`diffjax.app.evaluate.evaluate_samples` on the workdir's evaluation features:

- fidelity: class agreement (the fraction the evaluation classifier assigns to the
  requested class) and precision;
- diversity and distribution match: FID@N, KID and recall against the training set.

The two refinements of :mod:`diffjax.guidance` are sweep options, so a plot can put them
beside plain guidance: guidance rescale (Lin et al. 2024) and a guidance interval
(Kynkaanniemi et al. 2024). :func:`guidance_interval_for_sigmas` turns the interval of
that paper, given as EDM noise levels, into model timesteps of any VP schedule.

:func:`write_guidance_sweep` writes CSV/JSON/Markdown; :func:`plot_guidance_sweep` draws
FID, class agreement and precision/recall against ``w``; :func:`plot_guidance_grids`
shows one sample per class at every scale (same noise, so rows differ only by ``w``).

References:
  Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021, Sec. 4 (Fig. 4: the FID/IS
  trade-off over the guidance strength).
  Lin, Liu, Li & Yang, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
  WACV 2024, Sec. 3.4.
  Kynkaanniemi, Aittala, Karras, Laine, Aila & Lehtinen, "Applying Guidance in a Limited
  Interval Improves Sample and Distribution Quality in Diffusion Models", NeurIPS 2024.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from diffjax.app import builders, images
from diffjax.app.evaluate import EvalContext, evaluate_samples
from diffjax.app.generate import generate
from diffjax.app.reports import METRIC_COLUMNS, write_rows
from diffjax.app.sampler_specs import SamplerSpec, parse_sampler
from diffjax.files import write_figure_atomic, write_text_atomic
from diffjax.schedules import DiscreteSchedule

__all__ = [
    "GUIDANCE_COLUMNS",
    "GuidanceSweep",
    "format_guidance_table",
    "guidance_interval_for_sigmas",
    "guidance_sweep",
    "plot_guidance_grids",
    "plot_guidance_sweep",
    "write_guidance_sweep",
]

GUIDANCE_COLUMNS = (
    "variant",
    "guidance_scale",
    "guidance_rescale",
    "guidance_interval",
    "sampler",
    "num_steps",
    "nfe",
    *METRIC_COLUMNS,
)
"""Columns of ``guidance.csv``, in order (``guidance.json`` holds every field)."""


class GuidanceSweep(NamedTuple):
    """The result of :func:`guidance_sweep`.

    Attributes:
      rows: One flat dict per guidance scale (the :data:`GUIDANCE_COLUMNS` and the
        labels of :func:`~diffjax.app.evaluate.evaluate_samples`).
      grids: One ``(num_classes * per_class, H, W, C)`` array per row: the first samples
        of each class, class-major (row ``c`` of a grid with ``per_class`` columns is
        class ``c``), clipped to ``[-1, 1]``.
      grid_per_class: Samples per class in each grid.
    """

    rows: list[dict[str, Any]]
    grids: list[np.ndarray]
    grid_per_class: int


def guidance_interval_for_sigmas(
    schedule: DiscreteSchedule, sigma_lo: float, sigma_hi: float
) -> tuple[float, float]:
    """Model-time interval ``(t_lo, t_hi)`` where the EDM noise level lies in ``[lo, hi]``.

    Kynkaanniemi et al. give their interval as EDM noise levels ``sigma_edm = sigma_t /
    alpha_t`` (e.g. ``(0.28, 5.42]`` for EDM2 on ImageNet-512); ``log SNR = -2 log
    sigma_edm``, so the schedule's :meth:`~DiscreteSchedule.t_from_log_snr` maps them to
    model times for :func:`diffjax.app.generate.generate`'s ``guidance_interval``.

    Raises:
      ValueError: unless ``0 < sigma_lo < sigma_hi``.
    """
    if not 0.0 < sigma_lo < sigma_hi:
        raise ValueError(f"need 0 < sigma_lo < sigma_hi, got {sigma_lo=}, {sigma_hi=}")
    t = schedule.t_from_log_snr(-2.0 * np.log(np.array([sigma_lo, sigma_hi], np.float32)))
    return float(t[0]), float(t[1])


def _class_major(x: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """The first ``per_class`` samples of each class, ordered class by class."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    return np.clip(x[np.concatenate(picks)], -1.0, 1.0)


def guidance_sweep(
    ctx: EvalContext,
    guidance_scales: Sequence[float],
    *,
    sampler: str | SamplerSpec = "dpm++2m",
    num_steps: int = 20,
    num_samples: int = 500,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    variant: str = "",
    seed: int = 0,
    kid_subsets: int = 100,
    grid_per_class: int = 8,
) -> GuidanceSweep:
    """Samples and evaluates the model of ``ctx`` at each guidance scale.

    Every scale uses the same key (the same initial noise and sampler noise) and the
    balanced labels ``arange(N) % num_classes``, so differences between rows are the
    guidance alone. Each scale is one :func:`~diffjax.app.generate.generate` call of
    ``num_samples`` images (the scale, rescale and interval are traced: one compilation
    serves the whole sweep). Samples are clipped to ``[-1, 1]`` before evaluation.

    Args:
      ctx: From :func:`diffjax.app.evaluate.load_evaluation_context` (a class-conditional
        model trained with conditioning dropout).
      guidance_scales: The scales ``w`` (0 is the conditional model, through the
        batched guided path).
      sampler: A :class:`~diffjax.app.sampler_specs.SamplerSpec` or a sampler name.
      num_steps: Its step count.
      num_samples: ``N`` per scale (at least ``num_classes * grid_per_class`` and 6).
      guidance_rescale: Guidance rescale factor in ``[0, 1]`` for every scale.
      guidance_interval: ``(t_lo, t_hi)`` model times where guidance applies; None for
        all times.
      variant: A name for this series in tables and plots (default: from the options).
      seed: Sampling seed.
      kid_subsets: Number of KID subsets.
      grid_per_class: Samples per class kept for :attr:`GuidanceSweep.grids`.

    Returns:
      A :class:`GuidanceSweep`.

    Raises:
      ValueError: for an unconditional model, an empty sweep or too few samples.
      FloatingPointError: if a scale produces non-finite samples.
    """
    spec = parse_sampler(sampler)
    num_classes = ctx.model.num_classes
    if num_classes is None:
        raise ValueError("a guidance sweep needs a class-conditional model")
    if not guidance_scales:
        raise ValueError("guidance_scales is empty")
    if num_samples < num_classes * grid_per_class:
        raise ValueError(
            f"num_samples={num_samples} is fewer than num_classes * grid_per_class = "
            f"{num_classes} * {grid_per_class}"
        )
    if not variant:
        variant = _variant_name(guidance_rescale, guidance_interval)
    labels = (np.arange(num_samples) % num_classes).astype(np.int32)
    rows, grids = [], []
    for w in guidance_scales:
        x = generate(
            ctx.model, ctx.params, ctx.schedule,
            prediction_type=ctx.config.diffusion.prediction_type,
            image_shape=ctx.sample_shape,
            key=jax.random.key(seed),
            labels=labels,
            sampler=spec,
            num_steps=int(num_steps),
            guidance_scale=float(w),
            guidance_rescale=float(guidance_rescale),
            guidance_interval=guidance_interval,
            p_uncond=float(ctx.config.diffusion.p_uncond),
            consistency=builders.consistency_parameterization(
                ctx.config, ctx.schedule, ctx.image_shape
            ),
            decoder=ctx.latent,
        )
        x = np.asarray(x)
        if not np.all(np.isfinite(x)):
            raise FloatingPointError(
                f"{spec} at guidance w={w:g} ({variant}) gave non-finite samples"
            )
        metrics = evaluate_samples(
            np.clip(x, -1.0, 1.0), labels,
            image_shape=ctx.image_shape,
            extractor=ctx.extractor,
            reference=ctx.reference,
            classifier=ctx.classifier,
            reference_description=ctx.reference_description,
            kid_subsets=kid_subsets,
            seed=seed,
        )
        rows.append({
            "variant": variant,
            "guidance_scale": float(w),
            "guidance_rescale": float(guidance_rescale),
            "guidance_interval": None if guidance_interval is None else list(guidance_interval),
            "sampler": str(spec),
            "num_steps": int(num_steps),
            "nfe": spec.nfe(int(num_steps)),
            "seed": int(seed),
            **metrics,
        })
        grids.append(_class_major(x, labels, num_classes, grid_per_class))
    return GuidanceSweep(rows, grids, int(grid_per_class))


def _variant_name(rescale: float, interval: tuple[float, float] | None) -> str:
    parts = []
    if rescale:
        parts.append(f"rescale {rescale:g}")
    if interval is not None:
        parts.append(f"interval t in [{interval[0]:.0f}, {interval[1]:.0f}]")
    return ", ".join(parts) or "plain"


def write_guidance_sweep(
    out_dir: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    meta: Mapping[str, Any] | None = None,
) -> tuple[str, str, str]:
    """Writes ``guidance.csv``, ``guidance.json`` and ``guidance.md`` to ``out_dir``.

    Each file is written atomically (:func:`~diffjax.app.reports.write_rows`: NaN is an
    empty CSV cell and JSON ``null``). The JSON holds ``meta`` and every field of every
    row; the CSV the :data:`GUIDANCE_COLUMNS`; the Markdown file the table of
    :func:`format_guidance_table`.

    Returns:
      The three paths.
    """
    csv_path, json_path = write_rows(
        out_dir, rows, meta=meta, name="guidance", columns=GUIDANCE_COLUMNS
    )
    md_path = os.path.join(os.fspath(out_dir), "guidance.md")
    write_text_atomic(md_path, format_guidance_table(rows))
    paths = (csv_path, json_path, md_path)
    return paths


def format_guidance_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of sweep rows: variant, ``w``, FID@N, KID, precision/recall, agreement."""
    fid_label = str(rows[0]["fid_label"]) if rows else "FID"
    head = ["variant", "w", fid_label, "KID", "precision", "recall", "class agreement"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        agreement = r.get("class_agreement")
        lines.append("| " + " | ".join([
            str(r["variant"]),
            f"{r['guidance_scale']:g}",
            f"{r['fid']:.2f}",
            f"{r['kid_mean']:.3g} ± {r['kid_std']:.2g}",
            f"{r['precision']:.3f}",
            f"{r['recall']:.3f}",
            "-" if agreement is None else f"{agreement:.1%}",
        ]) + " |")
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _series(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r["variant"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["guidance_scale"]) for k, v in out.items()}


def plot_guidance_sweep(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = ""
) -> str:
    """Plots FID@N, class agreement and precision/recall against ``w``, one line per variant.

    Returns:
      The PNG path.
    """
    if not rows:
        raise ValueError("no rows to plot")
    fig = _figure(12.0, 3.8)
    ax_fid, ax_agr, ax_pr = fig.subplots(1, 3)
    for name, pts in _series(rows).items():
        w = [r["guidance_scale"] for r in pts]
        ax_fid.plot(w, [r["fid"] for r in pts], "o-", label=name)
        if pts[0].get("class_agreement") is not None:
            ax_agr.plot(w, [100 * r["class_agreement"] for r in pts], "o-", label=name)
        line = ax_pr.plot(w, [r["precision"] for r in pts], "o-", label=f"precision, {name}")
        ax_pr.plot(w, [r["recall"] for r in pts], "s--", color=line[0].get_color(),
                   label=f"recall, {name}")
    ax_fid.set_ylabel(str(rows[0]["fid_label"]), fontsize=8)
    ax_fid.set_title("distribution match (lower is better)", fontsize=9)
    ax_agr.set_ylabel("class agreement (%)")
    ax_agr.set_title("fidelity: classifier agrees with the label", fontsize=9)
    ax_pr.set_ylabel("precision / recall")
    ax_pr.set_title("fidelity (precision) vs diversity (recall)", fontsize=9)
    for ax in (ax_fid, ax_agr, ax_pr):
        ax.set_xlabel("guidance scale w")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return write_figure_atomic(fig, path)


def plot_guidance_grids(
    sweep: GuidanceSweep,
    path: str | os.PathLike[str],
    *,
    variant: str | None = None,
    per_class: int = 1,
    upscale: int = 4,
) -> str:
    """One row per guidance scale of ``variant``: ``per_class`` samples of every class.

    All rows come from the same noise, so they differ only by the guidance.

    Args:
      sweep: A :class:`GuidanceSweep` (its ``grids`` hold the samples).
      path: Destination PNG.
      variant: Which series (default: the first row's).
      per_class: Samples per class in each row (at most the sweep's ``grid_per_class``).
      upscale: Nearest-neighbour magnification of each sample.

    Returns:
      The PNG path.
    """
    variant = sweep.rows[0]["variant"] if variant is None else variant
    chosen = [(r, g) for r, g in zip(sweep.rows, sweep.grids, strict=True)
              if r["variant"] == variant]
    if not chosen:
        raise ValueError(f"no rows of variant {variant!r}")
    if not 1 <= per_class <= sweep.grid_per_class:
        raise ValueError(f"per_class must lie in [1, {sweep.grid_per_class}], got {per_class}")
    strips = []
    for _, grid in chosen:
        num_classes = grid.shape[0] // sweep.grid_per_class
        keep = [c * sweep.grid_per_class + j for c in range(num_classes) for j in range(per_class)]
        strips.append(images.make_grid(grid[keep], ncols=len(keep), upscale=upscale))
    height, width = strips[0].shape[:2]
    fig = _figure(width / 90 + 0.8, len(strips) * height / 70 + 0.5)
    for i, ((row, _), strip) in enumerate(zip(chosen, strips, strict=True)):
        ax = fig.add_subplot(len(strips), 1, i + 1)
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"w={row['guidance_scale']:g}", rotation=0, ha="right", va="center")
    fig.suptitle(f"{variant}: {per_class} sample(s) per class, same noise in every row",
                 fontsize=9)
    return write_figure_atomic(fig, path)

