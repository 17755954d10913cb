"""The training loop: ``train(config, workdir)`` runs or resumes a run in a workdir.

The loop is a thin host-side driver around one jitted, state-donating train step;
all numerics live in :mod:`diffjax.training.step`. Batches come from one grain pipeline
(:func:`diffjax.data.training_batches`) whatever the source, each process reading only
its slice of every global batch; keys come from ``fold_in(seed, step)``. The data
iterator's state is saved in every checkpoint beside the train state and restored with
it, so a resumed run repeats exactly the batches and noise of an uninterrupted one.

Preemption: a SIGTERM while ``train`` runs makes it finish the current step, save a
checkpoint there (synchronously), restore the previous SIGTERM handler and return the
state; running the same command again resumes. A run killed outright (SIGKILL, power
loss) resumes from its last finalized checkpoint: orbax writes each checkpoint under a
temporary name and renames it when complete, and leftovers are ignored and removed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from diffjax import builders
from diffjax.data import (
    ImageDataset,
    ImageSource,
    batch_iterator,
    in_memory_source,
    load_source,
    training_batches,
)
from diffjax.data.pipeline import check_example
from diffjax.training import checkpoint as ckpt
from diffjax.training import sharding
from diffjax.training.optimizer import make_optimizer
from diffjax.training.preemption import PreemptionWatcher
from diffjax.training.state import TrainState, create_train_state
from diffjax.training.step import make_train_step

METRICS_FILE = "metrics.jsonl"


def load_training_data(config: ml_collections.ConfigDict) -> ImageSource:
    """Opens the training data a config names (``config.data``)."""
    data = config.data
    return load_source(data.name, split=data.split, path=data.path, image_size=data.image_size)


def run_info(source: ImageSource) -> dict[str, Any]:
    """The data facts a checkpoint depends on (saved as ``run_info.json``)."""
    return {"image_shape": list(source.image_shape), "num_classes": int(source.num_classes)}


def _as_source(data: ImageDataset | ImageSource) -> ImageSource:
    return data if isinstance(data, ImageSource) else in_memory_source(data)


def local_batch(
    dataset: ImageDataset | ImageSource,
    step: int,
    batch_size: int,
    seed: int,
    conditional: bool,
) -> dict[str, np.ndarray]:
    """This process's slice of the global batch at ``step``, as ``train`` reads it.

    (With ``data.random_flip=False``; read directly from the pipeline, no iterator.)
    """
    return training_batches(_as_source(dataset), batch_size, seed=seed, labels=conditional)[step]


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    dataset: ImageDataset | ImageSource | None = None,
) -> TrainState:
    """Trains (or resumes) the run described by ``config`` in ``workdir``.

    Args:
      config: the full run config (see :func:`diffjax.config.base_config`).
      workdir: where config, checkpoints and ``metrics.jsonl`` live. A workdir with a
        checkpoint resumes from it; one from an incompatible config is refused.
      dataset: training data (in memory or any ImageSource); by default the one
        ``config.data`` names.

    Returns:
      The final TrainState (replicated over the devices). After a SIGTERM its
      ``step`` is where the run stopped (and saved), below ``training.num_steps``.

    Raises:
      ValueError: bad config values, a batch that does not split over the devices,
        or a workdir holding another configuration's checkpoint.
      FloatingPointError: the loss became NaN/Inf (the last good checkpoint is kept).
    """
    training = config.training
    source = _as_source(dataset) if dataset is not None else load_training_data(config)
    if training.batch_size > source.num_examples:
        raise ValueError(
            f"training.batch_size={training.batch_size} exceeds the {source.num_examples} "
            f"training images of {source.name!r}"
        )
    mesh = sharding.make_mesh()
    sharding.check_batch_size(training.batch_size, mesh, training.grad_accum_steps)
    check_example(source, source.decode(source.records[0]))
    batches = training_batches(
        source,
        training.batch_size,
        seed=training.seed,
        random_flip=config.data.random_flip,
        labels=config.model.class_conditional,
    )
    ckpt.prepare_workdir(workdir, config, run_info(source))

    model = builders.build_unet(config.model, source.num_classes)
    schedule = builders.build_schedule(config.diffusion)
    optimizer = make_optimizer(config.optim)
    image_shape = tuple(source.image_shape)
    replicated = sharding.replicated(mesh)

    def init_state(key: jax.Array) -> TrainState:
        return create_train_state(builders.init_params(model, key, image_shape), optimizer)

    base_key = jax.random.key(training.seed)
    init_key, train_key = jax.random.split(base_key)
    manager = ckpt.checkpoint_manager(
        workdir,
        max_to_keep=training.max_checkpoints_to_keep,
        async_checkpointing=training.async_checkpointing,
        cleanup_tmp_directories=True,
    )
    data_iterator = batch_iterator(
        batches,
        num_threads=config.data.num_threads,
        prefetch_batches=config.data.prefetch_batches,
    )
    if manager.latest_step() is not None:
        abstract = ckpt.abstract_with_sharding(jax.eval_shape(init_state, init_key), replicated)
        state = ckpt.restore(manager, abstract, data_iterator=data_iterator)
        _align_data_iterator(data_iterator, manager, int(state.step))
    else:
        state = jax.jit(init_state, out_shardings=replicated)(init_key)

    step_fn = make_train_step(
        model,
        schedule,
        optimizer,
        config.diffusion,
        training.ema_decay,
        grad_accum_steps=training.grad_accum_steps,
        mesh=mesh,
    )
    train_step = jax.jit(
        step_fn,
        in_shardings=(replicated, sharding.batch_sharded(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    start = int(state.step)
    is_main = jax.process_index() == 0
    metrics_path = os.path.join(workdir, METRICS_FILE)
    if is_main:
        _drop_records_after(metrics_path, start)
    progress = tqdm(
        total=training.num_steps,
        initial=start,
        disable=not (is_main and training.progress_bar),
        desc=f"train {source.name}",
        unit="step",
    )
    window_start, window_steps = time.perf_counter(), 0
    finite_flags: list[jax.Array] = []  # per step since the last check, left on device
    preempted_at = None
    try:
        with PreemptionWatcher(manager) as preemption:
            for step in range(start, training.num_steps):
                batch = sharding.global_batch(next(data_iterator), mesh)
                state, metrics = train_step(state, batch, train_key)
                finite_flags.append(metrics["finite"])
                window_steps += 1
                progress.update(1)
                done = step + 1
                stop = preemption.reached(done)
                log = done % training.log_every == 0 or done == training.num_steps
                save = stop or done % training.checkpoint_every == 0 or done == training.num_steps
                if log or save:
                    host = jax.device_get(metrics)
                    bad_step = first_non_finite_step(
                        jax.device_get(finite_flags), done - len(finite_flags) + 1
                    )
                    finite_flags = []
                    if bad_step is not None:
                        raise FloatingPointError(
                            f"the loss or the gradients are not finite at step {bad_step} "
                            f"(loss {float(host['loss'])} at step {done}); the last good "
                            f"checkpoint in {workdir} (step {manager.latest_step()}) is kept"
                        )
                if log:
                    elapsed = time.perf_counter() - window_start
                    images_per_s = window_steps * training.batch_size / max(elapsed, 1e-9)
                    record = {
                        "step": done,
                        "loss": float(host["loss"]),
                        "grad_norm": float(host["grad_norm"]),
                        "images_per_s": images_per_s,
                    }
                    progress.set_postfix(
                        loss=f"{record['loss']:.4f}", img_s=f"{images_per_s:.0f}"
                    )
                    if is_main:
                        _append_jsonl(metrics_path, record)
                    window_start, window_steps = time.perf_counter(), 0
                if save:
                    ckpt.save(manager, done, state, config, data_iterator)
                if stop:
                    manager.wait_until_finished()
                    if done < training.num_steps:
                        preempted_at = done
                    break
        manager.wait_until_finished()
    finally:
        progress.close()
        manager.close()
        data_iterator.close()
    if preempted_at is not None and is_main:
        print(
            f"diffjax train: preempted (SIGTERM) at step {preempted_at} of "
            f"{training.num_steps}; checkpoint saved in {workdir}; run the same command "
            "again to resume",
            file=sys.stderr,
            flush=True,
        )
    return state


def load_trained(workdir: str, step: int | None = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Loads a trained run for sampling.

    Args:
      workdir: a training workdir.
      step: which checkpoint (default: latest).

    Returns:
      (config, model, ema_params, run_info).
    """
    config = ckpt.read_config(workdir)
    info = ckpt.read_run_info(workdir)
    model = builders.build_unet(config.model, info["num_classes"])
    optimizer = make_optimizer(config.optim)
    image_shape = tuple(info["image_shape"])

    def init_state(key: jax.Array) -> TrainState:
        return create_train_state(builders.init_params(model, key, image_shape), optimizer)

    mesh = sharding.make_mesh()
    abstract = ckpt.abstract_with_sharding(
        jax.eval_shape(init_state, jax.random.key(0)), sharding.replicated(mesh)
    )
    manager = ckpt.checkpoint_manager(workdir, async_checkpointing=False)
    try:
        state = ckpt.restore(manager, abstract, step)
    finally:
        manager.close()
    return config, model, state.ema_params, info


def first_non_finite_step(finite_flags: Any, first_step: int) -> int | None:
    """The step (counting from ``first_step``) of the first False flag, else None."""
    for offset, finite in enumerate(finite_flags):
        if not bool(finite):
            return first_step + offset
    return None


def _align_data_iterator(iterator: Any, manager: Any, step: int) -> None:
    """Checks the restored data iterator is at ``step`` (one batch per step).

    A checkpoint written before iterator states were saved has none; the iterator is
    then moved to ``step``.

    Raises:
      ValueError: the checkpoint's iterator state disagrees with its train state.
    """
    position = iterator.get_state().get("next_index")
    if not ckpt.has_data_iterator(manager, step):
        iterator.set_state({"next_index": step})
    elif position != step:
        raise ValueError(
            f"checkpoint at step {step} in {manager.directory} holds a data iterator that "
            f"has read {position} batches; expected {step} (one batch per step)"
        )


def _drop_records_after(path: str, step: int) -> None:
    """Removes metrics records past ``step`` (logged by a run killed before it saved).

    A resumed run repeats those steps and logs them again; without this the file would
    hold two records for each. A line cut short by the kill is dropped too.
    """
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()

    def keep(line: str) -> bool:
        try:
            return line.endswith("\n") and json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            return False

    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines):
        ckpt.write_text_atomic(path, "".join(kept))


def _append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


__all__ = ["load_trained", "load_training_data", "train"]
