"""fu-fast: measure frivolous (prunable and redundant) units of neural networks, fast.

    import fu_fast
    result = fu_fast.analyze(model, data)      # one pass over the data
    result.to_dict()                           # the JSON document of docs/result-format.md
    fu_fast.gain([0.25, 0.5, 1, 2, 4], values) # how a quantity grows with width
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._lazy import lazy_attributes  # noqa: E402  (light: no torch)
from .errors import FuFastError  # noqa: E402

# The rest imports torch: it is loaded on first use, so that `fu-fast --help` and the command
# line's own modules start without it.
_LAZY = {"analyze": "analysis", "gain": "analysis", "AnalysisResult": "analysis", "LayerResult": "analysis",
         "build_info": "kernels", "models": None, "data": None}

__all__ = ["__version__", "analyze", "gain", "build_info", "AnalysisResult", "LayerResult", "FuFastError",
           "models", "data"]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
