"""Sweeps over width series: presets of the paper's experiments, or a TOML file.

    from fu_fast.sweep import load_config, run_sweep
    run_sweep(load_config(preset="mlp-synthetic"), "runs/mlp-synthetic")
"""

from .config import PRESETS, Member, SweepConfig, load_config
from .runner import Shard, SweepWarning, run_sweep

__all__ = ["PRESETS", "Member", "SweepConfig", "load_config", "Shard", "SweepWarning", "run_sweep"]
