"""Train-step time of the digits and cifar10_ddpm models under XLA:CPU flag sets.

Each flag set runs in a fresh subprocess (``XLA_FLAGS`` is read when the backend starts)
with the persistent compilation cache off, compiles the real ``make_train_step`` (AdamW,
EMA, per-example noise) and times ``--calls`` steps after one warmup step; the median is
printed with the compile time and the final loss (equal losses: the flags did not change
the arithmetic).

Usage:
  python experiments/bench_xla_cpu_flags.py --out experiments/results/xla_cpu_flags.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

FLAG_SETS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_thunk_runtime=false",
)

_CHILD = r"""
import json, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from diffjax.app import builders
from diffjax.app.config import digits_config, load_config
from diffjax.training.state import create_train_state
from diffjax.training.step import make_train_step
which, calls = sys.argv[1], int(sys.argv[2])
if which == "digits":
    config, shape, batch_size, num_classes = digits_config(), (8, 8, 1), 128, 10
else:
    config = load_config("experiments/configs/cifar10_ddpm.py")
    shape, batch_size, num_classes = (32, 32, 3), 16, None
model = builders.build_unet(config.model, num_classes)
schedule = builders.build_schedule(config.diffusion)
optimizer = optax.adamw(float(config.optim.learning_rate))
state = create_train_state(builders.init_params(model, jax.random.key(0), shape), optimizer)
step = jax.jit(
    make_train_step(model, schedule, optimizer, config.diffusion, config.training.ema_decay),
    donate_argnums=0,
)
rng = np.random.default_rng(0)
batch = {"image": jnp.asarray(rng.uniform(-1, 1, (batch_size, *shape)).astype(np.float32))}
if num_classes:
    batch["label"] = jnp.asarray(rng.integers(0, num_classes, (batch_size,)).astype(np.int32))
key = jax.random.key(1)
start = time.perf_counter()
compiled = step.lower(state, batch, key).compile()
compile_s = time.perf_counter() - start
times = []
for _ in range(calls + 1):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
print(json.dumps({"compile_s": compile_s, "median_ms": 1e3 * statistics.median(times[1:]),
                  "loss": float(metrics["loss"])}))
"""


def run(model: str, flags: str, calls: int) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": flags,
        "DIFFJAX_COMPILATION_CACHE": "",
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, model, str(calls)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "cifar10_ddpm"])
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    lines = [
        "$ python " + " ".join(sys.argv),
        "model          step [ms]  compile [s]  loss    XLA_FLAGS",
    ]
    print("\n".join(lines), flush=True)
    for model in args.models:
        base = None
        for flags in FLAG_SETS:
            r = run(model, flags, args.calls)
            base = base or r["median_ms"]
            lines.append(
                f"{model:<14}{r['median_ms']:>10.1f}{r['compile_s']:>13.1f}  {r['loss']:.4f}  "
                f"{flags or '(default)'}  [{r['median_ms'] / base:.2f} x default]"
            )
            print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
