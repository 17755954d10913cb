"""Host-side cost of the grain input pipeline: decoded training images per second.

Usage:
  python experiments/bench_input_pipeline.py [--out experiments/results/input_pipeline.txt]

For each TFDS dataset the pipeline reads (CIFAR-10 32x32, CelebA 218x178 center-cropped
to 140 and resized to 64, ImageNet 64x64), the records are synthetic uint8 images held
in memory, so what is timed is the pipeline itself: shuffle, decode (crop, resize,
``x / 127.5 - 1``), random flip and batching, at a global batch of 128, with 0 worker
threads (all in the calling thread) and with 2. Reading and PNG/JPEG decoding of the
stored files (``tfds.data_source``) come on top and depend on the disk. Also the same
for the in-memory digits set (8x8, no decode).

Compare with what training consumes: the DDPM CIFAR-10 run trained at 21 steps/s on a
TPU v3-8 (2,688 images/s), i.e. about 2,700 images/s spread over the hosts feeding it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from diffjax.data import (
    TFDS_DATASETS,
    ImageSource,
    batch_iterator,
    in_memory_source,
    load_digits,
    training_batches,
)
from diffjax.data.tfds_source import _Decoder

BATCH = 128


def synthetic_source(name: str, num_records: int) -> ImageSource:
    spec = TFDS_DATASETS[name]
    rng = np.random.default_rng(0)
    records = [
        {"image": rng.integers(0, 256, spec.image_shape, dtype=np.uint8), "label": i % 10}
        for i in range(num_records)
    ]
    size = spec.image_size
    return ImageSource(
        records, _Decoder(spec, size), (size, size, spec.image_shape[2]), spec.num_classes, name
    )


def images_per_second(source: ImageSource, threads: int, steps: int) -> float:
    batches = training_batches(
        source, BATCH, seed=0, random_flip=True, labels=bool(source.num_classes)
    )
    iterator = batch_iterator(batches, num_threads=threads, prefetch_batches=max(threads, 1))
    next(iterator)  # thread start-up
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    elapsed = time.perf_counter() - start
    iterator.close()
    return steps * BATCH / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    lines = [
        f"# {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        f"# global batch {BATCH}, random flips on, {args.steps} batches timed",
        "dataset                  threads=0 img/s   threads=2 img/s",
    ]
    sources = [synthetic_source(n, 1024) for n in ("cifar10", "celeb_a", "imagenet_resized/64x64")]
    sources.append(in_memory_source(load_digits("train")))
    for source in sources:
        rates = [images_per_second(source, threads, args.steps) for threads in (0, 2)]
        lines.append(f"{source.name:<24} {rates[0]:>15.0f} {rates[1]:>17.0f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("python experiments/bench_input_pipeline.py --out " + args.out + "\n")
            f.write(text + "\n")


if __name__ == "__main__":
    main()
