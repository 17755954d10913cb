import json
import os
import re
import shutil

import matplotlib.image
import numpy as np
import pytest

from diffjax.app.cli import main

CONFIG = "experiments/configs/digits.py:tiny"
QUIET = ["--config.training.progress_bar=False"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "run")
    rc = main(["train", "--config", CONFIG, "--workdir", path,
               "--config.training.num_steps=4", *QUIET])
    assert rc == 0
    return path


def test_train_writes_a_resumable_workdir(workdir):
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["training"]["num_steps"] == 4
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]


def test_sample_writes_png_and_npz(workdir, tmp_path):
    out = str(tmp_path / "grid.png")
    rc = main(["sample", "--workdir", workdir, "--steps", "3", "--guidance", "2",
               "--labels", "1,7", "--num-per-label", "3", "--out", out])
    assert rc == 0
    data = np.load(str(tmp_path / "grid.npz"))
    assert data["images"].shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(data["labels"], [1, 1, 1, 7, 7, 7])
    assert np.all(np.isfinite(data["images"]))
    png = matplotlib.image.imread(out)
    assert png.shape[0] > 8 and png.shape[1] > 8


def test_sample_defaults_to_the_runs_sampling_config(workdir, tmp_path):
    # A run whose config says DPM-Solver++(2M), 3 steps: `sample` without --sampler and
    # --steps uses them, so it equals the explicit command (DDIM-50, the old fixed
    # default, would not).
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    config["sampling"].update(sampler="dpm++2m", num_steps=3)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(config, f)
    args = ["sample", "--workdir", run, "--labels", "2", "--num-per-label", "2"]
    assert main([*args, "--out", f"{tmp_path}/default.png"]) == 0
    assert main([*args, "--sampler", "dpm++2m", "--steps", "3",
                 "--out", f"{tmp_path}/explicit.png"]) == 0
    np.testing.assert_array_equal(np.load(f"{tmp_path}/default.npz")["images"],
                                  np.load(f"{tmp_path}/explicit.npz")["images"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--config", CONFIG, "--workdir", "{tmp}/x", "--config.model.chanels=3"],
         "unknown config key 'model.chanels'"),
        (["train", "--config", "missing.py", "--workdir", "{tmp}/x"], "missing.py"),
        (["sample", "--workdir", "{tmp}/nothing"], "not a diffjax training workdir"),
        (["sample", "--workdir", "{workdir}", "--labels", "3,10", "--steps", "2"],
         r"labels \[10\] out of range \[0, 10\)"),
        (["sample", "--workdir", "{workdir}", "--labels", "a"], "comma-separated integers"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, workdir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, workdir=workdir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_guidance_needs_a_null_class(workdir, tmp_path, capsys):
    """A model trained with p_uncond = 0 never learned its null class: guidance is refused."""
    path = str(tmp_path / "nodrop")
    shutil.copytree(workdir, path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["diffusion"]["p_uncond"] = 0.0
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    assert main(["sample", "--workdir", path, "--steps", "2", "--guidance", "1"]) == 2
    assert "conditioning dropout" in capsys.readouterr().err
    assert main(["sample", "--workdir", path, "--steps", "2", "--out", f"{path}/s.png"]) == 0


def test_generate_does_not_recompile_for_scale_eta_labels_or_seed(workdir):
    import jax

    from diffjax.app import builders
    from diffjax.app.generate import _generate, generate
    from diffjax.app.train import load_trained

    config, model, params, _ = load_trained(workdir)
    schedule = builders.build_schedule(config.diffusion)
    common = dict(prediction_type="eps", image_shape=(8, 8, 1), num_steps=2, sampler="ddim")
    calls = [
        dict(labels=[1, 2], guidance_scale=0.0, eta=0.0, key=jax.random.key(0)),
        dict(labels=[3, 4], guidance_scale=1.0, eta=0.5, key=jax.random.key(1)),
        dict(labels=[5, 9], guidance_scale=7.5, eta=1.0, key=jax.random.key(2)),
    ]
    before = _generate._cache_size()
    outputs = [generate(model, params, schedule, **common, **c) for c in calls]
    assert _generate._cache_size() == before + 1
    assert not np.allclose(outputs[0], outputs[1])
    again = generate(model, params, schedule, **common, **calls[0])
    np.testing.assert_array_equal(np.asarray(again), np.asarray(outputs[0]))


def test_bad_sampler_name_is_an_argparse_error_naming_it(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--workdir", workdir, "--sampler", "ddim@logsnr"])
    assert exit_info.value.code == 2
    assert "sampler='ddim@logsnr': a grid suffix applies to" in capsys.readouterr().err


# Every name and grid builds and runs on a toy denoiser (tests/test_sampler_specs.py);
# through the command line, one ODE solver on the '@logsnr' grid and one stochastic one.
@pytest.mark.parametrize("sampler", ("dpm++2m@logsnr", "sde-dpm++2m"))
def test_samplers_run_from_the_command_line(sampler, workdir, tmp_path):
    out = str(tmp_path / "s.png")
    steps = "3"
    assert main(["sample", "--workdir", workdir, "--sampler", sampler, "--steps", steps,
                 "--guidance", "1", "--labels", "2", "--num-per-label", "2", "--out", out]) == 0
    images = np.load(str(tmp_path / "s.npz"))["images"]
    assert images.shape == (2, 8, 8, 1) and np.all(np.isfinite(images))
