"""The experiment configs: every model builds (``jax.eval_shape``), every tiny variant
trains on mock data, and a tiny TFDS run resumed from a checkpoint equals an
uninterrupted one.

The tiny runs go through ``diffjax.app.train.train`` in one child process on
``tfds.testing.mock_data`` and synthetic IDX files (2 fake CPU devices, XLA optimization
level 0 to halve the compile times). Each ``train`` call costs seconds of tracing even
with the compiled step cached, so the calls are few. The tiny mnist and fashion_mnist
variants are one model on 28x28 grey images and differ only in where the data comes
from: fashion_mnist's run reads synthetic IDX files (the in-memory path), and TFDS
reading of mnist and fashion_mnist is checked in tests/test_tfds.py. cifar10_ddpm's
4-step run is also the reference of the resume check; celeba64's tiny step compiles to
cifar10_ddpm's (32x32 RGB, unconditional, same schedule and optimizer). The digits tiny
variant is what tests/test_training.py trains.
"""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffjax.app import builders
from diffjax.app import config as config_lib
from diffjax.app.sampler_specs import SAMPLER_NAMES
from diffjax.data import TFDS_DATASETS, TFDS_PREFIX

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "experiments", "configs")
NAMES = (
    "celeba64", "cifar10_ddpm", "digits", "digits_ict", "fashion_mnist", "imagenet64_cfg", "mnist"
)
DIGITS_SIZED = ("digits", "digits_ict")  # the demo's 0.76M-parameter UNet
IN_MEMORY_SHAPES = {"digits": (8, 8, 1), "fashion_mnist": (28, 28, 1)}


def config_path(name):
    return os.path.join(CONFIG_DIR, f"{name}.py")


def data_facts(config):
    """(image_shape, num_classes, flips allowed) of the data a config names."""
    name = config.data.name
    if name.startswith(TFDS_PREFIX):
        spec = TFDS_DATASETS[name.removeprefix(TFDS_PREFIX)]
        size = config.data.image_size or spec.image_size
        return (size, size, spec.image_shape[2]), spec.num_classes, spec.random_flip
    return IN_MEMORY_SHAPES[name], 10, False


def param_count(config):
    image_shape, num_classes, _ = data_facts(config)
    model = builders.build_unet(config.model, num_classes)
    shapes = jax.eval_shape(
        lambda key: builders.init_params(model, key, image_shape), jax.random.key(0)
    )
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


# The configs of task 'autoencoder' (the KL autoencoders of latent diffusion).
AUTOENCODER_NAMES = ("digits_vae", "fashion_mnist_vae")


def test_every_config_file_is_tested():
    found = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))
    assert tuple(found) == tuple(sorted(NAMES + AUTOENCODER_NAMES))


@pytest.mark.parametrize("name", AUTOENCODER_NAMES)
def test_autoencoder_configs_build_and_document_their_launch(name):
    counts = {}
    for variant in ("", ":tiny"):
        config = config_lib.load_config(config_path(name) + variant)
        assert config.task == "autoencoder"
        assert config_lib.from_json(config_lib.to_json(config)).to_dict() == config.to_dict()
        image_shape = IN_MEMORY_SHAPES[config.data.name]
        config_lib.validate_config(config, image_size=image_shape[0])
        model = builders.build_model(config, 10, image_shape)
        shapes = jax.eval_shape(
            lambda key, m=model, s=image_shape: builders.init_params(m, key, s),
            jax.random.key(0),
        )
        counts[variant] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert counts[":tiny"] < 20_000 < counts[""]
    with open(config_path(name)) as f:
        doc = f.read()
    assert f"diffjax train --config experiments/configs/{name}.py" in doc
    assert f"experiments/configs/{name}.py:tiny" in doc


@pytest.mark.parametrize("name", NAMES)
def test_config_is_complete_and_documents_its_launch(name):
    config = config_lib.load_config(config_path(name))
    assert config_lib.from_json(config_lib.to_json(config)).to_dict() == config.to_dict()
    _, num_classes, flips_allowed = data_facts(config)
    assert config.data.random_flip == flips_allowed
    assert config.model.class_conditional == (name not in ("cifar10_ddpm", "celeba64"))
    if config.model.class_conditional:
        assert num_classes > 0 and config.diffusion.p_uncond > 0
    assert config.sampling.sampler in SAMPLER_NAMES
    with open(config_path(name)) as f:
        doc = f.read()
    assert f"diffjax train --config experiments/configs/{name}.py" in doc
    assert f"experiments/configs/{name}.py:tiny" in doc
    assert "several hosts" in doc and "--distributed-auto" in doc


@pytest.mark.parametrize("name", NAMES)
def test_model_of_every_config_builds(name):
    full = param_count(config_lib.load_config(config_path(name)))
    tiny = param_count(config_lib.load_config(config_path(name) + ":tiny"))
    if name == "cifar10_ddpm":
        assert full == 35_746_307  # the DDPM paper's 35.7M CIFAR-10 UNet (docs/design.md)
    assert full > 1_000_000 or name in DIGITS_SIZED
    assert tiny < (200_000 if name in DIGITS_SIZED else 50_000)  # 32k: ImageNet class table


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown config variant 'huge'.*'tfds', 'tiny'"):
        config_lib.load_config(config_path("fashion_mnist") + ":tiny,huge")


# One child process: each tiny TFDS/IDX variant trains one step on mock data; then the
# cifar10_ddpm tiny run trains 4 steps straight, and 2 steps + a resume to 4 in another
# workdir. Prints the results as JSON.
TINY_SCRIPT = r"""
import json, os, struct, sys
import jax, numpy as np
import tensorflow_datasets as tfds
from diffjax.app.config import load_config
from diffjax.app.train import train
from diffjax.app.checkpoint import CHECKPOINT_DIR, DATA_ITERATOR_ITEM

root = sys.argv[1]
idx_dir = os.path.join(root, "idx")
os.makedirs(idx_dir)
rng = np.random.default_rng(0)
for prefix, n in (("train", 16), ("t10k", 4)):
    arrays = {"images-idx3": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
              "labels-idx1": rng.integers(0, 10, (n,), dtype=np.uint8)}
    for kind, a in arrays.items():
        header = struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
        with open(os.path.join(idx_dir, f"{prefix}-{kind}-ubyte"), "wb") as f:
            f.write(header + a.tobytes())


def run(spec, workdir, num_steps, **data):
    config = load_config(os.path.join("experiments", "configs", spec))
    config.training.num_steps = num_steps
    config.training.checkpoint_every = 2
    config.training.progress_bar = False
    for key, value in data.items():
        config.data[key] = value
    return train(config, os.path.join(root, workdir))


def iterator_states(workdir):
    out = {}
    base = os.path.join(root, workdir, CHECKPOINT_DIR)
    for step in sorted(os.listdir(base), key=int):
        with open(os.path.join(base, step, DATA_ITERATOR_ITEM, "process_0-of-1.json")) as f:
            out[step] = json.load(f)["next_index"]
    return out


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


results = {}
with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    for spec, workdir, data in [
        ("fashion_mnist.py:tiny", "fashion_mnist", {"path": idx_dir}),
        ("celeba64.py:tiny", "celeba64", {}),
        ("imagenet64_cfg.py:tiny", "imagenet64_cfg", {}),
    ]:
        state = run(spec, workdir, 1, **data)
        with open(os.path.join(root, workdir, "metrics.jsonl")) as f:
            loss = json.loads(f.readline())["loss"]
        with open(os.path.join(root, workdir, "run_info.json")) as f:
            info = json.load(f)
        results[spec] = {"step": int(state.step), "loss": loss, "run_info": info,
                         "iterator": iterator_states(workdir)}

    # cifar10_ddpm: 4 steps straight; 2 steps, then the same command to 4 (a resume).
    straight = run("cifar10_ddpm.py:tiny", "straight", 4)
    run("cifar10_ddpm.py:tiny", "resumed", 2)
    resumed = run("cifar10_ddpm.py:tiny", "resumed", 4)
    pairs = list(zip(leaves(straight), leaves(resumed)))
    results["resume"] = {
        "step": int(resumed.step),
        "bit_equal": all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in pairs),
        "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in pairs),
        "iterator_straight": iterator_states("straight"),
        "iterator_resumed": iterator_states("resumed"),
    }
    with open(os.path.join(root, "straight", "metrics.jsonl")) as f:
        results["cifar10_ddpm.py:tiny"] = {"losses": [json.loads(x)["loss"] for x in f]}
print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    proc = subprocess.run(
        [sys.executable, "-c", TINY_SCRIPT, str(tmp_path_factory.mktemp("tiny"))],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize(
    ("spec", "image_shape", "num_classes"),
    [
        ("fashion_mnist.py:tiny", [28, 28, 1], 10),
        ("celeba64.py:tiny", [32, 32, 3], 0),
        ("imagenet64_cfg.py:tiny", [32, 32, 3], 1000),
    ],
)
def test_tiny_variant_trains_a_step_on_mock_data(tiny_runs, spec, image_shape, num_classes):
    run = tiny_runs[spec]
    assert run["step"] == 1
    assert np.isfinite(run["loss"]) and 0.05 < run["loss"] < 10
    assert run["run_info"] == {"image_shape": image_shape, "num_classes": num_classes}
    assert run["iterator"] == {"1": 1}  # the checkpoint holds the iterator after 1 batch


def test_tiny_cifar10_run_and_its_resume_equal_bit_for_bit(tiny_runs):
    losses = tiny_runs["cifar10_ddpm.py:tiny"]["losses"]
    assert len(losses) == 2 and all(np.isfinite(x) and 0.05 < x < 10 for x in losses)
    resume = tiny_runs["resume"]
    assert resume["step"] == 4
    assert resume["bit_equal"], resume["max_abs_diff"]
    # Each checkpoint's iterator state is its step: one batch per step, before and after
    # the restart.
    assert resume["iterator_straight"] == {"2": 2, "4": 4}
    assert resume["iterator_resumed"] == {"2": 2, "4": 4}


def test_resuming_with_another_dataset_is_a_checkpoint_mismatch():
    cifar = config_lib.load_config(config_path("cifar10_ddpm"))
    other = config_lib.load_config(config_path("cifar10_ddpm"))
    other.data.name = "tfds:celeb_a"
    other.data.random_flip = False  # how the data is read may change on resume
    other.data.num_threads = 1
    assert config_lib.checkpoint_mismatches(cifar, other) == [
        "data.name: checkpoint has 'tfds:cifar10', config has 'tfds:celeb_a'"
    ]
