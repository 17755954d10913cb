"""Train-step time of a digits-sized UNet: stock vs matmul convolution kernel gradients.

On XLA:CPU the kernel gradient of a convolution was once much slower than its forward
pass; experiments/conv_matmul_grad.py computes it as kh*kw matrix products instead. This
script times one jitted training step (loss = mean square of the UNet output vs a target,
jax.grad, plain SGD; one step per call, as the training loop runs it) for both variants in
the same run, alternating the calls so that both see the same machine load, and prints the
medians.

Usage:
  python experiments/bench_conv_grad.py                       # 8x8 and 16x16, batch 128
  python experiments/bench_conv_grad.py --sizes 8 --steps 10  # quicker
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from conv_matmul_grad import select_conv_general_dilated

from diffjax.nn import UNet


def make_step(model: UNet, lr: float = 1e-3):
    """A jitted SGD step on the mean squared error of the UNet output vs a target."""

    @functools.partial(jax.jit, donate_argnums=0)
    def step(params, x, t, labels, target, key):
        def loss_fn(p):
            out = model.apply(p, x, t, labels, train=True, rngs={"dropout": key})
            return jnp.mean((out - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        return params, loss

    return step


def bench_size(args: argparse.Namespace, size: int) -> dict[str, float]:
    """Median seconds per train step for each mode at one image size."""
    rng = np.random.default_rng(0)
    b = args.batch
    x = jnp.asarray(rng.normal(size=(b, size, size, 1)), jnp.float32)
    target = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    t = jnp.asarray(rng.integers(0, 1000, size=(b,)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, size=(b,)), jnp.int32)
    attn = tuple(args.attention)
    modes = ("stock", "matmul")
    steps, params, compile_s = {}, {}, {}
    for mode in modes:
        model = UNet(base_channels=args.base, channel_mults=tuple(args.mults),
                     num_res_blocks=args.blocks, attention_resolutions=attn,
                     dropout=args.dropout, num_classes=10,
                     conv_general_dilated=select_conv_general_dilated(mode))
        p = jax.jit(model.init)(jax.random.key(0), x, t, labels)
        steps[mode] = make_step(model)
        t0 = time.perf_counter()
        for i in range(args.warmup):
            p, loss = steps[mode](p, x, t, labels, target, jax.random.key(i))
            loss.block_until_ready()
            if i == 0:
                compile_s[mode] = time.perf_counter() - t0
        params[mode] = p
    times = {m: [] for m in modes}
    for i in range(args.steps):
        for mode in modes if i % 2 == 0 else modes[::-1]:
            key = jax.random.key(1000 + i)
            t0 = time.perf_counter()
            params[mode], loss = steps[mode](params[mode], x, t, labels, target, key)
            loss.block_until_ready()
            times[mode].append(time.perf_counter() - t0)
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params["stock"]))
    res = {m: float(np.median(v)) for m, v in times.items()}
    print(f"{size}x{size}x1, batch {b}, {n_params / 1e6:.3f}M params: "
          f"stock {res['stock'] * 1e3:.1f} ms/step, matmul {res['matmul'] * 1e3:.1f} ms/step, "
          f"speedup (stock/matmul) {res['stock'] / res['matmul']:.2f}x "
          f"(median of {args.steps}; first call incl. compile: stock {compile_s['stock']:.1f} s, "
          f"matmul {compile_s['matmul']:.1f} s)", flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--base", type=int, default=32)
    parser.add_argument("--mults", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--attention", type=int, nargs="*", default=[4],
                        help="attention resolutions (the same network at every size)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20, help="timed calls per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per mode")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{jax.devices()[0].device_kind}, python {platform.python_version()}")
    print(f"UNet base {args.base}, mults {tuple(args.mults)}, {args.blocks} res blocks/level, "
          f"attention at {tuple(args.attention)}, dropout {args.dropout}, 10 classes; "
          f"SGD train step, one jitted step per call, calls alternate between the two modes")
    for size in args.sizes:
        bench_size(args, size)


if __name__ == "__main__":
    main(sys.argv[1:])
