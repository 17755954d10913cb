"""Checkpoints: orbax CheckpointManager (async, bounded retention) plus the run's config.

A workdir holds ``config.json`` (the run's full config), ``run_info.json`` (what the
dataset fixed: image shape and number of classes) and ``checkpoints/<step>/``. Each
step holds the train state, the config and the input pipeline's iterator state (grain's
orbax handler, one ``process_<i>-of-<n>.json`` per process), written in the same orbax
checkpoint so that they are committed, or lost, together. Orbax
writes each checkpoint to a temporary directory and renames it when complete, and
only then drops the oldest beyond ``max_to_keep``, so a crash mid-save never replaces
the last good checkpoint. A run started in a workdir whose config defines a different
model is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from diffjax import config as config_lib

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
CHECKPOINT_DIR = "checkpoints"
DATA_ITERATOR_ITEM = "data_iterator"


def write_text_atomic(path: str, text: str) -> None:
    """Writes a file via a temporary file and rename, so readers never see half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def prepare_workdir(
    workdir: str, config: ml_collections.ConfigDict, run_info: dict[str, Any]
) -> None:
    """Checks a workdir against the config, or initialises an empty one.

    Raises:
      ValueError: the workdir already holds a run whose model, diffusion or dataset
        settings (or image shape / class count) differ from this one. Nothing in the
        workdir is touched in that case.
    """
    config_path = os.path.join(workdir, CONFIG_FILE)
    if os.path.isfile(config_path):
        saved = read_config(workdir)
        problems = config_lib.checkpoint_mismatches(saved, config)
        info_path = os.path.join(workdir, RUN_INFO_FILE)
        if os.path.isfile(info_path):
            saved_info = read_run_info(workdir)
            for key, value in run_info.items():
                if saved_info.get(key) != value:
                    problems.append(
                        f"{key}: checkpoint has {saved_info.get(key)!r}, run has {value!r}"
                    )
        if problems:
            raise ValueError(
                f"workdir {workdir!r} holds a checkpoint from another configuration; "
                "use a new workdir or the same settings:\n  " + "\n  ".join(problems)
            )
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:  # one writer in a multi-process run
        write_text_atomic(config_path, config_lib.to_json(config))
        write_text_atomic(os.path.join(workdir, RUN_INFO_FILE), json.dumps(run_info, indent=2))


def checkpoint_manager(
    workdir: str,
    *,
    max_to_keep: int = 3,
    async_checkpointing: bool = True,
    cleanup_tmp_directories: bool = False,
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
    """
    if max_to_keep < 1:
        raise ValueError(f"training.max_checkpoints_to_keep={max_to_keep} must be >= 1")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=async_checkpointing,
        cleanup_tmp_directories=cleanup_tmp_directories,
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
        options=options,
        item_names=("state", "config", DATA_ITERATOR_ITEM),
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    config: ml_collections.ConfigDict,
    data_iterator: grain.DatasetIterator | None = None,
) -> None:
    """Saves the state, its config (as JSON) and the data iterator's state under ``step``.

    The arrays are written asynchronously if enabled; the iterator's state is read
    before this returns, so the iterator may move on at once.
    """
    items = {
        "state": ocp.args.StandardSave(state),
        "config": ocp.args.JsonSave(config.to_dict()),
    }
    if data_iterator is not None:
        items[DATA_ITERATOR_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
    manager.save(step, args=ocp.args.Composite(**items))


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    step: int | None = None,
    *,
    data_iterator: grain.DatasetIterator | None = None,
) -> Any:
    """Restores the state at ``step`` (default: latest) into the given abstract structure.

    Args:
      manager: the workdir's CheckpointManager.
      abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (with shardings) matching the
        saved state, e.g. from ``jax.eval_shape``.
      step: which checkpoint; None for the latest.
      data_iterator: if given and the checkpoint holds a data iterator state, this
        iterator is set to it (in place). Use :func:`has_data_iterator` to tell whether
        it was.

    Raises:
      FileNotFoundError: there is no checkpoint (at that step).
      ValueError: the checkpoint's arrays do not fit ``abstract_state``.
    """
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    step = manager.latest_step() if step is None else step
    if step not in steps:
        raise FileNotFoundError(
            f"no checkpoint at step {step} in {manager.directory}; have {steps}"
        )
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and has_data_iterator(manager, step):
        items[DATA_ITERATOR_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"checkpoint at step {step} in {manager.directory} does not match this model "
            f"and optimizer configuration: {e}"
        ) from e
    return restored["state"]


def has_data_iterator(manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether the checkpoint at ``step`` holds a data iterator state for this process.

    grain writes one file per process, named for the process count. A run resumed with
    another number of processes finds none of its own, and is told there is no state:
    the loop then places the iterator at the step, which gives the same global batches
    (the batch sequence depends on the step only, not on the process count).
    """
    if DATA_ITERATOR_ITEM not in manager.item_metadata(step):
        return False
    own_file = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return os.path.exists(
        os.path.join(str(manager.directory), str(step), DATA_ITERATOR_ITEM, own_file)
    )


def abstract_with_sharding(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Gives every leaf of an eval_shape tree the same sharding (for restore targets)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
    )
