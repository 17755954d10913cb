"""Training throughput: diffjax's train step against PyTorch diffusers' UNet2DModel.

For each model (the digits demo UNet, and the DDPM CIFAR-10 UNet of 35.7M parameters)
the script builds the same architecture twice, ours in Flax and diffusers' UNet2DModel
in PyTorch, and times in one run, calls alternating so that both see the same machine
load:

- ``step``: one whole training step (eps-prediction loss at random timesteps, backward,
  AdamW, EMA update), ours the jitted, state-donating ``make_train_step``;
- ``fwd``: the network's forward pass alone (no gradients);
- ``fwd+bwd``: forward and backward (gradients of the loss w.r.t. the parameters).

The last two split a step's time into forward, backward and "the rest" (optimizer, EMA,
noising), which says where the time goes. Ratios are ours / theirs (below 1: ours is
faster). Compile time of our step is reported separately.

Needs the ``parity`` extra (torch, diffusers); never imported by the library.

Usage:
  python experiments/bench_train_vs_torch.py --out experiments/results/train_vs_torch.txt
  python experiments/bench_train_vs_torch.py --models digits --steps 5   # quicker
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from diffjax.app import builders
from diffjax.app.config import base_config, digits_config
from diffjax.training.state import create_train_state
from diffjax.training.step import make_train_step

# name: (config, image shape HWC, batch size, number of classes or None)
MODELS = {
    "digits": (digits_config(), (8, 8, 1), 128, 10),
    "cifar10_ddpm": (base_config(), (32, 32, 3), 16, None),
}


def torch_unet(config, image_shape, num_classes) -> UNet2DModel:
    """diffusers' UNet2DModel with our UNet's architecture (DDPM: 1 head, GroupNorm 32)."""
    model = config.model
    size, _, channels = image_shape
    levels = len(model.channel_mults)
    down, up = [], []
    for level in range(levels):
        attention = (size >> level) in tuple(model.attention_resolutions)
        down.append("AttnDownBlock2D" if attention else "DownBlock2D")
        up.insert(0, "AttnUpBlock2D" if attention else "UpBlock2D")
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(model.base_channels * m for m in model.channel_mults),
        layers_per_block=model.num_res_blocks,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        attention_head_dim=None,  # one head of all channels, as the DDPM UNet
        norm_num_groups=32,
        dropout=float(model.dropout),
        flip_sin_to_cos=False,
        freq_shift=1,
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def median_times(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_model(name: str, steps: int) -> list[str]:
    config, image_shape, batch_size, num_classes = MODELS[name]
    lines = [f"## {name}: images {image_shape} (HWC), batch {batch_size}"]
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(batch_size, *image_shape)).astype(np.float32)
    labels = rng.integers(0, num_classes or 1, size=(batch_size,)).astype(np.int32)

    # Ours.
    model = builders.build_unet(config.model, num_classes)
    schedule = builders.build_schedule(config.diffusion)
    optimizer = optax.adamw(float(config.optim.learning_rate))
    params = builders.init_params(model, jax.random.key(0), image_shape)
    state = create_train_state(jax.tree.map(jnp.copy, params), optimizer)  # donated
    train_step = jax.jit(
        make_train_step(model, schedule, optimizer, config.diffusion, config.training.ema_decay),
        donate_argnums=0,
    )
    batch = {"image": jnp.asarray(images)}
    if num_classes is not None:
        batch["label"] = jnp.asarray(labels)
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def ours_step():
        holder["state"], metrics = compiled(holder["state"], batch, key)
        jax.block_until_ready(metrics["loss"])

    x = jnp.asarray(images)
    t = jnp.asarray(rng.integers(0, 1000, size=(batch_size,)), jnp.float32)
    lab = jnp.asarray(labels) if num_classes is not None else None
    target = jnp.asarray(rng.normal(size=images.shape), jnp.float32)
    fwd = jax.jit(lambda p: model.apply({"params": p}, x, t, lab))

    def loss(p):
        out = model.apply({"params": p}, x, t, lab, train=True, rngs={"dropout": key})
        return jnp.mean((out - target) ** 2)

    fwd_bwd = jax.jit(jax.grad(loss))
    jax.block_until_ready((fwd(params), fwd_bwd(params)))

    # Theirs.
    torch.manual_seed(0)
    net = torch_unet(config, image_shape, num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=float(config.optim.learning_rate))
    ema = [p.detach().clone() for p in net.parameters()]
    betas = torch.linspace(1e-4, 0.02, 1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    x_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    t_t = torch.from_numpy(np.array(t)).long()
    lab_t = torch.from_numpy(labels).long() if num_classes is not None else None
    target_t = torch.from_numpy(np.array(target)).permute(0, 3, 1, 2).contiguous()

    def theirs_step():
        net.train()
        steps_t = torch.randint(0, 1000, (batch_size,))
        noise = torch.randn_like(x_t)
        a = alpha_bar[steps_t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x_t + (1 - a).sqrt() * noise
        out = net(noisy, steps_t, class_labels=lab_t).sample
        F.mse_loss(out, noise).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(net.parameters()), 1 - 0.999)

    def theirs_fwd():
        net.eval()
        with torch.no_grad():
            net(x_t, t_t, class_labels=lab_t)

    def theirs_fwd_bwd():
        net.train()
        F.mse_loss(net(x_t, t_t, class_labels=lab_t).sample, target_t).backward()
        net.zero_grad(set_to_none=True)

    theirs_step()  # warm-up (allocations)
    ours_step()

    n_ours, n_theirs = count(params), sum(p.numel() for p in net.parameters())
    lines.append(f"parameters: ours {n_ours:,}, diffusers {n_theirs:,}")
    lines.append(f"our step compile time: {compile_s:.1f} s (not in the timings below)")
    medians = median_times(
        {
            "ours step": ours_step,
            "theirs step": theirs_step,
            "ours fwd": lambda: jax.block_until_ready(fwd(params)),
            "theirs fwd": theirs_fwd,
            "ours fwd+bwd": lambda: jax.block_until_ready(fwd_bwd(params)),
            "theirs fwd+bwd": theirs_fwd_bwd,
        },
        steps,
    )
    lines.append(f"median of {steps} calls each, interleaved:")
    lines.append(f"  {'':10s} {'ours ms':>10s} {'diffusers ms':>13s} {'ours/theirs':>12s}")
    for part in ("step", "fwd", "fwd+bwd"):
        ours, theirs = medians[f"ours {part}"], medians[f"theirs {part}"]
        lines.append(f"  {part:10s} {1e3 * ours:10.1f} {1e3 * theirs:13.1f} {ours / theirs:12.2f}")
    for who in ("ours", "theirs"):
        step, f, fb = (medians[f"{who} {p}"] for p in ("step", "fwd", "fwd+bwd"))
        lines.append(
            f"  {who:6s} split: forward {1e3 * f:.0f} ms, backward {1e3 * (fb - f):.0f} ms, "
            f"rest (noising, optimizer, EMA) {1e3 * (step - fb):.0f} ms; "
            f"{batch_size / step:.1f} images/s"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digits,cifar10_ddpm")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    header = [
        f"$ python experiments/bench_train_vs_torch.py {' '.join(sys.argv[1:])}",
        f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%MZ}, {platform.machine()} "
        f"{os.cpu_count()}-core CPU",
        f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {platform.python_version()}",
        "",
    ]
    print("\n".join(header), flush=True)
    lines = list(header)
    for name in args.models.split(","):
        block = bench_model(name, args.steps)
        print("\n".join(block) + "\n", flush=True)
        lines += [*block, ""]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
