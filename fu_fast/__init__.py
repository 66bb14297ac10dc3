"""fu-fast: measure frivolous (prunable and redundant) units of neural networks, fast.

    import fu_fast
    result = fu_fast.analyze(model, data)      # one pass over the data
    result.to_dict()                           # the JSON document of docs/result-format.md
    fu_fast.gain([0.25, 0.5, 1, 2, 4], values) # how a quantity grows with width
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .errors import FuFastError  # noqa: E402  (light: no torch)

# The rest imports torch: it is loaded on first use, so that `fu-fast --help` and the command
# line's own modules start without it.
_LAZY = {"analyze": "analysis", "gain": "analysis", "AnalysisResult": "analysis", "LayerResult": "analysis",
         "build_info": "kernels", "models": None, "data": None}

__all__ = ["__version__", "analyze", "gain", "build_info", "AnalysisResult", "LayerResult", "FuFastError",
           "models", "data"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fu_fast' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value   # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
