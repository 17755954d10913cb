"""The notebooks in colabs/: generated from colabs/make_notebooks.py, stripped, and runnable.

Each notebook is executed headless (nbclient, a python3 kernel on 2 fake CPU devices that
shares this session's persistent compilation cache) in small mode. Notebooks 2 to 5 get
a copy of the session's digits demo model (``DIFFJAX_NOTEBOOK_WORKDIR``; a model that
follows its labels, so the guidance and memorization claims can be checked), with its
evaluation classifier in place; notebook 1 trains its own run. Every notebook asserts
the claims it teaches in its cells (finite samples, the loss falling, class agreement
above chance and rising with guidance, solver orders, the memorized vs full-data
separation): a cell that raises fails the test with the cell's traceback. Notebooks 4 to
6 run in tests/test_notebooks_second_half.py (the other xdist worker).
"""

import importlib.util
import os

import nbformat
import pytest
from notebook_runner import COLABS, FIRST_HALF, NOTEBOOKS, notebook_workdir, run_notebook

__all__ = ["notebook_workdir"]  # the fixture, for the notebooks below


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


@pytest.mark.slow
@pytest.mark.parametrize("name", FIRST_HALF)
def test_notebook_runs_in_small_mode(name, request, tmp_path):
    run_notebook(name, request, tmp_path)


def test_the_two_files_run_every_notebook():
    from test_notebooks_second_half import SECOND_HALF

    assert sorted(FIRST_HALF + SECOND_HALF) == NOTEBOOKS
