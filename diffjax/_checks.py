"""Argument checks shared by the primitives and the applications.

One spelling of each check, so every function refuses bad input with the same kind of
message: the argument's name, what it must be, and what was given. NumPy integers are
integers; ``bool`` (an ``int`` subclass) is not.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["check_choice", "check_int", "is_int"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), and not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    what: str = "",
) -> int:
    """Returns ``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``.

    Args:
      name: the argument's name, as the caller spells it (``'num_steps'``).
      value: what was given.
      minimum: the smallest allowed value (``None``: no bound).
      maximum: the largest allowed value (``None``: no bound).
      what: an explanation for the message (``'the number of sampler steps'``).

    Raises:
      ValueError: naming ``name``, for a non-integer (a ``bool`` or float included) or
        a value out of range.
    """
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    expected = "an int" + (f" {' and '.join(bounds)}" if bounds else "")
    if what:
        expected += f" ({what})"
    if not is_int(value):
        raise ValueError(
            f"{name} must be {expected}, got {name}={value!r} of type {type(value).__name__}"
        )
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {expected}, got {name}={int(value)}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Returns ``value`` if it is one of ``choices``.

    Raises:
      ValueError: naming ``name`` and listing the choices.
    """
    try:
        ok = value in choices
    except TypeError:  # an unhashable value against a set of choices
        ok = False
    if not ok:
        raise ValueError(f"unknown {name}={value!r}; expected one of {tuple(choices)}")
    return value
