"""Analysed layers: name -> module, kind from the output shape, the cut-point check, and
the default layers of a model.

A layer is named by the module whose output is analysed. Its output must be a cut point:
everything after it depends on the input only through that output. The check is
behavioural, so it works for any model: the layer's output for input x1 is substituted
into a forward pass on a different input x2; at a cut point the model then returns
f(x1) exactly (up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import FuFastError
from ..hooks import forward_hooks, on_call
from .outputs import forward_to_logits, logits_of

# Modules whose outputs are the natural "units" of a network when it names no layers.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.PReLU)


@dataclass
class Layer:
    name: str
    module: nn.Module
    shape: tuple[int, ...]            # one example's output shape: (C,) or (C, H, W)
    unit: str                         # "position" or "channel"
    suffix_bytes_per_row: int = 0     # memory estimate of the passes after this layer
    position: int = 0                 # when its output is computed in a forward pass (execution order)
    call: int | None = None           # which call of a module that runs several times ("name@call")

    def hook(self, fn) -> tuple[nn.Module, object]:
        """(module, hook) applying ``fn`` to this layer's output only (its call, if it names one)."""
        return self.module, on_call(self.call, fn)

    @property
    def kind(self) -> str:
        return "linear" if len(self.shape) == 1 else "conv"

    @property
    def units(self) -> int:
        """Units for redundancy: features or channels."""
        return self.shape[0]

    @property
    def spatial(self) -> int:
        return 1 if self.kind == "linear" else self.shape[1] * self.shape[2]

    @property
    def ablation_units(self) -> int:
        """n of docs/definitions.md: C*H*W for conv layers with unit=position, else C."""
        return self.units * self.spatial if self.unit == "position" else self.units

    @property
    def inner(self) -> int:
        """Elements per ablation unit in a row of the output."""
        return self.spatial if self.unit == "channel" else 1


def model_layers(model: nn.Module) -> list[str] | None:
    """The analysis layers a model declares (zoo models set ``analysis_layers``)."""
    declared = getattr(model, "analysis_layers", None)
    if callable(declared):
        declared = declared()
    return list(declared) if declared else None


class _Recorder:
    """Forward hooks on every module: call counts, output shapes and execution order."""

    def __init__(self, model: nn.Module):
        self.order: list[tuple[str, int, int]] = []  # (module name, call, output bytes per row)
        self.calls: dict[str, int] = {}
        self.shapes: dict[tuple[str, int], tuple[int, ...]] = {}   # (name, call) -> one example's shape
        self.outputs: dict[int, str] = {}       # id(output tensor) -> module name
        self.first_nonfinite: str | None = None  # the first module whose output has NaN/inf
        self.hooks = [(m, self._hook(name)) for name, m in model.named_modules() if name]

    def _hook(self, name):
        def record(_module, _inputs, output):
            call = self.calls.get(name, 0)
            self.calls[name] = call + 1
            if isinstance(output, torch.Tensor) and output.dim() >= 1:
                self.shapes[(name, call)] = tuple(output.shape[1:])
                per_row = output[0].numel() * output.element_size() if output.shape[0] else 0
                self.order.append((name, call, per_row))
                self.outputs[id(output)] = name
                if self.first_nonfinite is None and output.is_floating_point() \
                        and not bool(torch.isfinite(output).all()):
                    self.first_nonfinite = name
        return record


def _is_cut_point(forward, module: nn.Module, call: int | None, x1: torch.Tensor, x2: torch.Tensor) -> bool:
    captured = {}

    def capture(_m, _i, output):
        captured["output"] = output

    def substitute(_m, _i, _output):
        return captured["output"]

    with forward_hooks([(module, on_call(call, capture))]):
        reference = forward(x1)
    with forward_hooks([(module, on_call(call, substitute))]):
        substituted = forward(x2)
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return bool(torch.allclose(substituted, reference, rtol=1e-4, atol=1e-5 * scale + 1e-6))


def _other_input(x: torch.Tensor) -> torch.Tensor:
    """An input unlike x for the cut-point check: rows reversed, plus noise for float data."""
    generator = torch.Generator(device="cpu").manual_seed(12345)
    other = x.flip(0)
    if x.is_floating_point():
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device, x.dtype)
        scale = x.std() if x.numel() > 1 else x.abs().mean()
        other = other + noise * (scale if float(scale) > 0 else 1.0)
    return other


def resolve(model: nn.Module, probe: torch.Tensor, names: list[str] | None, unit: str,
            logits=None) -> tuple[list[Layer], list[dict]]:
    """Layers to analyse, checked on a probe batch; default layers when names is None. Returns
    them, and the default candidates that could not be analysed with the reason ({"layer",
    "reason"}): discovery skips those, while a layer the caller named is an error.
    ``logits`` finds the logits in the model's output (fu_fast.analysis.outputs.logits_of)."""
    forward = forward_to_logits(model, logits)
    modules = dict(model.named_modules())
    recorder = _Recorder(model)
    with forward_hooks(recorder.hooks):
        output = model(probe)
    if recorder.first_nonfinite is not None:
        raise FuFastError(f"module '{recorder.first_nonfinite}' produced NaN or infinite activations "
                          "on the first batch")
    output = logits_of(output, logits)   # FuFastError saying how to find them, when they cannot be found

    explicit = names is not None
    if names is None:
        names = model_layers(model)
        explicit = names is not None
    if names is None:
        output_module = recorder.outputs.get(id(output))
        names = [n for n, m in modules.items()
                 if isinstance(m, ACTIVATIONS) and recorder.calls.get(n) == 1 and n != output_module]

    x2 = _other_input(probe)
    layers, skipped = [], []
    for name in names:
        module_name, call = _parse_layer_name(name)
        module = modules.get(module_name) if module_name else None
        if module is None:
            raise FuFastError(f"unknown layer '{name}': the model has no module of that name")
        calls = recorder.calls.get(module_name, 0)
        if call is None and calls != 1:
            raise FuFastError(f"layer '{name}' runs {calls} times per forward pass; name a module that runs once, "
                              f"or one of its calls: '{name}@0' ... '{name}@{max(calls - 1, 0)}'")
        if call is not None and call >= calls:
            raise FuFastError(f"layer '{name}': '{module_name}' runs {calls} time(s) per forward pass "
                              f"(calls @0 ... @{max(calls - 1, 0)})")
        shape = recorder.shapes.get((module_name, call or 0))
        problem = None
        if shape is None or len(shape) not in (1, 3):
            problem = f"outputs {shape}; expected (N, C) or (N, C, H, W) tensors"
        elif not _is_cut_point(forward, module, call, probe, x2):
            problem = ("is not a cut point: the model's output depends on its input through another path "
                       "(a skip connection?)")
        if problem is not None:
            if explicit:
                raise FuFastError(f"layer '{name}' {problem}")
            skipped.append({"layer": name, "reason": problem})
            continue
        position = next(i for i, (n, c, _) in enumerate(recorder.order) if (n, c) == (module_name, call or 0))
        layers.append(Layer(name, module, shape, unit, _suffix_bytes(recorder.order, position), position, call))
    if not layers:
        skips = "; ".join(f"'{s['layer']}' {s['reason']}" for s in skipped[:3])
        raise FuFastError("the model has no analysable layers: name them with layers=[...] "
                          "(modules whose outputs are cut points)" + (f"; skipped {skips}" if skips else ""))
    return layers, skipped


def _suffix_bytes(order: list[tuple[str, int, int]], position: int) -> int:
    """Peak memory per row of a pass from the output at ``position`` on: that output plus the two
    largest after it (inference mode frees each intermediate once its consumer ran)."""
    own = order[position][2]
    after = sorted((b for _, _, b in order[position + 1:]), reverse=True)[:2]
    return own + sum(after)


def _parse_layer_name(name: str) -> tuple[str, int | None]:
    """"module.path" -> (module.path, None); "module.path@k" -> (module.path, k): the k-th call
    (from 0) of a module that runs several times per forward pass."""
    module_name, at, call = name.rpartition("@") if "@" in name else (name, "", "")
    if not at:
        return name, None
    if not call.isdigit():
        raise FuFastError(f"layer '{name}': after '@' comes the call's number (from 0), as in '{module_name}@0'")
    return module_name, int(call)
