"""Helpers shared by the model files."""

from __future__ import annotations

from ..errors import FuFastError


def scaled(base: int, width: float) -> int:
    """Units (features or filters) of a layer that has ``base`` units at width 1.

    ``round(base * width)``; a width that rounds a layer down to no units is refused (docs/models-and-training.md:
    "a width below the smallest that leaves one unit" is a user error) rather than silently
    given one unit, which would break the proportional scaling the analysis relies on.
    """
    units = round(base * width)
    if units < 1:
        raise FuFastError(f"width {width:g} leaves a layer of {base} units (at width 1) with none; "
                          f"use a width of at least {1 / base:g}")
    return units
