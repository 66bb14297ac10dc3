"""Sweep configurations: a TOML file or a preset, expanded into members.

    name = "my-sweep"
    models = ["alexnet"]
    widths = [0.25, 0.5, 1, 2, 4]
    trials = 3                       # independently trained networks (seeds 0, 1, 2)

    [train]                          # fu_fast.train.TrainConfig fields, shared by every member
    epochs = 30

    [vary]                           # the cross product of these lists: one series per combination
    init = ["glorot_normal", "he_normal"]

    [[variants]]                     # or/and explicit combinations (crossed with [vary])
    augment = true
    [[variants]]
    dropout = 0.5

    [analyze]                        # fu_fast.analyze settings, plus split and limit
    split = "test"

A setting in [train], [vary] or [[variants]] is a TrainConfig field (lr, weight_decay,
augment, random_labels, input_dim, data, ...) or a model option (init, dropout, num_classes,
input_size). A member is one (series, width, trial); its directory is
SERIES/w<width>/t<trial> under the sweep directory.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

from ..errors import FuFastError
from ..train import TrainConfig

MODEL_OPTIONS = ("init", "dropout", "num_classes", "input_size")
ANALYZE_KEYS = ("split", "limit", "tolerance", "pca_tolerance", "repeats", "levels", "sample_cap", "unit", "seed",
                "batch_size")
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "width", "model_options", "seed"}
_PAPER_WIDTHS = [0.25, 0.5, 1.0, 2.0, 4.0]

# The paper's experiments (PAPER.md). Data-set presets need --data-dir.
PRESETS: dict[str, dict] = {
    # The learning rate is the best of a small grid per input dimension (PAPER.md): 0.05
    # diverges with 10,000-dimensional inputs, 0.01 does not.
    "mlp-synthetic": {
        "description": "MLP on synthetic teacher data, 10 and 10,000 input dimensions, init std 0.01, 0.1 "
                       "(Fig. 4; about 30 minutes on 2 CPU cores)",
        "models": ["mlp"], "widths": _PAPER_WIDTHS, "trials": 3,
        "variants": [{"input_dim": 10, "lr": 0.05}, {"input_dim": 10000, "lr": 0.01}],
        "vary": {"init": ["gaussian:0.01", "gaussian:0.1"]},
    },
    "mlp-synthetic-10d": {
        "description": "MLP on synthetic teacher data, 10 input dimensions, init std 0.01, 0.1, 1 "
                       "(Fig. 4d; a few minutes on 2 CPU cores)",
        "models": ["mlp"], "widths": _PAPER_WIDTHS, "trials": 3,
        "train": {"input_dim": 10}, "vary": {"init": ["gaussian:0.01", "gaussian:0.1", "gaussian:1.0"]},
    },
    "alexnet-cifar-init": {
        "description": "AlexNet on CIFAR-10 with six initialisations (Fig. 3)",
        "models": ["alexnet"], "widths": _PAPER_WIDTHS, "trials": 3,
        "vary": {"init": ["glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal",
                          "lecun_uniform"]},
    },
    "alexnet-cifar-regularizers": {
        "description": "AlexNet on CIFAR-10 without and with data augmentation, dropout, weight decay, all three",
        "models": ["alexnet"], "widths": _PAPER_WIDTHS, "trials": 3,
        "variants": [{}, {"augment": True}, {"dropout": 0.5}, {"weight_decay": 5e-4},
                     {"augment": True, "dropout": 0.5, "weight_decay": 5e-4}],
    },
    "cifar-random-labels": {
        "description": "AlexNet and ResNet56 on CIFAR-10 with true and with random labels",
        "models": ["alexnet", "resnet56"], "widths": _PAPER_WIDTHS, "trials": 3,
        "vary": {"random_labels": [False, True]},
    },
    "resnet18-imagenet": {
        "description": "ResNet18 on ImageNet (analysis on the 50,000 validation images)",
        "models": ["resnet18"], "widths": _PAPER_WIDTHS, "trials": 3, "analyze": {"split": "val"},
    },
    "inception-v3-layer": {
        "description": "Inception-v3 on ImageNet, only Mixed_5d's width varies",
        "models": ["inception_v3_layer"], "widths": _PAPER_WIDTHS, "trials": 3, "analyze": {"split": "val"},
    },
}


@dataclass(frozen=True)
class Member:
    model: str
    width: float
    trial: int
    series: str            # members of one series differ only in width and trial
    variant: dict          # what distinguishes the series from the sweep's other series

    @property
    def dir(self) -> str:
        return f"{self.series}/w{self.width:g}/t{self.trial}"

    @property
    def id(self) -> str:
        return self.dir

    def record(self, status: str) -> dict:
        return {"id": self.id, "dir": self.dir, "model": self.model, "width": self.width, "trial": self.trial,
                "series": self.series, "variant": self.variant, "status": status}


@dataclass(frozen=True)
class SweepConfig:
    name: str
    models: list
    widths: list
    trials: int
    train: dict
    variants: list         # one dict per series variant (the product of [vary] and [[variants]])
    analyze: dict
    source: dict           # the configuration as given, for sweep.json

    def members(self) -> list[Member]:
        out = []
        for model, variant in itertools.product(self.models, self.variants):
            label = ",".join(f"{k}={_text(v)}" for k, v in sorted(variant.items())) or "default"
            for width, trial in itertools.product(self.widths, range(self.trials)):
                out.append(Member(model, float(width), trial, f"{model}/{label}", dict(variant)))
        return out

    def train_config(self, member: Member, data_dir: str | None, device: str | None) -> TrainConfig:
        settings = {**self.train, **member.variant}
        options = {k: settings.pop(k) for k in MODEL_OPTIONS if k in settings}
        if data_dir is not None:
            settings["data_dir"] = data_dir
        if device is not None:
            settings["device"] = device
        return TrainConfig(model=member.model, width=member.width, model_options=options, seed=member.trial,
                           **settings)


def load_config(path: str | Path | None = None, preset: str | None = None, trials: int | None = None) -> SweepConfig:
    """A sweep from a TOML file or a preset (exactly one of them)."""
    if (path is None) == (preset is None):
        raise FuFastError("give either a CONFIG.toml or --preset NAME")
    if preset is not None:
        if preset not in PRESETS:
            raise FuFastError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        raw = {"name": preset, **{k: v for k, v in PRESETS[preset].items() if k != "description"}}
    else:
        raw = _read_toml(Path(path))
    if trials is not None:
        raw = {**raw, "trials": trials}
    return _parse(raw)


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:   # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise FuFastError(f"cannot read sweep configuration {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise FuFastError(f"sweep configuration {path} is not valid TOML: {e}") from None
    raw.setdefault("name", path.stem)
    return raw


def _parse(raw: dict) -> SweepConfig:
    known = {"name", "models", "widths", "trials", "train", "vary", "variants", "analyze"}
    unknown = set(raw) - known
    if unknown:
        raise FuFastError(f"unknown sweep setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    from .. import models as zoo

    names = _list(raw, "models")
    for name in names:
        if name not in zoo.names():
            raise FuFastError(f"unknown model {name!r} in the sweep; choose from {', '.join(zoo.names())}")
    widths = _list(raw, "widths", [1.0])
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in widths):
        raise FuFastError(f"sweep widths must be positive numbers, got {widths}")
    trials = raw.get("trials", 1)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise FuFastError(f"sweep trials must be a positive integer, got {trials!r}")
    train = dict(raw.get("train", {}))
    vary = dict(raw.get("vary", {}))
    explicit = raw.get("variants", [{}])
    if not isinstance(explicit, list) or not all(isinstance(v, dict) for v in explicit) or not explicit:
        raise FuFastError("sweep [[variants]] must be a list of tables")
    for key in itertools.chain(train, vary, *explicit):
        if key not in _TRAIN_FIELDS and key not in MODEL_OPTIONS:
            raise FuFastError(f"unknown training setting {key!r} in the sweep; known: "
                              f"{', '.join(sorted(_TRAIN_FIELDS | set(MODEL_OPTIONS)))}")
    for key, values in vary.items():
        if not isinstance(values, list) or not values:
            raise FuFastError(f"sweep [vary] {key} must be a non-empty list")
    products = [dict(zip(vary, combo)) for combo in itertools.product(*vary.values())]
    variants = [{**e, **p} for e in explicit for p in products]
    analyze = dict(raw.get("analyze", {}))
    for key in analyze:
        if key not in ANALYZE_KEYS:
            raise FuFastError(f"unknown analysis setting {key!r}; known: {', '.join(ANALYZE_KEYS)}")
    return SweepConfig(str(raw.get("name", "sweep")), names, [float(w) for w in widths], trials, train, variants,
                       analyze, raw)


def _list(raw: dict, key: str, default=None) -> list:
    value = raw.get(key, default)
    if not isinstance(value, list) or not value:
        raise FuFastError(f"sweep setting {key!r} must be a non-empty list")
    return value


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
