"""Where the CPU train step loses to PyTorch: one 3x3 convolution, forward and gradients.

For the convolution shapes of the digits UNet (8x8, batch 128) and of cifar10_ddpm (32x32
and 16x16, batch 16), times in the same run: the forward pass, the input gradient (dx) and
the kernel gradient (dw) under XLA:CPU with ``lax.conv_general_dilated`` ('stock') and
with the matmul kernel gradient (experiments/conv_matmul_grad.py), and PyTorch's forward
and forward + both gradients (oneDNN, NCHW, ``torch.set_num_threads``). Medians of
``--repeats`` calls after one warmup call. Needs torch (``pip install -e ".[parity]"``).

Usage:
  python experiments/bench_conv_vs_torch.py --out experiments/results/conv_vs_torch.txt
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import torch
from conv_matmul_grad import conv_general_dilated as matmul_grad_conv
from timing import time_calls

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")
SHAPES = ((128, 8, 64), (128, 8, 128), (16, 32, 128), (16, 16, 256), (16, 8, 256))


def _ms(fn, repeats: int) -> float:
    return 1e3 * time_calls(fn, repeats)[1]


def bench_shape(batch: int, size: int, channels: int, repeats: int) -> str:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, channels), np.float32)
    w = 0.05 * rng.standard_normal((3, 3, channels, channels), np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    gj = jnp.ones(x.shape, jnp.float32)
    ours = {}
    for name, conv_fn in (("stock", jax.lax.conv_general_dilated), ("matmul", matmul_grad_conv)):

        def conv(x, w, conv_fn=conv_fn):
            return conv_fn(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC_HWIO)

        fwd = jax.jit(conv)
        dx = jax.jit(lambda x, w, g, conv=conv: jax.vjp(conv, x, w)[1](g)[0])
        dw = jax.jit(lambda x, w, g, conv=conv: jax.vjp(conv, x, w)[1](g)[1])
        ours[name] = [
            _ms(lambda fwd=fwd: fwd(xj, wj), repeats),
            _ms(lambda dx=dx: dx(xj, wj, gj), repeats),
            _ms(lambda dw=dw: dw(xj, wj, gj), repeats),
        ]
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    gt = torch.ones(batch, channels, size, size)

    def torch_fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, padding=1)

    def torch_all():
        y = torch.nn.functional.conv2d(xt, wt, padding=1)
        return torch.autograd.grad(y, (xt, wt), gt)

    # time_calls blocks on JAX outputs; torch CPU ops are synchronous already.
    theirs = [_ms(torch_fwd, repeats), _ms(torch_all, repeats)]
    s, m = ours["stock"], ours["matmul"]
    return (
        f"  B{batch:<4d}{size:>3d}x{size:<3d}C{channels:<4d}"
        f"{s[0]:8.1f}{s[1]:8.1f}{s[2]:8.1f}{sum(s):8.1f}   {m[2]:8.1f}{m[0] + m[1] + m[2]:8.1f}"
        f"   {theirs[0]:8.1f}{theirs[1]:8.1f}   {sum(s) / theirs[1]:6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({args.threads} threads), {platform.machine()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
        f"3x3 convolution, stride 1, SAME; median ms of {args.repeats} calls",
        "                       ---- XLA stock ----------------   -- matmul dw --   "
        "---- torch -----   stock",
        "  shape                    fwd      dx      dw   total         dw   total   "
        "     fwd   total   /torch",
    ]
    print("\n".join(lines), flush=True)
    for shape in SHAPES:
        lines.append(bench_shape(*shape, args.repeats))
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("$ python experiments/bench_conv_vs_torch.py --out " + args.out + "\n")
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
