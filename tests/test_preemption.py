"""Preemption and crashes: SIGTERM saves and stops cleanly, SIGKILL loses nothing saved.

One chain of real `diffjax train` processes in one workdir (tiny digits config, 2 fake
CPU devices like the test session, so the result can be compared bit for bit with an
uninterrupted in-process run):

1. A run to step 8 that is SIGKILLed at the instant orbax would commit the checkpoint of
   step 4 (its temporary directory fully written, not yet renamed): the kill is made
   deterministic by patching ``os.rename`` in that process.
2. The same command with many steps, sent SIGTERM once it logs past step 8: it saves the
   step it reached and exits 0 with a message.
3. The same command with ``num_steps`` two beyond that: it completes the run.

Every process runs under a timeout; a test that waits for output polls with a deadline.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import chex
import jax
import pytest
from jax_subprocess import REPO, subprocess_env

from diffjax.config import apply_overrides, load_config
from diffjax.training import checkpoint as ckpt
from diffjax.training import train
from diffjax.training.checkpoint import CHECKPOINT_DIR
from diffjax.training.loop import _drop_records_after
from diffjax.training.preemption import PreemptionWatcher

CONFIG = "experiments/configs/digits.py:tiny"
OVERRIDES = [
    "--config.training.progress_bar=False",
    "--config.training.log_every=2",
    "--config.training.checkpoint_every=2",
]
TMP_SUFFIX = ".orbax-checkpoint-tmp"
PROCESS_TIMEOUT = 120

# Runs `diffjax train` (argv[1:]) but SIGKILLs itself when orbax renames the finished
# temporary directory of checkpoint step KILL_AT_STEP (argv[1]) into place.
KILL_DURING_COMMIT = r"""
import os, signal, sys
kill_name = sys.argv[1] + ".orbax-checkpoint-tmp"
_rename = os.rename
def rename(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(src)) == kill_name:
        os.kill(os.getpid(), signal.SIGKILL)
    return _rename(src, dst, *args, **kwargs)
os.rename = rename
from diffjax.cli import main
sys.exit(main(sys.argv[2:]))
"""


def env():
    return subprocess_env(2)


def train_argv(workdir, *overrides):
    return ["train", "--config", CONFIG, "--workdir", workdir, *OVERRIDES, *overrides]


def checkpoint_entries(workdir):
    return sorted(os.listdir(os.path.join(workdir, CHECKPOINT_DIR)))


def metrics_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def wait_for(predicate, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("preempt") / "run")
    cwd = REPO
    out = {"workdir": workdir}

    # 1. SIGKILL while the checkpoint of step 4 is being committed.
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_COMMIT, "4",
         *train_argv(workdir, "--config.training.num_steps=8")],
        env=env(), cwd=cwd, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
    )
    out["killed_rc"] = killed.returncode
    out["killed_stderr"] = killed.stderr[-3000:]
    out["after_kill"] = checkpoint_entries(workdir)
    manager = ckpt.checkpoint_manager(workdir, async_checkpointing=False)
    try:
        out["steps_after_kill"] = manager.all_steps()
    finally:
        manager.close()

    # 2. Many steps; SIGTERM once it has logged a step beyond the killed run's last one.
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffjax.cli",
         *train_argv(workdir, "--config.training.num_steps=100000",
                     "--config.training.checkpoint_every=100000")],
        env=env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out["logged_before_sigterm"] = wait_for(
            lambda: any(s > 8 for s in metrics_steps(workdir)), proc, PROCESS_TIMEOUT
        )
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out["sigterm_rc"], out["sigterm_stdout"], out["sigterm_stderr"] = (
        proc.returncode, stdout, stderr[-3000:]
    )
    match = re.search(r"preempted \(SIGTERM\) at step (\d+)", stderr)
    out["preempted_at"] = int(match.group(1)) if match else None
    out["after_sigterm"] = checkpoint_entries(workdir)
    out["metrics_after_sigterm"] = metrics_steps(workdir)
    if out["preempted_at"] is None:
        return out

    # 3. Finish two steps beyond where it stopped.
    final_step = out["preempted_at"] + 2
    finished = subprocess.run(
        [sys.executable, "-m", "diffjax.cli",
         *train_argv(workdir, f"--config.training.num_steps={final_step}")],
        env=env(), cwd=cwd, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
    )
    out["final_rc"], out["final_stderr"] = finished.returncode, finished.stderr[-3000:]
    out["final_step"] = final_step
    out["after_final"] = checkpoint_entries(workdir)
    return out


def test_kill_during_commit_keeps_the_last_good_checkpoint(chain):
    assert chain["killed_rc"] == -signal.SIGKILL, chain["killed_stderr"]
    # The interrupted save of step 4 is a leftover temporary directory; step 2 is intact
    # and is what a reader (or a resumed run) sees.
    assert chain["after_kill"] == ["2", "4" + TMP_SUFFIX], chain["after_kill"]
    assert chain["steps_after_kill"] == [2]


def test_sigterm_saves_the_step_reached_and_exits_cleanly(chain):
    assert chain["logged_before_sigterm"], chain["sigterm_stderr"]
    assert chain["sigterm_rc"] == 0, chain["sigterm_stderr"]
    step = chain["preempted_at"]
    assert step is not None and step > 8, chain["sigterm_stderr"]
    assert "run the same command again to resume" in chain["sigterm_stderr"]
    # Its checkpoint is finalized and the latest; the leftover of the killed run is gone.
    assert str(step) in chain["after_sigterm"]
    assert max(int(e) for e in chain["after_sigterm"]) == step
    assert not any(TMP_SUFFIX in e for e in chain["after_sigterm"]), chain["after_sigterm"]
    # Records the killed run logged after its last checkpoint were dropped on resume.
    steps = chain["metrics_after_sigterm"]
    assert steps == sorted(set(steps)) and steps[:3] == [2, 4, 6], steps


def test_restart_completes_and_equals_an_uninterrupted_run(chain, tmp_path):
    assert chain["final_rc"] == 0, chain["final_stderr"]
    final_step = chain["final_step"]
    assert str(final_step) in chain["after_final"]

    config = load_config(os.path.join(REPO, CONFIG))
    apply_overrides(config, [*OVERRIDES, f"training.num_steps={final_step}"])
    config.training.checkpoint_every = 1000
    reference = train(config, str(tmp_path / "straight"))

    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), reference
    )
    manager = ckpt.checkpoint_manager(chain["workdir"], async_checkpointing=False)
    try:
        resumed = ckpt.restore(manager, abstract)
    finally:
        manager.close()
    assert int(resumed.step) == final_step
    chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(reference))


def test_watcher_flags_sigterm_and_restores_the_previous_handler():
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with PreemptionWatcher(manager=None) as watcher:
            assert watcher.installed and not watcher.reached(1)
            signal.raise_signal(signal.SIGTERM)
            assert watcher.reached(2) and watcher.signal_number == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is previous and calls == []
    finally:
        signal.signal(signal.SIGTERM, old)


def test_watcher_outside_the_main_thread_installs_nothing():
    seen = {}

    def body():
        with PreemptionWatcher(manager=None) as watcher:
            seen["installed"] = watcher.installed
            seen["reached"] = watcher.reached(1)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=10)
    assert seen == {"installed": False, "reached": False}
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2}\n{"step": 4}\n{"step": 6}\n{"step": 8, "lo')  # cut by a kill
    _drop_records_after(str(path), 4)
    assert path.read_text() == '{"step": 2}\n{"step": 4}\n'
