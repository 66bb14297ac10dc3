"""Models from outside the zoo, by name: torchvision's and timm's classifiers and a user's factory.

    from fu_fast.models.external import build_external, is_external
    net = build_external("torchvision:resnet50", weights="resnet50.pth")   # any classification model
    net = build_external("timm:convnext_tiny", num_classes=10)             # needs timm installed
    net = build_external("mypkg.nets:make_net", num_classes=10, image_size=64)
    net.fu_fast_config   # {"name": "torchvision:resnet50", "width": None, "options": {"input_size": 224, ...}}

Nothing is downloaded: a model is built with fresh weights (torch's global RNG) and ``weights``
names a state dict file, loaded weights-only (tensors and plain containers, never code) and
strictly (every key, every shape). A file may also be a checkpoint dict holding the state dict
under "state_dict" or "model", and keys of a DataParallel/DDP model ("module." prefix) are
accepted. Every failure is one FuFastError line.

The ``options`` of ``fu_fast_config`` drive the data (fu_fast.data.for_analysis): ``input_size``
is the image side (the default weights' evaluation crop for torchvision, ``pretrained_cfg`` for
timm, ``image_size`` when given), ``num_classes`` the logits. A factory model declares neither
unless told (``num_classes``, ``image_size``, ``input_dim``).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

from ..errors import FuFastError, integer_setting

__all__ = ["build_external", "is_external", "TORCHVISION", "TIMM"]

TORCHVISION, TIMM = "torchvision", "timm"
DEFAULT_NUM_CLASSES = 1000      # torchvision's and timm's ImageNet heads
DEFAULT_INPUT_SIZE = 224
LIST_TORCHVISION = ("python -c \"import torchvision; "
                    "print(torchvision.models.list_models(module=torchvision.models))\"")
SHOWN_KEYS = 3                  # offending keys named in an error line
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# torchvision families whose builders take the image side (their position embeddings or
# partitions depend on it): the build keyword and how it is given.
_SIZED_BUILDERS = {"torchvision.models.vision_transformer": ("image_size", lambda s: s),
                   "torchvision.models.maxvit": ("input_size", lambda s: (s, s))}
# Auxiliary classifier heads (run in training only): their state dict prefixes.
_AUX_HEADS = {"inception_v3": ("AuxLogits.",), "googlenet": ("aux1.", "aux2.")}


def is_external(spec) -> bool:
    """Whether ``spec`` names a model outside the zoo: "torchvision:NAME", "timm:NAME" or
    "package.module:factory" (zoo names hold no colon)."""
    return isinstance(spec, str) and ":" in spec


def build_external(spec: str, *, weights=None, num_classes=None, image_size=None, input_dim=None):
    """The model ``spec`` names, with ``fu_fast_config`` set; its weights from the state dict
    file ``weights`` when given (else fresh, from torch's global RNG).

    ``num_classes``: output logits (torchvision and timm: default 1000; a factory is called with
    ``num_classes=N`` only when given). ``image_size``: the image side of its data (default: the
    model's, see the module docstring). ``input_dim``: a factory model's input features for
    vector data. FuFastError with one line for anything that cannot be built or loaded.
    """
    if not is_external(spec):
        raise FuFastError(f"{spec!r} names no external model: use torchvision:NAME, timm:NAME or "
                          "package.module:factory")
    source, _, name = spec.partition(":")
    if num_classes is not None:
        num_classes = integer_setting(num_classes, "num_classes", least=2)
    if image_size is not None:
        image_size = integer_setting(image_size, "image_size")
    if input_dim is not None:
        input_dim = integer_setting(input_dim, "input_dim")
    if not name:
        raise FuFastError(f"{spec!r}: say the model after the colon, e.g. torchvision:resnet18, timm:resnet50 or "
                          "mypackage.models:make_model")
    if source in (TORCHVISION, TIMM):
        if input_dim is not None:
            raise FuFastError(f"input_dim applies to vector models (the zoo's mlp, a factory model), not to {spec}")
        if source == TORCHVISION:
            model, input_size, num_classes = _torchvision(name, spec, weights, num_classes, image_size)
        else:
            model, input_size, num_classes = _timm(name, spec, weights, num_classes, image_size)
        options = {"input_size": input_size, "num_classes": num_classes}
    else:
        model = _factory(spec, source, name, num_classes)
        if weights is not None:
            load_weights(model, weights, spec, num_classes)
        options = {key: value for key, value in (("input_size", image_size or _declared_size(model)),
                                                 ("input_dim", input_dim), ("num_classes", num_classes))
                   if value is not None}
    if weights is not None:
        options["weights"] = str(weights)
    model.fu_fast_config = {"name": spec, "width": None, "options": options}
    return model


# --- torchvision ---------------------------------------------------------------------------------

def _torchvision(name: str, spec: str, weights, num_classes, image_size):
    import torchvision
    from torchvision.models import get_model_builder, get_model_weights, list_models

    classifiers = list_models(module=torchvision.models)
    if name not in classifiers:
        other = _torchvision_kind(name)
        what = (f"{spec} is a torchvision {other} model; fu-fast analyses torchvision's (float) classification "
                "models only"
                if other else f"unknown torchvision classification model {name!r}")
        raise FuFastError(f"{what}; list them with {LIST_TORCHVISION}")
    builder = get_model_builder(name)
    try:
        default_weights = get_model_weights(name).DEFAULT
    except Exception:   # a builder without a weights enum
        default_weights = None
    input_size = image_size or _crop_size(default_weights) or (299 if name == "inception_v3" else DEFAULT_INPUT_SIZE)
    num_classes = num_classes or DEFAULT_NUM_CLASSES
    kwargs = {"weights": None, "num_classes": num_classes}
    sized = _SIZED_BUILDERS.get(builder.__module__)
    if sized is not None and image_size is not None:
        kwargs[sized[0]] = sized[1](image_size)
    state_dict = None
    if weights is not None:
        state_dict = read_state_dict(weights)
    aux = _AUX_HEADS.get(name)
    if aux is not None:
        # Inception-v3 and GoogLeNet: torchvision builds the official weights with their auxiliary
        # heads (so the state dict loads strictly), transform_input on and its own init off, then
        # drops the heads; without weights, no heads and the models' own initialisation (which
        # also keeps torchvision's FutureWarning about it away).
        has_aux = state_dict is not None and any(key.startswith(aux) for key in _strip_module(state_dict))
        kwargs.update(aux_logits=has_aux, init_weights=state_dict is None)
        if state_dict is not None:
            kwargs["transform_input"] = True
    model = _call_builder(lambda: builder(**kwargs), spec)
    if state_dict is not None:
        _load(model, state_dict, weights, spec, num_classes)
        if aux is not None and model.aux_logits:
            model.aux_logits = False
            for head in aux:
                setattr(model, head.rstrip("."), None)
    return model, input_size, num_classes


def _torchvision_kind(name: str) -> str | None:
    """"detection", "segmentation", "video", "optical flow" or "quantized" for a torchvision model
    of another kind; None for a name torchvision does not know."""
    from torchvision.models import get_model_builder, list_models

    if name not in list_models():
        return None
    kind = get_model_builder(name).__module__.split(".")[2]   # torchvision.models.<kind>.<family>
    return {"quantization": "quantized", "optical_flow": "optical flow"}.get(kind, kind)


def _crop_size(weights_enum) -> int | None:
    """The evaluation crop of torchvision's default weights (the image side they were trained for)."""
    if weights_enum is None:
        return None
    try:
        crop = weights_enum.transforms().crop_size
        return int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    except Exception:
        return None


# --- timm ----------------------------------------------------------------------------------------

def _timm(name: str, spec: str, weights, num_classes, image_size):
    try:
        import timm
    except ImportError:
        raise FuFastError(f"{spec} needs timm, which is not installed: pip install timm "
                          "(or pip install 'fu-fast[timm]')") from None
    if hasattr(timm, "is_model") and not timm.is_model(name):
        raise FuFastError(f"unknown timm model {name!r}; list them with "
                          "python -c \"import timm; print(timm.list_models())\"")
    num_classes = num_classes or DEFAULT_NUM_CLASSES
    model = _call_builder(lambda: timm.create_model(name, pretrained=False, num_classes=num_classes), spec)
    if weights is not None:
        load_weights(model, weights, spec, num_classes)
    return model, image_size or _declared_size(model) or DEFAULT_INPUT_SIZE, num_classes


def _declared_size(model) -> int | None:
    """The image side a timm-made model declares (pretrained_cfg or default_cfg "input_size")."""
    for attribute in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attribute, None)
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if isinstance(size, (list, tuple)) and size and isinstance(size[-1], int):
            return int(size[-1])
    return None


# --- package.module:factory ----------------------------------------------------------------------

def _factory(spec: str, module_name: str, attribute: str, num_classes):
    from torch import nn

    if not _DOTTED.match(module_name) or not _DOTTED.match(attribute):
        raise FuFastError(f"{spec!r} is not a model name: use torchvision:NAME, timm:NAME or "
                          "package.module:factory (a function returning a torch.nn.Module)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())   # as `python -m` does: modules in the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise FuFastError(f"{spec}: no module named {e.name!r} (looked in the current directory and "
                              "sys.path)") from None
        raise FuFastError(f"{spec}: importing {module_name} failed: {_one_line(e)}") from None
    except Exception as e:
        raise FuFastError(f"{spec}: importing {module_name} failed: {_one_line(e)}") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise FuFastError(f"{spec}: module {module_name} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise FuFastError(f"{spec}: {attribute} is a {type(factory).__name__}, not a function returning a model")
    call = f"{attribute}(num_classes={num_classes})" if num_classes is not None else f"{attribute}()"
    try:
        model = factory(num_classes=num_classes) if num_classes is not None else factory()
    except FuFastError as e:
        raise FuFastError(f"{spec}: {call} failed: {e}") from None
    except Exception as e:
        raise FuFastError(f"{spec}: {call} raised {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise FuFastError(f"{spec}: {call} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


# --- weights -------------------------------------------------------------------------------------

def load_weights(model, path, spec: str, num_classes=None) -> None:
    """Load the state dict file ``path`` into ``model`` strictly; FuFastError with one line."""
    _load(model, read_state_dict(path), path, spec, num_classes)


def read_state_dict(path) -> dict:
    """The state dict in the file ``path`` (a plain state dict, or a checkpoint dict holding one
    under "state_dict" or "model"), loaded weights-only on the CPU; FuFastError with one line."""
    from ..train.checkpoint import load_torch

    path = Path(path)
    where = f"weights file {path}"
    if not path.exists():
        raise FuFastError(f"{where} does not exist")
    if path.is_dir():
        raise FuFastError(f"{where} is a directory, not a state dict file")
    saved = load_torch(path, "weights file")
    state_dict = _find_state_dict(saved)
    if state_dict is None:
        what = (f"a dict with keys {_keys(list(saved))}" if isinstance(saved, dict)
                else f"a {type(saved).__name__}")
        raise FuFastError(f"{where} holds {what}, not a state dict (a dict of tensors, or a checkpoint with one "
                          "under 'state_dict' or 'model')")
    return state_dict


def _find_state_dict(saved):
    import torch

    def is_state_dict(value):
        return (isinstance(value, dict) and bool(value)
                and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))

    if is_state_dict(saved):
        return saved
    if isinstance(saved, dict):
        for key in ("state_dict", "model"):
            if is_state_dict(saved.get(key)):
                return saved[key]
    return None


def _strip_module(state_dict: dict) -> dict:
    """Keys without the "module." prefix DataParallel and DDP give every key."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict


def _load(model, state_dict: dict, path, spec: str, num_classes=None) -> None:
    state_dict = _strip_module(state_dict)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
                  for key, value in expected.items()
                  if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)]
    problems = [f"{what} {_keys(keys)}" for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                          ("shapes differ (file vs model):", mismatched)) if keys]
    if problems:
        raise FuFastError(f"weights file {path} does not fit {spec}: {'; '.join(problems)}"
                          f"{_head_hint(expected, state_dict, num_classes)}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as e:
        raise FuFastError(f"weights file {path} does not fit {spec}: {_one_line(e)}") from None


def _head_hint(expected: dict, state_dict: dict, classes) -> str:
    """Advice when the file's classifier has another number of classes than the model's."""
    for key, value in expected.items():
        theirs = state_dict.get(key)
        if (theirs is not None and value.dim() >= 1 and theirs.dim() == value.dim() and value.shape[0] == classes
                and theirs.shape[0] != classes and theirs.shape[1:] == value.shape[1:]):
            return f" (the file's classifier has {theirs.shape[0]} outputs: --num-classes {theirs.shape[0]})"
    return ""


def _keys(keys: list) -> str:
    shown = ", ".join(str(key) for key in keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


# --- shared --------------------------------------------------------------------------------------

def _call_builder(build, spec: str):
    try:
        return build()
    except FuFastError as e:
        raise FuFastError(f"{spec}: {e}") from None
    except Exception as e:
        raise FuFastError(f"cannot build {spec}: {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    from ..data._common import one_line

    return one_line(error)
