"""The evaluation data as batches of (inputs, labels or None), whatever form it came in.

Accepted: a tensor of inputs, an (inputs, labels) pair of tensors, a torch Dataset
(items are inputs or (inputs, label, ...) tuples) or a DataLoader. The number of
examples must be known before the pass (the position sample is drawn over the whole
set); data without a length is counted by one extra pass.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler, Subset

from ..errors import FuFastError

DEFAULT_BATCH_SIZE = 128


class Batches:
    def __init__(self, data, batch_size: int | None = None):
        self.batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        # Rows per batch are ours to choose when none were given and the data is not a loader.
        self.sized_by_us = batch_size is None and not isinstance(data, DataLoader)
        if self.batch_size < 1:
            raise FuFastError(f"batch_size must be positive, got {batch_size}")
        self.passes = 1
        self.labels_known = True
        if isinstance(data, torch.Tensor):
            self._inputs, self._labels = data, None
            self.name, self.examples = "tensor", data.shape[0] if data.dim() else 0
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            self._inputs, self._labels = data
            if self._inputs.shape[0] != self._labels.shape[0]:
                raise FuFastError(f"inputs and labels differ in length: "
                                  f"{self._inputs.shape[0]} vs {self._labels.shape[0]}")
            self.name, self.examples = "tensor", self._inputs.shape[0]
        elif isinstance(data, DataLoader):
            if isinstance(data.sampler, RandomSampler) or getattr(data.sampler, "shuffle", False):
                # Examples are identified by their position in the data (the position sample for
                # redundancy is drawn over it), so a reshuffled order changes the result.
                raise FuFastError("the DataLoader shuffles its data; analyse it in a fixed order (shuffle=False)")
            self._loader = data
            self.name = type(data.dataset).__name__
            self.examples = _loader_length(data)
        elif isinstance(data, Dataset):
            self._loader = DataLoader(data, batch_size=self.batch_size, shuffle=False)
            self.name = type(data).__name__
            self.examples = _loader_length(self._loader)
        else:
            raise FuFastError(f"data must be a tensor, an (inputs, labels) pair, a Dataset or a DataLoader, "
                              f"not {type(data).__name__}")
        if self.examples is None:  # an iterable without a length: count it once
            self.examples = sum(inputs.shape[0] for inputs, _ in self._iterate())
            self.passes += 1
        if self.examples == 0:
            raise FuFastError("the data is empty: there are no examples to analyse")
        # This process's slice of the data: all of it, unless shard() narrows it.
        self.offset, self.stop = 0, self.examples

    def shard(self, rank: int, world: int) -> None:
        """Keep examples [rank*N/W, (rank+1)*N/W): one contiguous block per process, so global
        example indices (which the position sample is drawn over) stay offset + local index."""
        self.offset, self.stop = rank * self.examples // world, (rank + 1) * self.examples // world
        if hasattr(self, "_inputs"):
            return
        if not isinstance(self._loader.dataset, Dataset) or isinstance(self._loader.dataset, IterableDataset) \
                or self._loader.batch_size is None or not isinstance(self._loader.sampler, SequentialSampler):
            raise FuFastError("distributed analysis shards the data itself: pass a tensor or a map-style "
                              "Dataset (or a plain DataLoader over one, without a sampler)")
        loader = self._loader
        self._loader = DataLoader(Subset(loader.dataset, range(self.offset, self.stop)),
                                  batch_size=loader.batch_size, num_workers=loader.num_workers,
                                  collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)

    def resize(self, rows: int) -> None:
        """Use batches of ``rows`` examples (at least 1, at most all of them) where the batch size is
        ours to choose; a batch size the caller gave, or a DataLoader's, is kept."""
        if not self.sized_by_us:
            return
        self.batch_size = max(1, min(rows, self.stop - self.offset))
        if hasattr(self, "_loader"):   # the loader made over a Dataset (or over this process's shard)
            loader = self._loader
            self._loader = DataLoader(loader.dataset, batch_size=self.batch_size, num_workers=loader.num_workers,
                                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        if not hasattr(self, "_loader"):
            for start in range(self.offset, self.stop, self.batch_size):
                stop = min(start + self.batch_size, self.stop)
                yield self._inputs[start:stop], None if self._labels is None else self._labels[start:stop]
            return
        for item in self._loader:
            yield _split_item(item)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        seen = 0
        for inputs, labels in self._iterate():
            if inputs.shape[0] == 0:
                continue
            seen += inputs.shape[0]
            if labels is None:
                self.labels_known = False
            yield inputs, labels
        if seen != self.stop - self.offset:
            raise FuFastError(f"the data yielded {seen} examples but announced {self.stop - self.offset}; "
                              "use a loader that yields every example once (no drop_last)")

    def first(self) -> torch.Tensor:
        for inputs, _ in self._iterate():
            if inputs.shape[0]:
                return inputs
        raise FuFastError("the data is empty: there are no examples to analyse")


def _split_item(item) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        labels = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        if labels is not None and (labels.is_floating_point() or labels.dim() != 1):
            labels = None
        return item[0], labels
    raise FuFastError(f"each batch must be a tensor or an (inputs, labels) tuple, not {type(item).__name__}")


def _loader_length(loader: DataLoader) -> int | None:
    if isinstance(loader.dataset, IterableDataset):
        return None
    try:
        sampled = len(loader.sampler) if loader.batch_sampler is None or loader.batch_size is not None \
            else sum(len(b) for b in loader.batch_sampler)
    except TypeError:
        return None
    if loader.batch_size is not None and loader.drop_last:
        sampled -= sampled % loader.batch_size
    return sampled
