"""The model registry: one entry per model family holding every fact the package needs about
it, registered beside the family's code (timm's pattern). Other packages ask the registry:
fu_fast.models builds, fu_fast.train takes its training defaults, fu_fast.compress asks whether
it may thin the model and how to record a thinned one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from torch import nn

from ..errors import FuFastError

# Build options shared by the models of one data set.
CIFAR_OPTIONS = {"dropout": 0.0, "num_classes": 10, "input_size": 32}
IMAGENET_OPTIONS = {"dropout": 0.0, "num_classes": 1000}
# Why fu_fast.compress cannot thin a ResNet: a block output's unit is read by the next block and
# by the residual path, so no single consumer's input columns could absorb it.
RESIDUAL = "its blocks add a residual (skip) connection to their output"


@dataclass(frozen=True)
class ModelEntry:
    """Every fact about one model family (its analysis layers live on the built model)."""
    name: str
    builder: Callable[..., nn.Module]    # (width, **options except init) -> the model
    options: Mapping                     # every build option with its default
    training: Mapping                    # the paper's training settings (docs/models-and-training.md)
    # Build options a training run records explicitly (an ImageNet model's image side).
    training_options: Mapping = field(default_factory=dict)
    # Why fu_fast.compress cannot thin this family; None for the sequential chains it can.
    compress_refusal: str | None = None
    # The build record of a thinned model: (the wide model's record, the thin model) -> record.
    thin_record: Callable[[dict, nn.Module], dict] | None = None


_ENTRIES: dict[str, ModelEntry] = {}


def register_model(name: str, *, options: dict, training: dict, training_options: dict | None = None,
                   compress_refusal: str | None = None, thin_record=None):
    """Decorator registering a model family's builder (a class or a function) under ``name``."""
    def register(builder):
        if name in _ENTRIES:
            raise ValueError(f"model {name!r} is registered twice")
        _ENTRIES[name] = ModelEntry(name, builder, MappingProxyType(dict(options)),
                                    MappingProxyType(dict(training)), MappingProxyType(dict(training_options or {})),
                                    compress_refusal, thin_record)
        return builder
    return register


def entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; FuFastError naming the known models for anything else."""
    if not isinstance(name, str) or name not in _ENTRIES:
        raise FuFastError(f"unknown model {name!r}; choose one of {', '.join(_ENTRIES)}")
    return _ENTRIES[name]


def names() -> list[str]:
    """The model names, in the order their families were registered (the paper's)."""
    return list(_ENTRIES)
