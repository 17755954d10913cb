"""Sampler benchmarks on the digits UNet (random init): loop overhead, compile time, memory.

(a) Overhead ratio per sampler in ``diffjax.app.sampler_specs.SAMPLER_NAMES``: the time of the
    full jitted sampling loop (``diffjax.samplers.sample``, one ``lax.scan``) divided by
    (number of network evaluations x time of one jitted network evaluation at the same
    batch). The network evaluation is the denoiser (UNet apply + eps/x0 conversion) at
    the same batch, timed in the same run right next to the loop; medians of a few
    repeats after a warmup call. The number of network evaluations is counted at run
    time with a ``jax.debug.callback`` in a separate, untimed tiny-batch compile, so
    ``lax.switch`` branches that do not run are not counted. A ratio near 1 means the
    sampler's own arithmetic and the scan cost nothing next to the network.
    On a shared machine one network evaluation drifts by +-10% over seconds, which is
    more than the overhead being measured, so two more columns separate the parts:
    'vs scan' divides the loop by one ``lax.scan`` of the same number of bare network
    evaluations (what the loop costs beyond a scan of the network alone), and 'arith'
    times the same sampler loop with a near-free network (``0.1 * x``): the solver's
    own arithmetic, its ``lax.switch`` branches and the scan, without the UNet.
(b) Compile time (lower + compile) of ddim and dpm++2m at 1000 vs 10 steps: the loop
    is one scan, so the step count should not change the compiled program's size.
(c) Peak temporary memory (``compiled.memory_analysis().temp_size_in_bytes``) at 10 vs
    1000 steps without a trajectory (should not depend on the step count), and, for
    contrast, with ``return_trajectory=True`` (output grows with the step count).

Conditioning: the class-conditional digits UNet with labels, no guidance (one network
call per step; guidance doubles the batch of every call but not the loop).

Usage:
  python experiments/bench_samplers.py --repeats 9 --out experiments/results/bench_samplers.txt
  python experiments/bench_samplers.py --batch 64 --steps 10 --repeats 3   # quicker
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.app import builders
from diffjax.app.config import digits_config
from diffjax.app.generate import make_sampler
from diffjax.app.sampler_specs import SAMPLER_NAMES
from diffjax.parameterization import make_denoiser
from diffjax.samplers import sample

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10


def _block(x):
    return jax.block_until_ready(x)


def _min_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls: load from other jobs only ever adds time."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="solver steps for (a)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats for (a)")
    parser.add_argument("--samplers", nargs="*", default=list(SAMPLER_NAMES))
    parser.add_argument("--compile-samplers", nargs="*", default=["ddim", "dpm++2m"])
    parser.add_argument("--out", default=None, help="also write the report here")
    args = parser.parse_args()

    lines: list[str] = []

    def say(msg: str = "") -> None:
        print(msg, flush=True)
        lines.append(msg)

    say("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    say(
        f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
        f"{platform.processor() or platform.machine()}"
    )
    config = digits_config()
    model = builders.build_unet(config.model, NUM_CLASSES)
    params = builders.init_params(model, jax.random.key(0), IMAGE_SHAPE)
    schedule = builders.build_schedule(config.diffusion)
    prediction_type = config.diffusion.prediction_type
    nparams = sum(p.size for p in jax.tree.leaves(params))
    say(
        f"digits UNet (random init, {nparams:,} params, {config.model.dtype}), "
        f"{IMAGE_SHAPE}, {schedule.num_timesteps}-step {config.diffusion.schedule} schedule, "
        f"prediction_type={prediction_type}, class-conditional, no guidance"
    )

    def loop_fn(name: str, num_steps: int, *, trajectory: bool = False, counter=None):
        sampler = make_sampler(name, schedule, num_steps)

        def run(params, x_T, key, labels):
            denoise = builders.build_denoiser(model, params, schedule, prediction_type)
            if counter is not None:
                inner = denoise

                def denoise(x, t, cond):
                    jax.debug.callback(counter)
                    return inner(x, t, cond)

            return sample(sampler, denoise, x_T, key, labels, return_trajectory=trajectory)

        return run

    def inputs(batch: int):
        x_T = jax.random.normal(jax.random.key(1), (batch, *IMAGE_SHAPE), jnp.float32)
        labels = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
        return params, x_T, jax.random.key(2), labels

    # ---- (a) overhead ratio -------------------------------------------------------
    say()
    say(
        f"(a) overhead, batch {args.batch}, {args.steps} solver steps ('dpm-fast': "
        f"{args.steps} network calls), {args.repeats} interleaved repeats after 1 warmup, "
        "ratios from back-to-back timings, median over repeats:"
    )
    say("  ratio      = loop / (net evals x one jitted network eval)   [the issue's definition]")
    say("  vs scan    = loop / (one lax.scan of the same number of bare network evals)")
    say(
        "  arith [ms] = the same sampler loop with a near-free network (0.1 x), i.e. the "
        "solver's own arithmetic + scan;"
    )
    say("  arith %    = arith / (net evals x one eval): the sampler's share next to the UNet")
    p, x_T, key, labels = inputs(args.batch)
    denoiser = builders.build_denoiser
    net = jax.jit(
        lambda params, x, t, labels: denoiser(model, params, schedule, prediction_type)(
            x, t, labels
        )
    )
    t_eval = jnp.full((args.batch,), 500.0, jnp.float32)
    t0 = time.perf_counter()
    _block(net(p, x_T, t_eval, labels))
    say(f"  network eval compile+first call {time.perf_counter() - t0:.2f} s")

    def network_scan(evals: int):
        """``evals`` bare network evaluations in one ``lax.scan`` (the loop's floor)."""
        times = jnp.linspace(999.0, 0.0, evals, dtype=jnp.float32)

        def run(params, x, labels):
            denoise = denoiser(model, params, schedule, prediction_type)

            def body(x, t):
                return x - 1e-3 * denoise(x, t, labels).eps, None

            return jax.lax.scan(body, x, times)[0]

        return jax.jit(run)

    def cheap_loop(name: str, num_steps: int):
        """The sampler loop with a near-free network: its own arithmetic and the scan."""
        sampler = make_sampler(name, schedule, num_steps)
        cheap = make_denoiser(lambda x, t, cond: 0.1 * x, schedule, prediction_type)
        return jax.jit(lambda x_T, key, labels: sample(sampler, cheap, x_T, key, labels))

    say(
        f"  {'sampler':<12} {'net evals':>9} {'loop [ms]':>10} {'1 eval [ms]':>11} "
        f"{'ratio':>6} {'vs scan':>7} {'arith [ms]':>10} {'arith %':>7} {'compile [s]':>11}"
    )
    ratios, arith_shares = {}, {}
    for name in args.samplers:
        count = [0]

        def counter(count=count):
            count[0] += 1

        small = inputs(2)
        _block(jax.jit(loop_fn(name, args.steps, counter=counter))(*small))
        jax.effects_barrier()
        evals = count[0]

        loop = jax.jit(loop_fn(name, args.steps))
        t0 = time.perf_counter()
        _block(loop(p, x_T, key, labels))
        compile_s = time.perf_counter() - t0
        floor = network_scan(evals)
        _block(floor(p, x_T, labels))
        arith = cheap_loop(name, args.steps)
        _block(arith(x_T, key, labels))
        # Interleave the timings so all of them see the same machine load: a ratio is
        # formed from back-to-back timings in each repeat (slow drift of the machine
        # cancels) and the median over repeats reported (spikes drop out).
        loop_ts, net_ts, arith_ts, ratio_rs, floor_rs = [], [], [], [], []
        for _ in range(args.repeats):
            net_s = _min_time(lambda: net(p, x_T, t_eval, labels), 3)
            loop_s = _min_time(lambda loop=loop: loop(p, x_T, key, labels), 1)
            floor_s = _min_time(lambda floor=floor: floor(p, x_T, labels), 1)
            arith_ts.append(_min_time(lambda arith=arith: arith(x_T, key, labels), 5))
            loop_ts.append(loop_s)
            net_ts.append(net_s)
            ratio_rs.append(loop_s / (evals * net_s))
            floor_rs.append(loop_s / floor_s)
        loop_s, net_s = statistics.median(loop_ts), statistics.median(net_ts)
        ratio, vs_floor = statistics.median(ratio_rs), statistics.median(floor_rs)
        arith_s = min(arith_ts)
        ratios[name] = ratio
        arith_shares[name] = arith_s / (evals * net_s)
        say(
            f"  {name:<12} {evals:>9d} {1e3 * loop_s:>10.1f} {1e3 * net_s:>11.2f} "
            f"{ratio:>6.3f} {vs_floor:>7.3f} {1e3 * arith_s:>10.2f} "
            f"{100 * arith_shares[name]:>6.3f}% {compile_s:>11.2f}"
        )

    # ---- (b) compile time, (c) memory ------------------------------------------------
    say()
    say(
        f"(b) compile time (lower + compile) and (c) memory_analysis at batch {args.batch}, "
        "10 vs 1000 steps"
    )
    say(
        f"  {'sampler':<12} {'steps':>5} {'traj':>5} {'compile [s]':>11} {'temp [MiB]':>10} "
        f"{'output [MiB]':>12}"
    )
    cases = [(n, s, False) for n in args.compile_samplers for s in (10, 1000)]
    cases += [(args.compile_samplers[0], s, True) for s in (10, 1000)] if cases else []
    for name, steps, traj in cases:
        fn = loop_fn(name, steps, trajectory=traj)
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(p, x_T, key, labels)
        compiled = compiled.compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20
        out = getattr(mem, "output_size_in_bytes", float("nan")) / 2**20
        say(f"  {name:<12} {steps:>5d} {traj!s:>5} {compile_s:>11.2f} {temp:>10.2f} {out:>12.2f}")

    if ratios:
        vals = np.array(list(ratios.values()))
        say()
        say(
            f"overhead ratio: min {vals.min():.3f}, median {np.median(vals):.3f}, "
            f"max {vals.max():.3f} ({max(ratios, key=ratios.get)})"
        )
        worst = max(arith_shares, key=arith_shares.get)
        say(
            f"sampler arithmetic + scan next to the network: at most "
            f"{100 * arith_shares[worst]:.3f}% ({worst}), i.e. an overhead ratio of "
            f"{1 + arith_shares[worst]:.4f} once the network's own time is factored out"
        )
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
