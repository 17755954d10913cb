"""Test-session setup.

- Two fake CPU devices, so every training test runs data-parallel over a Mesh.
- A persistent XLA compilation cache: several tests compile the same tiny UNet step,
  and XLA:CPU compiles are the bulk of the suite's time.
- Session fixtures: a tiny trained digits workdir, and a copy of it ready for evaluation.
"""

import os
import tempfile

import chex
import jax
import pytest

chex.set_n_cpu_devices(2)

_CACHE_DIR = os.environ.get(
    "DIFFJAX_TEST_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "diffjax-test-xla-cache")
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def tiny_trained_workdir(tmp_path_factory):
    """A digits 'tiny' model trained for 4 steps (seconds): for tests that sample a workdir.

    Shared by the whole session: tests that write into a workdir should copy it.
    """
    from diffjax.app.config import apply_overrides, digits_config
    from diffjax.app.train import train

    path = str(tmp_path_factory.mktemp("tiny_trained") / "run")
    config = digits_config("tiny")
    apply_overrides(config, ["training.num_steps=4", "training.progress_bar=False"])
    train(config, path)
    return path


@pytest.fixture(scope="session")
def eval_workdir(tiny_trained_workdir, tmp_path_factory):
    """A copy of the tiny workdir with a quickly trained evaluation classifier in place.

    ``diffjax.app.evaluate`` trains its classifier (500 steps) on first use and then reuses the
    file; tests put a 30-step one there instead to save the time.
    """
    import shutil

    from diffjax.data import load_digits
    from diffjax.networks.classifier import save_classifier, train_classifier

    path = str(tmp_path_factory.mktemp("eval") / "run")
    shutil.copytree(tiny_trained_workdir, path)
    clf = train_classifier(load_digits("train"), key=jax.random.key(0), num_steps=30)
    os.makedirs(os.path.join(path, "eval"))
    save_classifier(os.path.join(path, "eval", "digits_classifier.msgpack"), clf)
    return path
