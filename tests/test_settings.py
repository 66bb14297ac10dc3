"""AnalysisSettings is the one source of the analysis defaults: the API, the command line and
the sweep all take theirs from it, and it refuses a bad value in one line naming the setting."""

import dataclasses
import inspect

import numpy as np
import pytest
import typer

from fu_fast import FuFastError
from fu_fast.analysis import AnalysisSettings, analyze
from fu_fast.analysis.settings import DEFAULTS, HELP
from fu_fast.cli import analyze_command
from fu_fast.sweep import config as sweep_config

NAMES = [f.name for f in dataclasses.fields(AnalysisSettings)]


def test_api_command_line_and_sweep_share_the_defaults():
    api = inspect.signature(analyze).parameters
    cli = inspect.signature(analyze_command.analyze).parameters
    for name in NAMES:
        default = getattr(DEFAULTS, name)
        assert api[name].default == default, name
        option = cli[name].default
        assert isinstance(option, typer.models.OptionInfo)
        assert (option.default.value if hasattr(option.default, "value") else option.default) == default, name
        assert sweep_config.analysis_settings({})[name] == (DEFAULTS.grid if name == "levels" else default), name
        assert HELP[name]


@pytest.mark.parametrize("changes, message", [
    ({"tolerance": 1.0}, "tolerance must be a number in [0, 1)"), ({"tolerance": "0.2"}, "tolerance must be a number"),
    ({"pca_tolerance": True}, "pca_tolerance must be a number"), ({"repeats": 0}, "repeats must be a positive integer"),
    ({"repeats": 2.5}, "repeats must be a positive integer"), ({"levels": 1}, "levels must be at least 2"),
    ({"levels": 2.5}, "levels must be an integer"), ({"levels": [0.0, 0.7, 0.5]}, "increase strictly"),
    ({"sample_cap": 1}, "sample_cap must be an integer of at least 2"), ({"unit": "pixel"}, "unit must be one of"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_bad_values_are_refused_naming_the_setting(changes, message):
    with pytest.raises(FuFastError, match=message.replace("[", r"\[").replace(")", r"\)")):
        AnalysisSettings(**changes)


def test_values_are_normalised_and_recorded_with_the_grid():
    settings = AnalysisSettings(tolerance=0, repeats=np.int64(2), levels=np.array([0.0, 0.5, 1.0]), seed=np.int64(-3))
    assert settings.tolerance == 0.0 and type(settings.tolerance) is float
    assert type(settings.repeats) is int and settings.seed == -3 and settings.levels == (0.0, 0.5, 1.0)
    assert settings.record()["levels"] == [0.0, 0.5, 1.0] and AnalysisSettings(levels=3).grid == [0.0, 0.5, 1.0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.repeats = 5
