"""The notebooks in colabs/: generated from colabs/make_notebooks.py, stripped, and runnable.

Each notebook is executed headless (nbclient, a python3 kernel on 2 fake CPU devices that
shares this session's persistent compilation cache) in small mode. Notebooks 2 to 5 get
a copy of the session's digits demo model (``DIFFJAX_NOTEBOOK_WORKDIR``; a model that
follows its labels, so the guidance and memorization claims can be checked), with its
evaluation classifier in place; notebook 1 trains its own run. Every notebook asserts
the claims it teaches in its cells (finite samples, the loss falling, class agreement
above chance and rising with guidance, solver orders, the memorized vs full-data
separation): a cell that raises fails the test with the cell's traceback.
"""

import importlib.util
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


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_notebooks", os.path.join(COLABS, "make_notebooks.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_generated_and_stripped():
    gen = _generator()
    assert sorted(f"{name}.ipynb" for name in gen.NOTEBOOKS) == NOTEBOOKS
    for name in gen.NOTEBOOKS:
        path = os.path.join(COLABS, f"{name}.ipynb")
        with open(path) as f:
            text = f.read()
        assert text == gen.render(name), f"{path} is stale: run python colabs/make_notebooks.py"
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code)
        colab = f"https://colab.research.google.com/github/diffjax/diffjax/blob/main/colabs/{name}"
        assert f"({colab}.ipynb)" in nb.cells[0].source
        install = code[0].source
        assert '"google.colab" in sys.modules' in install
        assert "git+https://github.com/diffjax/diffjax" in install


def test_every_notebook_asserts_its_claims():
    gen = _generator()
    for name, cells in gen.NOTEBOOKS.items():
        own = [c for c in cells if c.cell_type == "code" and c is not gen.SETUP]
        asserts = sum(c.source.count("assert ") for c in own)
        assert asserts >= 2, f"{name}: {asserts} assert statements of its own"


@pytest.fixture(scope="module")
def notebook_workdir(demo_model_workdir, tmp_path_factory):
    """A copy of the session's demo model (notebooks write its eval cache)."""
    path = str(tmp_path_factory.mktemp("notebooks") / "run")
    shutil.copytree(demo_model_workdir, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_small_mode(name, request, tmp_path):
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
