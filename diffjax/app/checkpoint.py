"""Checkpoints: orbax CheckpointManager (async, bounded retention) plus the run's config.

A workdir holds ``config.json`` (the run's full config), ``run_info.json`` (what the
dataset fixed: image shape and number of classes) and ``checkpoints/<step>/``. Each
step holds the train state, the config, the input pipeline's iterator state (grain's
orbax handler, one ``process_<i>-of-<n>.json`` per process) and an integrity record
(checksums of every array, see :mod:`diffjax.training.integrity`), written in the same
orbax checkpoint so that they are committed, or lost, together. Orbax writes each
checkpoint to a temporary directory and renames it when complete, and only then drops
the oldest beyond ``max_to_keep``, so a crash mid-save never replaces the last good
checkpoint.

Restoring verifies the record: a damaged checkpoint is named (step and path) and, when
no step was asked for, skipped for the newest intact one with a warning. A run started
in a workdir whose config defines a different model or optimizer is refused before
anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from diffjax.app import config as config_lib
from diffjax.files import write_text_atomic
from diffjax.training import integrity

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
CHECKPOINT_DIR = "checkpoints"
DATA_ITERATOR_ITEM = "data_iterator"
INTEGRITY_ITEM = "integrity"
SET_ASIDE_DIR = "checkpoints_set_aside"


class CheckpointCorruptError(RuntimeError):
    """A checkpoint cannot be restored intact (damaged, truncated or altered files)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint holds another model or optimizer structure than the config builds."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older intact one."""


class Restored(NamedTuple):
    """The outcome of :func:`restore_verified`.

    Attributes:
      state: the restored state.
      step: the step it was restored from.
      skipped: ``(step, reason)`` for each newer checkpoint found damaged and skipped.
    """

    state: Any
    step: int
    skipped: list[tuple[int, str]]


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """Reads the config a workdir was trained with.

    Raises:
      FileNotFoundError: the workdir has no ``config.json`` (not a diffjax run).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {workdir!r} is not a diffjax training workdir "
            "(train one with `diffjax train --workdir ...`)"
        )
    with open(path) as f:
        return config_lib.from_json(f.read())


def read_run_info(workdir: str) -> dict[str, Any]:
    """Reads ``run_info.json`` (image_shape, num_classes) of a workdir."""
    path = os.path.join(workdir, RUN_INFO_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} has no finished training setup")
    with open(path) as f:
        return json.load(f)


def workdir_mismatches(
    workdir: str, config: ml_collections.ConfigDict, run_info: dict[str, Any]
) -> list[str]:
    """What differs between a workdir's saved run and this one (reads only).

    Returns:
      One line per checkpoint-defining key (model, diffusion, dataset) or data fact
      (image shape, class count) that differs; empty for a new or matching workdir.
    """
    if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
        return []
    try:
        saved = read_config(workdir)
    except ValueError as e:
        raise ValueError(f"{os.path.join(workdir, CONFIG_FILE)} is unreadable: {e}") from e
    problems = config_lib.checkpoint_mismatches(saved, config)
    if os.path.isfile(os.path.join(workdir, RUN_INFO_FILE)):
        saved_info = read_run_info(workdir)
        for key, value in run_info.items():
            if saved_info.get(key) != value:
                problems.append(f"{key}: checkpoint has {saved_info.get(key)!r}, run has {value!r}")
    return problems


def check_workdir(
    workdir: str, config: ml_collections.ConfigDict, run_info: dict[str, Any]
) -> None:
    """Refuses a workdir that holds another run (reads only; writes nothing).

    Raises:
      ValueError: the workdir already holds a run whose model, diffusion or dataset
        settings (or image shape / class count) differ from this one.
    """
    problems = workdir_mismatches(workdir, config, run_info)
    if problems:
        raise ValueError(
            f"workdir {workdir!r} holds a checkpoint from another configuration; "
            "use a new workdir or the same settings:\n  " + "\n  ".join(problems)
        )


def write_run_files(
    workdir: str, config: ml_collections.ConfigDict, run_info: dict[str, Any]
) -> None:
    """Writes ``config.json`` and ``run_info.json`` atomically.

    Only process 0 writes, and a file whose content is unchanged is not rewritten.
    """
    if jax.process_index() != 0:  # one writer in a multi-process run
        return
    files = {
        CONFIG_FILE: config_lib.to_json(config),
        RUN_INFO_FILE: json.dumps(run_info, indent=2),
    }
    for name, text in files.items():
        path = os.path.join(workdir, name)
        if os.path.isfile(path):
            with open(path) as f:
                if f.read() == text:
                    continue
        write_text_atomic(path, text)


def check_writable(directory: str) -> None:
    """Makes sure files can be created in ``directory`` (created if missing).

    Raises:
      OSError: naming the folder and the cause (permissions, a file in the way, a full
        disk), instead of orbax's time-out minutes later.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise type(e)(
            e.errno, f"cannot write checkpoints in {directory}: {e.strerror or e}"
        ) from e


def checkpoint_manager(
    workdir: str,
    *,
    max_to_keep: int = 3,
    async_checkpointing: bool = True,
    cleanup_tmp_directories: bool = False,
    read_only: bool = False,
    save_timeout_s: float = 600.0,
) -> ocp.CheckpointManager:
    """An orbax CheckpointManager for ``workdir/checkpoints`` with bounded retention.

    Args:
      workdir: the run's workdir.
      max_to_keep: how many finalized checkpoints to keep.
      async_checkpointing: whether ``save`` returns before the files are written.
      cleanup_tmp_directories: delete unfinished checkpoint directories (left by a
        process killed mid-save) when the manager opens. Only the training run
        itself may ask for this: a reader opening the workdir while a run saves
        would delete the save in progress. Unfinished directories are never listed
        as steps either way.
      read_only: a reader's manager: creates nothing, saves nothing, deletes nothing.
      save_timeout_s: how long an asynchronous save may take before it fails.
    """
    if max_to_keep < 1:
        raise ValueError(f"training.max_checkpoints_to_keep={max_to_keep} must be >= 1")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=async_checkpointing and not read_only,
        cleanup_tmp_directories=cleanup_tmp_directories and not read_only,
        async_options=ocp.AsyncOptions(timeout_secs=max(1, int(save_timeout_s))),
    )
    return _retry_while_pruned(
        lambda: ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
            options=options,
            item_names=("state", "config", DATA_ITERATOR_ITEM, INTEGRITY_ITEM),
        )
    )


def _retry_while_pruned(fn: Any, attempts: int = 20) -> Any:
    """Calls ``fn`` again when a step vanished while orbax listed the steps.

    Orbax lists the step folders and then reads each one's commit time; a running
    ``train`` that deletes its oldest step in between makes the listing fail with
    FileNotFoundError. A fresh listing no longer has that step.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    config: ml_collections.ConfigDict,
    data_iterator: grain.DatasetIterator | None = None,
) -> None:
    """Saves the state, its config, the data iterator's state and the integrity record.

    All four are items of one orbax checkpoint under ``step``, committed together. The
    arrays are written asynchronously if enabled; the iterator's state and the
    checksums are taken before this returns, so the iterator may move on at once.
    """
    config_dict = config.to_dict()
    iterator_state = None if data_iterator is None else data_iterator.get_state()
    items = {
        "state": ocp.args.StandardSave(state),
        "config": ocp.args.JsonSave(config_dict),
        INTEGRITY_ITEM: ocp.args.JsonSave(
            integrity.make_record(state, json.loads(json.dumps(config_dict)), iterator_state)
        ),
    }
    if data_iterator is not None:
        items[DATA_ITERATOR_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
    manager.save(step, args=ocp.args.Composite(**items))


def step_path(manager: ocp.CheckpointManager, step: int) -> str:
    """The folder of the checkpoint at ``step``."""
    return os.path.join(str(manager.directory), str(step))


def structure_mismatches(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> list[str]:
    """Differences between the saved state's arrays and ``abstract_state`` (reads metadata).

    Returns:
      One line per array missing on either side or of another shape or dtype (a
      different model or optimizer, e.g. gradient clipping turned on or off).

    Raises:
      CheckpointCorruptError: the checkpoint's metadata cannot be read.
    """
    path = epath.Path(step_path(manager, step)) / "state"
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(path)
        saved = {
            leaf.name: (tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(metadata)
        }
    except Exception as e:
        if _pruned_while_reading(manager, step, e):
            raise _pruned_error(f"checkpoint at step {step} ({step_path(manager, step)})") from e
        raise CheckpointCorruptError(
            f"checkpoint at step {step} ({step_path(manager, step)}) is damaged: its array "
            f"metadata is unreadable: {_first_line(e)}"
        ) from e
    wanted = {
        integrity.leaf_name(p): (tuple(x.shape), str(x.dtype))
        for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)
    }
    problems = [f"{name}: in the checkpoint only" for name in sorted(set(saved) - set(wanted))]
    problems += [f"{name}: in this config only" for name in sorted(set(wanted) - set(saved))]
    for name in sorted(set(saved) & set(wanted)):
        if saved[name] != wanted[name]:
            problems.append(
                f"{name}: checkpoint {saved[name][1]}{list(saved[name][0])}, "
                f"config {wanted[name][1]}{list(wanted[name][0])}"
            )
    return problems


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(e).__name__}: {line[:limit]}"


def _restore_step(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    step: int,
    data_iterator: grain.DatasetIterator | None,
) -> Any:
    """Restores and verifies one step; any damage is a CheckpointCorruptError."""
    where = f"checkpoint at step {step} ({step_path(manager, step)})"
    problems = structure_mismatches(manager, step, abstract_state)
    if problems:
        raise CheckpointMismatchError(
            f"{where} holds another model or optimizer than this config builds "
            f"({len(problems)} arrays differ; use the run's own config or a new workdir):\n  "
            + "\n  ".join(problems[:8])
            + ("\n  ..." if len(problems) > 8 else "")
        )
    try:
        saved_items = set(os.listdir(step_path(manager, step)))
    except FileNotFoundError as e:
        raise _pruned_error(where) from e
    items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_state)}
    if "config" in saved_items:
        items["config"] = ocp.args.JsonRestore()
    if INTEGRITY_ITEM in saved_items:
        items[INTEGRITY_ITEM] = ocp.args.JsonRestore()
    if data_iterator is not None and has_data_iterator(manager, step):
        items[DATA_ITERATOR_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        state = restored["state"]
        if INTEGRITY_ITEM in items:
            iterator_state = (
                data_iterator.get_state() if DATA_ITERATOR_ITEM in items else None
            )
            config_dict = restored["config"] if "config" in items else None
            integrity.verify(restored[INTEGRITY_ITEM], state, config_dict, iterator_state)
        else:  # written before integrity records: at least the values must be finite
            integrity.check_finite(state)
    except Exception as e:
        if _pruned_while_reading(manager, step, e):
            raise _pruned_error(where) from e
        raise CheckpointCorruptError(f"{where} is damaged: {_first_line(e)}") from e
    return state


def _pruned_while_reading(manager: ocp.CheckpointManager, step: int, e: BaseException) -> bool:
    """Whether a failed read of ``step`` is a running ``train`` deleting it, not damage.

    Orbax deletes a step only after a newer one is committed, so a missing file with a
    newer step present (or the step gone) means retention removed it mid-read.
    """
    _retry_while_pruned(manager.reload)
    if step not in manager.all_steps() or not os.path.isdir(step_path(manager, step)):
        return True
    # Retention deletes a step's item folders one by one: a read can find the step's
    # folder with an item already gone (orbax: KeyError 'Item ... was not found').
    missing = (
        isinstance(e, FileNotFoundError)
        or "NOT_FOUND" in str(e)
        or (isinstance(e, KeyError) and "was not found in the checkpoint" in str(e))
    )
    return missing and max(manager.all_steps()) > step


def _pruned_error(where: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{where} was deleted while being read (a running `train` keeps only the newest "
        "training.max_checkpoints_to_keep); choose a newer step"
    )


def restore_verified(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    step: int | None = None,
    *,
    data_iterator: grain.DatasetIterator | None = None,
) -> Restored:
    """Restores a verified state: the given step, or the newest intact checkpoint.

    Every restore is checked against the checkpoint's integrity record (checksums of
    every array, the config and the data iterator's state) and every float array is
    checked finite. With ``step=None`` a damaged newest checkpoint is skipped with a
    :class:`CheckpointWarning` naming it, and the next older one is tried.

    Args:
      manager: the workdir's CheckpointManager.
      abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (with shardings) matching the
        saved state, e.g. from ``jax.eval_shape``.
      step: which checkpoint; None for the newest intact one.
      data_iterator: if given and the checkpoint holds a data iterator state, this
        iterator is set to it (in place). Use :func:`has_data_iterator` to tell whether
        it was.

    Raises:
      ValueError: ``step`` is negative.
      FileNotFoundError: there is no checkpoint (at that step; the message says when an
        older step was deleted by the retention policy).
      CheckpointMismatchError: the checkpoint's arrays do not fit ``abstract_state``.
      CheckpointCorruptError: the requested step, or every checkpoint, is damaged.
    """
    if step is not None and step < 0:
        raise ValueError(f"step={step} must be >= 0")
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    if step is not None:
        if step not in steps:
            pruned = (
                " (older checkpoints are deleted as newer ones are saved: "
                "training.max_checkpoints_to_keep)"
                if step < min(steps)
                else ""
            )
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {manager.directory}; it holds steps "
                f"{sorted(steps)}{pruned}"
            )
        try:
            return Restored(_restore_step(manager, abstract_state, step, data_iterator), step, [])
        except CheckpointCorruptError as e:
            others = sorted(s for s in steps if s != step)
            raise CheckpointCorruptError(
                f"{e}; choose another checkpoint with --step (this workdir also has "
                f"{others or 'no other'})"
            ) from e
    skipped: list[tuple[int, str]] = []
    tried: set[int] = set()
    while True:
        candidates = sorted((s for s in manager.all_steps() if s not in tried), reverse=True)
        if not candidates:
            break
        candidate = candidates[0]
        tried.add(candidate)
        try:
            state = _restore_step(manager, abstract_state, candidate, data_iterator)
        except CheckpointCorruptError as e:
            skipped.append((candidate, str(e)))
            continue
        except FileNotFoundError:  # pruned while we read it: a newer one exists
            _retry_while_pruned(manager.reload)
            continue
        for _, reason in skipped:
            warnings.warn(
                f"{reason}; using the newest intact checkpoint, step {candidate}",
                CheckpointWarning,
                stacklevel=2,
            )
        return Restored(state, candidate, skipped)
    if not skipped:  # every step we saw was deleted under us, and nothing newer is left
        raise FileNotFoundError(f"no checkpoint left in {manager.directory}")
    details = "\n  ".join(reason for _, reason in skipped)
    raise CheckpointCorruptError(
        f"no intact checkpoint in {manager.directory}:\n  {details}\n"
        f"move the damaged ones away (or the whole {CHECKPOINT_DIR}/ folder to start afresh)"
    )


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    step: int | None = None,
    *,
    data_iterator: grain.DatasetIterator | None = None,
) -> Any:
    """The state of :func:`restore_verified` (same arguments and errors)."""
    return restore_verified(manager, abstract_state, step, data_iterator=data_iterator).state


def set_aside(workdir: str, step: int, reason: str) -> str:
    """Moves ``checkpoints/<step>`` to ``checkpoints_set_aside/<step>.<reason>.<time>``.

    Used by ``train`` for a damaged checkpoint it skipped, and for checkpoints newer
    than the step a run was told to resume from: nothing is deleted, and orbax no
    longer sees them (so they neither block new saves of the same step nor count
    against retention).

    Returns:
      The new path.
    """
    source = os.path.join(workdir, CHECKPOINT_DIR, str(step))
    target_dir = os.path.join(workdir, SET_ASIDE_DIR)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{step}.{reason}.{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 0
    while os.path.exists(target + (f".{suffix}" if suffix else "")):
        suffix += 1
    target += f".{suffix}" if suffix else ""
    shutil.move(source, target)
    return target


def has_data_iterator(manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether the checkpoint at ``step`` holds a data iterator state for this process.

    grain writes one file per process, named for the process count. A run resumed with
    another number of processes finds none of its own, and is told there is no state:
    the loop then places the iterator at the step, which gives the same global batches
    (the batch sequence depends on the step only, not on the process count).
    """
    own_file = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return os.path.exists(os.path.join(step_path(manager, step), DATA_ITERATOR_ITEM, own_file))


def abstract_with_sharding(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Gives every leaf of an eval_shape tree the same sharding (for restore targets)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
    )
