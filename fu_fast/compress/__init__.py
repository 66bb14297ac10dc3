"""Thinner equivalent networks: refactor redundant units away and prune prunable ones.

    from fu_fast.compress import compress, save          # (modules: engine, checkpoint)
    result = compress(model, fit_data, eval_data=test_data)    # method="both" by default
    result.model                 # a new, smaller nn.Module of the same family
    result.report                # per layer units/parameters before and after, label agreement
    save(result, "runs/mlp-x4-thin", source="runs/mlp-x4")     # for `fu-fast analyze --checkpoint`

Works on sequential models (nn.Sequential chains: the zoo's mlp and alexnet, or your own).
Models with skip connections or concatenated branches (resnet56, resnet18, inception_v3*)
are refused: a unit there is read by more than one consumer, so no single layer's weights
can absorb it. Layers are processed from the output backwards; see engine.compress for the
method and refactor.py for the maths (the paper's Appendix C).
"""

from .engine import METHODS, SCHEMA, SEARCHES, CompressResult, compress
from .checkpoint import REPORT_FILE, save, thin_config

__all__ = ["compress", "save", "thin_config", "CompressResult", "METHODS", "SEARCHES", "SCHEMA", "REPORT_FILE"]
