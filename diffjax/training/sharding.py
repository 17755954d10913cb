"""Data parallelism: a 1-D device Mesh with a ``data`` axis, batches sharded over it.

This is what ``pmap`` data parallelism is in current JAX: one ``jit`` with the batch
sharded along ``data`` and the parameters replicated; XLA inserts the gradient
all-reduce.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

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


def check_batch_size(global_batch_size: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
    """Raises ValueError unless the global batch splits evenly over devices and microbatches.

    Every device holds ``global_batch_size / devices`` examples, which gradient
    accumulation splits further into ``grad_accum_steps`` equal microbatches.
    """
    n = mesh.shape[DATA_AXIS]
    if grad_accum_steps < 1:
        raise ValueError(f"training.grad_accum_steps={grad_accum_steps} must be >= 1")
    if global_batch_size % n:
        raise ValueError(
            f"training.batch_size={global_batch_size} is not divisible by the {n} devices "
            f"of the data axis; use a multiple of {n}"
        )
    if global_batch_size % (n * grad_accum_steps):
        raise ValueError(
            f"training.batch_size={global_batch_size} does not split into "
            f"training.grad_accum_steps={grad_accum_steps} microbatches on each of the {n} "
            f"devices; use a multiple of {n * grad_accum_steps}"
        )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
    """Assembles this process's slice of a batch into a global, batch-sharded jax.Array."""
    sharding = batch_sharded(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, value)
        for name, value in local_batch.items()
    }


class AllReduce(NamedTuple):
    """One all-reduce instruction of a compiled HLO module.

    Attributes:
      name: the instruction's name in the HLO text.
      computation: the HLO computation it is in (a loop body runs it once per iteration).
      in_entry: whether that computation is the ENTRY one (runs once per call).
      num_operands: how many arrays it reduces (XLA combines many into one tuple).
      num_bytes: total bytes of the reduced arrays.
    """

    name: str
    computation: str
    in_entry: bool
    num_operands: int
    num_bytes: int


_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_ALL_REDUCE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+all-reduce(?:-start)?\(")
_ARRAY_TYPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def hlo_all_reduces(hlo_text: str) -> list[AllReduce]:
    """Lists the all-reduce instructions of compiled HLO text, with the bytes they reduce.

    Use it to check what the data-parallel step communicates, e.g.
    ``hlo_all_reduces(jax.jit(step).lower(*args).compile().as_text())``: one
    all-reduce in the entry computation whose bytes are the parameter bytes (plus the
    loss) means the gradients cross the devices exactly once per step. (XLA may send
    a gradient identical to another one only once, so the bytes can fall slightly
    short of the parameter bytes.)
    """
    found = []
    computation, in_entry = "", False
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            computation, in_entry = header.group(2), bool(header.group(1))
            continue
        match = _ALL_REDUCE.match(line)
        if not match:
            continue
        num_bytes, arrays = 0, _ARRAY_TYPE.findall(match.group(2))
        for dtype, dims in arrays:
            size = 1
            for d in filter(None, dims.split(",")):
                size *= int(d)
            num_bytes += size * _DTYPE_BYTES.get(dtype, 4)
        found.append(AllReduce(match.group(1), computation, in_entry, len(arrays), num_bytes))
    return found
