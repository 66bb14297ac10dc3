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

    [analyze]                        # fu_fast.analyze settings, plus split, limit and layers
    split = "test"

    [model.alexnet]                  # one model's own settings (optional; alexnet must be in models)
    widths = [0.0625, 0.125, 0.25, 0.5]
    reference_width = 0.5
    epochs = 15                      # a training setting: overrides [train] for this model

Two optional top-level keys (before the first table, as TOML reads them): reference_width, the
width whose layers normalise a series (default 4), and epochs_after = [0, 5, 10, 20]: one run per
(series, width, trial), analysed at these epochs past its epochs setting, a member per epoch.

A [model.NAME] table gives model NAME of models its own widths, reference_width and training
settings: a sweep of a fast and a slow model can train each at the widths it affords. A member's
training settings are [train]'s, then its model's table over them, then its series' [vary] and
[[variants]] values over those.

A setting in [train], [model.NAME], [vary] or [[variants]] is a TrainConfig field (lr, weight_decay,
augment, random_labels, input_dim, data, ...) or a model option (init, dropout, num_classes,
input_size). A member is one (series, width, trial); its directory is
MODEL/LABEL/w<width>/t<trial> under the sweep directory, LABEL being the series' settings
("init=he_normal,lr=0.1", or "default") made a safe file name (see folder_name). With
epochs_after, that directory is the run, and the member of epoch N lives in its epochN/ folder.

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
from ..analysis.noise import check_levels
from ..analysis.orders import check_orders
from ..analysis.settings import AnalysisSettings
from ..errors import FuFastError
from ..hooks import forward_hooks
from ..train import TrainConfig

MODEL_OPTIONS = ("init", "dropout", "num_classes", "input_size")
# The keys of a [model.NAME] table besides training settings: the model's own series shape.
MODEL_TABLE_KEYS = ("widths", "reference_width")
# The sweep sets model, width and seed per member, and the epoch checkpoints through epochs_after.
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "width", "model_options", "seed",
                                                                    "save_every", "save_epochs"}
# The type of a given value of each setting. TrainConfig's annotations are strings under postponed
# evaluation ("int | None"): the first name is the type of a value that is given.
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
SETTING_TYPES = {f.name: _TYPES[str(f.type).split(" | ")[0]] for f in dataclasses.fields(TrainConfig)
                 if f.name in _TRAIN_FIELDS}
SETTING_TYPES.update(init=str, dropout=float, num_classes=int, input_size=int)
LEVELS = "levels"   # the type of [analyze] levels: a count of grid points, or the grid itself
NAMES = "names"     # the type of [analyze] layers: a non-empty list of distinct layer names
ORDERS = "orders"   # the type of [analyze] orders: a non-empty list of distinct order names
NUMBERS = "numbers"  # the type of [analyze] noise_levels: a list of numbers
ANALYZE_TYPES = {"split": str, "limit": int, "layers": NAMES, "tolerance": float, "pca_tolerance": float,
                 "repeats": int, "levels": LEVELS, "sample_cap": int, "unit": str, "seed": int, "batch_size": int,
                 "orders": ORDERS, "noise_levels": NUMBERS}
ANALYZE_KEYS = tuple(ANALYZE_TYPES)
# Counts and sizes are refused here, naming their key. The other values are checked by the code
# that uses them (TrainConfig.resolve, models.build, fu_fast.analyze's checks), called on load.
_AT_LEAST = {"batch_size": 1, "epochs": 1, "patience": 1, "input_dim": 1, "input_size": 1, "num_classes": 2,
             "limit": 1, "workers": 0, "data_seed": 0, "weight_decay": 0}
_POSITIVE = ("lr", "k")
_NOUNS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
          LEVELS: "an integer or a list of numbers", NAMES: "a non-empty list of distinct layer names",
          ORDERS: "a non-empty list of distinct order names", NUMBERS: "a list of numbers"}
# The analysis settings a sweep records per member; "layers" None is the model's own analysis layers.
# A record written before a setting existed holds it at its default (ANALYSIS_ADDED).
ANALYSIS_ADDED = {"layers": None, "orders": ["random"], "noise_levels": None}
_ANALYSIS_DEFAULTS = {"split": "test", "limit": None, **ANALYSIS_ADDED, **dataclasses.asdict(AnalysisSettings())}
# A preset's description of itself, for --list-presets and the README; not part of the sweep.
PRESET_METADATA = {"description": "a non-empty string", "figures": "a list of strings (the paper's figures)",
                   "data": "a non-empty string", "cost": "a non-empty string"}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,:=+-]*")
_LONGEST_NAME = 96
_PAPER_WIDTHS = [0.25, 0.5, 1.0, 2.0, 4.0]
REFERENCE_WIDTH = 4.0   # the paper's normalisation: each layer divided by the same layer at 4x
_INITS = ["glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform"]
_K_FACTORS = [0.25, 0.5, 1.0, 2.0, 4.0]
_IMAGENET = "ImageNet (train/ and val/ ImageFolder trees) in --data-dir"

# The paper's experiments (docs/sweep-format.md, Presets; the README maps the paper's figures to them).
# Besides the sweep's keys, each preset has PRESET_METADATA: its description (with fu-fast's choices
# where PAPER.md gives no value), the paper's figures it is for, the data it needs and its cost.
#
# Cost. Synthetic presets: CPU time measured on this project's 2-core development machine with one
# thread (process CPU time, so that other load on the machine does not count): every member, or for
# the 10,000-dimensional ones one trial per (series, width), times the trials. Image presets: GPU hours
# on one H100 SXM, estimated from the paper's epochs and the models' FLOPs (torch.utils.flop_counter,
# forward GFLOPs at 1/4, 1/2, 1, 2, 4x: AlexNet 0.024, 0.089, 0.34, 1.3, 5.3; ResNet56 0.016, 0.063,
# 0.25, 1.0, 4.0; ResNet18 0.27, 0.97, 3.6, 14, 55; Inception-v3 0.72, 2.9, 11, 46, 182;
# inception_v3_layer 10, 11, 11, 14, 22). Per training run: 3 x forward FLOPs per training image x
# images x epochs, plus a forward pass over the validation and test images every epoch, at a
# sustained 80 TFLOP/s (fp32 training with TF32 convolutions: about 16% of the H100's dense TF32
# peak, as NVIDIA's published A100 TF32 ResNet-50 rates scale); per member, the analysis: 1 + 63/2
# forward passes per analysed layer (21 levels x 3 repeats of the part after the layer, on average
# half the network) over the analysis split, in true fp32 at 30 TFLOP/s. ImageNet: each time is at
# least the JPEG decoding time at 4,000 training and 5,000 evaluation images/s (about 32 decoding
# cores), which bounds every width up to 1x of ResNet18. CIFAR-10: data loading in the training
# process (workers = 0; 100 us per augmented and 50 us per evaluated image, measured here) is added
# to the larger of compute and a launch-bound floor of 2 ms (AlexNet) or 8 ms (ResNet56) per step;
# AlexNet stops early, and its estimate assumes 40 of its at most 100 epochs. A preset's cost is the
# sum over its runs and members (a run shared by several members counted once).
PRESETS: dict[str, dict] = {
    # The learning rate is the best of a small grid per input dimension (docs/models-and-training.md): 0.05
    # diverges with 10,000-dimensional inputs, 0.01 does not.
    "mlp-synthetic": {
        "description": "MLP on synthetic teacher data, 10 and 10,000 input dimensions (lr 0.05 and 0.01, "
                       "fu-fast's picks), init std 0.01 and 0.1",
        "figures": ["Fig. 4"], "data": "synthetic (generated)",
        "cost": "about 9 CPU-minutes (measured: 182 s per trial on one core)",
        "models": ["mlp"], "widths": _PAPER_WIDTHS, "trials": 3,
        "variants": [{"input_dim": 10, "lr": 0.05}, {"input_dim": 10000, "lr": 0.01}],
        "vary": {"init": ["gaussian:0.01", "gaussian:0.1"]},
    },
    "mlp-synthetic-10d": {
        "description": "MLP on synthetic teacher data, 10 input dimensions, init std 0.01, 0.1, 1",
        "figures": ["Fig. 4d"], "data": "synthetic (generated)",
        "cost": "about 1 CPU-minute (measured: 67 s on one core)",
        "models": ["mlp"], "widths": _PAPER_WIDTHS, "trials": 3,
        "train": {"input_dim": 10}, "vary": {"init": ["gaussian:0.01", "gaussian:0.1", "gaussian:1.0"]},
    },
    # Beyond the paper (docs/definitions.md: targeted ablation, noise, selectivity): the 10-dimensional
    # synthetic MLP series at init std 0.01, analysed with every targeted order and noise curves; map its
    # neighbouring widths with `fu-fast map SWEEP_DIR --out SWEEP_DIR/mapping` before `fu-fast report`.
    "mlp-synthetic-beyond": {
        "description": "MLP on synthetic teacher data, 10 input dimensions, init std 0.01, analysed with "
                       "targeted ablation (every order and its reverse) and noise curves (0 to 16 unit stds)",
        "figures": ["not in the paper: targeted ablation, noise, selectivity, mappability"],
        "data": "synthetic (generated)", "cost": "about 1 CPU-minute (measured: 52 s with its map and report)",
        "models": ["mlp"], "widths": _PAPER_WIDTHS, "trials": 3,
        "train": {"input_dim": 10, "init": "gaussian:0.01"},
        "analyze": {"orders": ["random", "activation", "weight_norm", "redundancy", "selectivity",
                               "activation_reverse", "weight_norm_reverse", "redundancy_reverse",
                               "selectivity_reverse"],
                    "noise_levels": [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]},
    },
    # Not in the paper: a real data set that needs no download (scikit-learn's digits, fu_fast/data/digits.py).
    # The MLP's training defaults (the paper's synthetic-data settings) reach about 97% test accuracy on it
    # at every width, so they are kept (docs/models-and-training.md); its input_dim is its own, so that its
    # members are those of the preset before the CNN joined. The small CNN (AlexNet-CIFAR on 1x8x8 images)
    # has its own widths and training ([model.alexnet]): from 1x up it trains for seconds per epoch on a CPU,
    # so its series is 1/16x-1/2x, normalised by the 1/2x layers, and 15 epochs of batch 32 (AlexNet's lr,
    # decay and patience kept) replace its at most 100 of 128, which the 1,079 training images would turn
    # into 9 steps per epoch; it then ends at 93-97% test accuracy, and the whole preset took 79 s.
    "mlp-digits": {
        "description": "MLP and a small CNN on scikit-learn's 8x8 handwritten digits (a fixed stratified 60/20/20 "
                       "split). MLP: 64 inputs, widths 1/4-4, the MLP's defaults (momentum SGD, lr 0.05, batch "
                       "32, 50 epochs, init std 0.01). CNN: AlexNet-CIFAR on 1x8x8 images at widths 1/16, 1/8, "
                       "1/4, 1/2 (normalised by the 1/2x layers: wider ones train too slowly on a CPU), its "
                       "defaults but 15 epochs of batch 32 instead of up to 100 of 128 (fu-fast's choice: "
                       "93-97% test accuracy in about a CPU-minute)",
        "figures": ["digits (not in the paper)"],
        "data": "scikit-learn digits, no download (pip install 'fu-fast[digits]')",
        "cost": "about 80 s of CPU time (one thread; measured: 78 s, report included)",
        "models": ["mlp", "alexnet"], "widths": _PAPER_WIDTHS, "trials": 3,
        "train": {"data": "digits"},
        "model": {"mlp": {"input_dim": 64},
                  "alexnet": {"widths": [0.0625, 0.125, 0.25, 0.5], "reference_width": 0.5, "epochs": 15,
                              "batch_size": 32}},
    },
    # The paper trains the synthetic MLPs with momentum SGD, plain SGD and Adam, each at "the best" learning
    # rate of a small grid it does not give. fu-fast's grid at 10,000 input dimensions (widths 1/4, 1, 4,
    # seed 0, 50 epochs): plain SGD 0.01, 0.05, 0.1 fit the training set and 0.5 diverges; Adam 1e-4,
    # 3e-4, 1e-3, 1e-2 fit it. With 1,000 training examples of 10,000 dimensions every test accuracy was
    # near chance (0.51-0.56), so it cannot pick: the preset takes plain SGD's largest stable rate, 0.1 (momentum
    # SGD's 0.01 / (1 - 0.9), the same step in the long run), and Adam's usual 1e-3.
    "mlp-synthetic-optimizers": {
        "description": "MLP on synthetic teacher data, 10,000 input dimensions, init std 0.01, trained with "
                       "momentum SGD (lr 0.01), plain SGD (lr 0.1) and Adam (lr 0.001), 50 epochs, batch 32 "
                       "(the paper gives no rates: fu-fast's picks)",
        "figures": ["Fig. E9"], "data": "synthetic (generated)",
        "cost": "about 14 CPU-minutes (measured: 278 s per trial on one core)",
        "models": ["mlp"], "widths": _PAPER_WIDTHS, "trials": 3,
        "train": {"input_dim": 10000, "init": "gaussian:0.01"},
        "variants": [{"optimizer": "sgd_momentum", "lr": 0.01}, {"optimizer": "sgd", "lr": 0.1},
                     {"optimizer": "adam", "lr": 0.001}],
    },
    # Fig. 1c / Fig. 2 and Fig. 4c / E6 show AlexNets trained without regularisation under the six
    # initialisations, which are PAPER.md's defaults: the two presets train the same networks (the same
    # member directories and settings), so a sweep directory of one is reused whole by the other.
    "alexnet-cifar-unregularized": {
        "description": "AlexNet on CIFAR-10 without regularisation (no augmentation, dropout or weight decay; "
                       "early stopping only) under six initialisations: Glorot, He, LeCun, normal and uniform "
                       "(the same networks as alexnet-cifar-init: run it into that preset's --out to reuse them)",
        "figures": ["Fig. 1c", "Fig. 2"], "data": "CIFAR-10 in --data-dir (fu-fast data cifar10 DIR)",
        "cost": "about 10 H100 GPU-hours (none with alexnet-cifar-init's runs)",
        "models": ["alexnet"], "widths": _PAPER_WIDTHS, "trials": 3,
        "train": {"augment": False, "weight_decay": 0.0},
        "vary": {"init": _INITS},
    },
    "alexnet-cifar-init": {
        "description": "AlexNet on CIFAR-10 under six initialisations: Glorot, He, LeCun, normal and uniform",
        "figures": ["Fig. 4c", "Fig. E6"], "data": "CIFAR-10 in --data-dir (fu-fast data cifar10 DIR)",
        "cost": "about 10 H100 GPU-hours",
        "models": ["alexnet"], "widths": _PAPER_WIDTHS, "trials": 3,
        "vary": {"init": _INITS},
    },
    "alexnet-cifar-regularizers": {
        "description": "AlexNet on CIFAR-10 without and with data augmentation, dropout 0.5, weight decay 5e-4, "
                       "all three (the strengths are fu-fast's)",
        "figures": [], "data": "CIFAR-10 in --data-dir (fu-fast data cifar10 DIR)", "cost": "about 8 H100 GPU-hours",
        "models": ["alexnet"], "widths": _PAPER_WIDTHS, "trials": 3,
        "variants": [{}, {"augment": True}, {"dropout": 0.5}, {"weight_decay": 5e-4},
                     {"augment": True, "dropout": 0.5, "weight_decay": 5e-4}],
    },
    "cifar-random-labels": {
        "description": "AlexNet and ResNet56 on CIFAR-10 with true and with random labels",
        "figures": [], "data": "CIFAR-10 in --data-dir (fu-fast data cifar10 DIR)", "cost": "about 20 H100 GPU-hours",
        "models": ["alexnet", "resnet56"], "widths": _PAPER_WIDTHS, "trials": 3,
        "vary": {"random_labels": [False, True]},
    },
    # The batch-size and learning-rate factor k (TrainConfig.k scales both: batch = round(batch * k),
    # lr = lr * k), 1/4 to 4, on the paper's models and their training defaults.
    "cifar-k": {
        "description": "AlexNet and ResNet56 on CIFAR-10 with batch size and learning rate scaled together by "
                       "k = 1/4, 1/2, 1, 2, 4 (AlexNet batch 32-512, lr 0.0025-0.04; ResNet56 batch 32-512, "
                       "lr 0.025-0.4)",
        "figures": ["Fig. E11"], "data": "CIFAR-10 in --data-dir (fu-fast data cifar10 DIR)",
        "cost": "about 55 H100 GPU-hours",
        "models": ["alexnet", "resnet56"], "widths": _PAPER_WIDTHS, "trials": 3,
        "vary": {"k": _K_FACTORS},
    },
    "resnet18-imagenet": {
        "description": "ResNet18 on ImageNet (analysis on the 50,000 validation images)",
        "figures": [], "data": _IMAGENET, "cost": "about 360 H100 GPU-hours",
        "models": ["resnet18"], "widths": _PAPER_WIDTHS, "trials": 3, "analyze": {"split": "val"},
    },
    "resnet18-imagenet-k": {
        "description": "ResNet18 on ImageNet with batch size and learning rate scaled together by k = 1/4, 1/2, "
                       "1, 2, 4 (batch 64-1024, lr 0.025-0.4; no warm-up, as the paper gives none)",
        "figures": ["Fig. E10"], "data": _IMAGENET, "cost": "about 1,800 H100 GPU-hours",
        "models": ["resnet18"], "widths": _PAPER_WIDTHS, "trials": 3, "analyze": {"split": "val"},
        "vary": {"k": _K_FACTORS},
    },
    # One training run per (width, trial) goes on past its 90 epochs; its members are analysed from
    # the weights kept at each epoch (PAPER.md gives no epochs for this experiment: 0, 5, 10, 20 past
    # the 90 are fu-fast's choice).
    "resnet18-imagenet-epochs": {
        "description": "ResNet18 on ImageNet trained 20 epochs past its 90 (at the final learning rate), "
                       "analysed 0, 5, 10 and 20 epochs past them (fu-fast's choice of epochs) from one run per "
                       "width and trial",
        "figures": ["Fig. E12"], "data": _IMAGENET, "cost": "about 510 H100 GPU-hours",
        "models": ["resnet18"], "widths": _PAPER_WIDTHS, "trials": 3, "analyze": {"split": "val"},
        "epochs_after": [0, 5, 10, 20],
    },
    # The paper's Inception-v3 series ends at 1x; each layer is normalised by the same layer at 1x.
    "inception-v3": {
        "description": "Inception-v3 on ImageNet at widths 1/4, 1/2, 1 (normalised by the 1x layers), "
                       "analysed at the 11 Mixed modules",
        "figures": ["Fig. 1a", "Fig. 3a-b", "Fig. E4"], "data": _IMAGENET, "cost": "about 100 H100 GPU-hours",
        "models": ["inception_v3"], "widths": [0.25, 0.5, 1.0], "trials": 3, "reference_width": 1.0,
        "analyze": {"split": "val"},
    },
    "inception-v3-layer": {
        "description": "Inception-v3 on ImageNet, only Mixed_5d's width varies; analysed at Mixed_5d, Mixed_6e "
                       "and Mixed_7c (the final 35x35, 17x17 and 8x8 modules, the paper's layers 7, 12, 13)",
        "figures": ["Fig. E5"], "data": _IMAGENET, "cost": "about 260 H100 GPU-hours",
        "models": ["inception_v3_layer"], "widths": _PAPER_WIDTHS, "trials": 3,
        "analyze": {"split": "val", "layers": ["Mixed_5d", "Mixed_6e", "Mixed_7c"]},
    },
}


@dataclass(frozen=True)
class Member:
    model: str
    width: float
    trial: int
    series: str            # "MODEL/LABEL": members of one series differ only in width and trial
    variant: dict          # the training settings that distinguish the series from the sweep's other series
    # A sweep with epochs_after: the member is analysed from its training run's weights at ``epoch``,
    # ``epochs_after`` epochs past the run's epochs setting; None: from the run's model.pt.
    epochs_after: int | None = None
    epoch: int | None = None

    @property
    def run_dir(self) -> str:
        """The member's training run, relative to the sweep directory: the member itself, or the
        run that the members of every epoch of (series, width, trial) share."""
        return f"{self.model}/{folder_name(series_label(self.variant))}/w{self.width:g}/t{self.trial}"

    @property
    def dir(self) -> str:
        """Where the member lives, relative to the sweep directory: never outside it."""
        return self.run_dir if self.epoch is None else f"{self.run_dir}/epoch{self.epoch}"

    def record(self, status: str) -> dict:
        # "id" and "dir" are both in the record format (docs/sweep-format.md): the same path.
        return {"id": self.dir, "dir": self.dir, "run": self.run_dir, "model": self.model, "width": self.width,
                "trial": self.trial, "series": self.series, "variant": self.variant, "epoch": self.epoch,
                "epochs_after": self.epochs_after, "status": status}


def series_label(variant: dict, epochs_after: int | None = None) -> str:
    """A series' settings as "key=value,..." sorted by key ("default" for none); epochs_after is one
    of them for the members of a sweep with epochs_after."""
    settings = dict(variant) if epochs_after is None else {**variant, "epochs_after": epochs_after}
    return ",".join(f"{k}={_text(v)}" for k, v in sorted(settings.items())) or "default"


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
    epochs_after: list | None = None     # analyse each run at these epochs past its epochs setting
    reference_width: float = REFERENCE_WIDTH   # the width whose layers normalise a series (docs/definitions.md)
    model_tables: dict = dataclasses.field(default_factory=dict)   # model -> its [model.NAME] table, checked

    def widths_of(self, model: str) -> list[float]:
        """The widths of the model's series: its own ([model.NAME] widths), or the sweep's."""
        return [float(w) for w in self.model_tables.get(model, {}).get("widths", self.widths)]

    def reference_width_of(self, model: str) -> float:
        """The width whose layers normalise the model's series: its own, or the sweep's."""
        return float(self.model_tables.get(model, {}).get("reference_width", self.reference_width))

    def train_of(self, model: str) -> dict:
        """The training settings every member of the model shares: [train], its own table's over them."""
        own = {k: v for k, v in self.model_tables.get(model, {}).items() if k not in MODEL_TABLE_KEYS}
        return {**self.train, **own}

    def members(self) -> list[Member]:
        """Ordered by model, variant, width, trial (and epoch): the members of one run are adjacent."""
        out = []
        for model, variant in itertools.product(self.models, self.variants):
            for width, trial in itertools.product(self.widths_of(model), range(self.trials)):
                if self.epochs_after is None:
                    out.append(Member(model, float(width), trial, f"{model}/{series_label(variant)}", dict(variant)))
                    continue
                converged = self.converged_epochs(model, variant)
                for after in self.epochs_after:
                    out.append(Member(model, float(width), trial, f"{model}/{series_label(variant, after)}",
                                      dict(variant), after, converged + after))
        return out

    def converged_epochs(self, model: str, variant: dict) -> int:
        """The epochs a series trains for before "past convergence": its epochs setting, or the model's."""
        return {**self.train_of(model), **variant}.get("epochs", zoo.entry(model).training["epochs"])

    def train_config(self, member: Member, data_dir: str | None, device: str | None) -> TrainConfig:
        """The training of the member's run. With epochs_after, the run goes on past its epochs
        setting to the last epoch analysed, and keeps the weights of each epoch analysed."""
        settings = {**self.train_of(member.model), **member.variant}
        options = {k: settings.pop(k) for k in MODEL_OPTIONS if k in settings}
        if data_dir is not None:
            settings["data_dir"] = data_dir
        if device is not None:
            settings["device"] = device
        if self.epochs_after is not None:
            converged = self.converged_epochs(member.model, member.variant)
            settings["epochs"] = converged + max(self.epochs_after)
            settings["save_epochs"] = [converged + after for after in self.epochs_after]
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
        # As fu_fast.analyze records them: "random" first among the orders, the levels as floats.
        orders = check_orders(["random", *(o for o in settings["orders"] if o != "random")])
        noise_levels = check_levels(settings["noise_levels"])
    except FuFastError as e:
        raise FuFastError(f"[analyze] {e}") from None
    return {**settings, **checked.record(), "orders": list(orders),
            "noise_levels": None if noise_levels is None else list(noise_levels)}


def load_config(path: str | Path | None = None, preset: str | None = None, trials: int | None = None) -> SweepConfig:
    """A sweep from a TOML file or a preset (exactly one of them), checked through and through."""
    if (path is None) == (preset is None):
        raise FuFastError("give either a CONFIG.toml or --preset NAME")
    if preset is not None:
        if preset not in PRESETS:
            raise FuFastError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        check_preset_metadata(preset, PRESETS[preset])
        raw = {"name": preset, **{k: v for k, v in PRESETS[preset].items() if k not in PRESET_METADATA}}
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


def check_preset_metadata(name: str, preset: dict) -> None:
    """A preset says what it is: its description, the paper's figures it is for, the data it needs and
    what it costs (PRESET_METADATA), each of its type."""
    for key, noun in PRESET_METADATA.items():
        value = preset.get(key)
        if key == "figures":
            good = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
        else:
            good = isinstance(value, str) and bool(value.strip())
        if not good:
            raise FuFastError(f"preset {name}: its {key} must be {noun}, got {show(value)}")


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
    known = ("name", "models", "widths", "trials", "train", "vary", "variants", "analyze", "epochs_after",
             "reference_width", "model")
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
    widths = _widths(raw)
    trials = raw.get("trials", 1)
    if not _is_a(trials, int) or trials < 1:
        raise FuFastError(f"trials must be a positive integer, got {show(trials)}")
    epochs_after = raw.get("epochs_after")
    if epochs_after is not None and not (isinstance(epochs_after, list) and epochs_after
                                         and all(_is_a(e, int) and e >= 0 for e in epochs_after)
                                         and len(set(epochs_after)) == len(epochs_after)):
        raise FuFastError(f"epochs_after must be a non-empty list of distinct integers >= 0 (epochs past the "
                          f"epochs setting), got {show(epochs_after)}")
    reference_width = _reference_width(raw, REFERENCE_WIDTH)
    model_tables = _model_tables(raw, names)
    _check_series_shapes(raw, names, model_tables, widths, reference_width)
    train, vary, analyze_table = (_table(raw, key) for key in ("train", "vary", "analyze"))
    explicit = raw.get("variants", [{}])
    if not isinstance(explicit, list) or not explicit or not all(isinstance(v, dict) for v in explicit):
        raise FuFastError(f"variants must be a non-empty list of tables ([[variants]]), got {show(explicit)}")
    own_training = [(f"[model.{model}]", {k: v for k, v in table.items() if k not in MODEL_TABLE_KEYS})
                    for model, table in model_tables.items()]
    tables = ([("[train]", train)] + own_training + [("[vary]", vary)]
              + [(f"[[variants]] {i + 1}", v) for i, v in enumerate(explicit)])
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
    for where, table in own_training:
        for key, value in table.items():
            if key in train and train[key] == value:
                raise FuFastError(f"{where} {key} changes nothing: [train] gives it the same value ({show(value)}); "
                                  f"leave it out")
    for key, value in analyze_table.items():
        if key not in ANALYZE_TYPES:
            raise FuFastError(f"unknown analysis setting {key!r} in [analyze]; known: {', '.join(ANALYZE_KEYS)}")
        _check_value("[analyze]", key, value, ANALYZE_TYPES[key])
    products = [dict(zip(vary, combo)) for combo in itertools.product(*vary.values())]
    variants = [{**e, **p} for e in explicit for p in products]
    config = SweepConfig(name, names, widths, trials, train, variants, analyze_table, raw,
                         sorted(epochs_after) if epochs_after is not None else None, reference_width, model_tables)
    _check_members(config, vary)
    return config


def _widths(table: dict, where: str = "") -> list[float]:
    """The widths of the sweep, or of a [model.NAME] table (``where`` then names it, with a space)."""
    widths = _list(table, "widths", [1.0], where)
    if not all(_is_a(w, float) and w > 0 for w in widths):
        raise FuFastError(f"{where}widths must be positive numbers, got {show(widths)}")
    return [float(w) for w in widths]


def _reference_width(table: dict, default, where: str = "") -> float:
    reference_width = table.get("reference_width", default)
    if not (_is_a(reference_width, float) and reference_width > 0):
        raise FuFastError(f"{where}reference_width must be a positive number, got {show(reference_width)}")
    return float(reference_width)


def _model_tables(raw: dict, models: list) -> dict:
    """The [model.NAME] tables, each of a model of the sweep, their keys known and their widths and
    reference widths checked (their training settings are checked with the other tables')."""
    tables = raw.get("model", {})
    if not isinstance(tables, dict) or not all(isinstance(table, dict) for table in tables.values()):
        raise FuFastError(f"model must hold one table per model ([model.NAME]), got {show(tables)}")
    for model, table in tables.items():
        where = f"[model.{model}]"
        if model not in models:
            raise FuFastError(f"{where}: {model!r} is not one of the sweep's models ({', '.join(models)})")
        for key in table:
            if key not in MODEL_TABLE_KEYS and key not in SETTING_TYPES:
                raise FuFastError(f"unknown setting {key!r} in {where}; known: {', '.join(MODEL_TABLE_KEYS)} and "
                                  f"the training settings ({', '.join(sorted(SETTING_TYPES))})")
        if "widths" in table:
            _widths(table, f"{where} ")
        if "reference_width" in table:
            _reference_width(table, None, f"{where} ")
    return {model: dict(table) for model, table in tables.items()}


def _check_series_shapes(raw: dict, models: list, model_tables: dict, widths: list, reference_width: float) -> None:
    """Each model's reference width, where one is given, is one of its widths; and every widths and
    reference_width given changes something: a model's own differs from the sweep's, and the sweep's
    is not given when every model has its own."""
    for model in dict.fromkeys(models):
        own = model_tables.get(model, {})
        if "reference_width" not in own and "reference_width" not in raw:
            continue   # the paper's 4x: a series without that member is reported in unit counts
        model_widths = own.get("widths", raw.get("widths", widths))   # as given, for the message
        reference = float(own.get("reference_width", reference_width))
        if not any(math.isclose(reference, w) for w in model_widths):
            given = f"[model.{model}] reference_width" if "reference_width" in own else "reference_width"
            of = f"widths of [model.{model}]" if "widths" in own else "widths"
            raise FuFastError(f"{given} {reference:g} is not one of the {of} ({show(model_widths)}): no member "
                              f"would normalise its series")
    for key, sweeps in (("widths", widths), ("reference_width", reference_width)):
        for model, table in model_tables.items():
            if key in table and _as_floats(table[key]) == _as_floats(sweeps):
                raise FuFastError(f"[model.{model}] {key} changes nothing: it equals the sweep's "
                                  f"({show(table[key])}); leave it out")
        if key in raw and all(key in model_tables.get(model, {}) for model in models):
            raise FuFastError(f"{key} changes nothing: every model has its own ([model.NAME] {key}); leave it out")


def _as_floats(value):
    """A width or list of widths as floats, so that 1 and 1.0 compare equal."""
    return [float(w) for w in value] if isinstance(value, list) else float(value)


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
    # Each [train] key must change something for some member, and each key of a [model.NAME] table for
    # some member of NAME: be used, and not be overridden. (table, key) -> why it has not, so far.
    ignored_by_all = {("[train]", key): "" for key in config.train}
    ignored_by_all.update({(f"[model.{model}]", key): "" for model, table in config.model_tables.items()
                           for key in table if key not in MODEL_TABLE_KEYS})
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
            if config.epochs_after is not None and resolved.patience is not None:
                raise FuFastError(f"epochs_after analyses a run at fixed epochs past its epochs setting, and "
                                  f"{resolved.model} trains with early stopping (patience {resolved.patience}), "
                                  f"which may end it before them")
            layers = config.analyze.get("layers")
            if layers is not None:
                _check_layers(resolved.model, resolved.width, json.dumps(resolved.model_options, sort_keys=True),
                              tuple(layers))
        except FuFastError as e:
            raise FuFastError(f"member {member.dir}: {e}") from None
        for key in member.variant:
            why = unused_because(key, resolved)
            if why:
                raise FuFastError(f"{'[vary]' if key in vary else '[[variants]]'} {key} changes nothing for member "
                                  f"{member.dir} ({why}): leave it out")
        own = f"[model.{member.model}]"
        for where, key in list(ignored_by_all):
            if where not in ("[train]", own):
                continue
            if where == "[train]" and key in config.model_tables.get(member.model, {}):
                why = f"{own} sets its own"
            elif key in member.variant:
                why = "[vary] sets its own" if key in vary else "[[variants]] set their own"
            else:
                why = unused_because(key, resolved)
            ignored_by_all[where, key] = why
            if why is None:
                del ignored_by_all[where, key]
    if ignored_by_all:
        (where, key), why = min(ignored_by_all.items())
        whose = "any member" if where == "[train]" else f"any {where[len('[model.'):-1]} member"
        raise FuFastError(f"{where} {key} changes nothing for {whose} ({why}): leave it out")


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


@functools.cache
def _check_layers(name: str, width: float, options: str, layers: tuple) -> None:
    """Each of ``layers`` names a module output of model ``name`` that runs once per forward pass
    ("module@k": its k-th call), found by a forward pass on the meta device (shapes only). Whether a
    layer can be analysed (its output's shape, a cut point) fu_fast.analyze checks on the data."""
    with torch.device("meta"):
        model = zoo.build(name, width, **json.loads(options)).eval()
    config = model.fu_fast_config["options"]
    if "input_dim" in config:
        probe = torch.empty(1, config["input_dim"], device="meta")
    else:
        side = config.get("input_size", 32)
        probe = torch.empty(1, config.get("in_channels", 3), side, side, device="meta")
    modules = dict(model.named_modules())
    calls = dict.fromkeys(modules, 0)

    def count(module_name):
        def hook(*_):
            calls[module_name] += 1
        return hook

    with torch.no_grad(), forward_hooks([(module, count(module_name)) for module_name, module in modules.items()]):
        model(probe)
    for layer in layers:
        module_name, at, call = layer.rpartition("@") if "@" in layer else (layer, "", "")
        if module_name not in modules or not module_name:
            raise FuFastError(f"[analyze] layers: {name} has no module {module_name or layer!r}; its analysis "
                              f"layers are {', '.join(model.analysis_layers)}")
        runs = calls[module_name]
        if at and not (call.isdigit() and int(call) < runs):
            raise FuFastError(f"[analyze] layers: {layer!r}: after '@' comes the number of one of the "
                              f"{runs} call(s) of {module_name!r} per forward pass, from 0")
        if not at and runs != 1:
            raise FuFastError(f"[analyze] layers: {name}'s module {layer!r} runs {runs} times per forward pass; "
                              f"name one call, as in '{layer}@0'")


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
    if kind is NUMBERS:
        return isinstance(value, list) and all(_is_a(v, float) for v in value)
    if kind in (NAMES, ORDERS):
        return (isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)
                and len(set(value)) == len(value))
    return isinstance(value, int) or isinstance(value, list) and all(_is_a(v, float) for v in value)   # levels


def _table(raw: dict, key: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise FuFastError(f"{key} must be a table ([{key}]), got {show(value)}")
    return dict(value)


def _list(raw: dict, key: str, default=None, where: str = "") -> list:
    value = raw.get(key, default)
    if not isinstance(value, list) or not value:
        raise FuFastError(f"{where}{key} must be a non-empty list, got {show(value)}")
    return value


def show(value) -> str:
    """A value as it appears in a one-line message: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
