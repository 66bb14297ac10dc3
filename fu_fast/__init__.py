"""fu-fast: measure frivolous (prunable and redundant) units of neural networks, fast.

    import fu_fast
    result = fu_fast.analyze(model, data)      # one pass over the data
    result.to_dict()                           # the JSON document of docs/result-format.md
    fu_fast.gain([0.25, 0.5, 1, 2, 4], values) # how a quantity grows with width
"""

__version__ = "0.1.0"

from . import data, models
from .analysis import AnalysisResult, LayerResult, analyze, gain
from .errors import FuFastError
from .kernels import build_info

__all__ = ["__version__", "analyze", "gain", "build_info", "AnalysisResult", "LayerResult", "FuFastError",
           "models", "data"]
