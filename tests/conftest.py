"""Test-session setup.

- Two fake CPU devices, so every training test runs data-parallel over a Mesh.
- A persistent XLA compilation cache: several tests compile the same tiny UNet step,
  and XLA:CPU compiles are the bulk of the suite's time.
"""

import os
import tempfile

import chex
import jax

chex.set_n_cpu_devices(2)

_CACHE_DIR = os.environ.get(
    "DIFFJAX_TEST_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "diffjax-test-xla-cache")
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
