"""The paper's MLP for the synthetic data: one hidden ReLU layer of 128 units at width 1."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ._common import scaled

HIDDEN = 128


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
