"""Dispatch of the native kernels (fu_fast._C) on torch tensors.

The extension does not link libtorch: a tensor crosses the binding as its data pointer,
sizes and strides (and, on a GPU, PyTorch's current stream). This module is the only
caller, so every check that keeps a pointer valid (device, dtype, contiguity, sizes)
lives here. GPU tensors use the CUDA kernels when the build has them (masked expansion,
label agreement, permutation ranks); otherwise, and for the covariance, whose CUDA twin
is still to come, the pure PyTorch references (fu_fast.reference) run on the GPU.
"""

from __future__ import annotations

import torch

from . import reference
from .errors import FuFastError

try:
    from . import _C
except ImportError as exc:  # a source tree shadowing the installed package has no _C
    raise ImportError(
        f"fu_fast's compiled core (fu_fast._C) is missing next to {__file__}. Install with "
        "`pip install .` (or `pip install -e .` for development) and, from the repository "
        "root, run tests with `pytest` rather than `python -m pytest`, which puts the "
        "unbuilt source tree first on sys.path."
    ) from exc

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


def build_info() -> dict:
    """Version, compiled backends, CUDA architectures, OpenMP, and whether a GPU is usable now."""
    info = dict(_C.build_info())
    info["backends"] = list(info["backends"])
    info["cuda_archs"] = [int(a) for a in info["cuda_archs"].split(",") if a]
    info["gpu_usable"] = info["cuda_devices"] > 0 and torch.cuda.is_available()
    info["torch"] = torch.__version__
    return info


def cuda_kernels_compiled() -> bool:
    """Whether this build holds the CUDA kernels (else GPU tensors use fu_fast.reference)."""
    return hasattr(_C, "expand_masked_cuda")


def _native(tensor: torch.Tensor) -> bool:
    """Whether the native kernels take this tensor: CPU always, CUDA when compiled in."""
    return tensor.device.type == "cpu" or (tensor.device.type == "cuda" and cuda_kernels_compiled())


def _stream(tensor: torch.Tensor) -> int:
    return torch.cuda.current_stream(tensor.device).cuda_stream


def backend_for(device: torch.device) -> str:
    """The backend of the result document for an analysis on ``device``: "cpu" or "cuda"."""
    return torch.device(device).type


def _dtype_code(tensor: torch.Tensor) -> int:
    try:
        return _DTYPE_CODES[tensor.dtype]
    except KeyError:
        raise FuFastError(f"unsupported dtype {tensor.dtype}; expected a floating-point tensor") from None


def signed_keys(keys) -> torch.Tensor:
    """64-bit unsigned keys as an int64 tensor holding the same bits (torch has no uint64 math)."""
    return torch.tensor([k - (1 << 64) if k >= (1 << 63) else k for k in keys], dtype=torch.int64)


def permutation_ranks(key: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """rank_key(u) for u in 0..n-1, as an int64 tensor on ``device`` (a GPU needs the CUDA build)."""
    ranks = torch.empty(n, dtype=torch.int64, device=device)
    if ranks.device.type == "cuda":
        if not cuda_kernels_compiled():
            raise FuFastError("this build of fu_fast has no CUDA kernels (see fu_fast.build_info())")
        _C.permutation_ranks_cuda(key, n, ranks.data_ptr(), _stream(ranks))
    else:
        _C.permutation_ranks(key, n, ranks.data_ptr())
    return ranks


def expand_masked(x: torch.Tensor, keys: list[int], thresholds: list[int], inner: int) -> torch.Tensor:
    """The K masked copies of a layer output x of shape (B, ...), stacked to (K*B, ...).

    Units are consecutive runs of ``inner`` elements of a row (inner = 1: every element is a
    unit; inner = H*W: whole channels are). Copy k zeroes the units whose rank under
    keys[k] is below thresholds[k]; no mask tensor is ever built.
    """
    num_masks = len(keys)
    batch = x.shape[0]
    row = x[0].numel() if batch else 0
    units = row // inner
    if not _native(x):
        return reference.expand_masked(x, keys, thresholds, inner)
    _dtype_code(x)
    src = x.contiguous()
    out = torch.empty((num_masks * batch,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    key_tensor = signed_keys(keys).to(x.device)
    threshold_tensor = torch.tensor(thresholds, dtype=torch.int64).to(x.device)
    args = (src.data_ptr(), out.data_ptr(), batch, units, inner, x.element_size(),
            key_tensor.data_ptr(), threshold_tensor.data_ptr(), num_masks)
    if x.device.type == "cuda":
        _C.expand_masked_cuda(*args, _stream(x))
    else:
        _C.expand_masked(*args)
    return out


def label_agreement(logits: torch.Tensor, base_labels: torch.Tensor, num_masks: int) -> torch.Tensor:
    """Per mask k, how many of the B rows logits[k*B:(k+1)*B] have argmax == base_labels."""
    if logits.dim() != 2:
        raise FuFastError(f"the model's output must be (batch, classes) logits, got shape {tuple(logits.shape)}")
    if not _native(logits):
        return reference.label_agreement(logits, base_labels, num_masks)
    code = _dtype_code(logits)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    base = base_labels.to(device=logits.device, dtype=torch.int64).contiguous()
    counts = torch.zeros(num_masks, dtype=torch.int64, device=logits.device)
    args = (logits.data_ptr(), code, num_masks, base.numel(), logits.shape[1], logits.stride(0),
            base.data_ptr(), counts.data_ptr())
    if logits.device.type == "cuda":
        _C.label_agreement_cuda(*args, _stream(logits))
    else:
        _C.label_agreement(*args)
    return counts


def covariance_accumulate(activation: torch.Tensor, rows: torch.Tensor, count: torch.Tensor,
                          mean: torch.Tensor, comoment: torch.Tensor) -> None:
    """Merge the sampled rows of a (B, C) or (B, C, H, W) activation into running moments.

    rows holds flattened positions b * H*W + h * W + w of this batch. count (1,), mean (C,)
    and comoment (C, C) are float64 tensors updated in place (Chan et al.'s merge).
    """
    if rows.numel() == 0:
        return
    if activation.device.type != "cpu":
        reference.covariance_accumulate(activation, rows, count, mean, comoment)
        return
    code = _dtype_code(activation)
    batch, channels = activation.shape[:2]
    if activation.dim() == 2:
        spatial, stride_spatial = 1, 0
    elif activation.dim() == 4:
        # NCHW and channels_last both flatten (h, w) with a single stride.
        if activation.stride(2) != activation.shape[3] * activation.stride(3):
            activation = activation.contiguous()
        spatial, stride_spatial = activation.shape[2] * activation.shape[3], activation.stride(3)
    else:
        raise FuFastError(f"activations must be (B, C) or (B, C, H, W), got shape {tuple(activation.shape)}")
    rows = rows.to(torch.int64).contiguous()
    for state in (count, mean, comoment):
        assert state.dtype == torch.float64 and state.is_contiguous() and state.device.type == "cpu"
    _C.covariance_accumulate(activation.data_ptr(), code, batch, channels, spatial,
                             activation.stride(0), activation.stride(1), stride_spatial,
                             rows.data_ptr(), rows.numel(), count.data_ptr(), mean.data_ptr(),
                             comoment.data_ptr())
