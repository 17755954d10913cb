"""Executes the notebooks in colabs/ headless and keeps what they show.

Each notebook runs in its own kernel (nbclient) in ``SCRATCH/<name>/`` (where its
``workdirs/`` and ``outputs/`` land). Notebook 1 trains the run; notebooks 2 to 5 get it
through ``DIFFJAX_NOTEBOOK_WORKDIR`` (or the run given with ``--workdir``). For each
notebook, ``OUT/<name>/`` receives the executed notebook (progress bars dropped) and the
files it wrote under ``outputs/`` (CSV/JSON/PNG), and ``OUT/timings.json`` the wall
time of each.

The committed full-mode run, ``experiments/results/notebooks_full``, came from::

  python experiments/run_notebooks.py --mode full --out experiments/results/notebooks_full

(``--mode small`` is what the test suite runs.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")


def _is_progress(output: dict) -> bool:
    """A stderr stream of progress-bar redraws or the notebook-tqdm warning."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    text = output.get("text", "")
    return "\r" in text or "%|" in text or "IProgress not found" in text


def run_notebook(name: str, mode: str, scratch: str, workdir: str | None) -> tuple[dict, float]:
    """Executes ``colabs/<name>.ipynb`` in ``scratch/<name>``; returns it and its wall time."""
    with open(os.path.join(COLABS, f"{name}.ipynb")) as f:
        nb = nbformat.read(f, as_version=4)
    cwd = os.path.join(scratch, name)
    os.makedirs(cwd, exist_ok=True)
    env = dict(os.environ, DIFFJAX_NOTEBOOK_MODE=mode)
    env.pop("DIFFJAX_NOTEBOOK_WORKDIR", None)
    if workdir:
        env["DIFFJAX_NOTEBOOK_WORKDIR"] = workdir
    client = NotebookClient(
        nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": cwd}}
    )
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not _is_progress(o)]
    return nb, seconds


def main(argv: list[str] | None = None) -> None:
    """Runs the notebooks and copies their results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("small", "full"), default="full")
    parser.add_argument("--out", required=True)
    parser.add_argument("--scratch", default="/tmp/diffjax_notebooks")
    parser.add_argument("--workdir", default=None,
                        help="trained run for notebooks 2-5 (default: notebook 1's)")
    parser.add_argument("--only", default="", help="comma-separated notebook names")
    args = parser.parse_args(argv)

    names = sorted(f[:-6] for f in os.listdir(COLABS) if f.endswith(".ipynb"))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    workdir = args.workdir
    timings_path = os.path.join(args.out, "timings.json")
    timings = {}
    if os.path.exists(timings_path):
        with open(timings_path) as f:
            timings = json.load(f)
    for name in names:
        first = name.startswith("01_")
        nb, seconds = run_notebook(name, args.mode, args.scratch, None if first else workdir)
        if first and workdir is None:
            workdir = os.path.join(args.scratch, name, "workdirs", f"digits_{args.mode}")
        dest = os.path.join(args.out, name)
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        nbformat.write(nb, os.path.join(dest, f"{name}.ipynb"))
        produced = os.path.join(args.scratch, name, "outputs")
        if os.path.isdir(produced):
            shutil.copytree(produced, os.path.join(dest, "outputs"))
        timings[name] = round(seconds, 1)
        with open(timings_path, "w") as f:
            json.dump({"mode": args.mode, **timings}, f, indent=2)
        print(f"{name}: {seconds:.0f} s", flush=True)
    if not names:
        sys.exit("no notebook matched --only")


if __name__ == "__main__":
    main()
