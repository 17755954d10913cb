"""The demo's quality bar, in small: a short training run must already follow its labels,
and guidance must help. (The full demo's numbers are in the README and the issue notes.)"""

import json
import os

import pytest

from diffjax.demo import run_demo

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
