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
MODEL/LABEL/w<width>/t<trial> under the sweep directory, LABEL being the series' settings
("init=he_normal,lr=0.1", or "default") made a safe file name (see folder_name).

Loading a configuration checks all of it, so that a mistake never surfaces after hours of
training: every value's type (and the least value of every count and size), every member's
resolved training settings and model (built shape-only), the analysis settings by
fu_fast.analyze's own rules, and that each setting given changes something (a [vary] key that
a member's model or data ignores would make series that differ in name only).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data as data_lib
from .. import models as zoo
from ..analysis.settings import AnalysisSettings
from ..errors import FuFastError
from ..train import TrainConfig

MODEL_OPTIONS = ("init", "dropout", "num_classes", "input_size")
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "width", "model_options", "seed"}
# The type of a given value of each setting. TrainConfig's annotations are strings under postponed
# evaluation ("int | None"): the first name is the type of a value that is given.
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
SETTING_TYPES = {f.name: _TYPES[str(f.type).split(" | ")[0]] for f in dataclasses.fields(TrainConfig)
                 if f.name in _TRAIN_FIELDS}
SETTING_TYPES.update(init=str, dropout=float, num_classes=int, input_size=int)
LEVELS = "levels"   # the type of [analyze] levels: a count of grid points, or the grid itself
ANALYZE_TYPES = {"split": str, "limit": int, "tolerance": float, "pca_tolerance": float, "repeats": int,
                 "levels": LEVELS, "sample_cap": int, "unit": str, "seed": int, "batch_size": int}
ANALYZE_KEYS = tuple(ANALYZE_TYPES)
# Counts and sizes are refused here, naming their key. The other values are checked by the code
# that uses them (TrainConfig.resolve, models.build, fu_fast.analyze's checks), called on load.
_AT_LEAST = {"batch_size": 1, "epochs": 1, "patience": 1, "input_dim": 1, "input_size": 1, "num_classes": 2,
             "limit": 1, "workers": 0, "data_seed": 0, "weight_decay": 0}
_POSITIVE = ("lr", "k")
_NOUNS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
          LEVELS: "an integer or a list of numbers"}
_ANALYSIS_DEFAULTS = {"split": "test", "limit": None, **dataclasses.asdict(AnalysisSettings())}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,:=+-]*")
_LONGEST_NAME = 96
_PAPER_WIDTHS = [0.25, 0.5, 1.0, 2.0, 4.0]

# The paper's experiments (docs/sweep-format.md, Presets). Data-set presets need --data-dir.
PRESETS: dict[str, dict] = {
    # The learning rate is the best of a small grid per input dimension (docs/models-and-training.md): 0.05
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
    series: str            # "MODEL/LABEL": members of one series differ only in width and trial
    variant: dict          # what distinguishes the series from the sweep's other series

    @property
    def dir(self) -> str:
        """Where the member lives, relative to the sweep directory: never outside it."""
        model, label = self.series.split("/", 1)   # model names have no "/"; labels are any text
        return f"{model}/{folder_name(label)}/w{self.width:g}/t{self.trial}"

    def record(self, status: str) -> dict:
        # "id" and "dir" are both in the record format (docs/sweep-format.md): the same path.
        return {"id": self.dir, "dir": self.dir, "model": self.model, "width": self.width, "trial": self.trial,
                "series": self.series, "variant": self.variant, "status": status}


def folder_name(label: str) -> str:
    """A series label as one file name, the same on every run.

    A label of letters, digits and ``_.,:=+-`` (no "..", not too long) is its own name, as it
    always was. Any other is made safe (runs of other characters and of dots become "_") and
    shortened, and a hash of the whole label follows a "~": no safe label contains "~", so a
    made name never equals a kept one, and two labels never share a name.
    """
    if _SAFE_NAME.fullmatch(label) and ".." not in label and len(label) <= _LONGEST_NAME:
        return label
    readable = re.sub(r"[^A-Za-z0-9_.,:=+-]+|\.{2,}", "_", label).lstrip("._-")[:64]
    return f"{readable}~{hashlib.sha256(label.encode()).hexdigest()[:12]}"


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

    def analysis_settings(self) -> dict:
        return analysis_settings(self.analyze)


def analysis_settings(analyze_table: dict) -> dict:
    """What a member's analysis depends on: an [analyze] table with each default filled in and
    levels as the grid; batch_size is left out, since no result depends on it. FuFastError for
    a value fu_fast.analyze would refuse (by its own checks)."""
    settings = {**_ANALYSIS_DEFAULTS, **{k: v for k, v in analyze_table.items() if k != "batch_size"}}
    names = [f.name for f in dataclasses.fields(AnalysisSettings)]
    try:
        checked = AnalysisSettings(**{name: settings[name] for name in names})
    except FuFastError as e:
        raise FuFastError(f"[analyze] {e}") from None
    return {**settings, **checked.record()}


def load_config(path: str | Path | None = None, preset: str | None = None, trials: int | None = None) -> SweepConfig:
    """A sweep from a TOML file or a preset (exactly one of them), checked through and through."""
    if (path is None) == (preset is None):
        raise FuFastError("give either a CONFIG.toml or --preset NAME")
    if preset is not None:
        if preset not in PRESETS:
            raise FuFastError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        raw = {"name": preset, **{k: v for k, v in PRESETS[preset].items() if k != "description"}}
        source = f"preset {preset}"
    else:
        raw = _read_toml(Path(path))
        source = str(path)
    if trials is not None:
        raw = {**raw, "trials": trials}
    try:
        return _parse(raw)
    except FuFastError as e:
        raise FuFastError(f"{source}: {e}") from None


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:   # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise FuFastError(f"cannot read sweep configuration {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:   # TOML is UTF-8 text
        raise FuFastError(f"sweep configuration {path} is not a text file (byte {e.object[e.start]:#04x} at "
                          f"offset {e.start} is not UTF-8)") from None
    except tomllib.TOMLDecodeError as e:
        raise FuFastError(f"sweep configuration {path} is not valid TOML: {e}") from None
    raw.setdefault("name", path.stem)
    return raw


def _parse(raw: dict) -> SweepConfig:
    known = ("name", "models", "widths", "trials", "train", "vary", "variants", "analyze")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise FuFastError(f"unknown sweep setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name.strip():
        raise FuFastError(f"name must be a non-empty string, got {show(name)}")
    names = _list(raw, "models")
    for model in names:
        if not isinstance(model, str) or model not in zoo.names():
            raise FuFastError(f"unknown model {show(model)} in models; choose from {', '.join(zoo.names())}")
    widths = _list(raw, "widths", [1.0])
    if not all(_is_a(w, float) and w > 0 for w in widths):
        raise FuFastError(f"widths must be positive numbers, got {show(widths)}")
    trials = raw.get("trials", 1)
    if not _is_a(trials, int) or trials < 1:
        raise FuFastError(f"trials must be a positive integer, got {show(trials)}")
    train, vary, analyze_table = (_table(raw, key) for key in ("train", "vary", "analyze"))
    explicit = raw.get("variants", [{}])
    if not isinstance(explicit, list) or not explicit or not all(isinstance(v, dict) for v in explicit):
        raise FuFastError(f"variants must be a non-empty list of tables ([[variants]]), got {show(explicit)}")
    tables = [("[train]", train), ("[vary]", vary)] + [(f"[[variants]] {i + 1}", v) for i, v in enumerate(explicit)]
    for where, table in tables:
        for key in table:
            if key not in SETTING_TYPES:
                raise FuFastError(f"unknown training setting {key!r} in {where}; known: "
                                  f"{', '.join(sorted(SETTING_TYPES))}")
    for key, values in vary.items():
        if not isinstance(values, list) or not values:
            raise FuFastError(f"[vary] {key} must be a non-empty list, got {show(values)}")
    for where, table in tables:
        for key, value in table.items():
            for one in value if where == "[vary]" else [value]:
                _check_value(where, key, one, SETTING_TYPES[key])
    for key, value in analyze_table.items():
        if key not in ANALYZE_TYPES:
            raise FuFastError(f"unknown analysis setting {key!r} in [analyze]; known: {', '.join(ANALYZE_KEYS)}")
        _check_value("[analyze]", key, value, ANALYZE_TYPES[key])
    products = [dict(zip(vary, combo)) for combo in itertools.product(*vary.values())]
    variants = [{**e, **p} for e in explicit for p in products]
    config = SweepConfig(name, names, [float(w) for w in widths], trials, train, variants, analyze_table, raw)
    _check_members(config, vary)
    return config


def _check_members(config: SweepConfig, vary: dict) -> None:
    """Every member resolves, builds and has the analysed split, and every setting changes something."""
    split = config.analysis_settings()["split"]
    members = config.members()
    seen = set()
    for member in members:
        if member.dir in seen:
            raise FuFastError(f"member {member.dir} comes twice: a model, a width (to 6 digits) or a [vary] or "
                              f"[[variants]] value is repeated")
        seen.add(member.dir)
    ignored_by_all = dict.fromkeys(config.train, "")   # the [train] keys no member has used so far, and why
    for member in members:
        if member.trial:   # trials differ in their seed only
            continue
        try:
            resolved = config.train_config(member, None, None).resolve()
            if resolved.data not in data_lib.names():
                raise FuFastError(f"unknown data set {resolved.data!r}; choose one of {', '.join(data_lib.names())}")
            _check_model(resolved.model, resolved.width, json.dumps(resolved.model_options, sort_keys=True))
            if split not in data_lib.splits(resolved.data):
                raise FuFastError(f"[analyze] split {split!r}: {resolved.data} data has the splits "
                                  f"{', '.join(data_lib.splits(resolved.data))}")
            if resolved.patience is not None and "val" not in data_lib.splits(resolved.data):
                raise FuFastError(f"patience: early stopping needs a validation split, and {resolved.data} data "
                                  f"has none")
        except FuFastError as e:
            raise FuFastError(f"member {member.dir}: {e}") from None
        for key in member.variant:
            why = unused_because(key, resolved)
            if why:
                raise FuFastError(f"{'[vary]' if key in vary else '[[variants]]'} {key} changes nothing for member "
                                  f"{member.dir} ({why}): leave it out")
        for key in list(ignored_by_all):
            ignored_by_all[key] = unused_because(key, resolved)
            if ignored_by_all[key] is None:
                del ignored_by_all[key]
    if ignored_by_all:
        key, why = min(ignored_by_all.items())
        raise FuFastError(f"[train] {key} changes nothing for any member ({why}): leave it out")


def unused_because(key: str, c: TrainConfig) -> str | None:
    """Why setting ``key`` changes nothing in training ``c`` (resolved); None when it matters.

    From fu_fast.data's option rules and the training loop: data_dir is read for image data
    only, input_dim shapes synthetic data (and the MLP), augmentation applies to image data
    without random labels, the data seed draws synthetic data and random labels, momentum
    belongs to SGD with momentum and RMSProp, and channels_last to conv layers.
    """
    synthetic = c.data == "synthetic"
    if key == "data_dir" and synthetic:
        return "synthetic data is generated, not read"
    if key == "input_dim" and not synthetic and c.model != "mlp":
        return f"{c.data} data has no input_dim"
    if key == "augment" and synthetic:
        return "synthetic data is never augmented"
    if key == "augment" and c.random_labels:
        return "random labels are trained without augmentation"
    if key == "data_seed" and not (synthetic or c.random_labels):
        return f"{c.data} data without random labels draws nothing from it"
    if key == "momentum" and c.optimizer in ("sgd", "adam"):
        return f"optimizer {c.optimizer} has no momentum"
    if key == "channels_last" and c.model == "mlp":
        return "mlp has no conv layers"
    return None


@functools.cache
def _check_model(name: str, width: float, options: str) -> None:
    """Model ``name`` builds at ``width`` with these options (JSON): shapes only, no memory."""
    with torch.device("meta"):
        zoo.build(name, width, **json.loads(options))


def _check_value(where: str, key: str, value, kind) -> None:
    if not _is_a(value, kind):
        raise FuFastError(f"{where} {key} must be {_NOUNS[kind]}, got {show(value)}")
    if key in _AT_LEAST and value < _AT_LEAST[key]:
        raise FuFastError(f"{where} {key} must be at least {_AT_LEAST[key]}, got {value!r}")
    if key in _POSITIVE and not value > 0:
        raise FuFastError(f"{where} {key} must be positive, got {value!r}")


def _is_a(value, kind) -> bool:
    """Whether a TOML value is of ``kind``: TOML's booleans are never numbers, nor its floats integers."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if kind is str:
        return isinstance(value, str)
    return isinstance(value, int) or isinstance(value, list) and all(_is_a(v, float) for v in value)   # levels


def _table(raw: dict, key: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise FuFastError(f"{key} must be a table ([{key}]), got {show(value)}")
    return dict(value)


def _list(raw: dict, key: str, default=None) -> list:
    value = raw.get(key, default)
    if not isinstance(value, list) or not value:
        raise FuFastError(f"{key} must be a non-empty list, got {show(value)}")
    return value


def show(value) -> str:
    """A value as it appears in a one-line message: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
