"""Tests for diffjax.app.guidance_sweep (on the session's tiny trained digits workdir)."""

import csv
import json
import os

import numpy as np
import pytest

from diffjax.app.evaluate import load_evaluation_context
from diffjax.app.guidance_sweep import (
    GUIDANCE_COLUMNS,
    guidance_interval_for_sigmas,
    guidance_sweep,
    plot_guidance_grids,
    plot_guidance_sweep,
    write_guidance_sweep,
)
from diffjax.schedules import make_schedule


def test_interval_for_sigmas_hits_the_edm_noise_levels():
    sched = make_schedule("linear", 1000)
    lo, hi = guidance_interval_for_sigmas(sched, 0.28, 5.42)
    assert 0 < lo < hi < 999
    for t, sigma_edm in ((lo, 0.28), (hi, 5.42)):
        np.testing.assert_allclose(float(sched.sigma(t) / sched.alpha(t)), sigma_edm, rtol=1e-4)
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        guidance_interval_for_sigmas(sched, 2.0, 1.0)


@pytest.fixture(scope="module")
def ctx(eval_workdir):
    return load_evaluation_context(eval_workdir)


def test_sweep_same_noise_and_interval(ctx, tmp_path):
    common = dict(sampler="ddim", num_steps=2, num_samples=20, grid_per_class=2, kid_subsets=5)
    plain = guidance_sweep(ctx, [0.0, 4.0], **common)
    # An interval containing no evaluation time turns guidance off at every scale.
    never = guidance_sweep(ctx, [0.0, 4.0], guidance_interval=(-1.0, -0.5), **common)
    assert [r["guidance_scale"] for r in plain.rows] == [0.0, 4.0]
    assert plain.rows[0]["variant"] == "plain" and "interval" in never.rows[0]["variant"]
    assert plain.grids[0].shape == (20, 8, 8, 1)
    # Same key at every scale: w = 0 is the same sample set with or without the interval.
    np.testing.assert_array_equal(plain.grids[0], never.grids[0])
    np.testing.assert_array_equal(never.grids[0], never.grids[1])
    assert never.rows[0]["fid"] == never.rows[1]["fid"]
    assert not np.array_equal(plain.grids[0], plain.grids[1])
    assert all(0.0 <= r["class_agreement"] <= 1.0 for r in plain.rows)
    assert all(r["nfe"] == 2 and r["num_samples"] == 20 for r in plain.rows)

    rows = plain.rows + never.rows
    csv_path, json_path, md_path = write_guidance_sweep(tmp_path, rows, meta={"command": "x"})
    with open(csv_path) as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == GUIDANCE_COLUMNS and len(table) == 5
    with open(json_path) as f:
        payload = json.load(f)
    assert payload["command"] == "x" and len(payload["rows"]) == 4
    with open(md_path) as f:
        assert f.read().count("\n") == 6  # header, rule, 4 rows
    assert os.path.getsize(plot_guidance_sweep(rows, tmp_path / "sweep.png")) > 0
    assert os.path.getsize(plot_guidance_grids(plain, tmp_path / "grid.png", per_class=2)) > 0
    with pytest.raises(ValueError, match="per_class"):
        plot_guidance_grids(plain, tmp_path / "bad.png", per_class=3)


def test_sweep_checks_arguments(ctx):
    with pytest.raises(ValueError, match="grid_per_class"):
        guidance_sweep(ctx, [1.0], num_samples=10, grid_per_class=2)
    with pytest.raises(ValueError, match="empty"):
        guidance_sweep(ctx, [], num_samples=20)
