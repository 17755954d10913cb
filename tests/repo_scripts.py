"""Importing the repository's scripts (experiments/, colabs/) from tests, by path."""

import functools
import importlib.util
import os

from jax_subprocess import REPO


@functools.cache
def load_script(relative_path):
    """The module of the script at ``relative_path`` in the repository (loaded once)."""
    path = os.path.join(REPO, relative_path)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
