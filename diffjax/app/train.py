"""The training loop: ``train(config, workdir)`` runs or resumes a run in a workdir.

The loop is a thin host-side driver around one jitted, state-donating train step;
all numerics live in :mod:`diffjax.training.step`. Batches come from one grain pipeline
(:func:`diffjax.data.training_batches`) whatever the source, each process reading only
its slice of every global batch; keys come from ``fold_in(seed, step)``. The data
iterator's state is saved in every checkpoint beside the train state and restored with
it, so a resumed run repeats exactly the batches and noise of an uninterrupted one.

Preemption: a SIGTERM or SIGINT at any moment of ``train`` (set-up, a step, the final
save, shutdown) makes it finish the current step, save a checkpoint there, wait (for at
most ``training.save_timeout_s``) until it is committed, restore the previous handlers
and return the state; running the same command again resumes. A run killed outright
(SIGKILL, power loss) resumes from its last finalized checkpoint: orbax writes each
checkpoint under a temporary name and renames it when complete, and leftovers are
ignored and removed. Restores are verified against each checkpoint's integrity record;
a damaged newest checkpoint is set aside and the next older intact one used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from diffjax._checks import check_choice
from diffjax.app import builders
from diffjax.app import checkpoint as ckpt
from diffjax.app import config as config_lib
from diffjax.app.latent import (
    LatentSpace,
    build_latent_cache,
    cached_latent_source,
    check_latent_cache,
    latent_run_info,
    open_latent_space,
)
from diffjax.data import (
    ImageDataset,
    ImageSource,
    batch_iterator,
    in_memory_source,
    load_source,
    training_batches,
)
from diffjax.data.pipeline import check_example
from diffjax.files import write_text_atomic
from diffjax.schedules import DiscreteSchedule
from diffjax.training import sharding
from diffjax.training.autoencoder_step import make_autoencoder_train_step
from diffjax.training.consistency_step import (
    create_consistency_train_state,
    make_consistency_train_step,
)
from diffjax.training.optimizer import make_optimizer
from diffjax.training.preemption import PreemptionWatcher
from diffjax.training.state import TrainState, create_train_state
from diffjax.training.step import make_train_step
from diffjax.training.workdir_lock import WorkdirLock

METRICS_FILE = "metrics.jsonl"
LOGGED_TERMS = ("reconstruction", "kl")  # step metrics logged besides loss and grad_norm


class Teacher(NamedTuple):
    """The diffusion model a consistency run starts from (``consistency.teacher``).

    Attributes:
      workdir: its workdir.
      config: its run config.
      model: its UNet.
      params: its EMA parameters (CD's teacher network; the student's initialisation).
    """

    workdir: str
    config: ml_collections.ConfigDict
    model: Any
    params: Any


def new_train_state(
    config: ml_collections.ConfigDict, params: Any, optimizer: Any
) -> TrainState:
    """The state at step 0 of the run ``config`` describes, from ``params``.

    A diffusion run's :class:`~diffjax.training.state.TrainState`; a consistency run's
    keeps a copy of the target network too when CD's target EMA is on
    (:func:`~diffjax.training.consistency_step.create_consistency_train_state`).
    """
    method = config.consistency.method
    if not method:
        return create_train_state(params, optimizer)
    target_ema = config.consistency.target_ema if method == "cd" else 0.0
    return create_consistency_train_state(params, optimizer, target_ema)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def check_apart_from_teacher(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses a workdir that is, holds or lies in the run's teacher (``consistency.teacher``).

    Raises:
      ValueError: naming both: nothing is ever written over a teacher.
    """
    teacher = config.consistency.teacher
    if teacher and (_inside(workdir, teacher) or _inside(teacher, workdir)):
        raise ValueError(
            f"consistency.teacher={teacher!r} and the workdir {workdir!r} overlap: the "
            "student needs its own workdir (nothing is written over the teacher)"
        )


def read_diffusion_workdir(
    path: str, argument: str
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """The config and run info of the diffusion workdir ``path`` (a teacher; reads only).

    Raises:
      FileNotFoundError: ``path`` is no workdir (no config or run info), naming
        ``argument``.
      ValueError: it holds a consistency model, naming ``argument``.
    """
    try:
        config = ckpt.read_config(path)
        info = ckpt.read_run_info(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{argument}{path!r}: {e}") from None
    if config.task != "diffusion":
        raise ValueError(
            f"{argument}{path!r} holds a {config.task!r} model (config.task), not a diffusion "
            "model"
        )
    if config.consistency.method:
        raise ValueError(
            f"{argument}{path!r} is a consistency model (method "
            f"{config.consistency.method!r}), not a diffusion model"
        )
    return config, info


def distill_config(
    teacher: str, method: str, teacher_step: int = 0
) -> ml_collections.ConfigDict:
    """The config of a consistency run from the diffusion model in ``teacher``.

    The teacher's own config (model, diffusion, data, optimizer, training) with
    ``consistency.method = method``, the teacher's absolute path and the method's
    :data:`~diffjax.app.config.CONSISTENCY_PRESETS`; overrides go on top.

    Raises:
      FileNotFoundError: naming ``--teacher`` for a folder that is not a workdir.
      ValueError: for a method other than 'cd' and 'ect' (iCT needs no teacher: train
        it from a config), or a teacher that is itself a consistency model.
    """
    check_choice("method", method, ("cd", "ect"))
    config, _ = read_diffusion_workdir(teacher, "--teacher ")
    config.consistency.method = method
    config.consistency.teacher = os.path.abspath(teacher)
    config.consistency.teacher_step = int(teacher_step)
    for key, value in config_lib.CONSISTENCY_PRESETS[method].items():
        config.consistency[key] = value
    return config


def load_teacher(
    config: ml_collections.ConfigDict, workdir: str, info: dict[str, Any]
) -> Teacher | None:
    """Reads and checks the teacher of a CD or ECT run (reads only); None for others.

    Raises:
      ValueError: naming ``consistency.teacher`` for a teacher that is the run's workdir
        (or holds it, or lies in it: nothing is written over a teacher), that is a
        consistency model rather than a diffusion model, whose images or classes differ
        from the run's data, or whose model or diffusion settings differ from the run's
        (the student starts from the teacher's weights).
      FileNotFoundError: naming ``consistency.teacher`` for a folder that is not a
        trained diffusion workdir.
    """
    c = config.consistency
    if c.method not in ("cd", "ect"):
        return None
    teacher = c.teacher
    check_apart_from_teacher(config, workdir)
    teacher_config, teacher_info = read_diffusion_workdir(teacher, "consistency.teacher=")
    problems = [
        f"{key}: teacher has {teacher_info.get(key)!r}, run has {value!r}"
        for key, value in info.items()
        if teacher_info.get(key) != value
    ]
    problems += config_lib.checkpoint_mismatches(
        teacher_config, config, sections=("model", "diffusion"), keys=()
    )
    problems = [p.replace("checkpoint has", "teacher has") for p in problems]
    if problems:
        raise ValueError(
            f"consistency.teacher={teacher!r} cannot start this run (the student loads the "
            "teacher's weights and data setup):\n  " + "\n  ".join(problems)
        )
    step = c.teacher_step or None
    try:
        _, model, params, _ = load_trained(teacher, step)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"consistency.teacher={teacher!r}: {e}") from None
    return Teacher(workdir=teacher, config=teacher_config, model=model, params=params)


def load_training_data(config: ml_collections.ConfigDict) -> ImageSource:
    """Opens the training data a config names (``config.data``)."""
    data = config.data
    return load_source(data.name, split=data.split, path=data.path, image_size=data.image_size)


def first_images(source: ImageSource, n: int) -> np.ndarray:
    """The first ``n`` images of ``source`` (all of them if it has fewer), decoded."""
    count = min(int(n), source.num_examples)
    return np.stack([np.asarray(source.decode(source.records[i])["image"], np.float32)
                     for i in range(count)])


def _saved_latent_scale(workdir: str) -> float | None:
    """The latent scaling factor a workdir's run measured before (its run_info.json)."""
    try:
        return ckpt.read_run_info(workdir).get("latent_scaling_factor")
    except FileNotFoundError:
        return None


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
    step: int | None = None,
) -> TrainState:
    """Trains (or resumes) the run described by ``config`` in ``workdir``.

    Everything that can refuse the run is checked before anything is written: the
    config (:func:`diffjax.app.config.validate_config`), the data, the workdir's saved run
    (model, diffusion, data) and the checkpoint's array structure (model and
    optimizer), then ``config.json`` is written atomically; a refused call leaves the
    workdir as it was. One ``train`` at a time holds a workdir
    (:class:`~diffjax.training.workdir_lock.WorkdirLock`).

    Args:
      config: the full run config (see :func:`diffjax.app.config.base_config`).
      workdir: where config, checkpoints and ``metrics.jsonl`` live. A workdir with a
        checkpoint resumes from its newest intact one (a damaged newer one is moved to
        ``checkpoints_set_aside/`` with a warning); one from an incompatible config is
        refused.
      dataset: training data (in memory or any ImageSource); by default the one
        ``config.data`` names.
      step: resume from this checkpoint step instead of the newest; newer checkpoints
        are moved to ``checkpoints_set_aside/`` (nothing is deleted).

    Returns:
      The final TrainState (replicated over the devices). After a SIGTERM or SIGINT its
      ``step`` is where the run stopped (and saved), below ``training.num_steps``.

    Raises:
      ValueError: bad config values, a batch that does not split over the devices,
        a workdir that is a file, or a workdir holding another configuration's
        checkpoint.
      WorkdirLockedError: another ``train`` runs in the workdir.
      CheckpointCorruptError: the requested step, or every checkpoint, is damaged.
      FloatingPointError: the loss became NaN/Inf (the last good checkpoint is kept).
      CheckpointSaveError: a checkpoint could not be written (the last committed one
        stands).
    """
    config_lib.validate_config(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is a file, not a directory")
    check_apart_from_teacher(config, workdir)
    training = config.training
    source = _as_source(dataset) if dataset is not None else load_training_data(config)
    space = open_latent_space(
        config, tuple(source.image_shape), lambda n: first_images(source, n),
        measured_scale=_saved_latent_scale(workdir),
    )
    # The UNet runs at the latents' size in a latent run.
    model_shape = space.latent_shape if space is not None else tuple(source.image_shape)
    config_lib.validate_config(config, image_size=int(model_shape[0]))
    if training.batch_size > source.num_examples:
        raise ValueError(
            f"training.batch_size={training.batch_size} exceeds the {source.num_examples} "
            f"training images of {source.name!r}"
        )
    mesh = sharding.make_mesh()
    sharding.check_batch_size(training.batch_size, mesh, training.grad_accum_steps)
    check_example(source, source.decode(source.records[0]))
    info = run_info(source)
    if space is not None:
        info.update(latent_run_info(space))
        if config.latent.cache:
            check_latent_cache(config.latent.cache, space, source)  # reads only
    ckpt.check_workdir(workdir, config, info)
    teacher = load_teacher(config, workdir, info)
    with PreemptionWatcher() as preemption:
        created = not os.path.exists(workdir)
        os.makedirs(workdir, exist_ok=True)
        lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
        try:
            if lock is not None:
                lock.acquire()
            return _train_locked(
                config, workdir, source, info, mesh, preemption, step, teacher, space
            )
        finally:
            if lock is not None:
                lock.release()
            if created and not os.listdir(workdir):
                os.rmdir(workdir)  # refused before writing anything: leave no trace


def _train_locked(
    config: ml_collections.ConfigDict,
    workdir: str,
    source: ImageSource,
    info: dict[str, Any],
    mesh: jax.sharding.Mesh,
    preemption: PreemptionWatcher,
    resume_step: int | None,
    teacher: Teacher | None,
    space: LatentSpace | None = None,
) -> TrainState:
    """The body of :func:`train`, run while holding the workdir lock."""
    training = config.training
    ckpt.check_workdir(workdir, config, info)  # again: another run may have written meanwhile
    data = source
    if space is not None and config.latent.cache:
        if not check_latent_cache(config.latent.cache, space, source):
            build_latent_cache(config.latent.cache, space, source)
        data = cached_latent_source(config.latent.cache, source)
    batches = training_batches(
        data,
        training.batch_size,
        seed=training.seed,
        random_flip=config.data.random_flip,
        labels=config.model.class_conditional and config.task == "diffusion",
    )
    image_shape = space.latent_shape if space is not None else tuple(source.image_shape)
    model = builders.build_model(config, source.num_classes, image_shape)
    schedule = builders.build_schedule(config.diffusion)
    optimizer = make_optimizer(config.optim)
    replicated = sharding.replicated(mesh)

    def init_state(key: jax.Array) -> TrainState:
        return new_train_state(config, builders.init_params(model, key, image_shape), optimizer)

    base_key = jax.random.key(training.seed)
    init_key, train_key = jax.random.split(base_key)
    abstract = ckpt.abstract_with_sharding(jax.eval_shape(init_state, init_key), replicated)
    data_iterator = batch_iterator(
        batches,
        num_threads=config.data.num_threads,
        prefetch_batches=config.data.prefetch_batches,
    )
    manager = None
    failed = True
    try:
        restored = _restore_for_training(workdir, abstract, data_iterator, resume_step)
        ckpt.check_writable(os.path.join(workdir, ckpt.CHECKPOINT_DIR))
        # Every check has passed: from here on the workdir is written.
        ckpt.write_run_files(workdir, config, info)
        if restored is not None:
            _set_aside_after(workdir, restored)
            state = restored.state
            _align_data_iterator(data_iterator, workdir, restored.step)
        elif teacher is not None:  # the student starts as the teacher (CD, ECT)
            state = jax.jit(
                lambda params: new_train_state(config, params, optimizer),
                out_shardings=replicated,
            )(teacher.params)
        else:
            state = jax.jit(init_state, out_shardings=replicated)(init_key)
        save_timeout_s = training.save_timeout_s
        manager = ckpt.checkpoint_manager(
            workdir,
            max_to_keep=training.max_checkpoints_to_keep,
            async_checkpointing=training.async_checkpointing,
            cleanup_tmp_directories=True,
            save_timeout_s=save_timeout_s,
        )
        preemption.manager = manager
        state = _run_steps(
            config, workdir, source, mesh, model, schedule, optimizer, state, train_key,
            data_iterator, manager, preemption, teacher, space,
        )
        _bounded(manager.wait_until_finished, save_timeout_s, "finishing the last save", workdir)
        failed = False
    finally:
        try:
            if manager is not None:
                _bounded(manager.close, training.save_timeout_s,
                         "closing the checkpoint manager", workdir)
        except CheckpointSaveError:
            if not failed:
                raise  # otherwise the first error (already propagating) is the one to report
        finally:
            data_iterator.close()
    return state


def _restore_for_training(
    workdir: str, abstract: Any, data_iterator: Any, step: int | None
) -> ckpt.Restored | None:
    """The verified checkpoint to resume from, or None for a fresh run (reads only)."""
    exists = os.path.isdir(os.path.join(workdir, ckpt.CHECKPOINT_DIR))
    if jax.process_count() > 1:  # one decision for all (the restore is a collective)
        exists = bool(multihost_utils.broadcast_one_to_all(np.int32(exists)))
    if not exists:
        if step is not None:
            raise FileNotFoundError(f"--step {step}: {workdir!r} has no checkpoints to resume")
        return None
    reader = ckpt.checkpoint_manager(workdir, read_only=True)
    try:
        if not reader.all_steps():
            if step is not None:
                raise FileNotFoundError(f"--step {step}: {workdir!r} has no checkpoints")
            return None
        return ckpt.restore_verified(reader, abstract, step, data_iterator=data_iterator)
    finally:
        reader.close()


def _set_aside_after(workdir: str, restored: ckpt.Restored) -> None:
    """Moves checkpoints newer than the restored one out of orbax's sight (none deleted).

    Damaged ones (skipped by the restore) and, when an older step was chosen, intact
    newer ones, which the resumed run would otherwise collide with or prune.
    """
    damaged = {s for s, _ in restored.skipped}
    if jax.process_index() == 0:
        directory = os.path.join(workdir, ckpt.CHECKPOINT_DIR)
        newer = sorted(
            int(n) for n in os.listdir(directory) if n.isdigit() and int(n) > restored.step
        )
        if any(s not in damaged for s in newer):
            metrics = os.path.join(workdir, METRICS_FILE)
            if os.path.isfile(metrics):  # keep the superseded run's records too
                os.makedirs(os.path.join(workdir, ckpt.SET_ASIDE_DIR), exist_ok=True)
                shutil.copy2(metrics, os.path.join(
                    workdir, ckpt.SET_ASIDE_DIR, f"{METRICS_FILE}.before-step-{restored.step}"
                ))
        for s in newer:
            reason = "damaged" if s in damaged else "superseded"
            target = ckpt.set_aside(workdir, s, reason)
            print(f"diffjax train: moved the {reason} checkpoint of step {s} to {target}",
                  file=sys.stderr, flush=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("diffjax_set_aside")


def _bounded(fn: Callable[[], Any], timeout_s: float, what: str, workdir: str) -> None:
    """Runs ``fn`` (an orbax wait) in a thread, failing after ``timeout_s`` seconds.

    A hung filesystem must not keep a preempted job alive forever.

    Raises:
      CheckpointSaveError: ``fn`` raised (with its cause) or did not return in time.
    """
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # re-raised in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name=f"diffjax-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise CheckpointSaveError(
            f"{what} in {workdir} did not finish within {timeout_s:g} s "
            "(training.save_timeout_s); the newest committed checkpoint stands"
        )
    if "error" in outcome:
        raise _save_error(outcome["error"], what, workdir) from outcome["error"]


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the newest committed one stands."""


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


def _save_error(e: BaseException, what: str, workdir: str) -> CheckpointSaveError:
    cause = _root_cause(e)
    text = " ".join(str(cause).split())
    if len(text) > 360:  # keep the start (what) and the end
        text = f"{text[:180]} ... {text[-180:]}"
    reason = _os_error_reason(cause)
    return CheckpointSaveError(
        f"{what} in {os.path.join(workdir, ckpt.CHECKPOINT_DIR)} failed"
        f"{f' ({reason})' if reason else ''}: {type(cause).__name__}: {text}; "
        "the newest committed checkpoint stands"
    )


def _os_error_reason(cause: BaseException) -> str | None:
    """The operating system's reason for a failed write, e.g. ``'File too large'``.

    tensorstore reports it only as ``os_error_code='27'`` somewhere in a long
    message, which may be cut; an ``OSError`` carries it as ``errno``.
    """
    code = getattr(cause, "errno", None)
    if not isinstance(code, int):
        found = re.search(r"os_error_code=\W?(\d+)", str(cause))
        code = int(found.group(1)) if found else None
    return None if code is None else f"{os.strerror(code)}, errno {code}"


def _run_steps(
    config: ml_collections.ConfigDict,
    workdir: str,
    source: ImageSource,
    mesh: jax.sharding.Mesh,
    model: Any,
    schedule: DiscreteSchedule,
    optimizer: Any,
    state: TrainState,
    train_key: jax.Array,
    data_iterator: Any,
    manager: Any,
    preemption: PreemptionWatcher,
    teacher: Teacher | None = None,
    space: LatentSpace | None = None,
) -> TrainState:
    """The step loop: train, log, check finiteness, save; stop at a signal."""
    training = config.training
    train_step = _jitted_step(config, source, mesh, model, schedule, optimizer, teacher, space)
    start = int(state.step)
    is_main = jax.process_index() == 0
    metrics_path = os.path.join(workdir, METRICS_FILE)
    if is_main:
        _drop_records_after(metrics_path, start)
    if preemption.requested and jax.process_count() == 1:
        print(
            f"diffjax train: stopped ({preemption.signal_name}) before step {start + 1}; "
            + (f"the checkpoint of step {start} stands" if start else "nothing was trained")
            + "; run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        return state
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
                    latest = manager.latest_step()
                    kept = (
                        f"the last good checkpoint in {workdir} (step {latest}) is kept"
                        if latest is not None
                        else f"no checkpoint had been written yet in {workdir}"
                    )
                    raise FloatingPointError(
                        f"the loss or the gradients are not finite at step {bad_step} "
                        f"(loss {float(host['loss'])} at step {done}); {kept}; lower "
                        "optim.learning_rate or set optim.grad_clip_norm"
                    )
            if log:
                elapsed = time.perf_counter() - window_start
                images_per_s = window_steps * training.batch_size / max(elapsed, 1e-9)
                record = {
                    "step": done,
                    "loss": float(host["loss"]),
                    "grad_norm": float(host["grad_norm"]),
                    # The objective's own terms (the autoencoder's reconstruction and KL).
                    **{k: float(v) for k, v in host.items() if k in LOGGED_TERMS},
                    "images_per_s": images_per_s,
                }
                progress.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images_per_s:.0f}")
                if is_main:
                    _append_jsonl(metrics_path, record)
                window_start, window_steps = time.perf_counter(), 0
            if save:
                try:
                    ckpt.save(manager, done, state, config, data_iterator)
                except Exception as e:
                    raise _save_error(
                        e, f"writing a checkpoint (reported when saving step {done})", workdir
                    ) from e
            if stop:
                _bounded(manager.wait_until_finished, training.save_timeout_s,
                         f"saving step {done}", workdir)
                if done < training.num_steps:
                    preempted_at = done
                break
    finally:
        progress.close()
    if preempted_at is not None and is_main:
        print(
            f"diffjax train: preempted ({preemption.signal_name}) at step {preempted_at} of "
            f"{training.num_steps}; checkpoint saved in {workdir}; run the same command "
            "again to resume",
            file=sys.stderr,
            flush=True,
        )
    return state


def _jitted_step(
    config: ml_collections.ConfigDict,
    source: ImageSource,
    mesh: jax.sharding.Mesh,
    model: Any,
    schedule: DiscreteSchedule,
    optimizer: Any,
    teacher: Teacher | None,
    space: LatentSpace | None = None,
) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, Any]]:
    """The jitted, state-donating ``step(state, batch, key)`` of the run."""
    training = config.training
    replicated = sharding.replicated(mesh)
    shardings = (replicated, sharding.batch_sharded(mesh), replicated)

    def jit_step(step_fn: Callable[..., Any], frozen_argument: bool = False) -> Any:
        """``step_fn`` jitted: state donated, the batch sharded, a replicated 4th argument."""
        in_shardings = (*shardings, replicated) if frozen_argument else shardings
        return jax.jit(step_fn, in_shardings=in_shardings,
                       out_shardings=(replicated, replicated), donate_argnums=0)

    if config.task == "autoencoder":
        step_fn = make_autoencoder_train_step(
            model,
            optimizer,
            kl_weight=config.autoencoder.kl_weight,
            reconstruction=config.autoencoder.reconstruction,
            ema_decay=training.ema_decay,
            grad_accum_steps=training.grad_accum_steps,
            mesh=mesh,
        )
        return jit_step(step_fn)
    if not config.consistency.method:
        step_fn = make_train_step(
            model,
            schedule,
            optimizer,
            config.diffusion,
            training.ema_decay,
            grad_accum_steps=training.grad_accum_steps,
            mesh=mesh,
            encode=None if space is None else (
                space.sample_cached_fn() if config.latent.cache else space.encode_fn()
            ),
        )
        if space is None or config.latent.cache:  # no frozen parameters in the step
            return jit_step(step_fn)
        # The frozen autoencoder's parameters are an argument, not compiled in.
        latent_step = jit_step(step_fn, frozen_argument=True)
        return lambda state, batch, key: latent_step(state, batch, key, space.params)
    cd = config.consistency.method == "cd"
    step_fn = make_consistency_train_step(
        model,
        schedule,
        optimizer,
        builders.consistency_objective(config, schedule, tuple(source.image_shape)),
        prediction_type=config.diffusion.prediction_type,
        image_shape=tuple(source.image_shape),
        p_uncond=config.diffusion.p_uncond,
        ema_decay=training.ema_decay,
        teacher_model=teacher.model if cd else None,
        teacher_prediction_type=teacher.config.diffusion.prediction_type if cd else None,
        grad_accum_steps=training.grad_accum_steps,
        mesh=mesh,
    )
    jitted = jit_step(step_fn, frozen_argument=True)
    teacher_params = teacher.params if cd else None
    return lambda state, batch, key: jitted(state, batch, key, teacher_params)


def load_trained(
    workdir: str, step: int | None = None, *, task: str = "diffusion"
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Loads a trained run for sampling (or, with ``task='autoencoder'``, for encoding).

    Args:
      workdir: a training workdir.
      step: which checkpoint (default: the newest intact one; a damaged newer one is
        skipped with a :class:`~diffjax.app.checkpoint.CheckpointWarning`).
      task: the kind of run the caller needs (``config.task``).

    Returns:
      (config, model, ema_params, run_info).

    Raises:
      FileNotFoundError: not a workdir, no checkpoint, or no checkpoint at ``step``.
      ValueError: the workdir trained another task (an autoencoder where a diffusion
        model is needed, or the reverse).
      CheckpointCorruptError: the requested step, or every checkpoint, is damaged.
    """
    config = ckpt.read_config(workdir)
    if config.task != task:
        raise ValueError(
            f"{workdir!r} holds a {config.task!r} model (config.task); this needs a {task!r} "
            "model"
        )
    info = ckpt.read_run_info(workdir)
    # A latent run's UNet works on latents (run_info's latent_shape).
    image_shape = tuple(info.get("latent_shape") or info["image_shape"])
    model = builders.build_model(config, info["num_classes"], image_shape)
    optimizer = make_optimizer(config.optim)

    def init_state(key: jax.Array) -> TrainState:
        return new_train_state(config, builders.init_params(model, key, image_shape), optimizer)

    mesh = sharding.make_mesh()
    abstract = ckpt.abstract_with_sharding(
        jax.eval_shape(init_state, jax.random.key(0)), sharding.replicated(mesh)
    )
    if not os.path.isdir(os.path.join(workdir, ckpt.CHECKPOINT_DIR)):
        raise FileNotFoundError(f"{workdir!r} has no checkpoints yet (train it first)")
    manager = ckpt.checkpoint_manager(workdir, read_only=True)
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


def _align_data_iterator(iterator: Any, workdir: str, step: int) -> None:
    """Checks the restored data iterator is at ``step`` (one batch per step).

    A checkpoint written before iterator states were saved, or by another number of
    processes, has none for this process; the iterator is then moved to ``step``.

    Raises:
      ValueError: the checkpoint's iterator state disagrees with its train state.
    """
    position = iterator.get_state().get("next_index")
    own_file = os.path.join(
        workdir, ckpt.CHECKPOINT_DIR, str(step), ckpt.DATA_ITERATOR_ITEM,
        f"process_{jax.process_index()}-of-{jax.process_count()}.json",
    )
    if not os.path.exists(own_file):
        iterator.set_state({"next_index": step})
    elif position != step:
        raise ValueError(
            f"checkpoint at step {step} in {workdir} holds a data iterator that "
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
        write_text_atomic(path, "".join(kept))


def _append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


__all__ = [
    "CheckpointSaveError",
    "Teacher",
    "distill_config",
    "load_teacher",
    "load_trained",
    "load_training_data",
    "new_train_state",
    "train",
]
