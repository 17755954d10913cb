"""Notebooks 4 to 6 of colabs/, run headless in small mode (see tests/test_notebooks.py)."""

import pytest
from notebook_runner import FIRST_HALF, NOTEBOOKS, notebook_workdir, run_notebook

__all__ = ["notebook_workdir"]  # the fixture, for the notebooks below
SECOND_HALF = tuple(n for n in NOTEBOOKS if n not in FIRST_HALF)


@pytest.mark.slow
@pytest.mark.parametrize("name", SECOND_HALF)
def test_notebook_runs_in_small_mode(name, request, tmp_path):
    run_notebook(name, request, tmp_path)
