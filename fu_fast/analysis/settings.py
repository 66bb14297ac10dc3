"""The settings an analysis's numbers depend on (docs/definitions.md), each default written once.

``fu_fast.analyze`` takes them as keywords with these defaults, the command line takes its
defaults and help from here, and a sweep's ``[analyze]`` table is checked by building one.
Whatever is given, an AnalysisSettings holds valid, plain values (ints are ints, the levels
are the grid) or the constructor raised FuFastError naming the setting.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence, Union

from ..errors import FuFastError, integer_setting
from . import masks

UNITS = ("auto", "position", "channel")


def _setting(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class AnalysisSettings:
    tolerance: float = _setting(0.2, "label-agreement tolerance t of the prunable fraction, in [0, 1)")
    pca_tolerance: float = _setting(0.05, "share of the variance the kept components may leave out, in [0, 1)")
    repeats: int = _setting(3, "random ablation orders; the prunable fraction is their max")
    levels: Union[int, Sequence[float]] = _setting(21, "ablation fractions from 0 to 1 (a count, or the grid)")
    sample_cap: int = _setting(50_000, "most sampled positions per conv layer for redundancy")
    unit: str = _setting("auto", "ablation unit of conv and token layers: every element (position), whole "
                                 "channels or features (channel), or auto: position for conv, features for tokens")
    seed: int = _setting(0, "seed of the masks and the position sample; nothing else is random")

    def __post_init__(self) -> None:
        # Frozen: normalised values are set through object.__setattr__, once, here.
        for name in ("tolerance", "pca_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
                raise FuFastError(f"{name} must be a number in [0, 1), got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "repeats", integer_setting(self.repeats, "repeats"))
        object.__setattr__(self, "sample_cap", integer_setting(self.sample_cap, "sample_cap", least=2))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise FuFastError(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.unit not in UNITS:
            raise FuFastError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        levels = self.levels
        if isinstance(levels, (bool, str)) or not isinstance(levels, (numbers.Integral, Sequence)) and \
                not hasattr(levels, "__iter__"):
            raise FuFastError(f"levels must be an integer (the number of fractions) or a list of fractions, "
                              f"got {levels!r}")
        try:
            grid = masks.level_grid(levels)
        except (TypeError, ValueError) as e:
            raise FuFastError(str(e)) from None
        # A count stays a count (as given, for the record); a grid becomes a tuple of floats.
        object.__setattr__(self, "levels", int(levels) if isinstance(levels, numbers.Integral) else tuple(grid))

    @property
    def grid(self) -> list[float]:
        """The ablation fractions, from 0 to 1."""
        return masks.level_grid(self.levels if isinstance(self.levels, int) else list(self.levels))

    def record(self) -> dict:
        """The settings as the result document records them (levels as the grid)."""
        return {**asdict(self), "levels": self.grid}


DEFAULTS = AnalysisSettings()


# The one-line description of each setting (the command line's --help).
HELP = {f.name: f.metadata["help"] for f in fields(AnalysisSettings)}
