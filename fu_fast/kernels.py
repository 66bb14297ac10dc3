"""Dispatch of the kernels on torch tensors: fu_fast._C on the CPU, and on each GPU the first
of three backends that proves itself there:

  "native"  the CUDA kernels compiled into fu_fast._C;
  "cupy"    the same CUDA sources compiled at run time by cupy (fu_fast.cupy_kernels; a
            build without CUDA keeps its GPU path);
  "torch"   the pure PyTorch references of fu_fast.reference, run on the GPU.

A backend proves itself by a known-answer launch on that GPU (keyed ranks, masked expansion,
in-place masking, label agreement and one covariance update against the CPU kernels), run
once per device before the first analysis uses it, never inside a forward hook. A compiled
module whose static CUDA runtime is newer than the driver, a cupy that cannot compile, or
kernels that give other bits than the CPU are passed over with one warning line saying why.

The extension does not link libtorch: a tensor crosses the binding as its data pointer,
sizes and strides, and on a GPU with PyTorch's current stream, so kernels are queued in
order with PyTorch's own work and nothing is copied. This module is the only caller, so
every check that keeps a pointer valid (device, dtype, layout, sizes) lives here.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

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

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
BACKEND_NAMES = {"native": "compiled CUDA kernels", "cupy": "cupy kernels", "torch": "PyTorch reference kernels"}


class KernelError(FuFastError):
    """A GPU kernel could not be launched (reported as such, never as a fault of the model)."""


class BackendWarning(UserWarning):
    """A faster GPU backend was passed over; the message says why and what is used instead."""


def build_info() -> dict:
    """Version, compiled backends, CUDA architectures, OpenMP, whether a GPU is usable now, and
    per usable GPU the kernels chosen for it and why any faster ones were passed over."""
    info = dict(_C.build_info())
    info["backends"] = list(info["backends"])
    info["cuda_archs"] = [int(a) for a in info["cuda_archs"].split(",") if a]
    info["gpu_usable"] = torch.cuda.is_available()
    info["torch"] = torch.__version__
    if info["gpu_usable"]:
        info["gpu_kernels"] = {}
        for index in range(torch.cuda.device_count()):
            choice = gpu_backend_choice(torch.device("cuda", index))
            info["gpu_kernels"][str(choice.device)] = {"backend": choice.backend, "skipped": dict(choice.skipped)}
    return info


def compiled_version() -> str:
    """The version fu_fast._C was built as."""
    return _C.build_info()["version"]


def cuda_kernels_compiled() -> bool:
    """Whether this build of fu_fast._C holds the CUDA kernels."""
    return bool(getattr(_C, "cuda_compiled", False))


def cuda_version_text(version: int) -> str:
    """13000 -> "13.0" (the encoding of cudaRuntimeGetVersion and cudaDriverGetVersion)."""
    return f"{version // 1000}.{version % 1000 // 10}"


@dataclass(frozen=True)
class GpuBackendChoice:
    """The kernels used on one GPU, and the faster backends passed over with the reason."""
    device: torch.device
    backend: str                          # "native", "cupy" or "torch"
    skipped: tuple[tuple[str, str], ...]  # (backend, why), fastest first

    def warning(self) -> str | None:
        if not self.skipped:
            return None
        reasons = "; ".join(why for _, why in self.skipped)
        return f"{self.device}: {reasons}: using the {BACKEND_NAMES[self.backend]}"


_choices: dict[int, GpuBackendChoice] = {}
_choosing = threading.Lock()


def gpu_backend_choice(device: torch.device | str | None = None) -> GpuBackendChoice:
    """The backend for a GPU (default: the current one), chosen on first use: the first of
    native, cupy, torch whose known-answer launch on that GPU gives the CPU's result."""
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        raise ValueError(f"gpu_backend_choice needs a CUDA device, got {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _choosing:
        if index not in _choices:
            choice = _choose(torch.device("cuda", index))
            if choice.warning():
                warnings.warn(choice.warning(), BackendWarning, stacklevel=2)
            _choices[index] = choice
        return _choices[index]


def gpu_backend(device: torch.device | str | None = None) -> str:
    """What runs the kernels on a GPU: "native", "cupy" or "torch" (see gpu_backend_choice)."""
    return gpu_backend_choice(device).backend


def _native_unusable() -> str | None:
    """Why the compiled kernels cannot run here, or None."""
    if not cuda_kernels_compiled():
        return "this build of fu_fast has no compiled CUDA kernels"
    status = _C.build_info()
    runtime, driver = status["cuda_runtime_version"], status["cuda_driver_version"]
    if 0 < driver < runtime:
        return (f"the compiled CUDA kernels need a driver for CUDA {cuda_version_text(runtime)}; "
                f"this driver supports {cuda_version_text(driver)}")
    if status["cuda_devices"] == 0:
        return f"the compiled CUDA kernels see no GPU ({status['cuda_error'] or 'no device'})"
    return None


def _cupy_unusable() -> str | None:
    """Why the cupy kernels cannot run here, or None."""
    return cupy_kernels.unavailable_reason()


def _choose(device: torch.device) -> GpuBackendChoice:
    skipped = []
    for backend, unusable in (("native", _native_unusable), ("cupy", _cupy_unusable)):
        why = unusable()
        if why is None:
            try:
                _known_answer(backend, device)
                return GpuBackendChoice(device, backend, tuple(skipped))
            except Exception as e:  # any failure of a backend is a reason to pass it over
                why = f"the {BACKEND_NAMES[backend]} failed their self-test ({_first_line(e)})"
        skipped.append((backend, why))
    return GpuBackendChoice(device, "torch", tuple(skipped))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _known_answer(backend: str, device: torch.device) -> None:
    """Run every kernel of a backend once on tiny inputs on the device and compare with the
    CPU kernels; raises on any difference. Sizes take the 16-byte and the scalar expansion and
    in-place masking; the masks ablate some units, none and all."""
    generator = torch.Generator().manual_seed(9)
    key = 0x9E3779B97F4A7C15
    ranks = permutation_ranks(key, 37, device, backend=backend)
    x = torch.randn(3, 8, 2, 2, generator=generator)    # float32 rows of 128 bytes: 16-byte path
    odd = x[:, :7].half()                                # rows of 56 bytes: scalar path
    copies, odd_copies = x.repeat(3, 1, 1, 1), odd.repeat(2, 1, 1, 1)   # batches expanded for mask_rows
    logits = torch.randn(2 * 5, 3, generator=generator)
    base = torch.tensor([0, 1, 2, 0, 1])
    rows = torch.tensor([0, 3, 4, 7, 9, 11])
    gpu_state = [torch.zeros(n, dtype=torch.float64, device=device) for n in (1, 8, 64)]
    cpu_state = [torch.zeros(n, dtype=torch.float64) for n in (1, 8, 64)]
    covariance_accumulate(x.to(device), rows.to(device), *gpu_state[:2], gpu_state[2].view(8, 8), backend=backend)
    covariance_accumulate(x, rows, *cpu_state[:2], cpu_state[2].view(8, 8))
    checks = {
        "ranks": (ranks, permutation_ranks(key, 37)),
        "expansion": (expand_masked(x.to(device), [key, 5], [10, 31], 1, backend=backend),
                      expand_masked(x, [key, 5], [10, 31], 1)),
        "odd expansion": (expand_masked(odd.to(device), [key], [9], 4, backend=backend),
                          expand_masked(odd, [key], [9], 4)),
        "masking": (mask_rows(copies.to(device), [key, 5, 5], [10, 0, 32], 1, backend=backend),
                    mask_rows(copies.clone(), [key, 5, 5], [10, 0, 32], 1)),
        "odd masking": (mask_rows(odd_copies.to(device), [key, key], [3, 0], 4, backend=backend),
                        mask_rows(odd_copies.clone(), [key, key], [3, 0], 4)),
        "agreement": (label_agreement(logits.to(device), base.to(device), 2, backend=backend),
                      label_agreement(logits, base, 2)),
    }
    torch.cuda.synchronize(device)   # errors of queued kernels surface here, not in a model's hook
    for name, (got, expected) in checks.items():
        if not torch.equal(got.cpu(), expected):
            raise KernelError(f"{name} differs from the CPU kernel")
    for got, expected in zip(gpu_state, cpu_state):
        if not torch.allclose(got.cpu(), expected, rtol=1e-12, atol=1e-12):
            raise KernelError("covariance differs from the CPU kernel")


def _entry_points(backend: str | None, tensor: torch.Tensor):
    """The object whose kernels take a stream (fu_fast._C or the cupy module) for a tensor
    on a GPU, or None when the kernels run as PyTorch references (CPU tensors are not asked)."""
    backend = backend or gpu_backend(tensor.device)
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown GPU backend '{backend}'")
    if backend == "native":
        return _C
    if backend == "cupy":
        with torch.cuda.device(tensor.device):   # cupy binds its module to the current device
            return cupy_kernels.load(tensor.device.index)
    return None


def _launch(cuda, entry: str, tensor: torch.Tensor, *args, **kwargs) -> None:
    """Queue a CUDA entry point on the current stream of tensor's GPU, with that GPU current
    (a stream can only take work from its own device). A launch that fails is a KernelError,
    so it is never mistaken for a failure of the model whose hook called it."""
    with torch.cuda.device(tensor.device):
        try:
            getattr(cuda, entry)(*args, **kwargs, stream=torch.cuda.current_stream(tensor.device).cuda_stream)
        except Exception as e:
            raise KernelError(f"the GPU kernel {entry} failed on {tensor.device}: {_first_line(e)}") from None


def backend_for(device: torch.device) -> str:
    """The backend of the result document for an analysis on ``device``: "cpu" or "cuda"."""
    return torch.device(device).type


def kernels_for(device: torch.device) -> str:
    """Which kernels run an analysis on ``device``: "cpu", or the GPU backend chosen for it."""
    device = torch.device(device)
    return gpu_backend(device) if device.type == "cuda" else "cpu"


def _dtype_code(tensor: torch.Tensor) -> int:
    try:
        return _DTYPE_CODES[tensor.dtype]
    except KeyError:
        raise FuFastError(f"unsupported dtype {tensor.dtype}; expected a floating-point tensor") from None


def signed_keys(keys) -> torch.Tensor:
    """64-bit unsigned keys as an int64 tensor holding the same bits (torch has no uint64 math)."""
    return torch.tensor([k - (1 << 64) if k >= (1 << 63) else k for k in keys], dtype=torch.int64)


# Every kernel below takes ``backend`` for tensors on a GPU: None uses the backend chosen for
# that GPU; "native", "cupy" or "torch" forces one (the self-test and `fu-fast info --check`).

def permutation_ranks(key: int, n: int, device: torch.device | str = "cpu", *,
                      backend: str | None = None) -> torch.Tensor:
    """rank_key(u) for u in 0..n-1, as an int64 tensor on ``device``."""
    ranks = torch.empty(n, dtype=torch.int64, device=device)
    if ranks.device.type == "cpu":
        _C.permutation_ranks(key, n, ranks.data_ptr())
        return ranks
    cuda = _entry_points(backend, ranks)
    if cuda is None:
        ranks.copy_(torch.from_numpy(reference.permutation_ranks(key, n)))
    else:
        _launch(cuda, "permutation_ranks", ranks, key, n, ranks.data_ptr())
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


def _mask_table(keys: list[int], thresholds: list[int], device: torch.device) -> torch.Tensor:
    """The kernels' masks on ``device``: the K keys (as signed int64) then the K thresholds, one
    int64 tensor. Keys and thresholds go to a GPU with the copy queued on the current stream; the
    pinned staging buffer lets that copy run asynchronously."""
    if len(thresholds) != len(keys):
        # The kernels read one threshold per key: fewer would be read past their end.
        raise FuFastError(f"{len(keys)} mask keys but {len(thresholds)} thresholds")
    masks = torch.cat([signed_keys(keys), torch.tensor(thresholds, dtype=torch.int64)])
    if device.type == "cuda":
        masks = masks.pin_memory().to(device, non_blocking=True)
    return masks


def expand_masked(x: torch.Tensor, keys: list[int], thresholds: list[int], inner: int, *,
                  backend: str | None = None) -> torch.Tensor:
    """The K masked copies of a layer output x of shape (B, ...), stacked to (K*B, ...).

    Units are consecutive runs of ``inner`` elements of a row in NCHW order (inner = 1:
    every element is a unit; inner = H*W: whole channels are). Copy k zeroes the units
    whose rank under keys[k] is below thresholds[k]; no mask tensor is ever built. A
    channels_last input gives a channels_last output with the same units ablated.
    """
    num_masks = len(keys)
    batch = x.shape[0]
    units = x[0].numel() // inner
    cuda = _entry_points(backend, x) if x.device.type == "cuda" else None
    if cuda is None and x.device.type != "cpu":
        return reference.expand_masked(x, keys, thresholds, inner)
    _dtype_code(x)
    src, channels, spatial, channels_last = _row_layout(x)
    out = torch.empty((num_masks * batch,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    masks = _mask_table(keys, thresholds, x.device)
    args = (src.data_ptr(), out.data_ptr(), batch, units, inner, channels, spatial, channels_last,
            x.element_size(), masks.data_ptr(), masks[num_masks:].data_ptr(), num_masks)
    if cuda is not None:
        _launch(cuda, "expand_masked", x, *args)
    else:
        _C.expand_masked(*args)
    return out


def mask_rows(x: torch.Tensor, keys: list[int], thresholds: list[int], inner: int, *,
              backend: str | None = None) -> torch.Tensor:
    """Masks K copies of a layer output in place: x has shape (K*B, ...) with K = len(keys), and
    copy k, rows k*B .. (k+1)*B - 1, gets mask k (the masking of expand_masked, on a batch
    expanded earlier in the model; mask_rows(x.repeat(K, ...)) equals expand_masked(x)).

    Units are as in expand_masked. A copy whose threshold is 0 is left as it is, bit for bit;
    one whose threshold is at least the unit count is zeroed. x is masked in place and
    returned when it is contiguous or a channels_last 4-d tensor; any other x is not modified:
    a contiguous copy of it is masked and returned instead, so use the returned tensor.
    """
    num_masks = len(keys)
    if num_masks == 0 or x.shape[0] == 0 or x.shape[0] % num_masks:
        # The kernels read num_masks * batch rows: any other row count would read past x.
        raise FuFastError(f"mask_rows: the tensor has {x.shape[0]} rows, which are not {num_masks} masked copies "
                          f"of a batch (a positive multiple of {num_masks} rows)")
    batch = x.shape[0] // num_masks
    units = x[0].numel() // inner
    data, channels, spatial, channels_last = _row_layout(x)
    cuda = _entry_points(backend, x) if x.device.type == "cuda" else None
    if cuda is None and x.device.type != "cpu":
        # The reference is not in place: its result is copied into the rows the kernels would mask.
        return data.copy_(reference.mask_rows(data, keys, thresholds, inner))
    _dtype_code(x)
    masks = _mask_table(keys, thresholds, x.device)
    args = (data.data_ptr(), batch, units, inner, channels, spatial, channels_last, x.element_size(),
            masks.data_ptr(), masks[num_masks:].data_ptr(), num_masks)
    if cuda is not None:
        _launch(cuda, "mask_rows", x, *args)
    else:
        _C.mask_rows(*args)
    return data


def _ranked_keep(x: torch.Tensor, ranks: torch.Tensor, thresholds: list[int], inner: int) -> torch.Tensor:
    """(K, 1, units, inner)-broadcastable keep mask: unit u of copy k stays when ranks[k, u] >= thresholds[k]."""
    limits = torch.tensor(thresholds, dtype=torch.int64, device=x.device)[:, None]
    return (ranks.to(x.device) >= limits)[:, None, :, None]


def expand_ranked(x: torch.Tensor, ranks: torch.Tensor, thresholds: list[int], inner: int) -> torch.Tensor:
    """expand_masked with an explicit order per copy instead of a keyed permutation: copy k of x
    (B, ...) zeroes the units u with ranks[k, u] < thresholds[k] (targeted ablation,
    fu_fast.analysis.orders). Units as in expand_masked (NCHW order whatever the memory format).
    A PyTorch composition on every device, with the kernels' semantics: ablated elements are +0.0
    and kept ones keep their bits."""
    batch, units = x.shape[0], x[0].numel() // inner
    logical = x.reshape(1, batch, units, inner)
    out = torch.where(_ranked_keep(x, ranks, thresholds, inner), logical, torch.zeros((), dtype=x.dtype,
                                                                                      device=x.device))
    return out.reshape((len(thresholds) * batch,) + tuple(x.shape[1:]))


def mask_rows_ranked(x: torch.Tensor, ranks: torch.Tensor, thresholds: list[int], inner: int) -> torch.Tensor:
    """mask_rows with an explicit order per copy (see expand_ranked): x holds K = len(thresholds)
    copies of a batch; returns the masked copies (a new tensor)."""
    copies = len(thresholds)
    if copies == 0 or x.shape[0] % copies:
        raise FuFastError(f"mask_rows_ranked: the tensor has {x.shape[0]} rows, which are not {copies} copies "
                          "of a batch")
    batch, units = x.shape[0] // copies, x[0].numel() // inner
    logical = x.reshape(copies, batch, units, inner)
    out = torch.where(_ranked_keep(x, ranks, thresholds, inner), logical, torch.zeros((), dtype=x.dtype,
                                                                                      device=x.device))
    return out.reshape(x.shape)


def label_agreement(logits: torch.Tensor, base_labels: torch.Tensor, num_masks: int, *,
                    backend: str | None = None) -> torch.Tensor:
    """Per mask k, how many of the B rows logits[k*B:(k+1)*B] have argmax == base_labels
    (an int64 tensor on the logits' device)."""
    if logits.dim() != 2:
        raise FuFastError(f"the model's output must be (batch, classes) logits, got shape {tuple(logits.shape)}")
    batch = base_labels.numel()
    if logits.shape[0] != num_masks * batch:
        # The kernels read num_masks * batch rows: a model whose output has another row count
        # (one that mixes or drops examples) would make them read past the logits.
        raise FuFastError(f"the model returned {logits.shape[0]} rows of logits for {num_masks} masked copies "
                          f"of {batch} examples; expected {num_masks * batch}")
    cuda = _entry_points(backend, logits) if logits.device.type == "cuda" else None
    if cuda is None and logits.device.type != "cpu":
        return reference.label_agreement(logits, base_labels, num_masks)
    code = _dtype_code(logits)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    base = base_labels.to(device=logits.device, dtype=torch.int64).contiguous()
    counts = torch.zeros(num_masks, dtype=torch.int64, device=logits.device)
    args = (logits.data_ptr(), code, num_masks, batch, logits.shape[1], logits.stride(0),
            base.data_ptr(), counts.data_ptr())
    if cuda is not None:
        _launch(cuda, "label_agreement", logits, *args)
    else:
        _C.label_agreement(*args)
    return counts


def covariance_accumulate(activation: torch.Tensor, rows: torch.Tensor, count: torch.Tensor,
                          mean: torch.Tensor, comoment: torch.Tensor, *, backend: str | None = None) -> None:
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
    cuda = _entry_points(backend, activation) if activation.device.type == "cuda" else None
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
        _launch(cuda, "covariance_accumulate", activation, *args, workspace=workspace.data_ptr())
    else:
        _C.covariance_accumulate(*args)
