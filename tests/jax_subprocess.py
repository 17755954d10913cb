"""Running JAX in child processes from tests: environment with fake CPU devices."""

import os

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(num_devices, *xla_flags):
    """Environment for a JAX subprocess with ``num_devices`` fake CPU devices.

    The child imports this checkout and shares the session's persistent compilation
    cache (see conftest).
    """
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = " ".join(
        [f"--xla_force_host_platform_device_count={num_devices}", *xla_flags]
    )
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env
