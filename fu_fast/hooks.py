"""Forward hooks held for exactly the duration of a ``with`` block (captum's pattern): every
hook the package puts on a model is registered and removed here, so none outlives its pass,
whatever the pass raises."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

from torch import nn


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]] = (),
                  pre_hooks: Iterable[tuple[nn.Module, Callable]] = (),
                  kwargs_pre_hooks: Iterable[tuple[nn.Module, Callable]] = ()) -> Iterator[None]:
    """Register each (module, hook) as a forward hook, each (module, pre_hook) as a forward
    pre-hook, and each of ``kwargs_pre_hooks`` as a pre-hook that also takes and may replace the
    keyword arguments (``hook(module, args, kwargs) -> None or (args, kwargs)``); remove all of
    them when the block ends, by error or not."""
    handles = []
    try:
        for module, hook in pre_hooks:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in kwargs_pre_hooks:
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def on_call(call: int | None, hook: Callable) -> Callable:
    """``hook`` (a forward hook or pre-hook, whatever its arguments) for the ``call``-th call
    (from 0) of its module in each forward pass, the module being one that runs several times
    per pass (a shared activation); None: every call. Make one per pass: the count starts when
    it is made."""
    if call is None:
        return hook
    calls = [0]

    def on_that_call(module, *arguments):
        calls[0] += 1
        return hook(module, *arguments) if calls[0] - 1 == call else None
    return on_that_call
