"""Helpers of the fault-injection tests (test_faults_*.py): child runs, workdir digests.

Every child is a real `diffjax train` process on the tiny digits config with two fake
CPU devices (like the test session, so its states can be compared bit for bit with an
in-process run), under a timeout.
"""

import functools
import hashlib
import os
import subprocess
import sys
import time

import jax
from jax_subprocess import REPO, subprocess_env

from diffjax.app import checkpoint as ckpt
from diffjax.app.config import apply_overrides, load_config
from diffjax.app.train import load_training_data, train
from diffjax.data import batch_iterator, training_batches

CONFIG = "experiments/configs/digits.py:tiny"
BASE_OVERRIDES = [
    "--config.training.progress_bar=False",
    "--config.training.log_every=1",
    "--config.training.checkpoint_every=1",
]
PROCESS_TIMEOUT = 180


def env():
    return subprocess_env(2)


def train_argv(workdir, *overrides):
    return [sys.executable, "-m", "diffjax.app.cli", "train", "--config", CONFIG,
            "--workdir", workdir, *BASE_OVERRIDES, *overrides]


def run_train(workdir, *overrides, preexec_fn=None, prefix=None):
    """Runs `diffjax train` to completion; returns the CompletedProcess."""
    argv = train_argv(workdir, *overrides)
    if prefix is not None:  # a `python -c` wrapper that patches, then runs the CLI
        argv = [sys.executable, "-c", prefix, *argv[3:]]
    return subprocess.run(argv, env=env(), cwd=REPO, capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT, preexec_fn=preexec_fn)


def start_train(workdir, *overrides):
    return subprocess.Popen(train_argv(workdir, *overrides), env=env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, timeout):
    """Polls ``predicate`` until it holds, the process ends, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def committed_steps(workdir):
    path = os.path.join(workdir, ckpt.CHECKPOINT_DIR)
    if not os.path.isdir(path):
        return []
    return sorted(int(n) for n in os.listdir(path) if n.isdigit())


def in_process_config(*overrides):
    config = load_config(os.path.join(REPO, CONFIG))
    apply_overrides(config, [*BASE_OVERRIDES, *overrides])
    return config


def train_reference(workdir, num_steps):
    """An uninterrupted in-process run keeping every step's checkpoint."""
    config = in_process_config(
        f"training.num_steps={num_steps}", f"training.max_checkpoints_to_keep={num_steps}"
    )
    return train(config, workdir)


@functools.cache
def _batches():
    config = in_process_config()
    return training_batches(load_training_data(config), config.training.batch_size,
                            seed=config.training.seed, labels=True)


def data_iterator():
    """A fresh iterator over the fault runs' training batches (as `train` builds it)."""
    return batch_iterator(_batches(), num_threads=0, prefetch_batches=0)


def restore_step(workdir, like, step=None, iterator=None):
    """The verified state at ``step`` (default newest intact) shaped and placed like ``like``.

    With ``iterator``, the data iterator's saved state is restored into it too (and
    checked against the integrity record), as `train` does.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
    )
    manager = ckpt.checkpoint_manager(workdir, read_only=True)
    try:
        return ckpt.restore_verified(manager, abstract, step, data_iterator=iterator)
    finally:
        manager.close()


def tree_digest(path):
    """SHA-256 over every file's relative path and bytes and every folder's name."""
    if not os.path.exists(path):
        return None
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        rel = os.path.relpath(root, path)
        digest.update(f"D {rel}\n".encode())
        for name in sorted(files):
            digest.update(f"F {os.path.join(rel, name)}\n".encode())
            with open(os.path.join(root, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()
