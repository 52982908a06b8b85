"""The accuracy numbers of the release stage: which values count, how they print, the float -> int8 drop.

One definition for the gate, the model card and the run report. NaN and +-inf are not numbers here: a
promotion must never be decided on them, and a report shows them as "n/a" rather than as a figure.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

METRICS = ("map50", "map")
METRIC_NAMES = {"map50": "mAP@0.5", "map": "mAP@[.5:.95]"}


def is_number(value: Any) -> TypeGuard[int | float]:
    """A finite int or float (bools, NaN and infinities are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any, digits: int = 3) -> str:
    """A number with `digits` decimals, or "n/a"."""
    return f"{value:.{digits}f}" if is_number(value) else "n/a"


def quantization_drop(
    float_m: dict[str, Any] | None, int8_m: dict[str, Any] | None
) -> dict[str, float | None] | None:
    """float - int8 per metric (positive = int8 is worse), absolute and relative to float."""
    if not float_m or not int8_m:
        return None
    drop: dict[str, float | None] = {}
    for key in METRICS:
        f, q = float_m.get(key), int8_m.get(key)
        if is_number(f) and is_number(q):
            drop[key] = round(f - q, 6)
            drop[f"{key}_relative"] = round((f - q) / f, 6) if f > 0 else None
    return drop or None
