"""Real low-precision number formats as reference points for the bit constraints.

Significant bits (implicit leading 1 included) of each format's significand:
float16 11, bfloat16 8, float8 e4m3 4, float8 e5m2 3.
"""

from __future__ import annotations

__all__ = ["FORMAT_BITS"]

FORMAT_BITS: dict[str, int] = {"bfloat16": 8, "float16": 11, "float8_e4m3": 4, "float8_e5m2": 3}
