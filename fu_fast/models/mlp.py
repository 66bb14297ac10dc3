"""The paper's MLP for the synthetic data: one hidden ReLU layer of 128 units at width 1."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ._common import scaled
from .registry import register_model

HIDDEN = 128


def _thin_record(wide: dict, thin: nn.Module) -> dict:
    # One hidden layer of k units is exactly the MLP at width k / HIDDEN.
    return {**wide, "width": thin.fc1.out_features / HIDDEN}


@register_model("mlp", options={"init": "gaussian:0.01", "dropout": 0.0, "num_classes": 2, "input_dim": 10},
                training=dict(data="synthetic", optimizer="sgd_momentum", lr=0.05, schedule="constant",
                              batch_size=32, epochs=50, weight_decay=0.0, augment=False, patience=None),
                thin_record=_thin_record)
class MLP(nn.Sequential):
    """fc1 -> relu1 -> drop1 -> out. The analysed layer is ``relu1``, the hidden layer after
    its ReLU. A binary task has two output logits, so the predicted label is their argmax."""

    def __init__(self, width: float, *, input_dim: int, num_classes: int, dropout: float):
        hidden = scaled(HIDDEN, width)
        super().__init__(OrderedDict([
            ("fc1", nn.Linear(input_dim, hidden)),
            ("relu1", nn.ReLU()),
            ("drop1", nn.Dropout(dropout)),
            ("out", nn.Linear(hidden, num_classes)),
        ]))
        self.analysis_layers = ["relu1"]
