"""The analysis engine: one module per concept of docs/definitions.md."""

from .engine import analyze
from .gain import gain
from .result import AnalysisResult, LayerResult

__all__ = ["analyze", "gain", "AnalysisResult", "LayerResult"]
