"""The analysis engine: one module per concept of docs/definitions.md.

The engine and results import torch and are loaded on first use, so that the settings
(fu_fast.analysis.settings), which the command line reads for its defaults, load without it.
"""

from __future__ import annotations

import importlib

_LAZY = {"analyze": "engine", "gain": "gain", "AnalysisResult": "result", "LayerResult": "result",
         "AnalysisSettings": "settings"}

__all__ = ["analyze", "gain", "AnalysisResult", "LayerResult", "AnalysisSettings"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fu_fast.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
