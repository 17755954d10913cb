"""Lazy package attributes (PEP 562), so that importing a package loads no heavy module."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package whose public functions win over same-named submodules.

    ``diffjax.app.generate`` is both a function and the module that defines it. Importing
    the submodule makes the import system set the package attribute to the module;
    this class refuses that one assignment, so the attribute stays the function (as an
    eager ``from diffjax.app.generate import generate`` in ``__init__`` would leave it). The
    module itself is in ``sys.modules`` as always.
    """

    _lazy_names: Mapping[str, str] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in self._lazy_names
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            return
        super().__setattr__(name, value)


def lazy_attributes(
    package: str, namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose public names load on first use.

    Args:
      package: the package's ``__name__``.
      namespace: the package's ``globals()``; a loaded name is cached there.
      names: public name -> module that defines it.
    """
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    object.__setattr__(module, "_lazy_names", dict(names))

    def get_attribute(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def list_attributes() -> list[str]:
        return sorted([*namespace, *names])

    return get_attribute, list_attributes
