"""Joining a multi-process (multi-host) run: ``jax.distributed.initialize`` with guard rails.

One training run can span several processes (the hosts of a TPU pod, the nodes of a GPU
cluster, or several processes on one machine). Every process runs the same
``diffjax train`` command; after :func:`initialize`, ``jax.devices()`` lists the devices
of all processes, the training Mesh spans them, and each process feeds only its slice of
every global batch (``jax.make_array_from_process_local_data``).

Two ways in:

* explicit: ``coordinator_address`` (``host:port`` of process 0), ``num_processes`` and
  ``process_id``, e.g. ``diffjax train --coordinator-address 10.0.0.1:1234
  --num-processes 4 --process-id $RANK ...``;
* ``auto_detect=True``: JAX's own cluster detection (Cloud TPU pods, SLURM, Open MPI,
  Kubernetes job sets), ``jax.distributed.initialize()`` with no arguments.

JAX aborts the whole process (SIGABRT, no Python exception) when the coordinator cannot
be reached, so :func:`initialize` first checks the address itself and raises a
``TimeoutError`` that says what it waited for.
"""

from __future__ import annotations

import socket
import time

import jax

DEFAULT_TIMEOUT_S = 300


def parse_address(address: str) -> tuple[str, int]:
    """Splits ``host:port`` (``[v6]:port`` for IPv6) into host and port, with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator_address={address!r} must look like 'host:port'")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float, *, poll_s: float = 0.25) -> None:
    """Waits until something accepts TCP connections at ``address``.

    Raises:
      TimeoutError: nothing listened there within ``timeout_s`` seconds.
    """
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(poll_s, 0.1)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the coordinator at {address} did not answer within {timeout_s:g} s "
                    f"({error.strerror or error}); start process 0 there first, or check "
                    "the address, the port and the firewall"
                ) from None
            time.sleep(poll_s)


def check_port_free(address: str) -> None:
    """Raises OSError if process 0 could not listen on ``address``'s port."""
    _, port = parse_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise OSError(
                f"process 0 cannot serve as coordinator on port {port} of {address!r}: "
                f"{error.strerror or error}; pick a free port"
            ) from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """Joins a multi-process run when asked to; a no-op for a single process.

    Must run before anything touches a JAX backend (creating arrays, ``jax.devices()``).
    On CPU it selects the gloo collectives, which multi-process CPU runs need.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: how many processes the run has.
      process_id: this process's rank in ``[0, num_processes)``.
      auto_detect: let JAX detect the cluster (TPU pod, SLURM, ...) instead.
      timeout_s: how long to wait for the coordinator and for all processes to join.

    Returns:
      Whether the run spans more than one process.

    Raises:
      ValueError: an incomplete or inconsistent set of arguments.
      TimeoutError: the coordinator did not answer within ``timeout_s``.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if auto_detect:
        if any(value is not None for value in explicit):
            raise ValueError(
                "auto_detect=True takes no coordinator_address, num_processes or process_id"
            )
        jax.distributed.initialize(initialization_timeout=int(timeout_s))
        return jax.process_count() > 1
    if all(value is None for value in explicit):
        return False
    names = ("coordinator_address", "num_processes", "process_id")
    missing = [name for name, value in zip(names, explicit, strict=True) if value is None]
    if missing:
        raise ValueError(f"a multi-process run needs {', '.join(missing)} as well")
    assert coordinator_address is not None and num_processes is not None
    assert process_id is not None
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"{process_id=} must be in [0, {num_processes=}) and num_processes >= 1"
        )
    if timeout_s <= 0:
        raise ValueError(f"{timeout_s=} must be positive")
    if process_id == 0:
        check_port_free(coordinator_address)
    else:
        wait_for_coordinator(coordinator_address, timeout_s)
    # Only the CPU backend reads this; GPU and TPU bring their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=max(1, int(timeout_s)),
    )
    return num_processes > 1
