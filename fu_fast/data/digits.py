"""scikit-learn's handwritten digits: 1,797 8x8 grey images of the digits 0-9, nothing to download.

The images ship inside scikit-learn (sklearn.datasets.load_digits reads a gzipped CSV of its
own package data; no pickle), so this is a real data set that works offline; it needs the
optional extra: pip install 'fu-fast[digits]'. It is not in the paper: it is a small, fast
stand-in for CIFAR-10 on a CPU.

Splits: a fixed stratified split, 60% train / 20% val / 20% test of each class (174-183
images per class: 1,079 / 359 / 359 images). Each class's indices, in order, are permuted with
numpy's legacy RandomState(0), whose stream numpy keeps unchanged across versions and
machines, and the class's first 20% go to test, the next 20% to val, the rest to train
(rounded to whole images); nothing depends on the run seed or on scikit-learn's splitting
utilities. SPLIT_SHA256 is the hash of the result, checked by the tests.

Inputs: pixels (0..16) divided by 16, then standardised with the mean and standard deviation
of all pixels of the *train* split (one value each, the grey channel's, as CIFAR-10's are per
channel), so val and test are scaled with statistics they did not contribute to. Shapes: a
flat 64-vector for a model that reads vectors (the MLP: ``image_size`` None), a (1, 8, 8)
image for a conv net (``image_size`` 8, the native side; no other size).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import FuFastError

SIDE = 8
FEATURES = SIDE * SIDE
CLASSES = 10
EXAMPLES = 1797
LEVELS = 16                        # pixel values are the integers 0..16
SHARES = {"test": 0.2, "val": 0.2}  # of each class; train gets the rest
SPLIT_SEED = 0
# sha256 of the int64 train, val and test indices, concatenated: the split never changes.
SPLIT_SHA256 = "6edc5eb9350d8b581743efa58303b7fa3f6e47a43bff833a29e3c301e1b97ca7"
MISSING = "digits data needs scikit-learn: pip install 'fu-fast[digits]'"


@functools.lru_cache(maxsize=1)
def raw() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64) float64 in 0..16, labels (1797,) int64) as scikit-learn ships them,
    checked; read once per process."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FuFastError(MISSING) from None
    pixels, labels = load_digits(return_X_y=True)
    pixels, labels = np.asarray(pixels, dtype=np.float64), np.asarray(labels)
    if (pixels.shape != (EXAMPLES, FEATURES) or labels.shape != (EXAMPLES,)
            or not np.array_equal(pixels, np.clip(np.round(pixels), 0, LEVELS))
            or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= CLASSES):
        raise FuFastError(f"scikit-learn's load_digits returned {pixels.shape} pixels and {labels.shape} labels, "
                          f"not the {EXAMPLES:,} 8x8 images of 0..{LEVELS} with labels 0-9 this data set is")
    return pixels, labels.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: sorted example indices of each split (stratified by class)."""
    rng = np.random.RandomState(SPLIT_SEED)   # the legacy stream: the same on every numpy
    parts = {"train": [], "val": [], "test": []}
    for label in range(CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test, n_val = (int(round(share * len(members))) for share in (SHARES["test"], SHARES["val"]))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test:n_test + n_val])
        parts["train"].append(members[n_test + n_val:])
    return {split: np.sort(np.concatenate(chunks)).astype(np.int64) for split, chunks in parts.items()}


def split_hash(indices: dict[str, np.ndarray]) -> str:
    """The sha256 that SPLIT_SHA256 records."""
    return hashlib.sha256(b"".join(indices[s].astype("<i8").tobytes() for s in ("train", "val", "test"))).hexdigest()


def statistics(pixels: np.ndarray, train: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the [0, 1]-scaled pixels of the train split."""
    scaled = pixels[train] / LEVELS
    return float(scaled.mean()), float(scaled.std())


class Digits(Dataset):
    """One split; yields (standardised float32 64-vector or (1, 8, 8) image, int label)."""

    num_classes = CLASSES

    def __init__(self, split: str, *, image_size=None):
        if image_size is not None and image_size != SIDE:
            raise FuFastError(f"digits images are {SIDE}x{SIDE}, not {image_size}x{image_size}: build the model "
                              f"with input_size {SIDE} (--image-size {SIDE}), or read 64-vectors (an MLP, "
                              f"input_dim {FEATURES})")
        pixels, labels = raw()
        indices = split_indices(labels)
        self.mean, self.std = statistics(pixels, indices["train"])
        self.indices = indices[split]
        inputs = ((pixels[self.indices] / LEVELS - self.mean) / self.std).astype(np.float32)
        shape = (-1, 1, SIDE, SIDE) if image_size else (-1, FEATURES)
        self.inputs = torch.from_numpy(inputs.reshape(shape))
        self.targets = labels[self.indices].tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]
