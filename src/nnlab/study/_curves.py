"""What the study statistics and the study figure both use: the tolerances and the precision curves."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["TOLERANCES", "precision_curves"]

# "Within" the reference: a mean test R² at most this far below the reference's.
TOLERANCES = (0.002, 0.005)


def precision_curves(table: pd.DataFrame, keys: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The precision cells grouped into curves over bits: one per value of the other keys, reference left out.

    The label names the rounding and, where they vary, the other keys.
    """
    rest = [k for k in keys if k != "bits"]
    body = table.iloc[1:]  # row 0 is the reference
    varying = [k for k in rest if k != "rounding" and table[k].nunique(dropna=False) > 1]
    lines: dict[str, pd.DataFrame] = {}
    for values, group in body.groupby(rest, sort=False, dropna=False):
        values = dict(zip(rest, values if isinstance(values, tuple) else (values,)))
        rounding = values.get("rounding")
        parts = ["no rounding" if rounding == "none" else str(rounding)] if "rounding" in values else []
        parts += [f"{k}={values[k]}" for k in varying]
        lines[", ".join(parts)] = group.sort_values("bits", ascending=False)
    return lines
