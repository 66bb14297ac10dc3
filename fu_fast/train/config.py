"""Training settings: the paper's per-model defaults (docs/models-and-training.md), every one overridable.

A TrainConfig holds what the user asked for; ``resolve`` fills in the model's defaults and
applies the batch/learning-rate factor k, and the resolved values are what a run records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import FuFastError

OPTIMIZERS = ("sgd_momentum", "sgd", "adam", "rmsprop")

# Per model: the table of docs/models-and-training.md. Schedules use the grammar of fu_fast.train.optim.
# epochs for AlexNet is a ceiling: the paper stops early on the validation split.
MODEL_DEFAULTS: dict[str, dict] = {
    "mlp": dict(data="synthetic", optimizer="sgd_momentum", lr=0.05, schedule="constant", batch_size=32,
                epochs=50, weight_decay=0.0, augment=False, patience=None),
    "alexnet": dict(data="cifar10", optimizer="sgd_momentum", lr=0.01, schedule="exp:0.95", batch_size=128,
                    epochs=100, weight_decay=0.0, augment=False, patience=10),
    "resnet56": dict(data="cifar10", optimizer="sgd_momentum", lr=0.1, schedule="step:91,136", batch_size=128,
                     epochs=182, weight_decay=2e-4, augment=True, patience=None),
    "resnet18": dict(data="imagenet", optimizer="sgd_momentum", lr=0.1, schedule="step:30,60,80", batch_size=256,
                     epochs=90, weight_decay=1e-4, augment=True, patience=None),
    # Inception-v3: RMSProp with TF's settings (decay 0.9, momentum 0.9, epsilon 1.0), 0.045
    # decayed by 0.94 every 2 epochs: Szegedy et al.'s schedule, which the paper's 0.045 start
    # follows; docs/models-and-training.md says how the paper's own text differs.
    "inception_v3": dict(data="imagenet", optimizer="rmsprop", lr=0.045, schedule="exp:0.94/2", batch_size=256,
                         epochs=90, weight_decay=4e-5, augment=True, patience=None),
}
MODEL_DEFAULTS["inception_v3_layer"] = dict(MODEL_DEFAULTS["inception_v3"])

# The learning rate of these defaults is for the batch above; ResNet18's 0.1 is 0.1 x batch/256.
IMAGE_SIZES = {"resnet18": 224, "inception_v3": 299, "inception_v3_layer": 299}


@dataclass
class TrainConfig:
    """What to train and how. ``None`` means "the model's default" (see MODEL_DEFAULTS)."""

    model: str
    width: float = 1.0
    model_options: dict = field(default_factory=dict)   # init, dropout, num_classes, input_size, input_dim
    data: str | None = None
    data_dir: str | None = None
    input_dim: int | None = None          # synthetic data only (10 or 10,000 in the paper)
    random_labels: bool = False
    data_seed: int = 0                    # the data set (synthetic teacher, random labels): shared by trials
    augment: bool | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str | None = None
    batch_size: int | None = None
    k: float = 1.0                        # scales batch size and learning rate together
    epochs: int | None = None
    patience: int | None = None           # early stopping: epochs without a better validation accuracy
    seed: int = 0                         # initial weights, shuffling, dropout, augmentation
    device: str | None = None             # default: cuda if usable, else cpu
    amp: bool = False                     # bfloat16 autocast (GPU)
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    evaluate_test: bool = True            # test accuracy after every epoch (recorded, never used to stop)

    def resolve(self) -> "TrainConfig":
        """A copy with every default filled in and k applied; checks every value.

        The copy keeps k for the record, but its batch_size and lr already include it: resolve
        a TrainConfig once (train does), not its result.
        """
        from .. import models  # the registry knows the model names and options

        if self.model not in MODEL_DEFAULTS:
            raise FuFastError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_DEFAULTS)}")
        defaults = MODEL_DEFAULTS[self.model]
        resolved = dataclasses.replace(self, model_options=dict(self.model_options))
        for name, value in defaults.items():
            if getattr(resolved, name) is None:
                setattr(resolved, name, value)
        if not resolved.k > 0:
            raise FuFastError(f"k must be positive, got {resolved.k}")
        if isinstance(resolved.batch_size, bool) or not isinstance(resolved.batch_size, int) or resolved.batch_size < 1:
            raise FuFastError(f"batch size must be a positive integer, got {resolved.batch_size!r}")
        # A small k may scale a small batch below one example: one is the least there is.
        resolved.batch_size = max(1, round(resolved.batch_size * resolved.k))
        resolved.lr = resolved.lr * resolved.k
        if resolved.data == "synthetic" and resolved.input_dim is None:
            resolved.input_dim = resolved.model_options.get("input_dim", 10)
        if resolved.model == "mlp":
            resolved.model_options.setdefault("input_dim", resolved.input_dim or 10)
            if resolved.input_dim is not None and resolved.model_options["input_dim"] != resolved.input_dim:
                raise FuFastError(f"model input_dim {resolved.model_options['input_dim']} differs from the "
                                  f"data's input_dim {resolved.input_dim}")
        if self.model in IMAGE_SIZES:
            resolved.model_options.setdefault("input_size", IMAGE_SIZES[self.model])
        if resolved.random_labels and resolved.augment:
            # The paper: the random-label variant trains without augmentation.
            if self.augment:
                raise FuFastError("random labels are trained without augmentation, as in the paper; drop --augment")
            resolved.augment = False
        _check(resolved)
        models.default_options(resolved.model)   # raises for a model the registry does not know
        return resolved

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(c: TrainConfig) -> None:
    if c.optimizer not in OPTIMIZERS:
        raise FuFastError(f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not (c.lr > 0):
        raise FuFastError(f"learning rate must be positive, got {c.lr}")
    if not (0 <= c.momentum < 1):
        raise FuFastError(f"momentum must be in [0, 1), got {c.momentum}")
    if not (c.weight_decay >= 0):
        raise FuFastError(f"weight decay must be >= 0, got {c.weight_decay}")
    if c.epochs < 1:
        raise FuFastError(f"epochs must be at least 1, got {c.epochs}")
    if c.patience is not None and c.patience < 1:
        raise FuFastError(f"patience must be at least 1 epoch, got {c.patience}")
    if c.workers < 0:
        raise FuFastError(f"workers must be >= 0, got {c.workers}")
    if not (c.width > 0):
        raise FuFastError(f"width must be positive, got {c.width}")
    from .optim import parse_schedule

    parse_schedule(c.schedule)
