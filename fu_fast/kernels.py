"""Dispatch of the kernels on torch tensors: fu_fast._C on the CPU, and on a GPU the first
of (1) the CUDA kernels compiled into fu_fast._C, (2) the same CUDA sources compiled at run
time by cupy (fu_fast.cupy_kernels; a build without CUDA keeps its GPU path), (3) the pure
PyTorch references of fu_fast.reference, run on the GPU.

The extension does not link libtorch: a tensor crosses the binding as its data pointer,
sizes and strides, and on a GPU with PyTorch's current stream, so kernels are queued in
order with PyTorch's own work and nothing is copied. This module is the only caller, so
every check that keeps a pointer valid (device, dtype, layout, sizes) lives here.
"""

from __future__ import annotations

import torch

from . import cupy_kernels, reference
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

GPU_BACKENDS = ("native", "cupy", "torch")

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
    """Whether this build of fu_fast._C holds the CUDA kernels."""
    return hasattr(_C, "expand_masked_cuda")


def gpu_backend() -> str:
    """What runs the kernels on CUDA tensors: "native" (compiled into fu_fast._C), "cupy"
    (the same .cu sources compiled at run time by cupy) or "torch" (fu_fast.reference)."""
    if cuda_kernels_compiled():
        return "native"
    if cupy_kernels.available():
        return "cupy"
    return "torch"


def _cuda_kernels(tensor: torch.Tensor):
    """The object holding the CUDA entry points (fu_fast._C or the cupy module) for a tensor
    on a GPU, or None when the kernels run as PyTorch references (CPU tensors, or a GPU
    without compiled kernels)."""
    if tensor.device.type != "cuda":
        return None
    backend = gpu_backend()
    return _C if backend == "native" else cupy_kernels.load() if backend == "cupy" else None


def _launch(cuda, entry: str, tensor: torch.Tensor, *args) -> None:
    """Queue a CUDA entry point on the current stream of tensor's GPU, with that GPU current
    (a stream can only take work from its own device)."""
    with torch.cuda.device(tensor.device):
        getattr(cuda, entry)(*args, torch.cuda.current_stream(tensor.device).cuda_stream)


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
    """rank_key(u) for u in 0..n-1, as an int64 tensor on ``device``."""
    ranks = torch.empty(n, dtype=torch.int64, device=device)
    cuda = _cuda_kernels(ranks)
    if cuda is not None:
        _launch(cuda, "permutation_ranks_cuda", ranks, key, n, ranks.data_ptr())
    elif ranks.device.type == "cpu":
        _C.permutation_ranks(key, n, ranks.data_ptr())
    else:
        ranks.copy_(torch.from_numpy(reference.permutation_ranks(key, n)))
    return ranks


def _row_layout(x: torch.Tensor) -> tuple[torch.Tensor, int, int, bool]:
    """(rows in memory, channels, spatial, channels_last) of a layer output: a channels_last
    conv output is used as it lies (the kernels map NHWC elements to NCHW units); anything
    else is made contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x, x.shape[1], x.shape[2] * x.shape[3], True
    src = x.contiguous()
    channels = x.shape[1] if x.dim() > 1 else 1
    return src, channels, max(1, x[0].numel() // max(1, channels)), False


def expand_masked(x: torch.Tensor, keys: list[int], thresholds: list[int], inner: int) -> torch.Tensor:
    """The K masked copies of a layer output x of shape (B, ...), stacked to (K*B, ...).

    Units are consecutive runs of ``inner`` elements of a row in NCHW order (inner = 1:
    every element is a unit; inner = H*W: whole channels are). Copy k zeroes the units
    whose rank under keys[k] is below thresholds[k]; no mask tensor is ever built. A
    channels_last input gives a channels_last output with the same units ablated.
    """
    num_masks = len(keys)
    batch = x.shape[0]
    units = x[0].numel() // inner
    cuda = _cuda_kernels(x)
    if cuda is None and x.device.type != "cpu":
        return reference.expand_masked(x, keys, thresholds, inner)
    _dtype_code(x)
    src, channels, spatial, channels_last = _row_layout(x)
    out = torch.empty((num_masks * batch,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # Keys and thresholds go to the device with the copy queued on the current stream; the
    # pinned staging buffer lets that copy run asynchronously.
    masks = torch.cat([signed_keys(keys), torch.tensor(thresholds, dtype=torch.int64)])
    if x.device.type == "cuda":
        masks = masks.pin_memory().to(x.device, non_blocking=True)
    args = (src.data_ptr(), out.data_ptr(), batch, units, inner, channels, spatial, channels_last,
            x.element_size(), masks.data_ptr(), masks[num_masks:].data_ptr(), num_masks)
    if cuda is not None:
        _launch(cuda, "expand_masked_cuda", x, *args)
    else:
        _C.expand_masked(*args)
    return out


def label_agreement(logits: torch.Tensor, base_labels: torch.Tensor, num_masks: int) -> torch.Tensor:
    """Per mask k, how many of the B rows logits[k*B:(k+1)*B] have argmax == base_labels
    (an int64 tensor on the logits' device)."""
    if logits.dim() != 2:
        raise FuFastError(f"the model's output must be (batch, classes) logits, got shape {tuple(logits.shape)}")
    cuda = _cuda_kernels(logits)
    if cuda is None and logits.device.type != "cpu":
        return reference.label_agreement(logits, base_labels, num_masks)
    code = _dtype_code(logits)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    base = base_labels.to(device=logits.device, dtype=torch.int64).contiguous()
    counts = torch.zeros(num_masks, dtype=torch.int64, device=logits.device)
    args = (logits.data_ptr(), code, num_masks, base.numel(), logits.shape[1], logits.stride(0),
            base.data_ptr(), counts.data_ptr())
    if cuda is not None:
        _launch(cuda, "label_agreement_cuda", logits, *args)
    else:
        _C.label_agreement(*args)
    return counts


def covariance_accumulate(activation: torch.Tensor, rows: torch.Tensor, count: torch.Tensor,
                          mean: torch.Tensor, comoment: torch.Tensor) -> None:
    """Merge the sampled rows of a (B, C) or (B, C, H, W) activation into running moments.

    rows holds flattened positions b * H*W + h * W + w of this batch. count (1,), mean (C,)
    and comoment (C, C) are float64 tensors on the activation's device, updated in place
    (Chan et al.'s merge).
    """
    if rows.numel() == 0:
        return
    for state in (count, mean, comoment):
        if state.dtype != torch.float64 or not state.is_contiguous() or state.device != activation.device:
            raise FuFastError("covariance state must be contiguous float64 tensors on the activation's device")
    cuda = _cuda_kernels(activation)
    if cuda is None and activation.device.type != "cpu":
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
    rows = rows.to(device=activation.device, dtype=torch.int64).contiguous()
    args = (activation.data_ptr(), code, batch, channels, spatial, activation.stride(0), activation.stride(1),
            stride_spatial, rows.data_ptr(), rows.numel(), count.data_ptr(), mean.data_ptr(), comoment.data_ptr())
    if cuda is not None:
        # The batch's mean and co-moment: scratch from PyTorch's caching allocator.
        workspace = torch.empty(channels + channels * channels, dtype=torch.float64, device=activation.device)
        _launch(cuda, "covariance_accumulate_cuda", activation, *args, workspace.data_ptr())
    else:
        _C.covariance_accumulate(*args)
