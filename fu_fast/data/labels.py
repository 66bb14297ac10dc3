"""Random labels: the paper's memorisation variant of every data set."""

import torch
from torch.utils.data import Dataset

from ._common import generator

SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}


class RandomLabels(Dataset):
    """`base` with each label replaced, once and for all, by one drawn uniformly from
    its `num_classes` classes.

    The labels are drawn at construction from a generator keyed by (seed, split), so
    they are fixed per (seed, split), whatever the batch order or epoch, and other
    seeds or splits get independent draws. Inputs and their transforms are the base's.
    """

    def __init__(self, base: Dataset, *, seed: int, split: str):
        self.base, self.num_classes = base, base.num_classes
        self.targets = torch.randint(self.num_classes, (len(base),), generator=generator(seed, 1, SPLIT_KEYS[split]))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], int(self.targets[i])
