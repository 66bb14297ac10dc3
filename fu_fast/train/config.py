"""Training settings: the paper's per-model defaults (docs/models-and-training.md), every one overridable.

A TrainConfig holds what the user asked for; ``resolve`` fills in the model's defaults and
applies the batch/learning-rate factor k, and the resolved values are what a run records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import models
from ..errors import FuFastError, integer_setting

OPTIMIZERS = ("sgd_momentum", "sgd", "adam", "rmsprop")


@dataclass
class TrainConfig:
    """What to train and how. ``None`` means "the model's default" (its registry entry's training)."""

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
    # Epoch checkpoints RUN_DIR/epoch-N.pt (weights only, as model.pt): every save_every-th epoch and
    # each epoch of save_epochs. None: none. Recorded, and a resumed run must keep them.
    save_every: int | None = None
    save_epochs: list | None = None

    def resolve(self) -> "TrainConfig":
        """A copy with every default filled in and k applied; checks every value.

        The copy keeps k for the record, but its batch_size and lr already include it: resolve
        a TrainConfig once (train does), not its result.
        """
        model_entry = models.entry(self.model)
        defaults = model_entry.training
        resolved = dataclasses.replace(self, model_options=dict(self.model_options))
        for name, value in defaults.items():
            if getattr(resolved, name) is None:
                setattr(resolved, name, value)
        if not resolved.k > 0:
            raise FuFastError(f"k must be positive, got {resolved.k}")
        integer_setting(resolved.batch_size, "batch size")
        # A small k may scale a small batch below one example: one is the least there is.
        resolved.batch_size = max(1, round(resolved.batch_size * resolved.k))
        resolved.lr = resolved.lr * resolved.k
        # The build options a data set needs (digits: 64-vectors for an MLP, 1x8x8 images for a conv net).
        from .. import data as data_lib
        resolved.model_options = data_lib.fit_model_options(resolved.data, resolved.model, resolved.model_options)
        if resolved.data == "synthetic" and resolved.input_dim is None:
            resolved.input_dim = resolved.model_options.get("input_dim", 10)
        if resolved.model == "mlp":
            resolved.model_options.setdefault("input_dim", resolved.input_dim or 10)
            if resolved.input_dim is not None and resolved.model_options["input_dim"] != resolved.input_dim:
                raise FuFastError(f"model input_dim {resolved.model_options['input_dim']} differs from the "
                                  f"data's input_dim {resolved.input_dim}")
        if resolved.save_epochs is not None:
            if isinstance(resolved.save_epochs, (str, bytes)) or not hasattr(resolved.save_epochs, "__iter__"):
                raise FuFastError(f"save epochs must be a list of epochs, got {resolved.save_epochs!r}")
            epochs = [integer_setting(e, "a save epoch") for e in resolved.save_epochs]
            # Sorted, each once, and None for no epoch: the same list however it was given.
            resolved.save_epochs = sorted(set(epochs)) or None
        for option, value in model_entry.training_options.items():
            resolved.model_options.setdefault(option, value)
        if resolved.random_labels and resolved.augment:
            # The paper: the random-label variant trains without augmentation.
            if self.augment:
                raise FuFastError("random labels are trained without augmentation, as in the paper; drop --augment")
            resolved.augment = False
        _check(resolved)
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
    if c.save_every is not None:
        integer_setting(c.save_every, "save_every (epochs between epoch checkpoints)")
    if c.save_epochs is not None and c.save_epochs[-1] > c.epochs:
        raise FuFastError(f"save epoch {c.save_epochs[-1]} lies past the last epoch ({c.epochs}): it would never "
                          f"be saved")
    if c.workers < 0:
        raise FuFastError(f"workers must be >= 0, got {c.workers}")
    if not (c.width > 0):
        raise FuFastError(f"width must be positive, got {c.width}")
    from .optim import parse_schedule

    parse_schedule(c.schedule)
