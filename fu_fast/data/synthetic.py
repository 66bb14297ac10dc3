"""The synthetic teacher data of the paper's MLP experiments.

Inputs are i.i.d. standard Gaussian vectors of `input_dim` dimensions (10 or 10,000 in
the paper); labels are the argmax of a randomly initialised teacher MLP (input_dim ->
32 ReLU -> 2), 1/4 of the student's 128 hidden units. The teacher is redrawn until
each label covers 40-60% of the examples of *each* split (train and test checked
separately, so the statement holds for whichever split is analysed). 1,000 training
and 1,000 test examples; the paper uses no validation split for the MLP.

Everything comes from one torch.Generator seeded by `seed` (never the global RNG), so
the same (seed, input_dim) regenerates bit-identical inputs, labels and teacher: the
data set is kept by keeping those two numbers. `dataset.teacher` is the teacher itself.
"""

import math

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import FuFastError
from ..errors import integer_setting
from ._common import generator

EXAMPLES = {"train": 1000, "test": 1000}
TEACHER_HIDDEN = 32
BALANCE = (0.4, 0.6)      # each label's share of a split
MAX_TEACHERS = 1000       # draws before giving up (a balanced one comes within a few)


def _linear(fan_in: int, fan_out: int, gen: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default distribution, U(+-1/sqrt(fan_in)) for weight and
    bias, drawn from `gen`; skip_init keeps nn.Linear's own init off the global RNG."""
    layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out)
    bound = 1 / math.sqrt(fan_in)
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            p.copy_(torch.rand(p.shape, generator=gen) * (2 * bound) - bound)
    return layer


def generate(input_dim: int, seed: int):
    """(inputs (2000, input_dim) float32, labels (2000,) int64, teacher): train rows first."""
    integer_setting(input_dim, "synthetic: input_dim")
    gen = generator(seed, 0)
    n_train, n = EXAMPLES["train"], sum(EXAMPLES.values())
    inputs = torch.randn(n, input_dim, generator=gen)
    for _ in range(MAX_TEACHERS):
        teacher = nn.Sequential(_linear(input_dim, TEACHER_HIDDEN, gen), nn.ReLU(),
                                _linear(TEACHER_HIDDEN, 2, gen)).requires_grad_(False).eval()
        labels = teacher(inputs).argmax(1)
        shares = [labels[:n_train].float().mean().item(), labels[n_train:].float().mean().item()]
        if all(BALANCE[0] <= s <= BALANCE[1] for s in shares):
            return inputs, labels, teacher
    raise FuFastError(f"synthetic: no balanced teacher in {MAX_TEACHERS} draws for "
                      f"input_dim={input_dim}, seed={seed}; try another seed")


class SyntheticDataset(Dataset):
    """One split of the teacher data; yields (input vector, int label)."""

    num_classes = 2

    def __init__(self, split: str, *, input_dim: int = 10, seed: int = 0):
        if split not in EXAMPLES:
            raise FuFastError(f"synthetic has train and test splits only (1,000 examples each), "
                              f"not {split!r}: the paper's MLP is trained without a validation split")
        inputs, labels, self.teacher = generate(input_dim, seed)
        rows = slice(0, EXAMPLES["train"]) if split == "train" else slice(EXAMPLES["train"], None)
        self.inputs, self.targets = inputs[rows].clone(), labels[rows].clone()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.inputs[i], int(self.targets[i])


class SyntheticImages(Dataset):
    """Gaussian images for analysing an image model without an image data set: each of the
    split's 1,000 examples is a (channels, image_size, image_size) tensor (3 channels unless the
    model reads another number) of i.i.d. N(0, 1) pixels (about the statistics of normalised
    images) with a label drawn uniformly from ``num_classes``
    (no teacher: the accuracy is chance, and the analysis compares the model's own labels).

    Image i is drawn when read, from a generator keyed by (seed, split, i), so a few examples cost
    a few draws and every example is the same whatever the order or the batch.
    """

    SPLIT_KEYS = {"train": 0, "test": 1}

    def __init__(self, split: str, *, image_size: int, num_classes: int, seed: int = 0, channels: int = 3):
        if split not in EXAMPLES:
            raise FuFastError(f"synthetic has train and test splits only (1,000 examples each), not {split!r}")
        self.image_size = integer_setting(image_size, "synthetic: image_size")
        self.num_classes = integer_setting(num_classes, "synthetic: num_classes")
        self.channels = integer_setting(channels, "synthetic: channels")
        self.seed, self.split = seed, split
        self.targets = torch.randint(self.num_classes, (EXAMPLES[split],),
                                     generator=generator(seed, 3, self.SPLIT_KEYS[split]))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        gen = generator(self.seed, 2, self.SPLIT_KEYS[self.split], int(i))
        return torch.randn(self.channels, self.image_size, self.image_size, generator=gen), int(self.targets[i])
