"""Lazy package attributes: heavy modules (TensorFlow, Optuna) load on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, exports: Mapping[str, str], namespace: dict[str, Any],
                    names: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__``/``__dir__`` pair resolving ``exports`` (name -> module) on first access.

    Example:
        >>> # __getattr__, __dir__ = lazy_attributes(__name__, {"Thing": "pkg._impl"}, globals(), __all__)
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # cache: later lookups do not come back here
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
