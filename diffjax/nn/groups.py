"""GroupNorm group counts of the UNet, as plain integer arithmetic (no JAX).

Kept apart from the model so that config validation can ask which residual blocks would
lose their embedding without loading JAX.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DEFAULT_NUM_GROUPS", "embedding_erasing_widths", "group_count"]

# GroupNorm groups asked for by default (DDPM and ADM use 32).
DEFAULT_NUM_GROUPS = 32


def group_count(channels: int, num_groups: int) -> int:
    """Largest divisor of ``channels`` that is at most ``num_groups`` (GroupNorm groups)."""
    for g in range(min(num_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def embedding_erasing_widths(
    base_channels: int, channel_mults: Sequence[int], num_groups: int
) -> list[int]:
    """Residual-block widths at which GroupNorm removes an embedding added before it.

    A block of width ``c`` with ``group_count(c, num_groups) == c`` normalizes each
    channel on its own, which subtracts exactly the per-channel constant that an added
    time/class embedding contributes: the block's output does not depend on it.

    Args:
      base_channels: the UNet's first-level width.
      channel_mults: the multiplier of each level (the residual blocks' widths are
        ``base_channels * m``).
      num_groups: the GroupNorm group count asked for.

    Returns:
      The affected widths, sorted (empty when every block keeps its embedding).
    """
    widths = sorted({base_channels * m for m in channel_mults})
    return [c for c in widths if group_count(c, num_groups) == c]
