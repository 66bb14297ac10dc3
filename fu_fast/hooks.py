"""Forward hooks held for exactly the duration of a ``with`` block (captum's pattern): every
hook the package puts on a model is registered and removed here, so none outlives its pass,
whatever the pass raises."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

from torch import nn


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]] = (),
                  pre_hooks: Iterable[tuple[nn.Module, Callable]] = ()) -> Iterator[None]:
    """Register each (module, hook) as a forward hook and each (module, pre_hook) as a forward
    pre-hook; remove all of them when the block ends, by error or not."""
    handles = []
    try:
        for module, hook in pre_hooks:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
