"""The float32 golden values of ``diffjax.schedules`` (dev-only).

Schedule arithmetic follows the input's dtype; before it did, every schedule computed in
float32 whatever its input. ``tests/data/schedule_float32_golden.npz`` holds what that
float32-only module computed (every method of every named schedule on fixed inputs,
``float32_outputs`` in ``tests/test_schedules.py``), and the test requires today's float32
results to equal it bit for bit.

Usage (``SOURCE`` is a schedules module to evaluate, by default ``diffjax.schedules``; the
stored file was written from the float32-only module of commit 861c479)::

  git show 861c479:diffjax/schedules.py > /tmp/schedules_float32.py
  python experiments/make_schedule_golden.py /tmp/schedules_float32.py
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "schedule_float32_golden.npz")


def load_module(path: str | None):
    """The schedules module at ``path``, or ``diffjax.schedules``."""
    if path is None:
        from diffjax import schedules

        return schedules
    spec = importlib.util.spec_from_file_location("schedules_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax dataclasses resolve annotations by module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_schedules import float32_outputs

    values = float32_outputs(load_module(sys.argv[1] if len(sys.argv) > 1 else None))
    np.savez_compressed(OUT, **values)
    print(f"wrote {len(values)} arrays to {OUT}")


if __name__ == "__main__":
    main()
