"""Fault injection on the disk side: damaged checkpoints, unwritable and full disks, races.

* Every file kind of a checkpoint, bytes flipped and truncated: the damage is detected
  (the newest intact checkpoint is used, with a warning naming the damaged step) or is
  harmless (the restored state equals the saved one bit for bit); never a silently
  wrong state. ``train`` sets a damaged checkpoint aside and resumes exactly;
  ``sample --step`` on it refuses, naming the option.
* An unwritable checkpoints folder fails at once with the cause; a disk that fills
  mid-run (``RLIMIT_FSIZE`` in the child) fails with the cause and keeps every
  committed checkpoint.
* Two trainers on one workdir: the second is refused (exit 1, the holder's pid), the
  first runs on, readers restoring while it saves and prunes never fail, and the
  metrics hold no duplicate. A stale lock of a dead process is taken over; a lock of
  another host is refused and nothing is changed.
"""

import collections
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import chex
import jax
import pytest
from fault_helpers import (
    committed_steps,
    data_iterator,
    in_process_config,
    restore_step,
    run_train,
    start_train,
    train_argv,
    tree_digest,
    wait_for,
)

from diffjax.app import checkpoint as ckpt
from diffjax.app.cli import main
from diffjax.app.train import load_trained, train
from diffjax.training.workdir_lock import LOCK_FILE, WorkdirLockedError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A workdir with checkpoints at steps 1 and 2, and their true states."""
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    final = train(in_process_config("training.num_steps=2"), workdir)
    truth = {s: jax.device_get(restore_step(workdir, final, s).state) for s in (1, 2)}
    return workdir, final, truth


def copy_of(base_dir, tmp_path, name="run"):
    path = str(tmp_path / name)
    shutil.copytree(base_dir, path)
    return path


def file_kinds(step_dir):
    """One file per kind in a checkpoint step (hash-named data files: largest, smallest)."""
    kinds = collections.defaultdict(list)
    for root, _, files in os.walk(step_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            kind = re.sub(r"[0-9a-f]{32}", "*", rel)
            if name == "commit_success.txt":  # one marker file of orbax per item
                kind = "*/commit_success.txt"
            kinds[kind].append(rel)
    chosen = {}
    for kind, paths in sorted(kinds.items()):
        by_size = sorted(paths, key=lambda p: os.path.getsize(os.path.join(step_dir, p)))
        chosen[kind] = by_size[-1]
        if kind.startswith("state/") and "*" in kind and len(by_size) > 1:
            chosen[kind.replace("*", "* (smallest)")] = by_size[0]
    return chosen


def damage(path, how):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if how == "flip":
        middle = len(data) // 2
        for i in range(middle, min(middle + 16, len(data))):
            data[i] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_damage_to_any_checkpoint_file_is_detected_or_harmless(base, tmp_path):
    base_dir, final, truth = base
    kinds = file_kinds(os.path.join(base_dir, "checkpoints", "2"))
    assert len(kinds) >= 12, kinds
    outcomes = {}
    for kind, rel in kinds.items():
        for how in ("flip", "truncate"):
            workdir = copy_of(base_dir, tmp_path, f"{len(outcomes)}")
            damage(os.path.join(workdir, "checkpoints", "2", rel), how)
            iterator = data_iterator()  # restored too, as when `train` resumes
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                restored = restore_step(workdir, final, iterator=iterator)
            assert iterator.get_state() == {"next_index": restored.step}
            got = jax.device_get(restored.state)
            if restored.step == 1:  # detected: named, and the older intact one is used
                assert [s for s, _ in restored.skipped] == [2]
                assert any("step 2" in str(w.message) and "damaged" in str(w.message)
                           for w in caught), [str(w.message) for w in caught]
                chex.assert_trees_all_equal(got, truth[1])
                with pytest.raises(ckpt.CheckpointCorruptError, match="step 2.*--step"):
                    restore_step(workdir, final, 2, iterator=data_iterator())
                outcomes[(kind, how)] = "detected"
            else:  # not detected: then the state must be exactly the saved one
                assert restored.step == 2 and restored.skipped == []
                chex.assert_trees_all_equal(got, truth[2])
                outcomes[(kind, how)] = "harmless"
            shutil.rmtree(workdir)
    counts = collections.Counter(outcomes.values())
    print(f"\ncheckpoint damage: {len(outcomes)} cases, {dict(counts)}")
    for (kind, how), outcome in sorted(outcomes.items()):
        print(f"  {kind:50s} {how:9s} {outcome}")
    # Damage to the arrays' largest data file, their metadata, the saved config, the
    # iterator state and the integrity record is always detected.
    must_detect = ("state/ocdbt.process_0/d/*", "state/_METADATA", "config/metadata",
                   "integrity/metadata", "data_iterator/process_0-of-1.json")
    for kind in must_detect:
        assert outcomes[(kind, "flip")] == outcomes[(kind, "truncate")] == "detected", kind


def test_train_sets_a_damaged_checkpoint_aside_and_resumes_exactly(base, tmp_path, capsys):
    base_dir, _, truth = base
    workdir = copy_of(base_dir, tmp_path)
    data_file = file_kinds(os.path.join(workdir, "checkpoints", "2"))[
        "state/ocdbt.process_0/d/*"
    ]
    damage(os.path.join(workdir, "checkpoints", "2", data_file), "flip")
    # sample: explicit step refused (exit 1, naming --step); default falls back, warning.
    assert main(["sample", "--workdir", workdir, "--step", "2", "--steps", "2",
                 "--labels", "0", "--num-per-label", "1",
                 "--out", str(tmp_path / "s.png")]) == 1
    err = capsys.readouterr().err
    assert "step 2" in err and "damaged" in err and "--step" in err and "Traceback" not in err
    assert main(["sample", "--workdir", workdir, "--steps", "2", "--labels", "0",
                 "--num-per-label", "1", "--out", str(tmp_path / "s.png")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "step 2" in err and "newest intact checkpoint, step 1" in err
    # train: resumes from step 1, moves step 2 aside (kept), retrains it exactly.
    with pytest.warns(ckpt.CheckpointWarning, match="step 2"):
        state = train(in_process_config("training.num_steps=2"), workdir)
    aside = os.listdir(os.path.join(workdir, ckpt.SET_ASIDE_DIR))
    assert len(aside) == 1 and aside[0].startswith("2.damaged"), aside
    assert committed_steps(workdir) == [1, 2]
    chex.assert_trees_all_equal(jax.device_get(state), truth[2])


def test_train_from_an_older_step_keeps_the_newer_checkpoints(base, tmp_path):
    base_dir, _, truth = base
    workdir = copy_of(base_dir, tmp_path)
    state = train(in_process_config("training.num_steps=2"), workdir, step=1)
    chex.assert_trees_all_equal(jax.device_get(state), truth[2])
    aside = sorted(os.listdir(os.path.join(workdir, ckpt.SET_ASIDE_DIR)))
    assert "metrics.jsonl.before-step-1" in aside and len(aside) == 2
    assert any(name.startswith("2.superseded") for name in aside), aside


def test_an_unwritable_checkpoints_folder_fails_at_once_with_the_cause(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("a file where the folder should be")
    before = tree_digest(str(workdir))
    start = time.monotonic()
    rc = main(["train", "--config", "experiments/configs/digits.py:tiny", "--workdir",
               str(workdir), "--config.training.progress_bar=False"])
    err = capsys.readouterr().err
    assert rc == 1 and time.monotonic() - start < 60
    assert "cannot write checkpoints in" in err and "Traceback" not in err, err
    assert tree_digest(str(workdir)) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoints_folder_fails_at_once(base, tmp_path, capsys):
    workdir = copy_of(base[0], tmp_path)
    os.chmod(os.path.join(workdir, "checkpoints"), 0o500)
    try:
        rc = main(["train", "--config", "experiments/configs/digits.py:tiny", "--workdir",
                   workdir, "--config.training.progress_bar=False"])
    finally:
        os.chmod(os.path.join(workdir, "checkpoints"), 0o700)
    err = capsys.readouterr().err
    assert rc == 1 and "cannot write checkpoints" in err and "Permission" in err, err


def test_a_full_disk_fails_with_the_cause_and_keeps_committed_checkpoints(base, tmp_path):
    base_dir, final, truth = base
    workdir = copy_of(base_dir, tmp_path)

    def small_files():  # a full disk, as the child sees it: writes over 200 kB fail
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    full = run_train(workdir, "--config.training.num_steps=4", preexec_fn=small_files)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "File too large" in full.stderr and "newest committed checkpoint stands" in full.stderr
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    assert committed_steps(workdir) == [1, 2]
    restored = restore_step(workdir, final)
    assert restored.step == 2
    chex.assert_trees_all_equal(jax.device_get(restored.state), truth[2])
    # With space again, the same command completes (in this process: no second child
    # importing JAX and compiling).
    assert main(train_argv(workdir, "--config.training.num_steps=3")[3:]) == 0
    assert committed_steps(workdir)[-1] == 3


def test_two_trainers_one_workdir_and_readers_while_it_saves(base, tmp_path, capsys):
    workdir = copy_of(base[0], tmp_path)
    long_run = ["--config.training.num_steps=100000",
                "--config.training.max_checkpoints_to_keep=1"]
    first = start_train(workdir, *long_run)
    try:
        assert wait_for(lambda: len(committed_steps(workdir)) == 1
                        and committed_steps(workdir)[0] >= 3, first, 150), first.stderr
        # The second trainer: this process (another pid than the holder's, as a second
        # `diffjax train` would be), refused before it loads or compiles anything.
        capsys.readouterr()
        assert main(train_argv(workdir, *long_run)[3:]) == 1
        second_err = capsys.readouterr().err
        assert f"pid {first.pid} on host {socket.gethostname()!r}" in second_err, second_err
        assert "Traceback" not in second_err
        # Readers while the first run saves every step and keeps only the newest.
        seen = []
        for _ in range(3):
            with warnings.catch_warnings():
                warnings.simplefilter("error", ckpt.CheckpointWarning)
                load_trained(workdir)
            seen.append(committed_steps(workdir))
        assert first.poll() is None and len({tuple(s) for s in seen}) > 1, seen
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=150)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, stderr[-3000:]
    assert "preempted (SIGTERM) at step" in stderr
    assert not os.path.exists(os.path.join(workdir, LOCK_FILE))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == sorted(set(steps)), steps
    # A reader asking for a step that retention deleted is told so.
    with pytest.raises(FileNotFoundError, match="older checkpoints are deleted"):
        load_trained(workdir, step=1)


def test_a_stale_lock_is_taken_over_and_another_hosts_lock_is_refused(base, tmp_path):
    workdir = copy_of(base[0], tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock = os.path.join(workdir, LOCK_FILE)
    with open(lock, "w") as f:
        json.dump({"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0}, f)
    with pytest.warns(UserWarning, match="stale lock"):
        train(in_process_config("training.num_steps=3"), workdir)
    assert not os.path.exists(lock) and committed_steps(workdir)[-1] == 3

    with open(lock, "w") as f:
        json.dump({"pid": 12345, "host": "another-host", "since": 0}, f)
    before = tree_digest(workdir)
    with pytest.raises(WorkdirLockedError, match="another-host.*delete"):
        train(in_process_config("training.num_steps=4"), workdir)
    assert tree_digest(workdir) == before
