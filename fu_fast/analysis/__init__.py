"""The analysis engine: one module per concept of docs/definitions.md.

The engine and results import torch and are loaded on first use, so that the settings
(fu_fast.analysis.settings), which the command line reads for its defaults, load without it.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {"analyze": "engine", "gain": "gain", "AnalysisResult": "result", "LayerResult": "result",
         "AnalysisSettings": "settings"}

__all__ = ["analyze", "gain", "AnalysisResult", "LayerResult", "AnalysisSettings"]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
