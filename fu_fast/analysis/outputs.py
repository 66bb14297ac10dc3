"""A model's logits, whatever form its forward returns them in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn

from ..errors import FuFastError


def logits_of(output, logits: Callable | None = None) -> torch.Tensor:
    """The (batch, classes) or (batch, tokens, classes) logits in a model's output: the output
    itself when it is a tensor, the first element of a tuple or list, the "logits" entry of a dict, or the ``logits``
    attribute of an output object (as HuggingFace models return); ``logits``, a callable from
    the output to the logits, covers any other form."""
    if logits is not None:
        found = logits(output)
    elif isinstance(output, torch.Tensor):
        found = output
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        found = output[0]
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        found = output["logits"]
    elif isinstance(getattr(output, "logits", None), torch.Tensor):
        found = output.logits
    else:
        raise FuFastError(f"the model returned a {type(output).__name__} without logits (a tensor, the first "
                          "element of a tuple or list, a dict's 'logits' or an output's .logits); pass logits=, "
                          "a function from the model's output to its (batch, classes) logits")
    if not isinstance(found, torch.Tensor) or found.dim() not in (2, 3):
        shape = tuple(found.shape) if isinstance(found, torch.Tensor) else type(found).__name__
        raise FuFastError(f"the model's logits must be (batch, classes) or (batch, tokens, classes), got {shape}")
    return found


def forward_to_logits(model: nn.Module, logits: Callable | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model as a function from inputs to logits (the model itself when it returns them)."""
    return lambda inputs: logits_of(model(inputs), logits)
