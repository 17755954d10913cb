"""``diffjax demo``: train the class-conditional digits model, sample it, check fidelity.

The fidelity check is measured, not eyeballed: a small CNN trained on the real digits
(held-out accuracy reported) classifies guided DDIM samples, and the report gives the
fraction assigned to the requested class at several guidance scales. The same
classifier's penultimate features then give FID@N for a small Pareto sweep (samplers x
NFE at one guidance scale): the report's table and plots show which sampler reaches a
given quality with the fewest network evaluations and the least wall-clock.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from diffjax.app import builders, images
from diffjax.app.config import apply_overrides, digits_config
from diffjax.app.evaluate import EvalContext, load_evaluation_context, run_pareto_sweep
from diffjax.app.generate import generate
from diffjax.app.reports import PARETO_COLUMNS, format_pareto_table
from diffjax.app.sampler_specs import SamplerSpec, parse_sampler
from diffjax.app.train import train
from diffjax.data import load_digits
from diffjax.files import write_text_atomic
from diffjax.metrics.pareto import best_per_nfe
from diffjax.networks.classifier import ClassifierParams, accuracy, class_agreement

DEFAULT_GUIDANCE_SCALES = (0.0, 1.0, 3.0)
DEFAULT_PARETO_SAMPLERS = ("ddim", "dpm++2m", "ddpm")
DEFAULT_PARETO_NFES = (5, 10, 20, 50)
PARETO_DIR = "pareto"


def guidance_fidelity(
    clf: ClassifierParams,
    config: ml_collections.ConfigDict,
    model: Any,
    params: Any,
    image_shape: tuple[int, ...],
    *,
    guidance_scales: Sequence[float],
    num_per_class: int,
    num_steps: int,
    seed: int,
) -> dict[float, float]:
    """Class agreement of guided DDIM samples at each guidance scale (same noise for all)."""
    schedule = builders.build_schedule(config.diffusion)
    labels = np.repeat(np.arange(model.num_classes), num_per_class).astype(np.int32)
    result = {}
    for scale in guidance_scales:
        samples = generate(
            model, params, schedule,
            prediction_type=config.diffusion.prediction_type,
            image_shape=image_shape,
            key=jax.random.key(seed),
            labels=labels,
            sampler="ddim",
            num_steps=num_steps,
            guidance_scale=float(scale),
            p_uncond=config.diffusion.p_uncond,
        )
        result[float(scale)] = class_agreement(clf, np.asarray(samples), labels)
    return result


def run_demo(
    workdir: str = "demo_out",
    *,
    overrides: Sequence[str] = (),
    variant: str = "",
    guidance_scales: Sequence[float] = DEFAULT_GUIDANCE_SCALES,
    num_per_class: int = 50,
    num_sampling_steps: int = 50,
    seed: int = 0,
    pareto_samplers: Sequence[str | SamplerSpec] = DEFAULT_PARETO_SAMPLERS,
    pareto_nfes: Sequence[int] = DEFAULT_PARETO_NFES,
    pareto_num_samples: int = 250,
) -> dict[str, Any] | None:
    """Runs the whole demo and writes ``report.json``, ``report.md`` and a sample grid.

    Args:
      workdir: output folder; the model trains (or resumes) in ``workdir/model`` and
        the evaluation classifier and reference statistics are cached in
        ``workdir/model/eval`` (shared with ``diffjax evaluate`` / ``diffjax pareto``).
      overrides: ``key=value`` config overrides on top of the digits config.
      variant: digits config variant ('' or 'tiny').
      guidance_scales: the scales of the fidelity table.
      num_per_class: samples per class for each scale.
      num_sampling_steps: DDIM steps.
      seed: sampling seed.
      pareto_samplers: samplers of the Pareto sweep (empty: no sweep).
      pareto_nfes: network-evaluation budgets of the sweep.
      pareto_num_samples: N of the sweep's FID@N, at the config's guidance scale.

    Returns:
      The report as a dict; None when training was preempted (SIGTERM / SIGINT): the
      step reached is saved, nothing is sampled, and the same call resumes.
    """
    specs = [parse_sampler(name) for name in pareto_samplers]  # refused before training
    config = digits_config(variant)
    apply_overrides(config, overrides)
    model_dir = os.path.join(workdir, "model")
    start = time.perf_counter()
    state = train(config, model_dir)
    train_seconds = time.perf_counter() - start
    if int(jax.device_get(state.step)) < config.training.num_steps:
        return None  # preempted; `train` said so and saved the step it reached

    ctx = load_evaluation_context(model_dir, seed=seed)
    clf = ctx.classifier
    heldout_accuracy = accuracy(clf, load_digits("heldout"))
    config, model, params, image_shape = ctx.config, ctx.model, ctx.params, ctx.image_shape
    schedule = ctx.schedule
    grid_scale = float(config.sampling.guidance_scale)
    grid_labels = np.repeat(np.arange(model.num_classes), 10).astype(np.int32)
    grid = generate(
        model, params, schedule,
        prediction_type=config.diffusion.prediction_type,
        image_shape=image_shape,
        key=jax.random.key(seed + 1),
        labels=grid_labels,
        sampler="ddim",
        num_steps=num_sampling_steps,
        guidance_scale=grid_scale,
        p_uncond=config.diffusion.p_uncond,
    )
    grid_path = os.path.join(workdir, f"samples_ddim{num_sampling_steps}_w{grid_scale:g}.png")
    images.save_grid(grid_path, np.asarray(grid), ncols=10, upscale=4)

    start = time.perf_counter()
    fidelity = guidance_fidelity(
        clf, config, model, params, image_shape,
        guidance_scales=guidance_scales,
        num_per_class=num_per_class,
        num_steps=num_sampling_steps,
        seed=seed,
    )
    sample_seconds = time.perf_counter() - start
    pareto = None
    if specs:
        pareto = demo_pareto(
            ctx, os.path.join(workdir, PARETO_DIR),
            samplers=specs, nfes=pareto_nfes, guidance_scale=grid_scale,
            num_samples=pareto_num_samples, seed=seed,
        )
    report = {
        "train_steps": int(config.training.num_steps),
        "train_seconds": round(train_seconds, 1),
        "classifier_heldout_accuracy": heldout_accuracy,
        "sampler": f"DDIM-{num_sampling_steps} (eta 0, trailing grid)",
        "samples_per_scale": int(num_per_class * model.num_classes),
        "class_agreement_by_guidance": {f"{k:g}": v for k, v in fidelity.items()},
        "fidelity_seconds": round(sample_seconds, 1),
        "grid": os.path.basename(grid_path),
        "devices": [str(d) for d in jax.devices()],
    }
    if pareto is not None:
        report["pareto"] = pareto
    write_text_atomic(os.path.join(workdir, "report.json"), json.dumps(report, indent=2))
    write_text_atomic(os.path.join(workdir, "report.md"), format_report(report))
    return report


def _plain(v: Any) -> Any:
    """JSON-exact value: NaN to None, floats rounded to 6 significant digits."""
    if isinstance(v, float):
        return None if v != v else float(f"{v:.6g}")
    return v


def demo_pareto(
    ctx: EvalContext,
    out_dir: str,
    *,
    samplers: Sequence[str | SamplerSpec],
    nfes: Sequence[int],
    guidance_scale: float,
    num_samples: int,
    seed: int,
) -> dict[str, Any]:
    """Runs the demo's small Pareto sweep and returns its report section."""
    start = time.perf_counter()
    rows = run_pareto_sweep(
        ctx, samplers=samplers, nfes=nfes, guidance_scales=[guidance_scale],
        num_samples=num_samples, out_dir=out_dir, seed=seed, progress=False,
    )
    label = rows[0]["fid_label"] if rows else ""
    return {
        "fid_label": label,
        "reference": ctx.reference_description,
        "guidance_scale": guidance_scale,
        "num_samples": int(num_samples),
        "rows": [{c: _plain(r.get(c)) for c in PARETO_COLUMNS} for r in rows],
        "best_per_nfe": [{k: _plain(v) for k, v in b.items()} for b in best_per_nfe(rows)],
        "table": format_pareto_table(rows, label),
        "plots": [f"{PARETO_DIR}/pareto_nfe.png", f"{PARETO_DIR}/pareto_seconds.png"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_report(report: dict[str, Any]) -> str:
    """A short Markdown report of a demo run."""
    scales = report["class_agreement_by_guidance"]
    header = "| guidance w | " + " | ".join(scales) + " |"
    rule = "|---|" + "---|" * len(scales)
    row = "| class agreement | " + " | ".join(f"{v:.1%}" for v in scales.values()) + " |"
    return "\n".join(
        [
            "# diffjax demo: class-conditional digits",
            "",
            f"- trained {report['train_steps']} steps in {report['train_seconds']} s "
            f"on {', '.join(report['devices'])}",
            f"- fidelity classifier held-out accuracy: {report['classifier_heldout_accuracy']:.1%}",
            f"- {report['sampler']}, {report['samples_per_scale']} samples per guidance scale "
            "(the same noise at every scale)",
            "",
            header,
            rule,
            row,
            "",
            f"![samples]({report['grid']})",
            "",
            *_format_pareto(report.get("pareto")),
        ]
    )


def _format_pareto(pareto: dict[str, Any] | None) -> list[str]:
    if not pareto:
        return []
    return [
        f"## Quality vs cost: {pareto['fid_label']}, guidance w = {pareto['guidance_scale']:g}",
        "",
        f"Reference: {pareto['reference']}. Lower is better. `*`: Pareto-optimal in "
        "(NFE, FID); `+`: Pareto-optimal in (seconds per image, FID). Seconds are sampling "
        f"wall-clock after compilation (sweep took {pareto['seconds']} s).",
        "",
        pareto["table"],
        *(f"![pareto]({p})" for p in pareto["plots"]),
        "",
    ]
