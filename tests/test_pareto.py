"""Pareto sweeps: the frontier on hand-made points, NFE accounting, files, `diffjax pareto`."""

import csv
import json
import math
import os

import matplotlib.image
import numpy as np
import pytest

from diffjax.app import builders, evaluate
from diffjax.app.cli import main
from diffjax.app.config import digits_config
from diffjax.app.evaluate import EvalContext, run_pareto_sweep
from diffjax.app.features import FeatureExtractor
from diffjax.app.reports import PARETO_COLUMNS, format_pareto_table
from diffjax.app.sampler_specs import parse_sampler
from diffjax.metrics.pareto import best_per_nfe, pareto_front

SCHEDULE = builders.build_schedule(digits_config().diffusion)


def test_pareto_front_on_hand_made_points_with_ties():
    points = {
        "A": (1, 5),
        "B": (2, 3),
        "B_copy": (2, 3),  # a tie of an optimal point: both are optimal
        "D": (3, 3),  # same quality as B at a higher cost
        "E": (4, 1),
        "F": (1, 6),  # same cost as A, worse
        "G": (5, 1),  # same quality as E at a higher cost
        "H": (0.5, math.nan),  # unmeasured: never optimal, dominates nothing
        "I": (None, 0.1),
        "J": (3, 2),
        "D_copy": (3, 3),  # a tie of a dominated point: both dominated
    }
    rows = [{"name": k, "nfe": x, "fid": y} for k, (x, y) in points.items()]
    on = {r["name"] for r, f in zip(rows, pareto_front(rows, "nfe", "fid"), strict=True) if f}
    assert on == {"A", "B", "B_copy", "E", "J"}
    assert pareto_front([], "nfe", "fid") == []
    assert pareto_front([{"nfe": 1, "fid": 2}], "nfe", "fid") == [True]
    with pytest.raises(KeyError, match="seconds"):
        pareto_front(rows, "seconds", "fid")


def test_best_per_nfe_and_table():
    rows = [
        {"sampler": "ddim", "nfe_target": 10, "nfe": 10, "num_steps": 10, "fid": 4.0,
         "guidance_scale": 3.0, "kid_mean": 1e-3, "kid_std": 1e-4, "pareto_nfe": True},
        {"sampler": "dpm++2s", "nfe_target": 10, "nfe": 9, "num_steps": 5, "fid": 3.0,
         "guidance_scale": 3.0, "kid_mean": 2e-3, "kid_std": 1e-4, "pareto_nfe": True},
        {"sampler": "ddpm", "nfe_target": 5, "nfe": 5, "num_steps": 5, "fid": math.nan,
         "guidance_scale": None, "kid_mean": None, "kid_std": None},
    ]
    best = best_per_nfe(rows)
    assert [(b["nfe_target"], b["sampler"], b["nfe"]) for b in best] == [(10, "dpm++2s", 9)]
    table = format_pareto_table(rows, "FID@50 (digits-classifier features)")
    lines = table.strip().splitlines()
    assert "FID@50 (digits-classifier features)" in lines[0] and len(lines) == 5
    assert lines[2].startswith("| ddim | 3 | 10 | 10 | 4.00 | 0.001 ± 0.0001 |")
    assert lines[3].startswith("| ddpm | none | 5 | 5 | - | - |")


@pytest.mark.parametrize(
    ("sampler", "nfe", "expected"),
    [
        ("ddim", 7, (7, 7)),
        ("dpm++2s", 10, (5, 9)),  # 2 n - 1 evaluations: 9 fit in 10, 11 do not
        ("dpm++2s", 5, (3, 5)),
        ("dpm2", 5, (2, 4)),
        ("dpm3", 5, (1, 3)),
        ("dpm3", 2, None),
        ("dpm-fast", 2, None),  # DPM-Solver-fast (order 3) needs at least 3 evaluations
        ("dpm-fast", 5, (5, 5)),
    ],
)
def test_steps_for_nfe(sampler, nfe, expected):
    assert parse_sampler(sampler).steps_for_nfe(nfe, SCHEDULE.num_timesteps) == expected


def _fake_context():
    extractor = FeatureExtractor("fake-features", 4, lambda x: x, "0")
    return EvalContext(
        workdir="fake", config=None, model=None, params=None, image_shape=(8, 8, 1),
        schedule=SCHEDULE, extractor=extractor, reference=None,
        reference_description="fake reference", classifier=None,
    )


def _fake_evaluate_sampler(fail_after=None):
    calls = []

    def fake(ctx, sampler, num_steps, guidance_scale, num_samples, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise RuntimeError("simulated crash")
        sampler = str(sampler)  # the sweep passes the parsed spec
        calls.append(sampler)
        nfe = parse_sampler(sampler).nfe(num_steps)
        return {
            "sampler": sampler, "num_steps": num_steps, "nfe": nfe,
            "guidance_scale": guidance_scale, "num_samples": num_samples,
            "features": "fake-features", "fid": 100.0 / nfe + (sampler == "ddim"),
            "fid_label": f"FID@{num_samples} (fake-features features)",
            "seconds_per_image": 0.001 * nfe * (2 if sampler == "dpm++2s" else 1),
            "kid_mean": 0.0, "kid_std": 0.0, "class_agreement": None,
        }

    return fake


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_writes_every_row_as_it_goes_and_keeps_them_on_a_crash(tmp_path, monkeypatch):
    out = str(tmp_path / "crashed")
    monkeypatch.setattr(evaluate, "evaluate_sampler", _fake_evaluate_sampler(fail_after=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pareto_sweep(_fake_context(), samplers=["ddim", "dpm++2s"], nfes=[5, 10],
                         guidance_scales=[3.0], num_samples=10, out_dir=out, progress=False)
    rows = _read_csv(os.path.join(out, "pareto.csv"))
    assert [(r["sampler"], r["nfe_target"], r["nfe"]) for r in rows] == [
        ("ddim", "5", "5"), ("ddim", "10", "10")
    ]
    with open(os.path.join(out, "pareto.json")) as f:
        assert len(json.load(f)["rows"]) == 2
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


def test_sweep_marks_fronts_skips_unreachable_points_and_plots(tmp_path, monkeypatch):
    out = str(tmp_path / "sweep")
    monkeypatch.setattr(evaluate, "evaluate_sampler", _fake_evaluate_sampler())
    rows = run_pareto_sweep(
        _fake_context(), samplers=["ddim", "dpm++2s", "dpm3"], nfes=[2, 5, 10],
        guidance_scales=[0.0, 3.0], num_samples=10, out_dir=out, progress=False,
        meta={"command": "test"},
    )
    # dpm3 at NFE 2 is unreachable (3 evaluations per step): 8 sampler/NFE points x 2 scales.
    assert len(rows) == 16
    with open(os.path.join(out, "pareto.json")) as f:
        saved = json.load(f)
    assert saved["skipped"] == ["dpm3 at NFE 2: no step count fits"]
    assert saved["command"] == "test" and saved["fid_label"] == "FID@10 (fake-features features)"
    csv_rows = _read_csv(os.path.join(out, "pareto.csv"))
    assert list(csv_rows[0]) == list(PARETO_COLUMNS)
    for axis, key in (("nfe", "pareto_nfe"), ("seconds_per_image", "pareto_seconds")):
        expected = pareto_front(rows, axis, "fid")
        assert [r[key] for r in rows] == expected
        assert [r[key] == "True" for r in csv_rows] == expected
    # dpm++2s at a 10-evaluation budget ran 5 steps = 9 evaluations.
    row = next(r for r in rows if r["sampler"] == "dpm++2s" and r["nfe_target"] == 10)
    assert (row["num_steps"], row["nfe"]) == (5, 9)
    for name in ("pareto_nfe.png", "pareto_seconds.png"):
        image = matplotlib.image.imread(os.path.join(out, name))
        assert image.shape[0] > 100 and image.shape[1] > 100 and np.ptp(image) > 0
    with open(os.path.join(out, "pareto.md")) as f:
        assert f.read().count("\n") == 2 + len(rows)


def test_cli_pareto_on_a_trained_model(eval_workdir, tmp_path, capsys):
    out = str(tmp_path / "pareto")
    # The shapes of test_evaluate's CLI run: no new compilation when run in one session.
    assert main(["pareto", "--workdir", eval_workdir, "--samplers", "ddim", "--nfe", "3",
                 "--guidance", "1,2", "--num-samples", "24", "--batch-size", "12",
                 "--out", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "FID@24 (digits-classifier features)" in printed
    assert "best FID@24 (digits-classifier features) with a budget of 3 NFE:" in printed
    rows = _read_csv(os.path.join(out, "pareto.csv"))
    assert [(r["sampler"], r["num_steps"], r["nfe"], r["guidance_scale"]) for r in rows] == [
        ("ddim", "3", "3", "1"), ("ddim", "3", "3", "2")
    ]
    with open(os.path.join(out, "pareto.json")) as f:
        assert json.load(f)["command"].startswith(
            f"diffjax pareto --workdir {eval_workdir} --samplers ddim --nfe 3 --guidance 1,2 "
        )
    assert all(r["features"] == "digits-classifier" and float(r["fid"]) > 0 for r in rows)
    assert any(r["pareto_nfe"] == "True" for r in rows)
    assert os.path.isfile(os.path.join(out, "pareto_seconds.png"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--samplers", "ddim,nope"], r"--samplers: unknown sampler='nope'"),
        (["--samplers", "dpm++2m@oops"], r"--samplers: unknown grid 'oops'"),
        (["--nfe", "5,x"], r"--nfe='5,x' must be comma-separated ints"),
    ],
)
def test_cli_pareto_bad_input_exits_2(argv, message, eval_workdir, tmp_path, capsys):
    import re

    assert main(["pareto", "--workdir", eval_workdir, "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
