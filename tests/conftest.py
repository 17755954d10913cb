"""Test-session setup.

- Two fake CPU devices, so every training test runs data-parallel over a Mesh.
- A persistent XLA compilation cache: several tests compile the same tiny UNet step,
  and XLA:CPU compiles are the bulk of the suite's time.
- XLA's backend optimizations off (``jax_disable_most_optimizations``, inherited by the
  test's subprocesses through the environment): the same programs, compiled about a
  quarter faster and run slower, which the suite's tiny programs gain from (a
  compile-heavy third of the suite: 236 s -> 181 s on 2 cores; the whole suite from a
  clean clone 19 min 9 s -> 17 min 48 s, 36.2 -> 33.6 CPU minutes; set
  JAX_DISABLE_MOST_OPTIMIZATIONS=0 to compare). The few places that
  mostly run rather than compile (the demo model's 400 training steps, the notebooks,
  the demo's sampling) switch them back on with :func:`xla_optimized`.
- The longest test files are handed to the xdist workers first (``LONGEST_FILES``).
- Session fixtures: a tiny trained digits workdir, a copy of it ready for evaluation, and
  the digits demo model (one that follows its labels), built once per test run and
  shared by every xdist worker.
"""

import contextlib
import fcntl
import os
import shutil
import tempfile

import chex
import jax
import pytest

chex.set_n_cpu_devices(2)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update(
    "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
)


@contextlib.contextmanager
def xla_optimized():
    """XLA's backend optimizations on while inside (for code that runs more than compiles).

    The flag is not part of jit's in-memory cache key, so the caches are cleared on entry:
    a program compiled outside is compiled again, optimized.
    """
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    jax.clear_caches()
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)

_CACHE_DIR = os.environ.get(
    "DIFFJAX_TEST_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "diffjax-test-xla-cache")
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The longest test files, longest first (seconds of one run on 2 cores from a clean clone,
# cold cache, 2026-12-04, with another engineer's jobs loading the machine: notebooks 550
# (with the demo model it builds), checkpoint faults 299, signal faults 193, 8-device
# sharding 184, two-process training 120, training 117, configs 101, SD pipeline 99,
# demo 93, CLI 77; the notebooks are split over two files since, and the consistency
# runs, about 300 on the loaded machine, came after; with both, the clean-clone run took
# 11:35 at 186% CPU, notebook 04 99 s and 05 63 s the longest; the latent-diffusion and
# autoencoder files, about 60 s each on the loaded machine, came after). xdist hands out
# whole files (``--dist loadfile``), by default the files with the most tests first, which put these
# few-test, long files last: the run then ended with one worker busy on them and the
# other idle. They go first instead.
LONGEST_FILES = (
    "test_notebooks.py", "test_notebooks_second_half.py", "test_faults_disk.py",
    "test_faults_signals.py", "test_sharding.py",
    "test_distributed.py", "test_training.py", "test_configs.py", "test_sd_pipeline.py",
    "test_demo.py", "test_cli.py", "test_samplers.py", "test_sampler_order.py",
    "test_bad_inputs.py", "test_dpm_solver.py", "test_consistency_training.py",
    "test_latent_diffusion.py", "test_autoencoder_training.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files intact


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
    from diffjax.data import load_digits
    from diffjax.networks.classifier import save_classifier, train_classifier

    path = str(tmp_path_factory.mktemp("eval") / "run")
    shutil.copytree(tiny_trained_workdir, path)
    clf = train_classifier(load_digits("train"), key=jax.random.key(0), num_steps=30)
    os.makedirs(os.path.join(path, "eval"))
    save_classifier(os.path.join(path, "eval", "digits_classifier.msgpack"), clf)
    return path


# The digits demo's model as `tests/test_demo.py` trains it: the digits config, 400 steps of
# batch 64. Unlike the tiny variant it follows its labels (class agreement about 0.8
# unguided, 0.99 at guidance 3 with DDIM-10), so the claims of the demo and of the
# notebooks can be checked on it.
DEMO_MODEL_OVERRIDES = (
    "training.num_steps=400",
    "training.batch_size=64",
    "training.checkpoint_every=400",
    "training.progress_bar=False",
)


def _run_root(tmp_path_factory) -> str:
    """A folder shared by every worker of this test run (the basetemp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


@contextlib.contextmanager
def _exclusive(path: str):
    """Holds an exclusive lock on ``path`` (other workers wait for it)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _built_once(tmp_path_factory, name: str, build) -> str:
    """``build(path)`` run by the first worker that asks; the others wait and reuse it.

    The result appears under its final name only when complete (built in a scratch folder
    and renamed), so a worker never sees half of it.
    """
    root = _run_root(tmp_path_factory)
    final = os.path.join(root, name)
    with _exclusive(os.path.join(root, f"{name}.lock")):
        if not os.path.isdir(final):
            scratch = f"{final}.partial"
            shutil.rmtree(scratch, ignore_errors=True)
            build(scratch)
            os.rename(scratch, final)
    return final


@pytest.fixture(scope="session")
def demo_model_workdir(tmp_path_factory):
    """The digits demo model (``DEMO_MODEL_OVERRIDES``) with its evaluation classifier.

    ``eval/`` holds the classifier and reference statistics ``diffjax.app.evaluate``
    builds on first use (the 500-step classifier the demo and ``diffjax evaluate`` use).
    Built once per test run for all workers; read-only: tests that write into a workdir
    copy it.
    """

    def build(path):
        from diffjax.app.config import apply_overrides, digits_config
        from diffjax.app.evaluate import load_evaluation_context
        from diffjax.app.train import train

        config = digits_config()
        apply_overrides(config, list(DEMO_MODEL_OVERRIDES))
        with xla_optimized():
            train(config, os.path.join(path, "model"))
            load_evaluation_context(os.path.join(path, "model"))

    return os.path.join(_built_once(tmp_path_factory, "demo_model", build), "model")
