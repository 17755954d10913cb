"""What importing diffjax costs, and which way its layers depend.

- ``import diffjax`` loads no JAX, orbax, grain, matplotlib or tensorflow_datasets: its
  public names load on first use (``diffjax._lazy``).
- The primitives (``diffjax.samplers``, ``diffjax.schedules``) load JAX and nothing of the
  application stack (checkpoints, input pipelines, plots, datasets).
- ``diffjax.app.cli`` parses its arguments, and ``diffjax.app.config`` validates a config,
  before either loads JAX.
- No primitive module imports ``diffjax.app`` (checked on the source, every import
  statement, function-local ones included).

Each import runs in a fresh interpreter, so no module this test session has already
loaded can hide one the import pulls in.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
from jax_subprocess import REPO

HEAVY = ("jax", "orbax", "grain", "matplotlib", "tensorflow_datasets")
APP_STACK = ("orbax", "grain", "matplotlib", "tensorflow_datasets")

# The primitives: everything in the package except diffjax.app (and the package's own
# lazy __init__, whose names point into the app on purpose).
PRIMITIVES = (
    "schedules.py",
    "parameterization.py",
    "guidance.py",
    "losses.py",
    "_checks.py",
    "samplers",
    "nn",
    "metrics",
    "networks",
    "data",
    "training",
    "stable_diffusion",
)


def _loaded_top_level(module: str) -> list[str]:
    """The top-level packages in ``HEAVY`` that ``import module`` loads, in a fresh process."""
    probe = (
        f"import sys, json; import {module}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("diffjax", HEAVY),
        ("diffjax.samplers", APP_STACK),
        ("diffjax.schedules", APP_STACK),
        # Stable Diffusion users need neither a training stack nor a data pipeline.
        ("diffjax.stable_diffusion.pipeline", APP_STACK),
        ("diffjax.app.cli", ("jax",)),
        # Config validation runs before JAX loads; the UNet's group arithmetic with it.
        ("diffjax.app.config", HEAVY),
        ("diffjax.nn.groups", HEAVY),
    ],
)
def test_import_loads_no_heavy_module(module, forbidden):
    loaded = _loaded_top_level(module)
    unexpected = sorted(set(loaded) & set(forbidden))
    assert not unexpected, f"import {module} loads {unexpected}"


def _python_files(path: str) -> list[str]:
    if path.endswith(".py"):
        return [path]
    return sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(path)
        for f in files
        if f.endswith(".py")
    )


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _imported_modules(path: str, name: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in module ``name`` at ``path``.

    Statements at any depth count (function-local imports, ``if TYPE_CHECKING:`` blocks);
    relative imports are resolved against the module's package; ``from a import b`` yields
    both ``a`` and ``a.b`` (``b`` may be a submodule).
    """
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def _imports_app(module: str) -> bool:
    return module == "diffjax.app" or module.startswith("diffjax.app.")


def test_the_layering_check_sees_every_kind_of_import(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(
        "import numpy as np\n"
        "from . import app\n"
        "def f():\n"
        "    from ..app.generate import generate\n"
        "    import diffjax.app.cli\n"
        "    return generate\n"
    )
    found = _imported_modules(str(path), "diffjax.samplers.probe")
    assert [line for line, module in found if _imports_app(module)] == [4, 4, 5], found
    assert (2, "diffjax.app") in _imported_modules(str(path), "diffjax.probe")


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_primitives_never_import_the_application_layer(primitive):
    offending = [
        f"{os.path.relpath(path, REPO)}:{line}: {module}"
        for path in _python_files(os.path.join(REPO, "diffjax", primitive))
        for line, module in _imported_modules(path, _module_name(path))
        if _imports_app(module)
    ]
    assert not offending, "primitive modules import diffjax.app:\n" + "\n".join(offending)
