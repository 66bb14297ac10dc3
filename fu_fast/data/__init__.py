"""The data sets of the paper: synthetic teacher data, CIFAR-10 and ImageNet.

    from fu_fast import data
    train = data.load("cifar10", "train", data_dir="~/data", augment=True)
    train.num_classes, train.info     # 10, the "data" record of the result document

Every data set yields (input tensor, int label). Nothing is ever downloaded: CIFAR-10
and ImageNet are read from `data_dir`; synthetic data is generated from `seed`.

Option rules:
* `augment` is a training-regime switch, so the same options can be passed for every
  split: it applies to the "train" split of image data only, and never with random
  labels (the paper trains that variant without augmentation). Elsewhere it is off, and
  `info` records the augmentation actually applied.
* `input_dim` applies to synthetic data only (ignored otherwise, and not recorded);
  `image_size` to image data only (an error with synthetic data). Its default is the
  data set's native size: 32 for CIFAR-10, 224 for ImageNet.
* `for_analysis` gives an image model (one whose build options have `input_size`)
  synthetic *images* when asked for synthetic data: Gaussian images of the model's side
  and uniform labels over its classes (synthetic.SyntheticImages).
* `seed` determines the synthetic data and the random labels; CIFAR-10's train/val
  split is fixed (see cifar10.py). Augmentation draws from torch's global RNG, which the
  training loop seeds.
"""

from __future__ import annotations

from torch.utils.data import Dataset, Subset

from ..errors import FuFastError, integer_setting
from . import cifar10, imagenet, synthetic
from .labels import RandomLabels

NAMES = ("synthetic", "cifar10", "imagenet")
SPLITS = ("train", "val", "test")
NATIVE_SIZE = {"cifar10": 32, "imagenet": 224}

__all__ = ["names", "splits", "load", "for_analysis", "NAMES", "SPLITS", "RandomLabels"]


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
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FuFastError(f"seed must be a non-negative integer, got {seed!r}")
    augment = bool(augment) and name != "synthetic" and split == "train" and not random_labels
    if name == "synthetic":
        if image_size is not None:
            raise FuFastError("image_size applies to cifar10 and imagenet, not to synthetic data (use input_dim)")
        dataset = synthetic.SyntheticDataset(split, input_dim=input_dim, seed=seed)
        options = {"input_dim": input_dim}
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


def for_analysis(model_config: dict, *, trained: dict | None = None, name=None, split: str = "test",
                 data_dir=None, random_labels=None, image_size=None, limit=None) -> Dataset:
    """The evaluation data of a model: what it was trained on (``trained``, the settings of its
    run record), unless told otherwise; the first ``limit`` examples when given. Synthetic data
    for an image model (``input_size`` in its options) is Gaussian images (``image_size`` overrides the side)."""
    trained = trained or {}
    name = name or trained.get("data") or ("synthetic" if model_config["name"] == "mlp" else None)
    if name is None:
        raise FuFastError("say which data to analyse on: --data synthetic|cifar10|imagenet")
    options = model_config["options"]
    random_labels = trained.get("random_labels", False) if random_labels is None else random_labels
    if name == "synthetic" and options.get("input_size"):
        dataset = _synthetic_images(split, image_size or options["input_size"], options.get("num_classes"),
                                    random_labels=random_labels, seed=trained.get("data_seed", 0))
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


SYNTHETIC_IMAGE_CLASSES = 10   # label range of synthetic images for a model that declares no num_classes


def _synthetic_images(split: str, image_size, num_classes, *, random_labels: bool, seed: int) -> Dataset:
    """Synthetic Gaussian images for an image model; labels are uniform already, so random labels
    change nothing but the record."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FuFastError(f"seed must be a non-negative integer, got {seed!r}")
    dataset = synthetic.SyntheticImages(split, image_size=image_size, seed=seed,
                                        num_classes=num_classes or SYNTHETIC_IMAGE_CLASSES)
    dataset.info = {"name": "synthetic", "examples": len(dataset), "split": split,
                    "options": {"images": True, "image_size": dataset.image_size, "num_classes": dataset.num_classes,
                                "random_labels": bool(random_labels), "augment": False, "seed": seed}}
    return dataset
