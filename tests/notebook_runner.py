"""Runs a notebook of colabs/ headless in small mode (tests/test_notebooks*.py).

The notebooks are split over two test files so that xdist's two workers (whole files
each, ``--dist loadfile``) share them: in one file they were the suite's critical path.
"""

import os
import shutil
import time

import nbformat
import pytest
from jax_subprocess import REPO, subprocess_env
from nbclient import NotebookClient

COLABS = os.path.join(REPO, "colabs")
NOTEBOOKS = sorted(f for f in os.listdir(COLABS) if f.endswith(".ipynb"))
CELL_TIMEOUT_S = 300
TRAINING_NOTEBOOKS = ("01_train_digits.ipynb", "05_memorization.ipynb")
# The two files' shares (about equal seconds: 01, 02, 03 | 04, 05, 06).
FIRST_HALF = ("01_train_digits.ipynb", "02_ddpm_vs_ddim.ipynb", "03_guidance.ipynb")


@pytest.fixture(scope="module")
def notebook_workdir(demo_model_workdir, tmp_path_factory):
    """A copy of the session's demo model (notebooks write its eval cache)."""
    path = str(tmp_path_factory.mktemp("notebooks") / "run")
    shutil.copytree(demo_model_workdir, path)
    return path


def run_notebook(name, request, tmp_path):
    """Executes ``colabs/name`` (a cell that raises fails the calling test)."""
    with open(os.path.join(COLABS, name)) as f:
        nb = nbformat.read(f, as_version=4)
    env = subprocess_env(2)
    env["DIFFJAX_NOTEBOOK_MODE"] = "small"
    env["DIFFJAX_REPO"] = REPO  # notebook 6 finds the tiny Stable Diffusion folder there
    if not name.startswith("01_"):  # notebook 1 trains its own run (no shared model needed)
        env["DIFFJAX_NOTEBOOK_WORKDIR"] = request.getfixturevalue("notebook_workdir")
    env.pop("DIFFJAX_COMPILATION_CACHE", None)
    # XLA as users get it where a notebook trains (1 and 5: they run more than they
    # compile); the others mostly compile samplers for a few dozen samples, and compile
    # faster with the backend optimizations off (cold cache, one at a time on 2 cores:
    # 02 42 -> 34 s, 04 35 -> 26 s, 06 31 -> 23 s of CPU; 03 the same either way).
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if name in TRAINING_NOTEBOOKS else "1"
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute(env=env)
    print(f"{name}: {time.perf_counter() - start:.1f} s")
