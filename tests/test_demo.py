"""The demo's quality bar, in small: a short training run must already follow its labels,
and guidance must help. (The full demo's numbers are in the README and the issue notes.)"""

import json
import os

import pytest

from diffjax.app.demo import run_demo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo"))
    report = run_demo(
        workdir,
        overrides=[
            "training.num_steps=400",
            "training.batch_size=64",
            "training.checkpoint_every=400",
            "training.progress_bar=False",
        ],
        guidance_scales=(0.0, 3.0),
        num_per_class=20,
        num_sampling_steps=20,
        pareto_samplers=("ddim", "dpm++2m"),
        pareto_nfes=(5,),
        pareto_num_samples=40,
    )
    return workdir, report


def test_demo_writes_its_report_and_grid(report):
    workdir, result = report
    with open(os.path.join(workdir, "report.json")) as f:
        assert json.load(f) == result
    assert os.path.isfile(os.path.join(workdir, result["grid"]))
    with open(os.path.join(workdir, "report.md")) as f:
        assert "class agreement" in f.read()


def test_fidelity_classifier_meets_the_bar(report):
    assert report[1]["classifier_heldout_accuracy"] >= 0.95


def test_short_run_follows_labels_and_guidance_helps(report):
    agreement = report[1]["class_agreement_by_guidance"]
    assert agreement["3"] >= 0.6, agreement  # chance is 0.1
    assert agreement["3"] > agreement["0"], agreement


def test_report_includes_the_pareto_frontier(report):
    workdir, result = report
    pareto = result["pareto"]
    assert pareto["fid_label"] == "FID@40 (digits-classifier features)"
    assert [(r["sampler"], r["nfe"]) for r in pareto["rows"]] == [("ddim", 5), ("dpm++2m", 5)]
    assert all(r["fid"] > 0 and r["seconds_per_image"] > 0 for r in pareto["rows"])
    assert any(r["pareto_nfe"] for r in pareto["rows"])
    best = pareto["best_per_nfe"][0]
    assert best["fid"] == min(r["fid"] for r in pareto["rows"])
    with open(os.path.join(workdir, "report.md")) as f:
        text = f.read()
    assert "FID@40 (digits-classifier features)" in text
    for plot in pareto["plots"]:
        assert f"]({plot})" in text and os.path.isfile(os.path.join(workdir, plot))
    # The evaluation classifier is the one `diffjax evaluate` / `diffjax pareto` use.
    assert os.path.isfile(os.path.join(workdir, "model", "eval", "digits_classifier.msgpack"))
