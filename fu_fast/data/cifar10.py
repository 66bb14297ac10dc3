"""CIFAR-10 from the standard python-pickle batches (`cifar-10-batches-py`), read locally.

torchvision.datasets.CIFAR10 is not used: it accepts a directory only if every batch
file has the md5 of the official release, so a subset or any other copy in the same
format is refused with "Dataset not found or corrupted". This reader checks the file
list instead, says exactly what is missing, and reads the same format: each batch is a
pickled dict with "data", uint8 (N, 3072) rows of a 32x32 image in CHW order, and
"labels", N ints in 0-9 (keys are bytes when the pickle was written by Python 3).

A pickle can run any code it names, so the batches are read with an unpickler that admits
only the globals this format needs (numpy's array and dtype reconstruction; the bytes
helper of Python 3 pickles of protocol < 3) and refuses any other before it is called.
Pixel data must already be uint8 and labels integers in 0-9: nothing is cast or wrapped.

Splits: "train" and "val" partition the training batches with a permutation seeded by
0 -- fixed, independent of the run seed, so every run validates on the same images --
"val" taking a tenth of them (the paper's 5,000 of 50,000) and "train" the rest;
"test" is test_batch (10,000).
"""

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from ..errors import FuFastError
from ._common import one_line

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
SPLIT_SEED = 0
# Channel means and standard deviations of the 50,000 training images.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SOURCE = ("fetch it with `fu-fast data cifar10 DIR` (or --download), or get it from "
          "https://www.cs.toronto.edu/~kriz/cifar.html")


def find(data_dir) -> Path:
    """The batch folder: `data_dir` itself or its cifar-10-batches-py subfolder."""
    if data_dir is None:
        raise FuFastError(f"cifar10 needs a data directory holding {FOLDER} ({SOURCE})")
    root = Path(data_dir).expanduser()
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    expected = TRAIN_FILES + [TEST_FILE]
    missing = [f for f in expected if not (folder / f).is_file()]
    if missing:
        if len(missing) < len(expected):
            where = f"{folder} lacks {', '.join(missing)}"
        else:
            where = f"no batches in {folder}" if folder.name == FOLDER else f"no {FOLDER} under {root}"
        raise FuFastError(f"cifar10: {where} (expected {FOLDER}/data_batch_1..5 and test_batch; {SOURCE})")
    return folder


class _Refused(Exception):
    """A batch file names a global the format never holds."""


def _latin1_bytes(text, encoding):
    """_codecs.encode as Python 3 pickles of protocol < 3 use it: bytes stored as latin1 text."""
    if encoding != "latin1":
        raise _Refused(f"_codecs.encode(..., {encoding!r})")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict:
    """(module, name) -> object for the globals of a pickled ndarray: numpy 2 writes
    numpy._core.*, numpy 1 (and the official Python 2 batches) numpy.core.*; protocol 5
    uses _frombuffer, older protocols _reconstruct, and numpy scalars `scalar`."""
    try:
        from numpy._core import multiarray, numeric   # numpy >= 2
    except ImportError:
        from numpy.core import multiarray, numeric    # numpy 1.x
    found = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}
    admitted = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_bytes}
    for package in ("numpy.core", "numpy._core"):
        admitted.update({(f"{package}.multiarray", name): value for name, value in found.items()})
        admitted[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return admitted


_ADMITTED = _numpy_globals()


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, and nothing else: every
    global a pickle names (the only way it can call code) must be one of _ADMITTED."""

    def find_class(self, module, name):
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _read(path: Path):
    """(images (N, 32, 32, 3) uint8, labels list) of one pickled batch."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise FuFastError(f"cifar10: refused to read {path}: it calls {e}, which a CIFAR-10 batch never holds "
                          f"(only dicts, lists, strings, numbers and numpy arrays are read)") from None
    except Exception as e:  # anything unreadable is a wrong file, not a bug here
        raise FuFastError(f"cifar10: {path} is not a CIFAR-10 python batch ({one_line(e)})") from None
    return _check_batch(path, batch)


def _check_batch(path: Path, batch):
    """The images and labels of an unpickled batch, refusing anything but the exact format."""
    def wrong(what: str) -> FuFastError:
        return FuFastError(f"cifar10: {path} is not a CIFAR-10 python batch: {what}")

    if not isinstance(batch, dict):
        raise wrong(f"it holds a {type(batch).__name__}, not a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise wrong(f"no {' or '.join(map(repr, missing))} entry")
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise wrong(f"data must be a uint8 array of shape (N, 3072), got {got}")
    try:
        labels = np.asarray(batch["labels"])
    except (ValueError, TypeError) as e:  # e.g. ragged nested lists
        raise wrong(f"labels are not a list of integers ({one_line(e)})") from None
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise wrong(f"labels must be a list of integers, got {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(data):
        raise wrong(f"{len(labels)} labels for {len(data)} images")
    outside = np.flatnonzero((labels < 0) | (labels > 9))
    if len(outside):
        raise wrong(f"label {labels[outside[0]]} of image {outside[0]} is outside 0-9 "
                    f"({len(outside)} such labels; CIFAR-10 has 10 classes)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.tolist()


def split_indices(n: int, split: str) -> np.ndarray:
    """Sorted indices of the training images in `split` ("train" or "val")."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    n_val = n // 10
    return np.sort(order[n - n_val:] if split == "val" else order[:n - n_val])


def transform(*, augment: bool, image_size: int):
    """Crop-and-flip augmentation (if asked) at 32x32, resize, then tensor and normalise."""
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    if image_size != 32:
        steps.append(transforms.Resize(image_size))
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


class CIFAR10(Dataset):
    """One split of CIFAR-10; yields (normalised (3, S, S) float tensor, int label)."""

    num_classes = 10

    def __init__(self, data_dir, split: str, *, augment: bool = False, image_size: int = 32):
        folder = find(data_dir)
        if split == "test":
            self.images, labels = _read(folder / TEST_FILE)
        else:
            parts = [_read(folder / f) for f in TRAIN_FILES]
            images = np.concatenate([images for images, _ in parts])
            labels = [label for _, batch_labels in parts for label in batch_labels]
            keep = split_indices(len(images), split)
            self.images, labels = images[keep], [labels[i] for i in keep]
        self.targets = labels
        self.transform = transform(augment=augment, image_size=image_size)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.targets[i]
