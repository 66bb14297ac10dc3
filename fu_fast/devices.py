"""Which device a command or an analysis runs on: the one asked for, checked to exist here."""

from __future__ import annotations

import torch

from .errors import FuFastError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for (None: cuda when a GPU is usable, else cpu), refused in one line when
    it is not a device name, not a cpu or CUDA device, or not usable on this machine. A bare
    "cuda" becomes the current GPU, so results name the GPU that ran them."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise FuFastError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise FuFastError(f"device '{target}' asked for, but no CUDA GPU is usable here")
        if target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        if target.index >= torch.cuda.device_count():
            raise FuFastError(f"device '{target}' asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    elif target.type != "cpu":
        raise FuFastError(f"device '{target}' is not supported; use cpu, cuda or cuda:N")
    return target
