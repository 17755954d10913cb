"""The ``diffjax`` command: train, distill, sample, demo, evaluate, pareto, txt2img, img2img.

Examples::

  diffjax demo
  diffjax train --config experiments/configs/digits.py --workdir workdirs/digits
  diffjax train --config experiments/configs/digits.py:tiny --workdir /tmp/t
      --config.training.num_steps=40
  diffjax distill --teacher workdirs/digits --method cd --workdir workdirs/digits_cd
  diffjax sample --workdir workdirs/digits_cd --sampler cm --steps 2 --out cm2.png
  diffjax sample --workdir workdirs/digits --guidance 3 --labels 0,1,2 --out samples.png
  diffjax evaluate --workdir workdirs/digits --sampler dpm++2m --steps 20 --guidance 3
  diffjax pareto --workdir workdirs/digits --samplers ddim,dpm++2m --nfe 5,10,20 --guidance 3
  diffjax txt2img --model DIR --prompt "a cat" --sampler dpm++2m --steps 25 --out cat.png
  diffjax img2img --model DIR --image in.png --strength 0.6 --prompt "a cat" --out out.png
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# JAX and the library are imported inside the commands, so that `main` can take over
# SIGTERM / SIGINT (see diffjax.training.preemption.defer_signals) before the seconds of
# importing them: a preempted `train` then never dies mid-import with exit code 143 or
# a KeyboardInterrupt traceback.
if TYPE_CHECKING:
    import numpy as np

    from diffjax.app.sampler_specs import SamplerSpec

DEBUG_ENV = "DIFFJAX_DEBUG"
# Errors a user causes with arguments, configs or paths: exit code 2. Everything else
# (damaged or unwritable checkpoints, a locked workdir, a diverged loss, timeouts) is a
# runtime failure: exit code 1. Neither prints a traceback unless DIFFJAX_DEBUG=1.
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.key=value`` overrides from the other arguments."""
    overrides, rest = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    return overrides, rest


def _parse_labels(text: str | None) -> np.ndarray | None:
    import numpy as np

    if text is None:
        return None
    try:
        labels = np.asarray([int(v) for v in text.split(",") if v.strip()], np.int32)
    except ValueError:
        raise ValueError(f"--labels={text!r} must be comma-separated integers") from None
    if labels.size == 0:
        raise ValueError(f"--labels={text!r} names no label; give e.g. --labels 0,1,2")
    return labels


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    """Trains (or resumes) a run from a config file, or distils a teacher (``distill``)."""
    import jax

    from diffjax.app.config import apply_overrides, load_config
    from diffjax.app.train import distill_config, train
    from diffjax.training import distributed, preemption

    if args.command == "distill":
        config = distill_config(args.teacher, args.method, args.teacher_step)
    else:
        config = load_config(args.config)
    apply_overrides(config, overrides)
    multi_process = distributed.initialize(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        auto_detect=args.distributed_auto,
        timeout_s=args.distributed_timeout,
    )
    if multi_process and jax.default_backend() == "cpu":
        # Measured with jax 0.10.2: processes of a multi-process CPU run that read the
        # persistent cache written by single-process runs computed wrong gradients (a
        # different norm at the first step); compiled fresh they match (tests/test_distributed.py).
        jax.config.update("jax_enable_compilation_cache", False)
    signum = preemption.pending_signal()
    if signum is not None and not multi_process:
        print(f"diffjax {args.command}: stopped ({_signal_name(signum)}) before training "
              "started; nothing was written", file=sys.stderr)
        return
    state = train(config, args.workdir, step=args.step)
    step = int(state.step)
    if step == config.training.num_steps and jax.process_index() == 0:
        print(f"trained to step {step}; checkpoints in {args.workdir}")


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def cmd_sample(args: argparse.Namespace) -> None:
    """Samples a trained workdir to a PNG grid and an .npz."""
    import jax
    import numpy as np

    from diffjax.app import builders, images
    from diffjax.app.generate import generate, parse_guidance_interval
    from diffjax.app.latent import load_latent_space
    from diffjax.app.train import load_trained
    from diffjax.files import atomic_output, write_npz_atomic

    # Argument checks come before anything is loaded (or compiled).
    sampling = _fill_sampling_defaults(args)
    if args.num_per_label < 1:
        raise ValueError(f"--num-per-label={args.num_per_label} must be >= 1")
    if args.upscale < 1:
        raise ValueError(f"--upscale={args.upscale} must be >= 1 (1: no upscaling)")
    config, model, params, info = load_trained(args.workdir, args.step)
    labels = _parse_labels(args.labels)
    if labels is not None and args.num_per_label > 1:
        labels = np.repeat(labels, args.num_per_label)
    if labels is None and model.num_classes is not None:
        labels = np.repeat(np.arange(model.num_classes), args.num_per_label).astype(np.int32)
    schedule = builders.build_schedule(config.diffusion)
    latent = load_latent_space(config, info)
    samples = generate(
        model,
        params,
        schedule,
        prediction_type=config.diffusion.prediction_type,
        image_shape=tuple(info["image_shape"]) if latent is None else latent.latent_shape,
        key=jax.random.key(args.seed),
        labels=labels,
        num_samples=args.num_per_label,
        sampler=args.sampler,
        num_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_rescale=args.guidance_rescale,
        guidance_interval=parse_guidance_interval(args.guidance_interval),
        eta=args.eta,
        clip_x0=sampling.clip_x0,
        p_uncond=config.diffusion.p_uncond,
        consistency=builders.consistency_parameterization(
            config, schedule, tuple(info["image_shape"])
        ),
        decoder=latent,
    )
    samples = np.asarray(samples)
    if not np.all(np.isfinite(samples)):
        bad = int(np.sum(~np.all(np.isfinite(samples.reshape(len(samples), -1)), axis=1)))
        raise FloatingPointError(
            f"{bad} of {len(samples)} samples hold NaN or Inf (checkpoint of {args.workdir}"
            f"{'' if args.step is None else f' at step {args.step}'}); nothing was written"
        )
    out = args.out or os.path.join(args.workdir, "samples.png")
    ncols = args.num_per_label if labels is not None else min(len(samples), 10)
    with atomic_output(out, suffix=os.path.splitext(out)[1] or ".png") as tmp:
        images.save_grid(tmp, samples, ncols=ncols, upscale=args.upscale)
    npz = os.path.splitext(out)[0] + ".npz"
    write_npz_atomic(npz, images=samples, labels=labels if labels is not None else np.zeros(0))
    print(f"wrote {len(samples)} samples to {out} and {npz}")


def _fill_sampling_defaults(args: argparse.Namespace) -> Any:
    """Sets ``--sampler``, ``--steps`` and ``--eta`` left out to the run's ``config.sampling``.

    Reads only the workdir's ``config.json`` (nothing is loaded or written).

    Returns:
      The run's ``config.sampling`` section.

    Raises:
      FileNotFoundError: the workdir has no ``config.json``.
    """
    from diffjax.app.checkpoint import read_config
    from diffjax.app.sampler_specs import parse_sampler

    sampling = read_config(args.workdir).sampling
    if args.sampler is None:
        args.sampler = parse_sampler(sampling.sampler)
    if args.steps is None:
        args.steps = sampling.num_steps
    if getattr(args, "eta", 0.0) is None:
        args.eta = sampling.eta
    return sampling


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> None:
    """Trains the digits model, samples a grid and prints the fidelity report."""
    from diffjax.app.demo import format_report, run_demo

    report = run_demo(
        args.workdir,
        overrides=[o.removeprefix("--config.") for o in overrides],
        variant=args.variant,
        num_per_class=args.num_per_class,
    )
    if report is None:  # training was preempted and said so; the same command resumes
        return
    print(format_report(report))
    print(f"report and samples in {args.workdir}/")


def _sampler_help() -> str:
    from diffjax.app.sampler_specs import GRID_NAMES, SAMPLER_NAMES

    return (
        f"one of {', '.join(SAMPLER_NAMES)}; the DPM-Solver family and UniPC also take a "
        f"grid suffix @{' or @'.join(GRID_NAMES)} (e.g. dpm++2m@logsnr)"
    )


def _sampler_name(text: str) -> SamplerSpec:
    """The type of --sampler: a sampler name with an optional grid suffix, parsed once."""
    from diffjax.app.sampler_specs import parse_sampler

    try:
        return parse_sampler(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parse_list(text: str, kind: type, flag: str) -> list:
    """Comma-separated values; for guidance, 'none' means no guidance."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    try:
        return [None if kind is float and v.lower() == "none" else kind(v) for v in items]
    except ValueError:
        raise ValueError(f"{flag}={text!r} must be comma-separated {kind.__name__}s") from None


def _guidance_scales(text: str | None, default: float | None) -> list[float | None]:
    """``--guidance`` values: comma-separated scales or 'none'; unset gives ``[default]``."""
    return [default] if text is None else _parse_list(text, float, "--guidance")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Samples a trained workdir and prints FID@N, KID, PR/DC, class agreement, speed."""
    import json

    from diffjax.app.evaluate import (
        check_num_samples,
        default_guidance,
        evaluate_sampler,
        format_evaluation,
        load_evaluation_context,
    )
    from diffjax.files import write_text_atomic

    if _workdir_task(args.workdir) == "autoencoder":
        from diffjax.app.autoencoder_eval import (
            evaluate_autoencoder,
            format_autoencoder_evaluation,
        )

        result = evaluate_autoencoder(args.workdir, num_images=args.num_samples, seed=args.seed,
                                      step=args.step, batch_size=args.batch_size, out=args.out)
        print(format_autoencoder_evaluation(result))
        print(f"wrote {result['out']}")
        return
    # The arguments are checked before load_evaluation_context, which may train the
    # evaluation classifier and cache reference features in WORKDIR/eval/.
    check_num_samples(args.num_samples, args.features)
    _check_eval_arguments(args)
    _fill_sampling_defaults(args)
    if args.steps < 1:
        raise ValueError(f"--steps={args.steps} must be >= 1")
    scales = _guidance_scales(args.guidance, None)
    if len(scales) != 1:
        raise ValueError(f"--guidance={args.guidance!r}: evaluate takes one scale (pareto many)")
    ctx = load_evaluation_context(
        args.workdir, step=args.step, features=args.features,
        inception_weights=args.inception_weights,
    )
    guidance = default_guidance(ctx) if args.guidance is None else scales[0]
    result = evaluate_sampler(
        ctx, args.sampler, args.steps, guidance, args.num_samples,
        seed=args.seed, batch_size=args.batch_size, reference_stats=args.reference_stats,
    )
    w = "none" if guidance is None else f"{guidance:g}"
    out = args.out or os.path.join(
        args.workdir, "eval", f"evaluate_{args.sampler}_{args.steps}steps_w{w}_N{args.num_samples}"
        f"_{ctx.extractor.name}.json",
    )
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(format_evaluation(result))
    print(f"wrote {out}")


def _workdir_task(workdir: str) -> str:
    """The ``config.task`` of a workdir ('diffusion' when it has no config yet)."""
    from diffjax.app import checkpoint as ckpt

    try:
        return str(ckpt.read_config(workdir).task)
    except FileNotFoundError:
        return "diffusion"  # the diffusion path reports the missing workdir


def _check_eval_arguments(args: argparse.Namespace) -> None:
    """Checks evaluate/pareto arguments that need no workdir (before anything is written)."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} must be >= 1")
    reference_stats = getattr(args, "reference_stats", None)
    if reference_stats is not None and not os.path.isfile(reference_stats):
        raise FileNotFoundError(f"--reference-stats={reference_stats!r} does not exist")
    if args.inception_weights is not None and not os.path.isfile(args.inception_weights):
        raise FileNotFoundError(f"--inception-weights={args.inception_weights!r} does not exist")


def cmd_pareto(args: argparse.Namespace) -> None:
    """Sweeps samplers x NFE x guidance and writes the Pareto table, CSV/JSON and plots."""
    from diffjax.app.evaluate import (
        check_num_samples,
        check_sweep,
        default_guidance,
        load_evaluation_context,
        run_pareto_sweep,
    )
    from diffjax.app.reports import format_pareto_table
    from diffjax.app.sampler_specs import parse_sampler
    from diffjax.metrics.pareto import best_per_nfe

    samplers = []
    for name in _parse_list(args.samplers, str, "--samplers"):
        try:
            samplers.append(parse_sampler(name))
        except ValueError as e:
            raise ValueError(f"--samplers: {e}") from None
    nfes = _parse_list(args.nfe, int, "--nfe")
    # Every argument is checked before load_evaluation_context, which may train the
    # evaluation classifier and cache reference features in WORKDIR/eval/.
    check_sweep(samplers, nfes, _guidance_scales(args.guidance, None))
    check_num_samples(args.num_samples, args.features)
    _check_eval_arguments(args)
    ctx = load_evaluation_context(
        args.workdir, step=args.step, features=args.features,
        inception_weights=args.inception_weights,
    )
    scales = _guidance_scales(args.guidance, default_guidance(ctx))
    out = args.out or os.path.join(args.workdir, "eval", "pareto")
    rows = run_pareto_sweep(
        ctx, samplers=samplers, nfes=nfes, guidance_scales=scales,
        num_samples=args.num_samples, out_dir=out, seed=args.seed,
        batch_size=args.batch_size, progress=not args.no_progress,
        meta={"command": _pareto_command(args, scales)},
    )
    label = rows[0]["fid_label"] if rows else "FID"
    print(format_pareto_table(rows, label))
    for best in best_per_nfe(rows):
        print(f"best {label} with a budget of {best['nfe_target']} NFE: {best['fid']:.3f} "
              f"({best['sampler']}, NFE {best['nfe']}, w={best['guidance_scale']})")
    print(f"wrote {out}/pareto.csv, pareto.json, pareto.md, pareto_nfe.png, pareto_seconds.png")


def _pareto_command(args: argparse.Namespace, scales: list) -> str:
    """The command line that reproduces a sweep (defaults resolved)."""
    w = ",".join("none" if s is None else f"{s:g}" for s in scales)
    return (
        f"diffjax pareto --workdir {args.workdir} --samplers {args.samplers} --nfe {args.nfe} "
        f"--guidance {w} --num-samples {args.num_samples} --features {args.features} "
        f"--seed {args.seed} --batch-size {args.batch_size}"
    )


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--num-samples", type=int, default=500, help="N of FID@N etc.")
    parser.add_argument("--features", default="classifier", choices=("classifier", "inception"),
                        help="classifier: offline features of a CNN trained on the dataset")
    parser.add_argument("--inception-weights", default=None,
                        help="converted FID Inception .npz (default $DIFFJAX_INCEPTION_WEIGHTS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256, help="largest sampling batch")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The workdir, multi-process and resume arguments of ``train`` and ``distill``."""
    parser.add_argument("--workdir", required=True)
    multi = parser.add_argument_group(
        "multi-process runs", "every process runs the same command with its own --process-id"
    )
    multi.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    multi.add_argument("--num-processes", type=int, default=None)
    multi.add_argument("--process-id", type=int, default=None)
    multi.add_argument("--distributed-auto", action="store_true",
                       help="let JAX detect the cluster (TPU pod, SLURM, ...)")
    multi.add_argument("--distributed-timeout", type=float, default=300.0,
                       help="seconds to wait for the coordinator and the other processes")
    parser.add_argument("--step", type=int, default=None,
                        help="resume from this checkpoint step (default: the newest intact "
                        "one); newer checkpoints are moved to checkpoints_set_aside/")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diffjax`` command."""
    parser = argparse.ArgumentParser(prog="diffjax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train or resume a run; --config.key=value overrides")
    train.add_argument("--config", required=True, help="config file, optionally file.py:variant")
    _add_run_arguments(train)

    distill = sub.add_parser(
        "distill",
        help="a consistency model from a trained diffusion workdir (CD or ECT); resumable; "
        "--config.key=value overrides",
    )
    distill.add_argument("--teacher", required=True, help="the diffusion model's workdir")
    distill.add_argument("--method", required=True, choices=("cd", "ect"),
                         help="cd: consistency distillation; ect: easy consistency tuning")
    distill.add_argument("--teacher-step", type=int, default=0,
                         help="the teacher's checkpoint step (default 0: its newest)")
    _add_run_arguments(distill)

    sample = sub.add_parser("sample", help="sample a trained workdir to PNG + npz")
    sample.add_argument("--workdir", required=True)
    sample.add_argument("--sampler", default=None, type=_sampler_name,
                        help=_sampler_help() + "; default: the run's config.sampling.sampler")
    sample.add_argument("--steps", type=int, default=None,
                        help="solver steps ('dpm-fast': network calls; 'edm-heun': Karras "
                        "noise levels, 2 * steps - 1 calls); default: the run's "
                        "config.sampling.num_steps")
    sample.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale w (omit for none)")
    sample.add_argument("--guidance-rescale", type=float, default=0.0,
                        help="guidance rescale factor in [0, 1] (Lin et al. 2024)")
    sample.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                        help="apply guidance only for model timesteps LO <= t <= HI")
    sample.add_argument("--eta", type=float, default=None,
                        help="DDIM-family noise level; default: the run's config.sampling.eta")
    sample.add_argument("--labels", default=None, help="comma-separated class labels")
    sample.add_argument("--num-per-label", type=int, default=10)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    sample.add_argument("--out", default=None, help="PNG path (default WORKDIR/samples.png)")
    sample.add_argument("--upscale", type=int, default=4)

    demo = sub.add_parser("demo", help="train + sample + fidelity report on bundled digits")
    demo.add_argument("--workdir", default="demo_out")
    demo.add_argument("--variant", default="", help="digits config variant ('' or 'tiny')")
    demo.add_argument("--num-per-class", type=int, default=50)

    evaluate = sub.add_parser(
        "evaluate", help="FID@N, KID, precision/recall, class agreement and speed of a sampler "
        "(of an autoencoder workdir: PSNR, reconstruction FID@N and the latent scale)"
    )
    _add_eval_arguments(evaluate)
    evaluate.add_argument("--sampler", default=None, type=_sampler_name,
                          help=_sampler_help() + "; default: the run's config.sampling.sampler")
    evaluate.add_argument("--steps", type=int, default=None,
                          help="solver steps; default: the run's config.sampling.num_steps")
    evaluate.add_argument("--guidance", default=None,
                          help="guidance scale w or 'none' (default: the run's config)")
    evaluate.add_argument("--reference-stats", default=None,
                          help="pytorch-fid .npz (mu, sigma) to take FID against")
    evaluate.add_argument("--out", default=None, help="JSON path (default WORKDIR/eval/...)")

    pareto = sub.add_parser(
        "pareto", help="quality vs NFE and vs seconds/image over samplers: CSV, JSON, PNG"
    )
    _add_eval_arguments(pareto)
    pareto.add_argument("--samplers", default="ddim,ddpm,dpm++2m,dpm++3m,dpm++2s,dpm-fast")
    pareto.add_argument("--nfe", default="5,10,20,50", help="network-evaluation budgets")
    pareto.add_argument("--guidance", default=None,
                        help="comma-separated scales, 'none' for unguided (default: config)")
    pareto.add_argument("--out", default=None, help="folder (default WORKDIR/eval/pareto)")
    pareto.add_argument("--no-progress", action="store_true", help="no progress bar")
    from diffjax.app.txt2img import add_arguments as add_sd_arguments

    txt2img = sub.add_parser("txt2img", help="Stable Diffusion: prompt to a PNG grid")
    add_sd_arguments(txt2img, img2img=False)
    img2img = sub.add_parser("img2img", help="Stable Diffusion: image + prompt to a PNG grid")
    add_sd_arguments(img2img, img2img=True)
    return parser


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache for command-line runs.

    XLA:CPU takes tens of seconds to compile a UNet train step; the cache makes a
    second ``diffjax`` run (a resume, a re-sample) skip that. The folder is
    ``$DIFFJAX_COMPILATION_CACHE`` (empty string: off), default ``~/.cache/diffjax/xla``.
    """
    import jax

    default = os.path.join(os.path.expanduser("~"), ".cache", "diffjax", "xla")
    path = os.environ.get("DIFFJAX_COMPILATION_CACHE", default)
    if path and jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Prints a warning as one line on stderr (no source line)."""
    del category, filename, lineno, line
    print(f"diffjax: warning: {message}", file=file or sys.stderr, flush=True)


def _quiet_background_failures() -> None:
    """One line, not a traceback, for failures outside the command's own thread.

    orbax's and tensorstore's background writers log, and at exit print, the tracebacks
    of a failed write (a full disk, say) that the command has already reported as its
    error; ``DIFFJAX_DEBUG=1`` keeps them.
    """
    import threading

    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    def one_line(kind: str, exc: BaseException | None) -> None:
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"diffjax: {kind}: {type(exc).__name__}: {text}", file=sys.stderr)

    threading.excepthook = lambda a: one_line(f"background thread {a.thread.name}",
                                               a.exc_value)
    sys.unraisablehook = lambda u: one_line("ignored background error", u.exc_value)
    sys.excepthook = lambda t, e, tb: one_line("error", e)


def _error_message(command: str, e: BaseException) -> tuple[str, int]:
    """The one-line message and exit code of an error a command ended with."""
    if isinstance(e, KeyboardInterrupt):
        return f"diffjax {command}: interrupted", 130
    if isinstance(e, USAGE_ERRORS):
        return f"diffjax {command}: error: {e}", 2
    # FloatingPointError is diffjax's report of a diverged loss or non-finite samples;
    # other ArithmeticErrors (ZeroDivisionError, OverflowError) are internal failures.
    known = (RuntimeError, OSError, FloatingPointError)
    if isinstance(e, known) and type(e).__module__.startswith(("builtins", "diffjax")):
        return f"diffjax {command}: error: {e}", 1
    first = (str(e).strip().splitlines() or [""])[0][:500]
    return (
        f"diffjax {command}: error: {type(e).__name__}: {first}\n"
        f"(an unexpected failure; rerun with {DEBUG_ENV}=1 for the full traceback)",
        1,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffjax`` console script.

    Returns:
      0 on success (also after a preemption that saved its checkpoint), 2 for a usage
      error (bad flags, config, paths), 1 for a runtime failure, 130 when interrupted.
      Errors are one message on stderr; ``DIFFJAX_DEBUG=1`` adds the traceback.
    """
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "distill", "demo"):
        # Signals outside the training loop (start-up, shutdown) are recorded, not fatal:
        # the loop's own handler saves and stops. Called in-process (with argv), the
        # caller's handlers come back when main returns.
        from diffjax.training import preemption

        with preemption.deferred_signals(keep=as_program):
            return _main(argv, as_program)
    return _main(argv, as_program)


def _main(argv: list[str], as_program: bool) -> int:
    """:func:`main` after its signal set-up (``as_program``: run as the command itself)."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    enable_compilation_cache()
    overrides, rest = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    if as_program and not debug:
        _quiet_background_failures()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # restored when the block ends
            _run_command(args, overrides)
    except (Exception, KeyboardInterrupt) as e:
        if debug:
            traceback.print_exc()
        message, code = _error_message(args.command, e)
        print(message, file=sys.stderr, flush=True)
        return code
    return 0


def _run_command(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.command in ("train", "distill"):
        cmd_train(args, overrides)
    elif args.command == "demo":
        cmd_demo(args, overrides)
    elif overrides:
        raise ValueError(f"--config overrides apply to train, distill and demo only: {overrides}")
    elif args.command == "evaluate":
        cmd_evaluate(args)
    elif args.command == "pareto":
        cmd_pareto(args)
    elif args.command in ("txt2img", "img2img"):
        from diffjax.app import txt2img

        (txt2img.run_txt2img if args.command == "txt2img" else txt2img.run_img2img)(args)
    else:
        cmd_sample(args)


if __name__ == "__main__":
    sys.exit(main())
