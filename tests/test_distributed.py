"""Multi-process training: two real processes on localhost against one process.

Two `diffjax train` processes (one CPU device each, gloo collectives, a 127.0.0.1
coordinator) train the tiny digits config for 3 steps in one shared workdir; one process
with two devices (the test's own) trains the same global batches. Per-example keys make
the update independent of how the batch is split, so the parameters must agree to
float32 rounding. Every wait is bounded: the children are killed after a timeout.
"""

import os
import socket
import subprocess
import sys
import time

import chex
import jax
import pytest
from jax_subprocess import REPO, subprocess_env

from diffjax.app.cli import main
from diffjax.app.train import load_trained
from diffjax.training import distributed

TIMEOUT_S = 300
# Optimization level 0 halves XLA:CPU compile times; every run compared here shares it.
XLA_FLAGS = ("--xla_backend_optimization_level=0",)
CONFIG = "experiments/configs/digits.py:tiny"
OVERRIDES = [
    "--config.training.num_steps=3",
    "--config.training.batch_size=8",
    "--config.training.checkpoint_every=3",
    "--config.training.log_every=1",
    "--config.training.progress_bar=False",
]

# Runs `diffjax train` and reports how many processes and devices the run spanned.
WORKER = r"""
import sys
import jax
from diffjax.app.cli import main
code = main(sys.argv[1:])
assert code == 0, code
print("PROCESSES", jax.process_count(), "DEVICES", jax.device_count(), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(commands, env):
    """Starts every command, waits for all under one deadline, kills all on timeout."""
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    deadline = time.monotonic() + TIMEOUT_S
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def train_command(workdir, *flags):
    return [sys.executable, "-c", WORKER, "train", "--config", CONFIG,
            "--workdir", workdir, *OVERRIDES, *flags]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    address = f"127.0.0.1:{free_port()}"
    workers = [
        train_command(multi, "--coordinator-address", address, "--num-processes", "2",
                      "--process-id", str(rank), "--distributed-timeout", "120")
        for rank in range(2)
    ]
    # The CLI turns the persistent compilation cache off for multi-process CPU runs;
    # keep these processes from even seeing the session's cache.
    worker_env = subprocess_env(1, *XLA_FLAGS)
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        worker_env.pop(name)
    worker_env["DIFFJAX_COMPILATION_CACHE"] = ""
    results = run_all(workers, worker_env)
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, f"process {rank}:\n{err[-3000:]}"
        assert "PROCESSES 2 DEVICES 2" in out
    # The one-process run in this test process (2 devices, XLA's optimizations off as in
    # the children): the same command, without a third child importing JAX and
    # compiling again.
    assert main(["train", "--config", CONFIG, "--workdir", single, *OVERRIDES]) == 0
    assert (jax.process_count(), jax.device_count()) == (1, 2)

    # The EMA parameters saved after step 3 (they average the parameters of every step).
    _, _, ema_multi, info_multi = load_trained(multi)
    _, _, ema_single, info_single = load_trained(single)
    assert info_multi == info_single
    chex.assert_trees_all_equal_shapes_and_dtypes(ema_multi, ema_single)
    chex.assert_trees_all_close(ema_multi, ema_single, rtol=1e-5, atol=1e-6)


def test_unreachable_coordinator_times_out_with_a_clear_message():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=f"coordinator at {address} did not answer within 1 s"):
        distributed.initialize(address, 2, 1, timeout_s=1)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("127.0.0.1:1234", 2, None), {}, "needs process_id"),
        ((None, 2, 0), {}, "needs coordinator_address"),
        (("127.0.0.1:1234", 2, 2), {}, "process_id=2 must be in"),
        (("localhost", 2, 1), {}, "must look like 'host:port'"),
        (("127.0.0.1:1234", 2, 1), {"auto_detect": True}, "auto_detect=True takes no"),
    ],
)
def test_bad_distributed_arguments_are_named(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize(*args, **kwargs)


def test_single_process_needs_no_initialization():
    assert distributed.initialize() is False
    assert os.environ.get("JAX_PLATFORMS", "cpu")  # nothing changed
