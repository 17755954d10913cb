"""Throughput of the feature extractors behind FID@N: FID InceptionV3 and the digits classifier.

Usage:
  python experiments/bench_features.py --out experiments/results/bench_features.txt

Measures images/s of (a) the FID InceptionV3 pool3 features at 299x299 (random weights,
numpy-seeded exactly like the parity test, so no download; throughput does not depend on
the weight values) and (b) the digits classifier's penultimate features
(:func:`diffjax.networks.classifier.classifier_features`) on 8x8 images. Each path is
jitted once per batch shape: the first call (trace + compile + run) is timed separately,
then ``--repeats`` calls are timed after it and the median is reported. The persistent
compilation cache is off, so compile times are cold.
"""

import argparse
import os
import platform

import jax
import numpy as np
from random_weights import random_pytorch_fid_state_dict
from timing import time_calls

from diffjax.data import load_digits
from diffjax.networks.classifier import classifier_features, train_classifier
from diffjax.networks.inception import (
    inception_apply,
    variables_from_pytorch_fid_state_dict,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--inception-batch", type=int, default=32)
    parser.add_argument("--classifier-batches", default="32,1024")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    say("$ python experiments/bench_features.py" + (f" --out {args.out}" if args.out else ""))
    say(
        f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
        f"{os.cpu_count()} CPU cores, {platform.machine()}, load average at start "
        f"{os.getloadavg()[0]:.1f}"
    )
    rng = np.random.default_rng(0)

    say()
    b = args.inception_batch
    variables = variables_from_pytorch_fid_state_dict(random_pytorch_fid_state_dict(0))
    x = rng.uniform(-1, 1, (b, 299, 299, 3)).astype(np.float32)
    first, med, times = time_calls(lambda: inception_apply(variables, x)["pool3"], args.repeats)
    say(f"(a) FID InceptionV3 pool3 (2048-d), {b} x 299x299x3 float32, precision 'highest'")
    say(f"    first call (trace + compile + run): {first:.1f} s; compile ~ {first - med:.1f} s")
    say(f"    steady: {med:.2f} s per batch (median of {args.repeats}: "
        f"{', '.join(f'{t:.2f}' for t in times)}) -> {b / med:.1f} images/s")

    say()
    clf = train_classifier(load_digits("train"), key=jax.random.key(0), num_steps=20)
    say(f"(b) digits classifier penultimate features ({clf.hidden}-d), 8x8x1 float32 "
        "(classifier_features; weights do not affect speed)")
    for cb in (int(v) for v in args.classifier_batches.split(",")):
        imgs = rng.uniform(-1, 1, (cb, 8, 8, 1)).astype(np.float32)
        first, med, times = time_calls(
            lambda imgs=imgs, cb=cb: classifier_features(clf, imgs, batch_size=cb),
            args.repeats,
        )
        say(f"    batch {cb:5d}: first call {first:.2f} s, steady {1e3 * med:.1f} ms per batch "
            f"-> {cb / med:,.0f} images/s")

    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
