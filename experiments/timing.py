"""Timing helper shared by the benchmark scripts in this folder."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def time_calls(fn: Callable[[], Any], repeats: int) -> tuple[float, float, list[float]]:
    """Times ``fn`` once (compilation included), then ``repeats`` more times.

    Every call is waited for with ``jax.block_until_ready``.

    Returns:
      ``(first_call_seconds, median_seconds, all_repeat_seconds)``.
    """
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), times
