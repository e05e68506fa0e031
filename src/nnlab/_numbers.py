"""Small numeric helpers shared by modules that must not import each other."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["float_or_none"]


def float_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, NaN or ±inf).

    Example:
        >>> float_or_none("0.5"), float_or_none(float("nan")), float_or_none(None)
        (0.5, None, None)
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
