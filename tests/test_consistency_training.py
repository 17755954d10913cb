"""Consistency runs end to end: distillation, tuning and training, resume, sampling, refusals.

The teacher is the digits demo model (the session fixture of tests/conftest.py); the
student runs are 32 steps of batch 16, enough to see the held-out consistency loss
fall and to check that a resumed run is the uninterrupted one, bit for bit.
"""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.app import builders
from diffjax.app.cli import main
from diffjax.app.config import apply_overrides, base_config, validate_config
from diffjax.app.train import distill_config, load_trained, train
from diffjax.data import load_digits
from diffjax.training.consistency_step import (
    ConsistencyTrainState,
    create_consistency_train_state,
    make_consistency_train_step,
)
from diffjax.training.optimizer import make_optimizer

STUDENT = (
    "training.batch_size=16",
    "training.num_steps=32",
    "training.checkpoint_every=16",
    "training.log_every=8",
    "training.progress_bar=False",
    "optim.learning_rate=2e-4",
    "optim.warmup_steps=0",
)


def distil(teacher, workdir, method="cd", overrides=()):
    config = distill_config(teacher, method)
    apply_overrides(config, [*STUDENT, *overrides])
    train(config, workdir)
    return config


@pytest.fixture(scope="module")
def cd_run(demo_model_workdir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cd") / "student")
    config = distil(demo_model_workdir, workdir)
    return demo_model_workdir, workdir, config


def held_out_loss(config, params, teacher_params, teacher_model):
    """The CD loss of a fixed held-out batch with fixed randomness, at ``params``."""
    schedule = builders.build_schedule(config.diffusion)
    optimizer = make_optimizer(config.optim)
    step = make_consistency_train_step(
        teacher_model, schedule, optimizer,
        builders.consistency_objective(config, schedule, (8, 8, 1)),
        prediction_type=config.diffusion.prediction_type, image_shape=(8, 8, 1),
        p_uncond=0.0, teacher_model=teacher_model,
    )
    test = load_digits("heldout")
    batch = {"image": jnp.asarray(test.images[:256]), "label": jnp.asarray(test.labels[:256])}
    state = create_consistency_train_state(params, optimizer, config.consistency.target_ema)
    _, metrics = jax.jit(step)(state, batch, jax.random.key(123), teacher_params)
    return float(metrics["loss"])


def test_distillation_lowers_the_held_out_consistency_loss(cd_run):
    teacher, student, config = cd_run
    _, teacher_model, teacher_params, _ = load_trained(teacher)
    _, _, student_params, _ = load_trained(student)
    before = held_out_loss(config, teacher_params, teacher_params, teacher_model)
    after = held_out_loss(config, student_params, teacher_params, teacher_model)
    assert after < 0.95 * before, (before, after)
    with open(os.path.join(student, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [8, 16, 24, 32]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_the_student_starts_from_the_teacher_and_keeps_a_target_network(cd_run):
    teacher, student, config = cd_run
    assert config.consistency.method == "cd" and config.consistency.target_ema == 0.95
    assert config.consistency.teacher == os.path.abspath(teacher)
    from diffjax.app import checkpoint as ckpt

    manager = ckpt.checkpoint_manager(student, read_only=True)
    try:
        assert manager.all_steps() == [16, 32]
    finally:
        manager.close()
    _, _, teacher_params, _ = load_trained(teacher)
    _, _, student_params, _ = load_trained(student)
    chex.assert_trees_all_equal_shapes_and_dtypes(teacher_params, student_params)
    assert not np.allclose(
        jax.tree.leaves(teacher_params)[0], jax.tree.leaves(student_params)[0]
    )
    schedule = builders.build_schedule(config.diffusion)
    state = create_consistency_train_state(
        teacher_params, make_optimizer(config.optim), config.consistency.target_ema
    )
    assert isinstance(state, ConsistencyTrainState)
    param = builders.consistency_parameterization(config, schedule, (8, 8, 1))
    assert param.sigma_max == pytest.approx(80 * (64 / 3072) ** 0.5)  # 11.5 for 8x8 digits


def test_a_resumed_distillation_is_the_uninterrupted_one(cd_run, tmp_path):
    teacher, student, _ = cd_run
    resumed = str(tmp_path / "resumed")
    shutil.copytree(student, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "32"))  # as if stopped at step 16
    distil(teacher, resumed)  # the same command again: resumes from 16 to 32
    chex.assert_trees_all_equal(load_trained(resumed)[2], load_trained(student)[2])


def test_the_student_samples_with_the_consistency_sampler(cd_run, tmp_path):
    _, student, _ = cd_run
    for steps in ("1", "2"):
        out = str(tmp_path / f"cm{steps}.png")
        assert main(["sample", "--workdir", student, "--sampler", "cm", "--steps", steps,
                     "--labels", "3,7", "--num-per-label", "2", "--out", out]) == 0
        images = np.load(str(tmp_path / f"cm{steps}.npz"))["images"]
        chex.assert_shape(images, (4, 8, 8, 1))
        assert np.all(np.isfinite(images))
    one, two = (np.load(str(tmp_path / f"cm{n}.npz"))["images"] for n in (1, 2))
    assert not np.allclose(one, two)  # the second step re-noises and maps back


def test_ect_and_ict_runs_train_and_sample(tiny_trained_workdir, tmp_path):
    ect = str(tmp_path / "ect")
    assert main(["distill", "--teacher", tiny_trained_workdir, "--method", "ect",
                 "--workdir", ect, "--config.training.num_steps=2",
                 "--config.training.batch_size=8", "--config.training.progress_bar=False"]) == 0
    with open(os.path.join(ect, "config.json")) as f:
        saved = json.load(f)["consistency"]
    assert saved["method"] == "ect" and saved["ect_stage_steps"] == 0
    ict = str(tmp_path / "ict")
    assert main(["train", "--config", "experiments/configs/digits_ict.py:tiny",
                 "--workdir", ict, "--config.training.progress_bar=False"]) == 0
    for workdir in (ect, ict):
        out = str(tmp_path / f"{os.path.basename(workdir)}.png")
        assert main(["sample", "--workdir", workdir, "--sampler", "cm", "--steps", "2",
                     "--labels", "1", "--num-per-label", "2", "--out", out]) == 0


# --------------------------------------------------------------------------- refusals


def listing(folder):
    paths = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    return sorted((os.path.relpath(p, folder), os.path.getmtime(p)) for p in paths)


def test_distill_refuses_what_is_not_a_diffusion_teacher(cd_run, tiny_trained_workdir, tmp_path,
                                                          capsys):
    teacher, student, _ = cd_run
    with pytest.raises(FileNotFoundError, match="--teacher .*is not a diffjax training workdir"):
        distill_config(str(tmp_path), "cd")
    with pytest.raises(ValueError, match="is a consistency model .*'cd'.*not a diffusion model"):
        distill_config(student, "cd")
    with pytest.raises(ValueError, match="method"):
        distill_config(teacher, "ict")
    with pytest.raises(SystemExit):
        main(["distill", "--teacher", teacher, "--method", "ctm", "--workdir", str(tmp_path)])
    assert "invalid choice: 'ctm'" in capsys.readouterr().err

    # Another image shape than the run's data, another model: refused before writing.
    other = str(tmp_path / "teacher28")
    shutil.copytree(tiny_trained_workdir, other)
    with open(os.path.join(other, "run_info.json"), "w") as f:
        json.dump({"image_shape": [28, 28, 1], "num_classes": 10}, f)
    config = distill_config(other, "ect")
    apply_overrides(config, list(STUDENT))
    with pytest.raises(ValueError, match=r"image_shape: teacher has \[28, 28, 1\], run has"):
        train(config, str(tmp_path / "s1"))
    config = distill_config(tiny_trained_workdir, "ect")
    apply_overrides(config, [*STUDENT, "model.base_channels=32"])
    with pytest.raises(ValueError, match="model.base_channels: teacher has 16, config has 32"):
        train(config, str(tmp_path / "s2"))
    assert not os.path.exists(tmp_path / "s1") and not os.path.exists(tmp_path / "s2")


def test_nothing_is_written_over_the_teacher(tiny_trained_workdir, tmp_path):
    teacher = str(tmp_path / "teacher")
    shutil.copytree(tiny_trained_workdir, teacher)
    before = listing(teacher)
    for workdir in (teacher, os.path.join(teacher, "student")):
        config = distill_config(teacher, "ect")
        apply_overrides(config, list(STUDENT))
        with pytest.raises(ValueError, match="overlap: the student needs its own workdir"):
            train(config, workdir)
    assert listing(teacher) == before


def test_consistency_config_values_are_checked():
    config = base_config()
    config.consistency.method = "ict"
    config.consistency.teacher = "/some/where"
    config.consistency.target_ema = 0.9
    config.consistency.s1 = 5
    with pytest.raises(ValueError) as e:
        validate_config(config)
    text = str(e.value)
    assert "consistency.teacher='/some/where': expected ''" in text
    assert "consistency.target_ema=0.9: expected 0" in text
    assert "consistency.s1=5: expected an int >= consistency.s0=10" in text
    config.consistency.method = "cm"
    with pytest.raises(ValueError, match="consistency.method='cm': expected one of"):
        validate_config(config)


def test_cm_sampling_refuses_zero_steps(cd_run, capsys):
    _, student, _ = cd_run
    assert main(["sample", "--workdir", student, "--sampler", "cm", "--steps", "0"]) == 2
    assert "num_steps" in capsys.readouterr().err
