"""Analysed layers: name -> module, kind from the output shape, where a layer's masked copies
begin, and the default layers of a model.

A layer is named by the module whose output is analysed ("module@k" for the k-th call of a
module that runs several times per forward pass). Its masked copies begin at the layer itself
when the layer is a *cut point* (everything after it depends on the input only through its
output); otherwise at the latest cut point before it from which it is computed, or at the
model input when there is none: the batch is copied K times there and mask k is applied to
copy k at the layer. The cut-point check is behavioural, so it works for any model: the
output for input x1 is substituted into a forward pass on a different input x2; at a cut
point the model then returns f(x1) exactly (up to rounding).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import FuFastError
from ..hooks import forward_hooks, on_call
from .outputs import forward_to_logits, logits_of

# Modules whose outputs are the natural "units" of a network when it names no layers.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.PReLU)
# Parametrised modules that do not count towards a block's layers (they rescale, not mix).
_NOT_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.EmbeddingBag)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
KINDS = {1: "linear", 2: "token", 3: "conv"}   # dimensions of one example's output -> kind


@dataclass
class Site:
    """A module output in a forward pass: a module, and which of its calls (None: it runs once).
    ``module`` None is the model input."""
    name: str | None
    module: nn.Module | None
    call: int | None = None
    position: int = -1                # when it is computed in a forward pass (execution order)

    def hook(self, fn) -> tuple[nn.Module, object]:
        """(module, hook) applying ``fn`` to this output only (its call, if it names one); also
        for a pre-hook, to the inputs of that call."""
        return self.module, on_call(self.call, fn)


MODEL_INPUT = Site(None, None)


@dataclass
class Layer(Site):
    shape: tuple[int, ...] = ()       # one example's output shape: (C,), (T, D) or (C, H, W)
    unit: str = "position"            # "position" or "channel", resolved for this layer's kind
    suffix_bytes_per_row: int = 0     # memory estimate of the passes from where the copies begin
    # Where the K masked copies begin: None at the layer (a cut point), else an earlier output
    # (MODEL_INPUT: the model input), the masks then being applied in place at the layer.
    copies_from: Site | None = field(default=None)

    @property
    def kind(self) -> str:
        return KINDS[len(self.shape)]

    @property
    def units(self) -> int:
        """Units for redundancy: features, channels, or a token layer's features."""
        return self.shape[-1] if self.kind == "token" else self.shape[0]

    @property
    def spatial(self) -> int:
        """Samples per example for redundancy: 1, the tokens, or the H*W positions."""
        if self.kind == "linear":
            return 1
        return self.shape[0] if self.kind == "token" else self.shape[1] * self.shape[2]

    @property
    def ablation_units(self) -> int:
        """n of docs/definitions.md: every element with unit=position, else the C units."""
        return self.units * self.spatial if self.unit == "position" else self.units

    @property
    def expansion_point(self) -> str | None:
        """What the result document records: where the masked copies begin (None: the input)."""
        return self.name if self.copies_from is None else self.copies_from.name

    def channels_view(self, output: torch.Tensor) -> torch.Tensor:
        """The output as (B, C) or (B, C, H, W) with the units as channels: a token layer's
        (B, T, D) is viewed as (B, D, T, 1), the channels_last layout of the same memory."""
        return output.transpose(1, 2).unsqueeze(3) if self.kind == "token" else output

    def masked_view(self, output: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(view, inner) that the masking kernels take: runs of ``inner`` elements in NCHW order are
        units. Token features are strided, so they go through the channels view (NHWC memory);
        every element of a token layer (unit=position) is a unit in memory order, t * D + d."""
        if self.kind == "token" and self.unit == "channel":
            return self.channels_view(output), self.spatial
        return output, self.spatial if self.unit == "channel" else 1

    def from_masked_view(self, view: torch.Tensor) -> torch.Tensor:
        if self.kind == "token" and self.unit == "channel":
            return view.squeeze(3).transpose(1, 2)
        return view


def resolve_unit(unit: str, kind: str) -> str:
    """The analysis's unit setting for one layer: "auto" is position for conv layers (the paper's
    units) and the features for token layers; linear layers have one element per unit."""
    if kind == "linear":
        return "position"
    if unit == "auto":
        return "position" if kind == "conv" else "channel"
    return unit


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

    def position(self, name: str, call: int) -> int:
        return next(i for i, (n, c, _) in enumerate(self.order) if (n, c) == (name, call))


class _CutPoints:
    """The cut-point check on a probe batch, each module output checked at most once. The children
    of a plain nn.Sequential are cut points by construction (its forward hands each child's output
    to the next and to nothing else), so theirs need no forwards."""

    def __init__(self, model: nn.Module, forward, probe: torch.Tensor):
        self.forward, self.probe = forward, probe
        self.known: dict[tuple[str, int | None], bool] = dict.fromkeys(
            ((name, None) for name in _chain_children(model)), True)

    def __call__(self, site: Site) -> bool:
        key = (site.name, site.call)
        if key not in self.known:
            self.known[key] = self._check(site)
        return self.known[key]

    @functools.cached_property
    def other(self) -> torch.Tensor:
        return _other_input(self.probe)

    def _check(self, site: Site) -> bool:
        captured = {}

        def capture(_m, _i, output):
            captured["output"] = output

        def substitute(_m, _i, _output):
            return captured["output"]

        with forward_hooks([site.hook(capture)]):
            reference = self.forward(self.probe)
        with forward_hooks([site.hook(substitute)]):
            substituted = self.forward(self.other)
        scale = float(reference.abs().max()) if reference.numel() else 0.0
        return bool(torch.allclose(substituted, reference, rtol=1e-4, atol=1e-5 * scale + 1e-6))


def _chain_children(model: nn.Module) -> list[str]:
    """The children of a model whose forward is nn.Sequential's, unchanged by hooks on the model
    (a hook on it sees the input and could add a path around the children); else none."""
    # Global hooks (register_module_forward_hook) run on every module, this one too.
    hooked = any(getattr(owner, name, None) for owner, name in (
        (model, "_forward_hooks"), (model, "_forward_pre_hooks"),
        (nn.modules.module, "_global_forward_hooks"), (nn.modules.module, "_global_forward_pre_hooks")))
    if type(model).forward is not nn.Sequential.forward or hooked:
        return []
    return [name for name, _ in model.named_children()]


def _other_input(x: torch.Tensor) -> torch.Tensor:
    """An input unlike x for the cut-point check: rows reversed, plus noise for float data
    (integer inputs, such as token ids, are shifted cyclically instead)."""
    generator = torch.Generator(device="cpu").manual_seed(12345)
    other = x.flip(0)
    if x.is_floating_point():
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device, x.dtype)
        scale = x.std() if x.numel() > 1 else x.abs().mean()
        other = other + noise * (scale if float(scale) > 0 else 1.0)
    elif x.dim() > 1 and x.shape[0] == 1:
        other = x.roll(1, dims=-1)
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
    cut_points = _CutPoints(model, forward, probe)
    need_cut_point = set()   # default activations are analysed where they are cut points only
    if names is None:
        names, need_cut_point = default_layers(model, recorder, recorder.outputs.get(id(output)))

    layers, skipped = [], []
    for name in names:
        site, shape, problem = _site(name, modules, recorder, explicit)
        if problem is None and name in need_cut_point and not cut_points(site):
            problem = ("is not a cut point: the model's output depends on its input through another path "
                       "(a skip connection?)")
        if problem is not None:
            if explicit:
                raise FuFastError(f"layer '{name}' {problem}")
            skipped.append({"layer": name, "reason": problem})
            continue
        layer = Layer(site.name, site.module, site.call, site.position, shape, resolve_unit(unit, KINDS[len(shape)]))
        if not cut_points(site):
            layer.copies_from = _copies_from(layer, recorder, modules, cut_points, forward, probe)
        start = layer.position if layer.copies_from is None else layer.copies_from.position
        layer.suffix_bytes_per_row = _suffix_bytes(recorder.order, start, probe)
        layers.append(layer)
    if not layers:
        skips = "; ".join(f"'{s['layer']}' {s['reason']}" for s in skipped[:3])
        raise FuFastError("the model has no analysable layers: name them with layers=[...]"
                          + (f"; skipped {skips}" if skips else ""))
    return layers, skipped


def _site(name: str, modules: dict[str, nn.Module], recorder: _Recorder, explicit: bool):
    """(site, one example's output shape, None) for the module output a layer name means, or
    (None, None, why it cannot be analysed). An unknown name, or a bad call, is an error whoever
    named it; so is a module that runs several times named by the caller without its call."""
    module_name, call = _parse_layer_name(name)
    module = modules.get(module_name) if module_name else None
    if module is None:
        raise FuFastError(f"unknown layer '{name}': the model has no module of that name")
    calls = recorder.calls.get(module_name, 0)
    if call is None and calls != 1:
        if calls == 0:
            return None, None, "does not run in a forward pass of the model in eval mode"
        if not explicit:
            return None, None, f"runs {calls} times per forward pass (name one call: '{name}@0' ...)"
        raise FuFastError(f"layer '{name}' runs {calls} times per forward pass; name a module that runs once, "
                          f"or one of its calls: '{name}@0' ... '{name}@{max(calls - 1, 0)}'")
    if call is not None and call >= calls:
        raise FuFastError(f"layer '{name}': '{module_name}' runs {calls} time(s) per forward pass "
                          f"(calls @0 ... @{max(calls - 1, 0)})")
    shape = recorder.shapes.get((module_name, call or 0))
    if shape is None or len(shape) not in KINDS:
        return None, None, (f"outputs {shape if shape is not None else 'no tensor'}; expected (N, C), (N, T, D) "
                            "or (N, C, H, W) tensors")
    return Site(name, module, call, recorder.position(module_name, call or 0)), shape, None


def _copies_from(layer: Layer, recorder: _Recorder, modules, cut_points: _CutPoints, forward,
                 probe: torch.Tensor) -> Site:
    """Where the masked copies of a layer that is not a cut point begin: the latest module output
    before it that is a cut point and from which it is computed (checked: copies made there reach
    the layer), else the model input."""
    for position in range(layer.position - 1, -1, -1):
        module_name, call, _ = recorder.order[position]
        runs = recorder.calls[module_name]
        site = Site(module_name if runs == 1 else f"{module_name}@{call}", modules[module_name],
                    None if runs == 1 else call, position)
        if cut_points(site):
            return site if _copies_reach(site, layer, forward, probe) else MODEL_INPUT
    return MODEL_INPUT


def _copies_reach(site: Site, layer: Layer, forward, probe: torch.Tensor) -> bool:
    """Whether two copies of the batch made at ``site`` arrive at the layer as 2B rows."""
    rows = {}

    def copy(_m, _i, output):
        return torch.cat([output, output])

    def count(_m, _i, output):
        rows["layer"] = output.shape[0]

    try:
        with forward_hooks([site.hook(copy), layer.hook(count)]):
            forward(probe)
    except RuntimeError:
        return False
    return rows.get("layer") == 2 * probe.shape[0]


def default_layers(model: nn.Module, recorder: _Recorder, output_module: str | None) -> tuple[list[str], set[str]]:
    """What the paper analyses, found in any model: the outputs of its blocks (ResNet blocks,
    Inception modules, transformer layers, with a transformer layer's feed-forward hidden units),
    else its activation modules (where they are cut points), else the outputs of its top-level
    modules. Returns the names in execution order, and those that must be cut points."""
    modules = dict(model.named_modules())

    def usable(name):
        return recorder.calls.get(name) == 1 and len(recorder.shapes.get((name, 0), ())) in KINDS \
            and name != output_module

    blocks = [n for n, m in modules.items() if n and usable(n) and _is_block(m)]
    blocks = [n for n in blocks if not any(other.startswith(n + ".") for other in blocks)]   # the innermost
    if blocks:
        names = list(blocks)
        for block in blocks:
            names += _feed_forward_units(block, modules[block], usable)
    else:
        names = [n for n, m in modules.items()
                 if isinstance(m, ACTIVATIONS) and recorder.calls.get(n) and n != output_module]
        if names:
            return _in_order(names, recorder), set(names)
        names = [n for n, _ in model.named_children() if usable(n)]
    return _in_order(names, recorder), set()


def _is_block(module: nn.Module) -> bool:
    """A block: a module (not a plain container) holding at least two layers that mix features
    (convolutions, linear maps, attention), as ResNet blocks, Inception modules and transformer
    layers do. A conv + norm pair or an attention module alone is not one."""
    if isinstance(module, _CONTAINERS) or isinstance(module, nn.MultiheadAttention):
        return False
    mixing = sum(1 for m in module.modules()
                 if not isinstance(m, _NOT_LAYERS) and any(True for _ in m.parameters(recurse=False)))
    return mixing >= 2


def _feed_forward_units(name: str, block: nn.Module, usable) -> list[str]:
    """A transformer layer's feed-forward hidden units: its activation modules, or the output of
    ``linear1`` in a PyTorch encoder layer whose activation is a function (zeroing a unit there
    zeroes it after relu or gelu too)."""
    if not any(isinstance(m, nn.MultiheadAttention) for m in block.modules()):
        return []
    found = [f"{name}.{n}" for n, m in block.named_modules() if n and isinstance(m, ACTIVATIONS)
             and usable(f"{name}.{n}")]
    if not found and isinstance(getattr(block, "linear1", None), nn.Linear) and usable(f"{name}.linear1"):
        found = [f"{name}.linear1"]
    return found


def _in_order(names: list[str], recorder: _Recorder) -> list[str]:
    return sorted(dict.fromkeys(names), key=lambda n: recorder.position(n, 0) if (n, 0) in recorder.shapes
                  else len(recorder.order))


def _suffix_bytes(order: list[tuple[str, int, int]], position: int, probe: torch.Tensor) -> int:
    """Peak memory per row of a pass from the output at ``position`` on (-1: the input): that
    output plus the two largest after it (inference mode frees each intermediate once its
    consumer ran)."""
    own = order[position][2] if position >= 0 else probe[0].numel() * probe.element_size()
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
