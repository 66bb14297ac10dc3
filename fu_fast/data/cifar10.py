"""CIFAR-10 from the standard python-pickle batches (`cifar-10-batches-py`), read locally.

torchvision.datasets.CIFAR10 is not used: it accepts a directory only if every batch
file has the md5 of the official release, so a subset or any other copy in the same
format is refused with "Dataset not found or corrupted". This reader checks the file
list instead, says exactly what is missing, and reads the same format: each batch is a
pickled dict with "data", uint8 (N, 3072) rows of a 32x32 image in CHW order, and
"labels", N ints (keys are bytes when the pickle was written by Python 3).

Splits: "train" and "val" partition the training batches with a permutation seeded by
0 -- fixed, independent of the run seed, so every run validates on the same images --
"val" taking a tenth of them (the paper's 5,000 of 50,000) and "train" the rest;
"test" is test_batch (10,000).
"""

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from ..errors import FuFastError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
SPLIT_SEED = 0
# Channel means and standard deviations of the 50,000 training images.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SOURCE = "get it from https://www.cs.toronto.edu/~kriz/cifar.html"


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


def _read(path: Path):
    """(images (N, 32, 32, 3) uint8, labels list) of one pickled batch."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data, labels = np.asarray(batch["data"], dtype=np.uint8), [int(y) for y in batch["labels"]]
    except Exception as e:  # anything unreadable is a wrong file, not a bug here
        raise FuFastError(f"cifar10: {path} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise FuFastError(f"cifar10: {path} is not a CIFAR-10 python batch "
                          f"(data {data.shape}, {len(labels)} labels; expected (N, 3072) and N labels)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


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
