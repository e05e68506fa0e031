"""Small numeric helpers shared by modules that must not import each other (the analysis and the studies)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["float_or_none", "to_jsonable"]


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


def to_jsonable(value: Any) -> Any:
    """JSON-ready copy: NumPy scalars/arrays to Python, NaN/inf to None, DataFrames to records, Paths to str."""
    # Imported here: the light users of this module (float_or_none) need neither.
    import numpy as np
    import pandas as pd

    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return to_jsonable(value.to_dict("records"))
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int)):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)
