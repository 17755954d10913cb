"""Writes the notebooks in colabs/ (the single source of their cells), outputs stripped.

Usage, from the repository root::

  python colabs/make_notebooks.py            # rewrite colabs/*.ipynb
  python colabs/make_notebooks.py --check    # exit 1 if a notebook differs from this file

Every notebook opens with the same three cells: a Colab badge, the install cell (pip
installs diffjax from the repository when running in Colab) and the setup cell, whose
``DIFFJAX_NOTEBOOK_MODE`` environment variable picks the sizes: ``full`` (default; minutes
on a CPU for the digits) or ``small`` (a short run with fewer steps and samples, what
``tests/test_notebooks.py`` executes). Each notebook asserts the claims it teaches, in
both modes, so a notebook that produces NaN samples or loses its result fails.
Notebooks 2 to 5 use the run notebook 1 trains
(``workdirs/<dataset>_<mode>``; trained on the spot when missing) or, when
``DIFFJAX_NOTEBOOK_WORKDIR`` names one, that trained workdir.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import textwrap

import nbformat

REPO_URL = "https://github.com/diffjax/diffjax"
COLAB_URL = "https://colab.research.google.com/github/diffjax/diffjax/blob/main/colabs"
HERE = os.path.dirname(os.path.abspath(__file__))


def md(text: str) -> nbformat.NotebookNode:
    """A Markdown cell from indented text."""
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    """A code cell from indented text."""
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


def badge(name: str, title: str, intro: str) -> nbformat.NotebookNode:
    """The title cell: heading, Open-in-Colab badge and introduction."""
    return md(
        f"# {title}\n\n"
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"({COLAB_URL}/{name}.ipynb)\n\n" + textwrap.dedent(intro).strip()
    )


INSTALL = code(f'''
    # In Colab, install diffjax from the repository (elsewhere: `pip install -e .` in a checkout).
    import shutil
    import subprocess
    import sys

    if "google.colab" in sys.modules:
        packages = ["git+{REPO_URL}"]
        if shutil.which("nvidia-smi"):  # a GPU runtime: the CUDA build of the jax diffjax pins
            packages.append("jax[cuda12]>=0.10,<0.11")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages], check=True)
''')

SETUP = code('''
    import os

    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    import diffjax
    from diffjax.app import images

    # "full": the notebook as meant (minutes on a CPU for the digits). "small": fewer
    # steps and samples (what the test suite executes).
    MODE = os.environ.get("DIFFJAX_NOTEBOOK_MODE", "full")
    # True: Fashion-MNIST (60,000 28x28 images) and a larger UNet; pick a GPU or TPU runtime.
    LARGE = False
    if MODE not in ("small", "full"):
        raise ValueError(f"DIFFJAX_NOTEBOOK_MODE={MODE!r}: expected 'small' or 'full'")
    SMALL = MODE == "small"
    print(f"mode {MODE}, large {LARGE}, devices {jax.devices()}")


    def check_finite(x, what):
        """Fails the notebook when ``x`` holds NaN or infinity (a broken model or sampler)."""
        x = np.asarray(x)
        bad = np.size(x) - np.isfinite(x).sum()
        assert bad == 0, f"{what}: {bad} non-finite values"
        return x


    def show(x, ncols, title="", scale=0.6):
        """Shows images in [-1, 1] as one grid."""
        grid = images.make_grid(np.asarray(x), ncols, upscale=4)
        plt.figure(figsize=(scale * grid.shape[1] / 33, scale * grid.shape[0] / 33 + 0.4))
        plt.imshow(grid, interpolation="nearest")
        plt.axis("off")
        plt.title(title, fontsize=9)
        plt.show()
''')

CONFIG = code('''
    FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"

    if LARGE:
        # diffjax reads Fashion-MNIST's IDX files; it never downloads anything itself.
        import urllib.request

        data_dir = os.path.abspath("data/fashion-mnist")
        os.makedirs(data_dir, exist_ok=True)
        for split in ("train", "t10k"):
            for kind in ("images-idx3", "labels-idx1"):
                name = f"{split}-{kind}-ubyte.gz"
                if not os.path.exists(os.path.join(data_dir, name)):
                    urllib.request.urlretrieve(f"{FASHION_URL}/{name}", f"{data_dir}/{name}")
        config = diffjax.base_config()  # DDPM defaults: T = 1000, linear betas, Adam 2e-4
        config.data.name, config.data.path = "fashion_mnist", data_dir
        config.model.base_channels = 64
        config.model.channel_mults = (1, 2, 2)  # 28 -> 14 -> 7
        config.model.attention_resolutions = (7,)
        config.training.num_steps = 20_000
        config.training.ema_decay = 0.999
        config.training.checkpoint_every = 2_000
        config.sampling.guidance_scale = 2.0
    elif SMALL:
        # The digits UNet, briefly. (The 16-channel "tiny" variant trains faster, but its
        # samples ignore their labels: one channel per GroupNorm group normalizes away the
        # embedding each residual block adds.)
        config = diffjax.digits_config()
        config.training.num_steps = 150
        config.training.batch_size = 32
        config.training.checkpoint_every = 150
        config.training.log_every = 10
        config.optim.warmup_steps = 20
    else:
        config = diffjax.digits_config()  # the `diffjax demo` model: 1,000 steps of batch 128
    config.training.progress_bar = not SMALL
    DATA_KW = {"path": config.data.path} if config.data.path else {}
''')

WORKDIR = code('''
    if os.environ.get("DIFFJAX_NOTEBOOK_WORKDIR"):
        WORKDIR = os.environ["DIFFJAX_NOTEBOOK_WORKDIR"]  # a trained run handed in (tests)
    else:
        # Notebook 1's run. train() resumes a workdir and returns at once when the run is
        # complete, so this trains only in a runtime that has not trained it yet.
        WORKDIR = os.path.abspath(f"workdirs/{config.data.name}_{MODE}")
        diffjax.train(config, WORKDIR)
    print("trained run:", WORKDIR)
''')


def head(name: str, title: str, intro: str, *, workdir: bool = True) -> list:
    """The cells every notebook starts with."""
    cells = [badge(name, title, intro), INSTALL, SETUP, CONFIG]
    return [*cells, WORKDIR] if workdir else cells


# --------------------------------------------------------------------------------------
# 01: training.

NB01 = "01_train_digits"
CELLS_01 = [
    *head(NB01, "Training a class-conditional diffusion model", """
        This notebook trains a small class-conditional UNet on the 1,797 8x8 handwritten
        digits that ship with scikit-learn, with **classifier-free conditioning dropout**:
        10% of the training labels are replaced by a learned *null* class, so the same
        network is both a conditional and an unconditional model. Everything runs through
        the library: `diffjax.train` (one jitted, state-donating train step, orbax
        checkpoints that resume), `diffjax.load_trained` and `diffjax.app.generate`.

        On a CPU the full run (1,000 steps of batch 128) takes about 5 minutes; set
        `LARGE = True` in the setup cell for Fashion-MNIST and a larger UNet on a GPU or
        TPU runtime. The later notebooks reuse the run trained here.
    """, workdir=False),
    md("""
        ## The data

        Images are scaled to [-1, 1]. The digits come with a fixed, stratified
        train/held-out split (1,438 / 359 images); the model trains on the train split.
    """),
    code("""
        from diffjax.data import load_dataset

        train_set = load_dataset(config.data.name, split=config.data.split, **DATA_KW)
        print(train_set.name, train_set.images.shape, "classes:", train_set.num_classes)
        order = np.argsort(train_set.labels, kind="stable")
        first = np.concatenate([order[train_set.labels[order] == c][:8] for c in range(10)])
        show(train_set.images[first], ncols=8, title="8 training images per class")
    """),
    md("""
        ## Classifier-free conditioning dropout

        During training, each label is replaced by the null class (index `num_classes`)
        with probability `p_uncond`; `diffjax.drop_labels` is the function the train step
        calls. At sampling time the guided prediction
        `eps = (1 + w) eps(x, c) - w eps(x, null)` blends the two models
        (notebook 3).
    """),
    code("""
        labels = np.arange(20) % 10
        dropped = diffjax.drop_labels(jax.random.key(0), labels, 0.25, null_label=10)
        print("labels :", labels)
        print("dropped:", np.asarray(dropped), "(10 = null class, p_uncond = 0.25 here)")
        print("this run: p_uncond =", config.diffusion.p_uncond)
        print(config.model)
    """),
    md("""
        ## Training

        `diffjax.train(config, workdir)` writes `config.json`, `metrics.jsonl` and orbax
        checkpoints to the workdir; running it again on a finished workdir returns at
        once, and on an interrupted one resumes (same batches, same noise).
    """),
    code("""
        import time

        WORKDIR = os.path.abspath(f"workdirs/{config.data.name}_{MODE}")
        start = time.perf_counter()
        state = diffjax.train(config, WORKDIR)
        print(f"step {int(state.step)} after {time.perf_counter() - start:.0f} s in {WORKDIR}")
    """),
    code("""
        import json

        with open(os.path.join(WORKDIR, "metrics.jsonl")) as f:
            log = [json.loads(line) for line in f]
        steps = [r["step"] for r in log]
        plt.figure(figsize=(5, 3))
        plt.semilogy(steps, [r["loss"] for r in log], "o-", ms=3)
        plt.xlabel("training step")
        plt.ylabel("loss (eps MSE, logged)")
        plt.grid(alpha=0.3)
        plt.show()
        print(f"loss {log[0]['loss']:.4f} at step {steps[0]}, {log[-1]['loss']:.4f} at {steps[-1]}")
        check_finite([r["loss"] for r in log], "training loss")
        assert log[-1]["loss"] < 0.7 * log[0]["loss"], "the loss did not decrease"
    """),
    md("""
        ## Samples

        `load_trained` returns the EMA parameters. `generate` runs a sampler as one
        `lax.scan`; the guidance scale is a traced argument, so the three grids below
        share one compilation. `w = 0` is the conditional model, `w = 3` guided, and
        `w = -1` gives `eps(x, null)`: the unconditional model the dropout trained.

        Does a sample show the digit it was asked for? A small CNN trained on the real
        digits (`diffjax.networks.classifier`, the one `diffjax evaluate` uses) says:
        **class agreement** is the fraction of samples it assigns to their label (chance:
        1 in 10). The unconditional samples ignore their labels, so they score about
        chance; guidance (notebook 3) raises the agreement of a model that has only begun
        to follow its labels, as in small mode's short run.
    """),
    code("""
        from diffjax.networks.classifier import accuracy, class_agreement, train_classifier

        cfg, model, params, info = diffjax.load_trained(WORKDIR)
        n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
        print(f"UNet: {n_params:,} parameters, image shape {info['image_shape']}")
        schedule = diffjax.build_schedule(cfg.diffusion)

        clf = train_classifier(train_set, key=jax.random.key(0))
        heldout = load_dataset(config.data.name, split="heldout", **DATA_KW)
        print(f"classifier held-out accuracy {accuracy(clf, heldout):.1%}")
        labels = np.tile(np.arange(model.num_classes), 4)  # one column per digit
        agreement = {}
        for w, what in [(0.0, "conditional (w = 0)"), (3.0, "guided (w = 3)"),
                        (-1.0, "unconditional (w = -1: the null class alone)")]:
            x = diffjax.generate(
                model, params, schedule,
                prediction_type=cfg.diffusion.prediction_type,
                image_shape=tuple(info["image_shape"]),
                key=jax.random.key(0),
                labels=labels,
                sampler="ddim",
                num_steps=10 if SMALL else 50,
                guidance_scale=w,
                p_uncond=cfg.diffusion.p_uncond,
            )
            agreement[w] = class_agreement(clf, check_finite(x, f"samples at w = {w:g}"), labels)
            show(x, ncols=model.num_classes, title=f"DDIM, {what}; labels 0-9 left to right")
            print(f"w = {w:g}: class agreement {agreement[w]:.0%}")
        # Guided samples follow their labels; the unconditional ones do not. (In small
        # mode's 150 steps the conditional model, w = 0, has only begun to: about 25%.)
        assert agreement[3.0] >= 0.6, f"guided samples ignore their labels: {agreement}"
        assert agreement[3.0] > agreement[-1.0] + 0.3, agreement
    """),
    md("""
        Next: [02 DDPM vs DDIM](02_ddpm_vs_ddim.ipynb) samples this network with both
        samplers, [03](03_guidance.ipynb) sweeps the guidance scale,
        [04](04_fast_samplers.ipynb) compares fast solvers and [05](05_memorization.ipynb)
        probes memorization. The command line does the same: `diffjax train`,
        `diffjax sample`, `diffjax evaluate`, `diffjax pareto`.
    """),
]


# --------------------------------------------------------------------------------------
# 02: DDPM vs DDIM.

NB02 = "02_ddpm_vs_ddim"
CELLS_02 = [
    *head(NB02, "DDPM vs DDIM: one network, two samplers", """
        The same trained noise predictor serves every sampler. DDPM (Ho et al. 2020)
        samples the reverse Markov chain with fresh noise at each step; DDIM (Song et al.
        2021) takes a non-Markovian, by default deterministic (`eta = 0`) path that
        tolerates large steps. This notebook measures sample quality against the step
        count for both, sweeps DDIM's `eta` from 0 (deterministic) to 1 (DDPM's
        posterior variance), and uses the deterministic path backwards: **DDIM
        inversion** encodes a real image into the noise that decodes back to it.

        Quality is FID@N on the features of a small digits classifier
        (`diffjax.app.evaluate`), against the training set: comparable between rows of this
        notebook, not with Inception FIDs. In full mode the 1,000-step points dominate the
        run time (7 to 12 minutes on a 2-core CPU, seconds on a GPU).
    """),
    code("""
        from IPython.display import Image, Markdown, display

        from diffjax.app.evaluate import evaluate_samples, load_evaluation_context, run_pareto_sweep
        from diffjax.app.reports import format_pareto_table
        from diffjax.data import load_dataset

        OUT = os.path.abspath("outputs/02_ddpm_vs_ddim")
        ctx = load_evaluation_context(WORKDIR)  # trains the evaluation classifier on first use
        print(f"features: {ctx.extractor.name}; reference: {ctx.reference_description}")
        STEPS = (4, 16) if SMALL else (10, 20, 50, 100, 1000)
        NUM_SAMPLES = 32 if SMALL else 200
    """),
    md("""
        ## Quality against the number of steps

        `run_pareto_sweep` samples every (sampler, step count) from the same noise
        (no guidance: the conditional model), evaluates it and writes CSV/JSON and plots.
        The DDIM paper's CIFAR-10 FIDs (Table 1) for 10 / 20 / 50 / 100 / 1000 steps:
        DDIM 13.36 / 6.84 / 4.67 / 4.16 / 4.04, DDPM 41.07 / 18.36 / 8.01 / 5.78 / 4.73;
        the shape to look for is DDIM's lead at few steps, closing as the steps grow.
    """),
    code("""
        rows = run_pareto_sweep(
            ctx, samplers=("ddim", "ddpm"), nfes=STEPS, guidance_scales=[None],
            num_samples=NUM_SAMPLES, out_dir=OUT, progress=not SMALL,
        )
        display(Markdown(format_pareto_table(rows, rows[0]["fid_label"])))
        display(Image(os.path.join(OUT, "pareto_nfe.png")))
        fid = {(r["sampler"], r["num_steps"]): r["fid"] for r in rows}
        assert all(r["num_nonfinite"] == 0 and np.isfinite(r["fid"]) for r in rows), rows
        for name in ("ddim", "ddpm"):  # more steps, better samples
            assert fid[name, STEPS[-1]] < fid[name, STEPS[0]], f"{name}: {fid}"
        if STEPS[0] <= 5:  # DDIM's lead is large at very few steps (10 steps: within the noise)
            assert fid["ddim", STEPS[0]] < fid["ddpm", STEPS[0]], fid
    """),
    md("""
        ## From DDIM to DDPM: eta

        DDIM's `eta` scales the fresh noise of each step: `eta = 0` is the deterministic
        sampler, `eta = 1` has DDPM's posterior variance. `eta` is a traced argument of
        `generate`, so the sweep compiles once. The samples use the sweep's noise
        (`run_pareto_sweep` samples in two batches, batch `i` from
        `fold_in(key(seed), i)`), so `eta = 0` at 20 steps repeats the DDIM-20 row above.

        FID@N is noisy at small N: with N = 200, not far above the 128 feature
        dimensions, another noise draw moves it by a few points (in one full run, DDIM-20
        scored 7.9 and 11.1 with two noise draws). Read trends across rows, not single
        differences.
    """),
    code("""
        ETAS = (0.0, 1.0) if SMALL else (0.0, 0.2, 0.5, 0.8, 1.0)
        ETA_STEPS = STEPS[-1] if SMALL else 20
        labels = np.arange(NUM_SAMPLES) % ctx.model.num_classes
        half = NUM_SAMPLES // 2
        eta_rows = []
        for eta in ETAS:
            x = np.concatenate([
                diffjax.generate(
                    ctx.model, ctx.params, ctx.schedule,
                    prediction_type=ctx.config.diffusion.prediction_type,
                    image_shape=ctx.image_shape, key=jax.random.fold_in(jax.random.key(0), i),
                    labels=labels[i * half:(i + 1) * half],
                    sampler="ddim", num_steps=ETA_STEPS, eta=eta,
                )
                for i in range(2)
            ])
            m = evaluate_samples(
                np.clip(check_finite(x, f"DDIM eta {eta}"), -1, 1), labels,
                image_shape=ctx.image_shape,
                extractor=ctx.extractor, reference=ctx.reference, classifier=ctx.classifier,
            )
            eta_rows.append((eta, m["fid"], m["recall"]))
            print(f"DDIM-{ETA_STEPS}, eta {eta:.1f}: {m['fid_label']} = {m['fid']:.2f}, "
                  f"recall {m['recall']:.3f}")
        plt.figure(figsize=(4.5, 3))
        plt.plot([r[0] for r in eta_rows], [r[1] for r in eta_rows], "o-")
        plt.xlabel("eta")
        plt.ylabel(m["fid_label"], fontsize=8)
        plt.title(f"DDIM, {ETA_STEPS} steps", fontsize=9)
        plt.grid(alpha=0.3)
        plt.show()
    """),
    md("""
        ## DDIM inversion

        Deterministic DDIM is a first-order solver of the probability-flow ODE, so it can
        be run from the data up to the noise: `diffjax.ddim_inversion(schedule, grid)`
        walks the sampling grid backwards, evaluating the network at each step's target
        time (as diffusers' `DDIMInverseScheduler`). Decoding the latent with DDIM on the
        same grid returns the image, up to an error that shrinks as the steps grow. Both
        directions are samplers run by `diffjax.sample`'s single `lax.scan`.
    """),
    code("""
        import functools

        from diffjax.app.sampler_specs import sampling_timesteps

        heldout = load_dataset(config.data.name, split="heldout", **DATA_KW)
        pick = [int(np.flatnonzero(heldout.labels == c)[0]) for c in range(heldout.num_classes)]
        x0, y = heldout.images[pick], heldout.labels[pick]


        @functools.partial(jax.jit, static_argnames="num_steps")
        def invert_and_decode(params, x0, labels, decode_labels, num_steps):
            \"\"\"Encodes x0 to x_T with `labels`, decodes x_T with `decode_labels`.\"\"\"
            denoise = diffjax.build_denoiser(
                ctx.model, params, ctx.schedule, ctx.config.diffusion.prediction_type
            )
            grid = sampling_timesteps(ctx.schedule.num_timesteps, num_steps)  # DDIM's grid
            key = jax.random.key(0)  # unused: both directions are deterministic
            encoder = diffjax.ddim_inversion(ctx.schedule, grid)
            decoder = diffjax.ddim(ctx.schedule, grid)  # eta 0, no clipping
            x_T = diffjax.sample(encoder, denoise, x0, key, cond=labels)
            x_rec = diffjax.sample(decoder, denoise, x_T, key, cond=decode_labels)
            return x_T, x_rec


        INV_STEPS = (4, 16) if SMALL else (10, 20, 50, 100, 1000)
        errors = {}
        for n in INV_STEPS:
            latents, x_rec = invert_and_decode(ctx.params, x0, y, y, num_steps=n)
            check_finite(latents, f"latents ({n} steps)")
            errors[n] = float(np.sqrt(np.mean((check_finite(x_rec, "decoded") - x0) ** 2)))
            print(f"{n:5d} steps: latent std {float(np.std(latents)):.3f}, "
                  f"reconstruction RMSE {errors[n]:.4f}")
        shrinking = zip(list(errors.values())[:-1], list(errors.values())[1:], strict=True)
        assert all(a > b for a, b in shrinking), (
            f"the reconstruction error should shrink as the steps grow: {errors}")
        plt.figure(figsize=(4.5, 3))
        plt.loglog(list(errors), list(errors.values()), "o-")
        plt.xlabel("DDIM steps (each direction)")
        plt.ylabel("reconstruction RMSE")
        plt.grid(alpha=0.3, which="both")
        plt.show()
        show(np.concatenate([x0, np.clip(latents / 3, -1, 1), x_rec]), ncols=len(pick),
             title=f"{n} steps: held-out images / their latents (scaled 1/3) / decoded")
    """),
    md("""
        The latent keeps what the network needs to redraw the image. Decoding it with
        *another* label is a simple edit: the stroke layout stays, the class changes
        (same compiled function: labels are traced).
    """),
    code("""
        _, x_edit = invert_and_decode(ctx.params, x0, y, (y + 1) % 10, num_steps=INV_STEPS[-1])
        show(np.concatenate([x0, x_edit]), ncols=len(pick),
             title="held-out digit c (top) inverted with label c, decoded with label c + 1")
    """),
]


# --------------------------------------------------------------------------------------
# 03: guidance.

NB03 = "03_guidance"
CELLS_03 = [
    *head(NB03, "Classifier-free guidance: the fidelity-diversity trade-off", """
        Guidance extrapolates from the unconditional towards the conditional prediction,
        `eps = (1 + w) eps(x, c) - w eps(x, null)` (Ho & Salimans 2021). Larger `w` makes
        samples agree more with their label and vary less. This notebook measures both
        sides with `diffjax.app.guidance_sweep`: **class agreement** (fidelity: the digits
        classifier's verdict) and **FID@N / recall** (how well the samples cover the
        data), per guidance scale, from the same noise at every scale.

        Two refinements are compared with plain guidance: **guidance rescale** (Lin et
        al. 2024: match the guided prediction's standard deviation to the conditional
        one) and a **guidance interval** (Kynkaanniemi et al. 2024: guide only at middle
        noise levels). All three are traced arguments of `generate`, so the whole sweep
        is one compilation. The committed full run on the demo model is in
        `experiments/results/guidance_digits` (`experiments/guidance_sweep.py`).
    """),
    code("""
        import time

        from IPython.display import Image, Markdown, display

        from diffjax.app.evaluate import load_evaluation_context
        from diffjax.app.guidance_sweep import (
            format_guidance_table,
            guidance_interval_for_sigmas,
            guidance_sweep,
            plot_guidance_grids,
            plot_guidance_sweep,
        )

        OUT = os.path.abspath("outputs/03_guidance")
        ctx = load_evaluation_context(WORKDIR)
        SCALES = (0.0, 3.0) if SMALL else (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
        common = dict(
            sampler="dpm++2m",  # the multistep data-prediction solver suits guidance
            num_steps=5 if SMALL else 20,
            num_samples=50 if SMALL else 300,
            grid_per_class=2,
        )
        # Kynkaanniemi et al.'s EDM2 interval, sigma in (0.28, 5.42], as model timesteps:
        interval = guidance_interval_for_sigmas(ctx.schedule, 0.28, 5.42)
        print(f"guidance interval: t in [{interval[0]:.0f}, {interval[1]:.0f}]")
    """),
    code("""
        start = time.perf_counter()
        plain = guidance_sweep(ctx, SCALES, **common)
        rescaled = guidance_sweep(ctx, SCALES, guidance_rescale=0.7, **common)
        limited = guidance_sweep(ctx, SCALES, guidance_interval=interval, **common)
        rows = plain.rows + rescaled.rows + limited.rows
        print(f"{len(rows)} points in {time.perf_counter() - start:.0f} s")
        display(Markdown(format_guidance_table(rows)))
        assert all(np.isfinite(r["fid"]) for r in rows), "non-finite FID"
        for sweep in (plain, rescaled, limited):  # fidelity rises with the guidance scale
            agreement = [r["class_agreement"] for r in sweep.rows]
            assert agreement[-1] > agreement[0] and agreement[-1] >= 0.9, (
                sweep.rows[0]["variant"], agreement)
    """),
    md("""
        ## The trade-off

        Left: FID@N against the training set (distribution match; diversity loss raises
        it). Middle: class agreement (fidelity). Right: precision (samples look like
        data) and recall (the data is covered by samples).
    """),
    code("""
        display(Image(plot_guidance_sweep(rows, os.path.join(OUT, "guidance_sweep.png"))))
    """),
    md("""
        ## Samples per scale

        Every row starts from the same noise, so the rows differ only by the guidance
        scale: watch the strokes thicken and the styles converge as `w` grows.
    """),
    code("""
        path = plot_guidance_grids(plain, os.path.join(OUT, "samples_by_scale.png"), per_class=2)
        display(Image(path))
        for row, grid in zip(plain.rows[-1:], plain.grids[-1:], strict=True):
            show(grid, ncols=plain.grid_per_class * 5,
                 title=f"plain guidance, w = {row['guidance_scale']:g}: two samples per class")
        path = plot_guidance_grids(limited, os.path.join(OUT, "samples_interval.png"), per_class=2)
        display(Image(path))
    """),
]


# --------------------------------------------------------------------------------------
# 04: fast samplers.

NB04 = "04_fast_samplers"
CELLS_04 = [
    *head(NB04, "Fast samplers on the quality-vs-cost Pareto frontier", """
        DPM-Solver and DPM-Solver++ (Lu et al. 2022) solve the probability-flow ODE with
        higher-order steps in log-SNR time, so they reach a given quality with fewer
        network evaluations (NFE) than DDIM. A claim like that means little at one step
        count: the fair frame is the **Pareto frontier** of quality against NFE and
        against wall-clock seconds, the configurations no other one beats on both axes.

        First the **Gaussian-mixture view**, where the score is known exactly
        (`diffjax.samplers.analytic.GaussianMixture`): with no network error, the only
        error left is the solver's, and its convergence order is visible. Then the
        trained digits model, guided, with `run_pareto_sweep`.
    """),
    md("""
        ## Exact score: the solver error alone

        Data: 8 Gaussians on a circle. `mixture.denoiser(schedule)` is the exact
        `eps*(x, t)`, so every sampler integrates the exact probability-flow ODE, and for
        a given `x_T` the exact answer is one point. Samplers are plain values: here they
        are built directly from their constructors on DPM-Solver's grid, uniform in
        log-SNR from `t = 999` down to `t = 0`. The reference is DPM-Solver++(3M) with
        400 steps; a sampler's error is its mean distance to the reference.
    """),
    code("""
        from IPython.display import Image, Markdown, display

        from diffjax.samplers.analytic import GaussianMixture

        angle = np.arange(8) * 2 * np.pi / 8
        mixture = GaussianMixture.create(
            weights=np.ones(8),
            means=2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1),
            covs=np.tile(0.02 * np.eye(2), (8, 1, 1)),
        )
        schedule = diffjax.make_schedule("linear", 1000)
        denoise = mixture.denoiser(schedule)
        M = 500 if SMALL else 2000
        noise = jax.random.normal(jax.random.key(1), (M, 2))  # x_T
        data = np.asarray(mixture.sample(jax.random.key(2), M), np.float64)


        def run(sampler):
            \"\"\"The sampler's output for the noise (one compiled lax.scan).\"\"\"
            go = jax.jit(lambda x: diffjax.sample(sampler, denoise, x, jax.random.key(0)))
            return np.asarray(go(noise))


        def grid(n):
            \"\"\"A grid of n steps uniform in log-SNR, ending at t = 0 (sigma_min).\"\"\"
            return np.append(diffjax.log_snr_uniform_timesteps(schedule, n), 0.0)


        SOLVERS = {
            "DDIM": lambda n: diffjax.ddim(schedule, grid(n)),
            "DPM-Solver++(2M)": lambda n: diffjax.dpm_solver_multistep(
                schedule, grid(n), order=2, lower_order_final="never"),
            "DPM-Solver++(3M)": lambda n: diffjax.dpm_solver_multistep(
                schedule, grid(n), order=3, lower_order_final="never"),
        }
        if SMALL:
            del SOLVERS["DPM-Solver++(3M)"]
        GM_NFES = (5, 10) if SMALL else (5, 10, 20, 50)  # one network call per step
        reference = run(diffjax.dpm_solver_multistep(schedule, grid(400), order=3))
        errors, fitted = {}, {}
        for name, build in SOLVERS.items():
            errors[name] = [float(np.mean(np.linalg.norm(run(build(n)) - reference, axis=1)))
                            for n in GM_NFES]
            order = -np.polyfit(np.log(GM_NFES), np.log(errors[name]), 1)[0]
            print(f"{name:17s} error at NFE {GM_NFES}: "
                  + ", ".join(f"{e:.2e}" for e in errors[name]) + f"; fitted order {order:.1f}")
            assert np.all(np.isfinite(errors[name])), name
            fitted[name] = order
        # DDIM is first order, DPM-Solver++(2M) second; from 10 NFE on the multistep solver wins.
        assert 0.7 < fitted["DDIM"] < 1.5 and fitted["DPM-Solver++(2M)"] > 1.7, fitted
        i10 = GM_NFES.index(10)
        assert errors["DPM-Solver++(2M)"][i10] < 0.8 * errors["DDIM"][i10], errors
    """),
    md("""
        The fitted slopes are the solvers' orders: 1 for DDIM, about 2 and 3 for the
        multistep DPM-Solver++. At 5 steps the higher orders are *worse*: a high-order
        extrapolation needs steps small enough for its history to be informative.

        `generate` and `make_sampler` use another grid: linspace in model time, ending at
        the clean point `t = -1` with a first-order last step (diffusers'
        `final_sigmas_type="zero"`). That last jump, from the smallest noise level straight
        to the data, dominates the error on these grids: every solver converges at about first
        order there, and the multistep solvers' lead over DDIM shrinks to a constant.
        Below, the same comparison on those grids, and the Frechet distance of each
        result to true samples of the mixture (the FID formula on the 2-D points
        themselves, `diffjax.metrics.frechet_distance`). The singlestep DPM-Solver-2
        (`dpm2`, noise prediction) diverges at its smallest budget.
    """),
    code("""
        from diffjax.app.generate import make_sampler
        from diffjax.app.sampler_specs import parse_sampler
        from diffjax.metrics import compute_statistics, frechet_distance

        ref_clean = run(make_sampler("dpm++3m", schedule, 500, clip_x0=None))
        mu_data, cov_data = compute_statistics(data)
        production, outputs = {}, {}
        for name in ("ddim", "dpm++2m") if SMALL else ("ddim", "dpm++2m", "dpm++3m", "dpm2"):
            production[name] = []
            for nfe in GM_NFES:
                found = parse_sampler(name).steps_for_nfe(nfe, schedule.num_timesteps)
                if found is None:
                    continue
                x = run(make_sampler(name, schedule, found[0], clip_x0=None))  # 2-D: no clipping
                check_finite(x, f"{name} at NFE {found[1]}")
                err = float(np.mean(np.linalg.norm(x - ref_clean, axis=1)))
                fd = frechet_distance(*compute_statistics(x), mu_data, cov_data)
                production[name].append((found[1], err))
                outputs[name, found[1]] = x
                print(f"{name:8s} NFE {found[1]:3d}: error {err:.2e}, Frechet distance {fd:.4f}")
    """),
    code("""
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, errs in errors.items():
            axes[0].loglog(GM_NFES, errs, "o-", label=f"{name}, log-SNR grid to t = 0")
        for name, pts in production.items():
            nfes, errs = zip(*pts, strict=True)
            axes[0].loglog(nfes, errs, "s--", alpha=0.7, label=f"make_sampler('{name}')")
        axes[0].set_xticks(GM_NFES, [str(n) for n in GM_NFES])
        axes[0].xaxis.set_minor_formatter(plt.NullFormatter())
        axes[0].set_xlabel("NFE")
        axes[0].set_ylabel("mean |x - x_reference|")
        axes[0].set_title("solver error with the exact score", fontsize=9)
        axes[0].grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=7)
        nfe0 = GM_NFES[0]
        axes[1].scatter(*data.T, s=2, c="k", alpha=0.3, label="data")
        for name in ("ddim", "dpm++2m"):
            if (name, nfe0) in outputs:
                axes[1].scatter(*outputs[name, nfe0].T, s=2, alpha=0.5, label=f"{name}, NFE {nfe0}")
        axes[1].set_aspect("equal")
        axes[1].legend(fontsize=8, markerscale=4)
        axes[1].set_title(f"samples at NFE {nfe0} (make_sampler grids)", fontsize=9)
        plt.show()
    """),
    md("""
        ## The trained model: FID@N against NFE and seconds

        Guided sampling at the run's guidance scale (3 for the digits). The sweep picks,
        for each sampler and NFE budget, the most steps that fit; all points share the
        initial noise. `*` marks the (NFE, FID) frontier, `+` the (seconds, FID) one.
        Seconds are measured after compilation, on this runtime's device. A committed
        larger sweep (6 samplers, 500 samples per point) is in
        `experiments/results/pareto_digits`.
    """),
    code("""
        from diffjax.app.evaluate import load_evaluation_context, run_pareto_sweep
        from diffjax.app.reports import format_pareto_table
        from diffjax.metrics import best_per_nfe

        OUT = os.path.abspath("outputs/04_fast_samplers")
        ctx = load_evaluation_context(WORKDIR)
        SAMPLERS = ("ddim", "dpm++2m") if SMALL else ("ddim", "dpm++2m", "dpm++3m", "dpm-fast")
        NFES = (4,) if SMALL else (5, 10, 20)
        w = float(ctx.config.sampling.guidance_scale)
        rows = run_pareto_sweep(
            ctx, samplers=SAMPLERS, nfes=NFES, guidance_scales=[w],
            num_samples=16 if SMALL else 250, out_dir=OUT, progress=not SMALL,
        )
        display(Markdown(format_pareto_table(rows, rows[0]["fid_label"])))
        assert all(r["num_nonfinite"] == 0 and np.isfinite(r["fid"]) for r in rows), rows
        for best in best_per_nfe(rows):
            print(f"NFE {best['nfe_target']}: best {best['sampler']} (FID {best['fid']:.2f})")
        display(Image(os.path.join(OUT, "pareto_nfe.png")))
        display(Image(os.path.join(OUT, "pareto_seconds.png")))
    """),
    md("""
        What to look for: in the committed 500-sample sweep
        (`experiments/results/pareto_digits`) the multistep data-prediction solvers
        (DPM-Solver++ 2M/3M) reach the quality plateau (FID@500 about 18) at 10 NFE while
        DDIM needs 20 to 50; with fewer samples per point, as here, differences of one or
        two FID points are within the noise. What stands out at any N: the singlestep
        high-order `dpm-fast` (noise prediction, orders 3/2/1) breaks down under strong
        guidance at small NFE, which is why DPM-Solver++(2M) is the recommended solver
        for guided sampling.
    """),
]


# --------------------------------------------------------------------------------------
# 05: memorization.

NB05 = "05_memorization"
CELLS_05 = [
    *head(NB05, "Memorization probes", """
        A diffusion model trained on a handful of images learns to reproduce them; one
        trained on the whole set generalizes. `diffjax.metrics` measures the difference
        from nearest-neighbour distances to the training set:

        - **Gu et al. ratio** `l2(x, NN1) / l2(x, NN2)`: a sample is memorized when it is
          below 1/3 (its nearest training image is much closer than the second);
        - **Carlini et al. calibrated distance** `l2(x, NN1) / (0.5 mean l2(x, 50 NN))`;
        - **NN-distance distribution** of samples against that of held-out real images
          (AUC 0.5: samples are as far from the training set as new real data; near 1:
          copies).

        Here a model trained on 40 digits (4 per class) is compared with the model
        trained on all 1,438 (notebook 1's run).
    """),
    code("""
        import time

        from IPython.display import Image, display

        from diffjax.data import load_dataset, make_dataset
        from diffjax.metrics import (
            GU_THRESHOLD,
            memorization_report,
            nn_distance_distribution,
            save_nearest_neighbor_gallery,
        )

        OUT = os.path.abspath("outputs/05_memorization")
        train_set = load_dataset(config.data.name, split=config.data.split, **DATA_KW)
        heldout = load_dataset(config.data.name, split="heldout", **DATA_KW)
        PER_CLASS = 4
        classes = range(train_set.num_classes)
        idx = np.concatenate([np.flatnonzero(train_set.labels == c)[:PER_CLASS] for c in classes])
        subset = make_dataset(
            train_set.images[idx], train_set.labels[idx],
            num_classes=train_set.num_classes, name=f"{config.data.name}/first-{len(idx)}",
        )
        show(subset.images, ncols=PER_CLASS * 5, title=f"the {len(idx)} images of the small run")
    """),
    md("""
        ## Training a model on 40 images

        The same UNet and recipe, with a batch of 40 (the whole subset every step) and
        `diffjax.train(..., dataset=subset)`. In full mode this is 3,000 steps (about 8
        minutes on a 2-core CPU); small mode trains 300.
    """),
    code("""
        mem_config = config.copy_and_resolve_references()
        mem_config.training.batch_size = len(idx)
        mem_config.training.num_steps = 300 if SMALL else 3000
        mem_config.training.checkpoint_every = 300 if SMALL else 1000
        MEM_WORKDIR = os.path.abspath(f"workdirs/memorize_{config.data.name}_{MODE}")
        start = time.perf_counter()
        diffjax.train(mem_config, MEM_WORKDIR, dataset=subset)
        print(f"trained in {time.perf_counter() - start:.0f} s")
    """),
    code("""
        NUM = 20 if SMALL else 500


        def draw(workdir):
            \"\"\"NUM conditional samples (balanced labels, no guidance) of a trained run.\"\"\"
            cfg, model, params, info = diffjax.load_trained(workdir)
            x = diffjax.generate(
                model, params, diffjax.build_schedule(cfg.diffusion),
                prediction_type=cfg.diffusion.prediction_type,
                image_shape=tuple(info["image_shape"]), key=jax.random.key(0),
                labels=np.arange(NUM) % model.num_classes,
                sampler="dpm++2m", num_steps=5 if SMALL else 20,
            )
            return np.clip(check_finite(x, f"samples of {workdir}"), -1, 1)


        samples = {"40 images": draw(MEM_WORKDIR), "all images": draw(WORKDIR)}
        train_of = {"40 images": subset.images, "all images": train_set.images}
        reports, dists = {}, {}
        for name, x in samples.items():
            reports[name] = memorization_report(x, train_of[name])
            dists[name] = nn_distance_distribution(x, heldout.images, train_of[name])
            r, d = reports[name], dists[name].summary
            print(
                f"trained on {name:10s}: memorized (Gu < 1/3) {r.fraction_memorized:6.1%}, "
                f"median Carlini ratio {np.median(r.carlini_ratio):.3f}, "
                f"NN-distance AUC {d['auc']:.3f}, "
                f"median NN distance / held-out {d['median_ratio']:.3f}"
            )
    """),
    md("""
        The two runs separate: the small run's samples sit much closer to its training
        images, relative to their other neighbours (Carlini ratio) and to new real data
        (AUC), than the full run's do. After 3,000 steps (full mode) most of its samples
        are near-copies (Gu ratio below 1/3); after small mode's 300 steps none is yet,
        but the separation is already there.
    """),
    code("""
        mem, full = "40 images", "all images"
        carlini = {name: float(np.median(r.carlini_ratio)) for name, r in reports.items()}
        auc = {name: dists[name].summary["auc"] for name in samples}
        assert carlini[mem] < 0.9 * carlini[full], f"no separation in the Carlini ratio: {carlini}"
        assert auc[mem] > auc[full] + 0.2, f"no separation in the NN-distance AUC: {auc}"
        if not SMALL:
            assert reports[mem].fraction_memorized > 0.5 > reports[full].fraction_memorized
    """),
    code("""
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        bins = np.linspace(0, 1, 41)
        for name in samples:
            label = f"samples, trained on {name}"
            axes[0].hist(reports[name].gu_ratio, bins=bins, alpha=0.6, label=label)
            axes[1].hist(dists[name].generated, bins=40, alpha=0.6, label=label)
        axes[0].axvline(GU_THRESHOLD, color="k", ls="--", label="1/3")
        axes[0].set_xlabel("l2(NN1) / l2(NN2) to the model's training set")
        axes[1].hist(dists["all images"].heldout, bins=40, histtype="step", color="k",
                     label="held-out real images (to the full training set)")
        axes[1].set_xlabel("l2 distance to the nearest training image")
        for ax in axes:
            ax.legend(fontsize=7)
        plt.show()
    """),
    md("""
        ## Look at the nearest neighbours

        Every number above needs this check: each pair is a sample (left) and its
        nearest training image (right), closest pairs first.
    """),
    code("""
        for name, x in samples.items():
            path = os.path.join(OUT, f"nearest_{name.split()[0]}.png")
            save_nearest_neighbor_gallery(
                path, x, train_of[name], reports[name].neighbors, num_pairs=12, ncols=6,
                order=reports[name].gu_ratio, title=f"trained on {name}: lowest Gu ratio first",
            )
            display(Image(path))
    """),
]

NB06 = "06_stable_diffusion"
CELLS_06 = [
    badge(NB06, "Stable Diffusion in JAX", """
        Latent diffusion (Rombach et al. 2022): a KL autoencoder, a cross-attention UNet and a
        CLIP text encoder, loaded from a diffusers folder (or a CompVis single-file checkpoint)
        with no torch, sampled with classifier-free guidance by the folder's own scheduler
        (exact to diffusers) or any diffjax sampler, as one jitted `lax.scan`.

        Set `MODEL` to your Stable Diffusion folder (for example a local copy of
        stable-diffusion-v1-5 in diffusers' layout). Small mode (what the test suite runs)
        uses the tiny random pipeline that diffjax's tests ship: its images are noise, but
        every step of the real pipeline runs.
    """),
    INSTALL,
    code(f"""
        import os
        import subprocess
        import time

        import jax
        import matplotlib.pyplot as plt
        import numpy as np

        from diffjax import stable_diffusion as sd

        MODE = os.environ.get("DIFFJAX_NOTEBOOK_MODE", "full")
        SMALL = MODE == "small"
        # Your diffusers folder, a CompVis .safetensors file, a Hub repo id such as
        # "runwayml/stable-diffusion-v1-5" (needs `pip install huggingface_hub`), or "" for
        # the tiny random pipeline of the tests.
        MODEL = os.environ.get("DIFFJAX_SD_MODEL", "")
        if not MODEL:
            here = os.path.abspath(os.path.join(os.getcwd(), "..", "tests", "data", "tiny_sd1"))
            repo = os.environ.get("DIFFJAX_REPO", "")
            if repo:
                here = os.path.join(repo, "tests", "data", "tiny_sd1")
            if not os.path.isdir(here):  # Colab: the tiny folder from the repository
                url = "{REPO_URL}"
                clone = ["git", "clone", "-q", "--depth", "1", url, "diffjax_repo"]
                subprocess.run(clone, check=False)
                here = os.path.abspath("diffjax_repo/tests/data/tiny_sd1")
            MODEL = here
        print("model:", MODEL, "devices:", jax.devices())

        def show(images, title=""):  # noqa: D103
            # Shows uint8 images side by side.
            plt.figure(figsize=(2 * len(images), 2.3))
            plt.imshow(np.concatenate(list(images), axis=1), interpolation="nearest")
            plt.axis("off")
            plt.title(title, fontsize=9)
            plt.show()
    """),
    md("""
        ## Load the pipeline

        `load_pipeline` reads `model_index.json` and every component (a Hub repo id is
        downloaded first, only the files it reads); the result is plain pytrees plus
        configs. `dtype=jnp.bfloat16` halves the weights on a GPU or TPU (the sampler state
        stays float32), and `attention_chunk=1024` bounds the attention's memory at 512x512.
    """),
    code("""
        pipe = sd.load_pipeline(MODEL)
        print(pipe.scheduler_config["_class_name"], "| UNet", pipe.unet_config.block_out_channels)
        factor = 2 ** (len(pipe.vae_config.block_out_channels) - 1)
        SIZE = 8 if SMALL else pipe.unet_config.sample_size * factor
        STEPS = 4 if SMALL else 25
    """),
    md("""
        ## Text to image

        One UNet call per step on the `[negative, prompt]` batch, guided as
        `u + w (c - u)`. The first call compiles; a new prompt, seed or guidance scale
        reuses the compiled function.
    """),
    code("""
        prompt = "an astronaut riding a horse, oil painting"
        kwargs = dict(steps=STEPS, height=SIZE, width=SIZE, num_images_per_prompt=2)
        t0 = time.perf_counter()
        a = sd.txt2img(pipe, prompt, negative_prompt="blurry", seed=0, **kwargs)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = sd.txt2img(pipe, prompt, negative_prompt="blurry", seed=1, guidance_scale=5.0,
                       **kwargs)
        again = time.perf_counter() - t0
        print(f"first call {first:.1f} s (compiles), next {again:.1f} s")
        assert a.dtype == np.uint8 and a.shape == (2, SIZE, SIZE, 3), a.shape
        assert not np.array_equal(a, b)  # another seed and scale: other images
        same = sd.txt2img(pipe, prompt, negative_prompt="blurry", seed=0, **kwargs)
        np.testing.assert_array_equal(same, a)  # a seed is a seed
        show(a, f"{pipe.scheduler_config['_class_name']}, {STEPS} steps")
    """),
    md("""
        ## Any diffjax sampler

        The folder's scheduler reproduces diffusers' loop exactly; diffjax's own samplers run
        on the same model (`'dpm++2m'`, `'unipc'`, `'ddim'`, ...).
    """),
    code("""
        from diffjax import SamplerSpec

        c = sd.txt2img(pipe, prompt, sampler=SamplerSpec("dpm++2m"), seed=0, **kwargs)
        assert c.shape == a.shape
        show(c, f"dpm++2m, {STEPS} steps")
    """),
    md("""
        ## Image to image

        The image is encoded, noised to the point `strength` of the schedule, and denoised
        from there: a small strength keeps the picture, a large one redraws it. `strength`
        is traced, so both calls below share one compiled function.
    """),
    code("""
        edit = dict(steps=STEPS, seed=0, mode="mean")
        kept = sd.img2img(pipe, a[0], "a horse in the snow", strength=1 / STEPS, **edit)
        edited = sd.img2img(pipe, a[0], "a horse in the snow", strength=0.9, **edit)
        assert edited.shape == (1, SIZE, SIZE, 3) and kept.shape == edited.shape
        assert not np.array_equal(kept, edited)  # strength changes the result
        # (With the tiny random weights the images are noise; with real weights the small
        # strength keeps the input's composition and 0.9 redraws it.)
        show([a[0], kept[0], edited[0]], f"input | strength {1 / STEPS:.2f} | 0.9")
    """),
]

NOTEBOOKS = {
    NB01: CELLS_01, NB02: CELLS_02, NB03: CELLS_03, NB04: CELLS_04, NB05: CELLS_05,
    NB06: CELLS_06,
}


def build(cells: list) -> nbformat.NotebookNode:
    """A notebook of ``cells`` with a Python 3 kernel, no outputs and stable cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    nb.cells = [copy.deepcopy(c) for c in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The file contents of notebook ``name``."""
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Writes (or with --check compares) every notebook."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = os.path.join(HERE, f"{name}.ipynb")
        text = render(name)
        current = None
        if os.path.exists(path):
            with open(path) as f:
                current = f.read()
        if current != text:
            stale.append(path)
            if not args.check:
                with open(path, "w") as f:
                    f.write(text)
    verb = "differ from colabs/make_notebooks.py" if args.check else "written"
    for path in stale:
        print(f"{os.path.relpath(path)} {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
