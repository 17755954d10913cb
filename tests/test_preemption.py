"""The preemption watcher and the metrics clean-up on resume (unit tests).

Real processes stopped by SIGKILL, SIGTERM and SIGINT at random and at the worst
moments, and their bit-exact resume, are in tests/test_faults_signals.py.
"""

import json
import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.app.train import _drop_records_after
from diffjax.training import integrity, preemption
from diffjax.training.preemption import PreemptionWatcher
from diffjax.training.workdir_lock import WorkdirLock, WorkdirLockedError


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


def test_watcher_takes_sigint_and_a_second_ctrl_c_aborts():
    # A process started in the background by a non-interactive shell inherits SIGINT
    # ignored; the watcher restores whatever it found, so start from Python's default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _sigint_round_trip()
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigint_round_trip():
    with PreemptionWatcher(manager=None) as watcher:
        signal.raise_signal(signal.SIGINT)
        assert watcher.reached(1) and watcher.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_signals_reach_a_later_watcher_and_come_back():
    old = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    try:
        assert preemption.defer_signals()
        signal.raise_signal(signal.SIGTERM)  # recorded, not fatal
        assert preemption.pending_signal() == signal.SIGTERM
        with PreemptionWatcher(manager=None) as watcher:
            assert watcher.reached(1) and watcher.signal_name == "SIGTERM"
        preemption.clear_pending_signal()
        with PreemptionWatcher(manager=None) as watcher:
            assert not watcher.reached(1)
            signal.raise_signal(signal.SIGINT)
        assert preemption.pending_signal() == signal.SIGINT  # handed back on exit
    finally:
        preemption.clear_pending_signal()
        for signum, handler in old.items():
            signal.signal(signum, handler)


def test_checksums_catch_every_single_bit_flip_and_agree_on_host_and_device():
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    reference = integrity._host_checksums(x)
    words = x.view(np.uint32).copy()
    for index in range(words.size):
        for bit in range(32):
            flipped = words.copy().reshape(-1)
            flipped[index] ^= np.uint32(1 << bit)
            sums = integrity._host_checksums(flipped.view(np.float32).reshape(x.shape))
            assert (sums != reference).all(), (index, bit)
    tree = {"f32": x, "bf16": x.astype(jnp.bfloat16), "i32": np.arange(7, dtype=np.int32),
            "bool": np.array([True, False, True])}
    on_device = np.asarray(integrity._tree_summary(jax.tree.map(jnp.asarray, tree))[0])
    on_host = np.stack([integrity._host_checksums(np.asarray(v)) for v in jax.tree.leaves(tree)])
    np.testing.assert_array_equal(on_device, on_host)


def test_integrity_record_names_changed_and_non_finite_arrays():
    state = {"a": jnp.ones((4,)), "b": jnp.zeros((2, 2))}
    record = integrity.make_record(state, {"k": 1}, {"next_index": 3})
    integrity.verify(record, state, {"k": 1}, {"next_index": 3})
    with pytest.raises(integrity.IntegrityError, match="differ from their checksums: a"):
        integrity.verify(record, {"a": jnp.ones((4,)).at[2].set(1.5), "b": state["b"]})
    with pytest.raises(integrity.IntegrityError, match="non-finite values in b"):
        integrity.verify(record, {"a": state["a"], "b": jnp.full((2, 2), jnp.nan)})
    with pytest.raises(integrity.IntegrityError, match="config differs"):
        integrity.verify(record, state, {"k": 2})
    with pytest.raises(integrity.IntegrityError, match="data iterator state"):
        integrity.verify(record, state, None, {"next_index": 4})


def test_workdir_lock_is_exclusive_and_leaves_no_file(tmp_path):
    with WorkdirLock(str(tmp_path)) as lock:
        with open(lock.path) as f:
            holder = json.load(f)
        assert holder["pid"] == os.getpid()
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            WorkdirLock(str(tmp_path)).acquire()
    assert os.listdir(tmp_path) == []
