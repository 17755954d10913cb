"""Data parallelism: a 1-D device Mesh with a ``data`` axis, batches sharded over it.

This is what ``pmap`` data parallelism is in current JAX: one ``jit`` with the batch
sharded along ``data`` and the parameters replicated; XLA inserts the gradient
all-reduce.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A Mesh over all (global) devices with a single ``data`` axis (Auto axis type)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """Raises ValueError unless the global batch splits evenly over the devices."""
    n = mesh.shape[DATA_AXIS]
    if global_batch_size % n:
        raise ValueError(
            f"training.batch_size={global_batch_size} is not divisible by the {n} devices "
            f"of the data axis; use a multiple of {n}"
        )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
    """Assembles this process's slice of a batch into a global, batch-sharded jax.Array."""
    sharding = batch_sharded(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, value)
        for name, value in local_batch.items()
    }
