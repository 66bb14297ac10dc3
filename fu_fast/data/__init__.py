"""The data sets of the paper: synthetic teacher data, CIFAR-10 and ImageNet; and scikit-learn's digits.

    from fu_fast import data
    train = data.load("cifar10", "train", data_dir="~/data", augment=True)
    train.num_classes, train.info     # 10, the "data" record of the result document

Every data set yields (input tensor, int label). Nothing is downloaded here: CIFAR-10
and ImageNet are read from `data_dir` (`fu-fast data cifar10 DIR` fetches CIFAR-10, see
download.py); synthetic data is generated from `seed`; digits ships inside scikit-learn
(digits.py; 64-vectors for an MLP, 1x8x8 images for a conv net).

Option rules:
* `augment` is a training-regime switch, so the same options can be passed for every
  split: it applies to the "train" split of image data only, and never with random
  labels (the paper trains that variant without augmentation). Elsewhere it is off, and
  `info` records the augmentation actually applied.
* `input_dim` applies to synthetic data only (ignored otherwise, and not recorded: digits'
  vectors record their own 64);
  `image_size` to image data only (an error with synthetic data). Its default is the
  data set's native size: 32 for CIFAR-10, 224 for ImageNet. Digits has one size, 8: with
  `image_size` 8 it gives (1, 8, 8) images, without it flat 64-vectors; `model_inputs` says
  which build options fit a model to it. It is never augmented.
* `for_analysis` gives an image model (one whose build options have `input_size`)
  synthetic *images* when asked for synthetic data: Gaussian images of the model's side
  and uniform labels over its classes (synthetic.SyntheticImages), with the model's
  `in_channels` (3 unless it says otherwise).
* `seed` determines the synthetic data and the random labels; CIFAR-10's train/val
  split and digits' train/val/test split are fixed (see cifar10.py, digits.py). Augmentation
  draws from torch's global RNG, which the training loop seeds.
"""

from __future__ import annotations

from torch.utils.data import Dataset, Subset

from ..errors import FuFastError, integer_setting
from . import cifar10, digits, imagenet, synthetic
from .labels import RandomLabels

NAMES = ("synthetic", "cifar10", "imagenet", "digits")
SPLITS = ("train", "val", "test")
NATIVE_SIZE = {"cifar10": 32, "imagenet": 224}

__all__ = ["names", "splits", "load", "for_analysis", "model_inputs", "NAMES", "SPLITS", "RandomLabels"]


def names() -> list:
    """The data set names `load` accepts."""
    return list(NAMES)


def splits(name: str) -> tuple:
    """The splits a data set has: synthetic data has no validation split (docs/models-and-training.md)."""
    return ("train", "test") if name == "synthetic" else SPLITS


def load(name: str, split: str, *, data_dir=None, random_labels: bool = False, seed: int = 0,
         augment: bool = False, input_dim: int = 10, image_size=None) -> Dataset:
    """One split of a data set, with `num_classes` and `info` (docs/result-format.md) attached."""
    if name not in NAMES:
        raise FuFastError(f"unknown data set {name!r}; choose one of {', '.join(NAMES)}")
    if split not in SPLITS:
        raise FuFastError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    _check_seed(seed)
    augment = bool(augment) and name not in ("synthetic", "digits") and split == "train" and not random_labels
    if name == "synthetic":
        if image_size is not None:
            raise FuFastError("image_size applies to cifar10, imagenet and digits, not to synthetic data "
                              "(use input_dim)")
        dataset = synthetic.SyntheticDataset(split, input_dim=input_dim, seed=seed)
        options = {"input_dim": input_dim}
    elif name == "digits":
        if image_size is not None:
            image_size = integer_setting(image_size, "digits: image_size")
        dataset = digits.Digits(split, image_size=image_size)
        options = {"image_size": digits.SIDE} if image_size else {"input_dim": digits.FEATURES}
    else:
        size = NATIVE_SIZE[name] if image_size is None else integer_setting(image_size, f"{name}: image_size")
        if name == "cifar10":
            dataset = cifar10.CIFAR10(data_dir, split, augment=augment, image_size=size)
        else:
            dataset = imagenet.load(data_dir, split, augment=augment, image_size=size)
        options = {"image_size": size}
    if random_labels:
        dataset = RandomLabels(dataset, seed=seed, split=split)
    options.update(random_labels=bool(random_labels), augment=augment, seed=seed)
    dataset.info = {"name": name, "examples": len(dataset), "split": split, "options": options}
    return dataset


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FuFastError(f"seed must be a non-negative integer, got {seed!r}")


def model_inputs(name: str, model: str) -> dict:
    """The build options with which zoo model ``model`` reads data set ``name``, where its defaults
    do not: {} for every data set but digits, which gives an MLP (an ``input_dim`` option) input_dim
    64 and a conv net (``input_size``) input_size 8 and in_channels 1, and either 10 classes.
    FuFastError for a model that cannot read digits (a conv net without an in_channels option)."""
    from .. import models

    if name != "digits":
        return {}
    fitted = _digits_inputs(models.default_options(model))
    if fitted is not None:
        return fitted
    readers = [n for n in models.names() if _digits_inputs(models.default_options(n)) is not None]
    raise FuFastError(f"{model} cannot read digits' one-channel 8x8 images (it has no in_channels option); "
                      f"use {' or '.join(readers)}")


def _digits_inputs(options: dict) -> dict | None:
    """The digits build options of a model with these default options; None when it cannot read digits."""
    if "input_dim" in options:
        return {"input_dim": digits.FEATURES, "num_classes": digits.CLASSES}
    if "input_size" in options and "in_channels" in options:
        return {"input_size": digits.SIDE, "in_channels": 1, "num_classes": digits.CLASSES}
    return None


def fit_model_options(name: str, model: str, options: dict) -> dict:
    """Build ``options`` given for zoo ``model`` completed with ``model_inputs(name, model)``;
    FuFastError naming the option when one given contradicts the data set."""
    fitted = dict(options)
    for key, value in model_inputs(name, model).items():
        if fitted.setdefault(key, value) != value:
            raise FuFastError(f"{name} data needs {model} built with {key} {value}, not {fitted[key]} "
                              f"(leave the option out)")
    return fitted


def for_analysis(model_config: dict, *, trained: dict | None = None, name=None, split: str = "test",
                 data_dir=None, random_labels=None, image_size=None, limit=None) -> Dataset:
    """The evaluation data of a model: what it was trained on (``trained``, the settings of its
    run record), unless told otherwise; the first ``limit`` examples when given. Synthetic data
    for an image model (``input_size`` in its options) is Gaussian images (``image_size`` overrides the side)."""
    trained = trained or {}
    name = name or trained.get("data") or ("synthetic" if model_config["name"] == "mlp" else None)
    if name is None:
        raise FuFastError("say which data to analyse on: --data synthetic|cifar10|imagenet|digits")
    options = model_config["options"]
    random_labels = trained.get("random_labels", False) if random_labels is None else random_labels
    if name == "digits":
        _check_reads_digits(model_config, image_size)
    if name == "synthetic" and options.get("input_size"):
        dataset = _synthetic_images(split, image_size or options["input_size"], options.get("num_classes"),
                                    random_labels=random_labels, seed=trained.get("data_seed", 0),
                                    channels=options.get("in_channels", 3))
    else:
        dataset = load(name, split, data_dir=data_dir or trained.get("data_dir"), random_labels=random_labels,
                       seed=trained.get("data_seed", 0), input_dim=options.get("input_dim", 10),
                       image_size=image_size or (options.get("input_size") if name != "synthetic" else None))
    if limit is None:
        return dataset
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise FuFastError(f"limit must be a positive number of examples, got {limit!r}")
    subset = Subset(dataset, range(min(limit, len(dataset))))
    subset.num_classes, subset.info = dataset.num_classes, {**dataset.info, "examples": len(subset)}
    return subset


def _check_reads_digits(model_config: dict, image_size) -> None:
    """A model analysed on digits reads 64-vectors (input_dim 64) or one-channel images (its side is
    checked by the data set), else one line instead of a shape error deep in its forward pass."""
    options, model = model_config["options"], model_config["name"]
    if "input_dim" in options and options["input_dim"] != digits.FEATURES:
        raise FuFastError(f"{model} reads {options['input_dim']} input features and digits are "
                          f"{digits.FEATURES}-vectors: build it with input_dim {digits.FEATURES}")
    if (image_size or options.get("input_size")) and options.get("in_channels", 3) != 1:
        raise FuFastError(f"{model} reads {options.get('in_channels', 3)}-channel images and digits' are grey "
                          f"(one channel): build it with in_channels 1")


SYNTHETIC_IMAGE_CLASSES = 10   # label range of synthetic images for a model that declares no num_classes


def _synthetic_images(split: str, image_size, num_classes, *, random_labels: bool, seed: int,
                      channels: int = 3) -> Dataset:
    """Synthetic Gaussian images for an image model; labels are uniform already, so random labels
    change nothing but the record."""
    _check_seed(seed)
    dataset = synthetic.SyntheticImages(split, image_size=image_size, seed=seed,
                                        num_classes=num_classes or SYNTHETIC_IMAGE_CLASSES, channels=channels)
    dataset.info = {"name": "synthetic", "examples": len(dataset), "split": split,
                    "options": {"images": True, "image_size": dataset.image_size, "num_classes": dataset.num_classes,
                                **({"channels": channels} if channels != 3 else {}),
                                "random_labels": bool(random_labels), "augment": False, "seed": seed}}
    return dataset
