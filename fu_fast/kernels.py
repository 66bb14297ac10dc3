"""Dispatch of the kernels on torch tensors: fu_fast._C on the CPU, and on each GPU the first
of three backends that proves itself there:

  "native"  the CUDA kernels compiled into fu_fast._C;
  "cupy"    the same CUDA sources compiled at run time by cupy (fu_fast.cupy_kernels; a
            build without CUDA keeps its GPU path);
  "torch"   the pure PyTorch references of fu_fast.reference, run on the GPU.

A backend proves itself by a known-answer launch on that GPU (keyed ranks, masked expansion,
in-place masking, keyed noise, label agreement and one covariance update against the CPU
kernels), run once per device before the first analysis uses it, never inside a forward hook. A
compiled module whose static CUDA runtime is newer than the driver, a cupy that cannot compile,
or kernels that give other bits than the CPU (for the noise: beyond the tolerance of
csrc/noise.h) are passed over with one warning line saying why.

The extension does not link libtorch: a tensor crosses the binding as its data pointer,
sizes and strides, and on a GPU with PyTorch's current stream, so kernels are queued in
order with PyTorch's own work and nothing is copied. This module is the only caller, so
every check that keeps a pointer valid (device, dtype, layout, sizes) lives here.
"""

from __future__ import annotations

import math
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
    in-place masking; the masks ablate some units, none and all. The noise kernels agree with the
    CPU's within noise_close (their log and cos are the GPU's), and bit for bit where the scale
    or a unit's standard deviation is 0."""
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
    # Noise: the copies of scale 0 keep their bits, and so do the elements of a unit whose standard
    # deviation is 0 (unit 3 of x, channel 2 of odd); the rest agree within the noise tolerance.
    scales, odd_scales = [0.0, 0.5, 2.0], [1.5, 0.0]
    unit_std = torch.rand(32, generator=generator, dtype=torch.float64) + 0.5
    odd_std = torch.rand(7, generator=generator, dtype=torch.float64) + 0.5
    unit_std[3], odd_std[2] = 0.0, 0.0
    noise = {
        "noise": (expand_noise(x.to(device), [key, 5, 5], scales, unit_std.to(device), 1, 7, backend=backend),
                  expand_noise(x, [key, 5, 5], scales, unit_std, 1, 7), copies, scales),
        "odd noise": (expand_noise(odd.to(device), [key, 3], odd_scales, odd_std.to(device), 4, 2**40,
                                   backend=backend),
                      expand_noise(odd, [key, 3], odd_scales, odd_std, 4, 2**40), odd_copies, odd_scales),
        "in-place noise": (noise_rows(copies.to(device), [key, 5, 5], scales, unit_std.to(device), 1, 7,
                                      backend=backend),
                           noise_rows(copies.clone(), [key, 5, 5], scales, unit_std, 1, 7), copies, scales),
        "odd in-place noise": (noise_rows(odd_copies.to(device), [key, 3], odd_scales, odd_std.to(device), 4, 2**40,
                                          backend=backend),
                               noise_rows(odd_copies.clone(), [key, 3], odd_scales, odd_std, 4, 2**40), odd_copies,
                               odd_scales),
    }
    torch.cuda.synchronize(device)   # errors of queued kernels surface here, not in a model's hook
    for name, (got, expected) in checks.items():
        if not torch.equal(got.cpu(), expected):
            raise KernelError(f"{name} differs from the CPU kernel")
    for name, (got, expected, source, copy_scales) in noise.items():
        why = noise_differences(got, expected, source, copy_scales)
        if why is not None:
            raise KernelError(f"{name} differs from the CPU kernel: {why}")
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


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether the kernels take x as it lies in NHWC memory, and write its copies so: a channels_last
    4-d tensor (that is not also contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _row_layout(x: torch.Tensor) -> tuple[torch.Tensor, int, int, bool]:
    """(rows in memory, channels, spatial, channels_last) of a layer output: a channels_last
    conv output is used as it lies (the kernels map NHWC elements to NCHW units); anything
    else is made contiguous."""
    if is_channels_last(x):
        return x, x.shape[1], x.shape[2] * x.shape[3], True
    src = x.contiguous()
    channels = x.shape[1] if x.dim() > 1 else 1
    return src, channels, max(1, x[0].numel() // max(1, channels)), False


def _expansion_output(x: torch.Tensor, copies: int, channels_last: bool, out: torch.Tensor | None) -> torch.Tensor:
    """Where ``copies`` copies of x go: ``out`` if given (checked: the kernels write every element
    of it by its shape and layout), else a new tensor; (copies * B, ...) in x's layout."""
    shape = (copies * x.shape[0],) + tuple(x.shape[1:])
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if out is None:
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
    if (tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device
            or not out.is_contiguous(memory_format=layout)):
        raise FuFastError(f"out must be a {'channels_last' if channels_last else 'contiguous'} {x.dtype} tensor of "
                          f"shape {shape} on {x.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out


def _mask_table(keys: list[int], thresholds: list[int], device: torch.device) -> torch.Tensor:
    """The kernels' masks on ``device``: the K keys (as signed int64) then the K thresholds, one
    int64 tensor."""
    if len(thresholds) != len(keys):
        # The kernels read one threshold per key: fewer would be read past their end.
        raise FuFastError(f"{len(keys)} mask keys but {len(thresholds)} thresholds")
    return _to_device(torch.cat([signed_keys(keys), torch.tensor(thresholds, dtype=torch.int64)]), device)


def _to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU table on ``device``: to a GPU with the copy queued on the current stream, from a
    pinned staging buffer so that the copy runs asynchronously."""
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table


def expand_masked(x: torch.Tensor, keys: list[int], thresholds: list[int], inner: int, *,
                  backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """The K masked copies of a layer output x of shape (B, ...), stacked to (K*B, ...).

    Units are consecutive runs of ``inner`` elements of a row in NCHW order (inner = 1:
    every element is a unit; inner = H*W: whole channels are). Copy k zeroes the units
    whose rank under keys[k] is below thresholds[k]; no mask tensor is ever built. A
    channels_last input gives a channels_last output with the same units ablated. ``out``, a
    tensor of the output's shape and layout, receives the copies and is returned.
    """
    num_masks = len(keys)
    batch = x.shape[0]
    units = x[0].numel() // inner
    cuda = _entry_points(backend, x) if x.device.type == "cuda" else None
    if cuda is None and x.device.type != "cpu":
        expanded = reference.expand_masked(x, keys, thresholds, inner)
        return expanded if out is None else out.copy_(expanded)
    _dtype_code(x)
    src, channels, spatial, channels_last = _row_layout(x)
    out = _expansion_output(x, num_masks, channels_last, out)
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


# How far two backends' noisy elements may lie apart (csrc/noise.h): one unit in the last place of
# the dtype, plus this fraction of the noise added. The backends' normals differ by their log and cos
# only (relative 2^-49 at most, from the libraries' published bounds); the rest of the arithmetic is
# the same IEEE double operations, whose roundings the margin to 2^-48 covers.
NOISE_RELATIVE_TOLERANCE = 2.0**-48
_MANTISSA_BITS = {torch.float32: 23, torch.float64: 52, torch.bfloat16: 7, torch.float16: 10}
_MIN_EXPONENT = {torch.float32: -126, torch.float64: -1022, torch.bfloat16: -126, torch.float16: -14}


def as_bits(x: torch.Tensor) -> torch.Tensor:
    """x's elements as the integers of their bits (-0.0 differs from +0.0, a NaN equals its own bits)."""
    return x.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()])


def noise_close(got: torch.Tensor, expected: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Per element, whether a noisy result agrees with another backend's within the noise tolerance
    of csrc/noise.h: both NaN, neighbours in the dtype (or equal), or |got - expected| <= ulp +
    2^-48 |expected - source|, ulp one unit in the last place of the dtype at the larger magnitude
    and source the element before its noise was added. The three tensors have the same shape
    (compared in logical order)."""
    got, expected, source = (t.cpu().contiguous() for t in (got, expected, source))
    close = torch.eq(as_bits(got), as_bits(expected))
    differ = ~close
    if not differ.any():
        return close
    got, expected, source = got[differ], expected[differ], source[differ]
    # Neighbours in the dtype's order (the largest finite value and infinity included) are close.
    ordinals = []
    for t in (got, expected):
        bits = as_bits(t).to(torch.int64)
        magnitude = bits & (2 ** (8 * t.element_size() - 1) - 1)
        ordinals.append(torch.where(bits < 0, -magnitude, magnitude))
    neighbours = ((ordinals[0] - ordinals[1]).abs() <= 1) | (got.isnan() & expected.isnan())
    wide, reference_value = got.to(torch.float64), expected.to(torch.float64)
    magnitude = torch.maximum(wide.abs(), reference_value.abs())
    exponent = torch.frexp(magnitude).exponent.to(torch.float64) - 1          # magnitude in [2^e, 2^(e+1))
    ulp = torch.exp2(torch.clamp(exponent, min=_MIN_EXPONENT[got.dtype]) - _MANTISSA_BITS[got.dtype])
    allowed = ulp + NOISE_RELATIVE_TOLERANCE * (reference_value - source.to(torch.float64)).abs()
    close[differ] = neighbours | ((wide - reference_value).abs() <= allowed)
    return close


def noise_differences(got: torch.Tensor, expected: torch.Tensor, source: torch.Tensor, scales) -> str | None:
    """Why noisy copies (K*B rows, copy k of scale scales[k]) differ from another backend's beyond
    noise_close, or None: copies of scale 0 must be the source (the stacked copies before their
    noise) bit for bit."""
    batch = source.shape[0] // len(scales)
    for k, scale in enumerate(scales):
        rows = slice(k * batch, (k + 1) * batch)
        if scale == 0 and not torch.equal(as_bits(got[rows].cpu().contiguous()), as_bits(source[rows].contiguous())):
            return f"copy {k} (scale 0) is not the input bit for bit"
    close = noise_close(got, expected, source)
    if not close.all():
        return f"{int((~close).sum())} elements beyond the noise tolerance"
    return None


def _noise_arguments(kernel: str, x: torch.Tensor, rows: int, keys: list[int], scales: list[float],
                     unit_std: torch.Tensor, inner: int, first_example: int) -> torch.Tensor:
    """The checks every pointer of a noise kernel depends on; returns unit_std as the kernels read it
    (contiguous float64 on x's device)."""
    if len(scales) != len(keys):
        # The kernels read one scale per key: fewer would be read past their end.
        raise FuFastError(f"{kernel}: {len(keys)} noise keys but {len(scales)} scales")
    if not keys:
        raise FuFastError(f"{kernel}: no noisy copies asked for (no keys)")
    if rows == 0:
        raise FuFastError(f"{kernel}: the tensor has no rows")
    if not all(math.isfinite(scale) and scale >= 0 for scale in scales):
        raise FuFastError(f"{kernel}: noise scales must be finite and >= 0, got {list(scales)}")
    if inner < 1 or x[0].numel() % inner:
        raise FuFastError(f"{kernel}: a row of {x[0].numel()} elements is not a whole number of units of "
                          f"{inner} elements")
    units = x[0].numel() // inner
    if not isinstance(unit_std, torch.Tensor) or unit_std.dtype != torch.float64 or unit_std.numel() != units:
        raise FuFastError(f"{kernel}: unit_std must be a float64 tensor of {units} values, one per unit")
    if unit_std.device != x.device:
        raise FuFastError(f"{kernel}: unit_std is on {unit_std.device}, the tensor on {x.device}")
    if not 0 <= first_example <= 2**63 - 1 - rows:
        raise FuFastError(f"{kernel}: first_example must be >= 0 (the global index of the batch's first example), "
                          f"got {first_example}")
    return unit_std.contiguous()


def _noise_table(keys: list[int], scales: list[float], device: torch.device) -> torch.Tensor:
    """The kernels' noise on ``device``: the K keys (as signed int64) then the bits of the K float64
    scales, one int64 tensor."""
    return _to_device(torch.cat([signed_keys(keys), torch.tensor(scales, dtype=torch.float64).view(torch.int64)]),
                      device)


def expand_noise(x: torch.Tensor, keys: list[int], scales: list[float], unit_std: torch.Tensor, inner: int,
                 first_example: int, *, backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """K noisy copies of a layer output x of shape (B, ...), stacked to (K*B, ...): copy k adds
    Gaussian noise of standard deviation scales[k] * unit_std[u] to every element of unit u.

    The noise of example b, element e is normal(keys[k], first_example + b, e) of csrc/noise.h, a
    deterministic function of the key, the example's global index and the element's NCHW index, so
    every backend, batch size and split of the batch draws the same values. Units are consecutive
    runs of ``inner`` elements of a row in NCHW order, as in expand_masked; unit_std is a float64
    tensor of one standard deviation per unit on x's device. Computed in float64 and rounded to
    nearest in x's dtype. A copy of scale 0, and every element of a unit whose standard deviation is
    0, is x bit for bit. A channels_last input gives a channels_last output with the same noise.
    ``out`` is as in expand_masked.
    """
    num_copies, batch = len(keys), x.shape[0]
    std = _noise_arguments("expand_noise", x, batch, keys, scales, unit_std, inner, first_example)
    units = x[0].numel() // inner
    cuda = _entry_points(backend, x) if x.device.type == "cuda" else None
    if cuda is None and x.device.type != "cpu":
        expanded = reference.expand_noise(x, keys, scales, std, inner, first_example)
        return expanded if out is None else out.copy_(expanded)
    code = _dtype_code(x)
    src, channels, spatial, channels_last = _row_layout(x)
    out = _expansion_output(x, num_copies, channels_last, out)
    table = _noise_table(keys, scales, x.device)
    args = (src.data_ptr(), out.data_ptr(), batch, units, inner, channels, spatial, channels_last, code,
            table.data_ptr(), table[num_copies:].data_ptr(), std.data_ptr(), first_example, num_copies)
    if cuda is not None:
        _launch(cuda, "expand_noise", x, *args)
    else:
        _C.expand_noise(*args)
    return out


def noise_rows(x: torch.Tensor, keys: list[int], scales: list[float], unit_std: torch.Tensor, inner: int,
               first_example: int, *, backend: str | None = None) -> torch.Tensor:
    """Adds the noise of expand_noise in place to K copies of a layer output: x has shape (K*B, ...)
    with K = len(keys), and copy k, rows k*B .. (k+1)*B - 1, gets copy k's noise, row k*B + b that
    of example first_example + b (noise_rows(x.repeat(K, ...)) equals expand_noise(x)).

    A copy of scale 0 is left as it is, not even read, and so is every element of a unit whose
    standard deviation is 0. x is changed in place and returned when it is contiguous or a
    channels_last 4-d tensor; any other x is not modified: a contiguous copy of it is changed and
    returned instead, so use the returned tensor.
    """
    num_copies = len(keys)
    if num_copies == 0 or x.shape[0] == 0 or x.shape[0] % num_copies:
        # The kernels read num_copies * batch rows: any other row count would read past x.
        raise FuFastError(f"noise_rows: the tensor has {x.shape[0]} rows, which are not {num_copies} noisy copies "
                          f"of a batch (a positive multiple of {num_copies} rows)")
    batch = x.shape[0] // num_copies
    std = _noise_arguments("noise_rows", x, batch, keys, scales, unit_std, inner, first_example)
    units = x[0].numel() // inner
    data, channels, spatial, channels_last = _row_layout(x)
    cuda = _entry_points(backend, x) if x.device.type == "cuda" else None
    if cuda is None and x.device.type != "cpu":
        # The reference is not in place: its result is copied into the rows the kernels would change.
        return data.copy_(reference.noise_rows(data, keys, scales, std, inner, first_example))
    code = _dtype_code(x)
    table = _noise_table(keys, scales, x.device)
    args = (data.data_ptr(), batch, units, inner, channels, spatial, channels_last, code, table.data_ptr(),
            table[num_copies:].data_ptr(), std.data_ptr(), first_example, num_copies)
    if cuda is not None:
        _launch(cuda, "noise_rows", x, *args)
    else:
        _C.noise_rows(*args)
    return data


def _zero_ranked(logical: torch.Tensor, ranks: torch.Tensor, thresholds) -> torch.Tensor:
    """``logical`` (K or 1, B, units, inner) as K copies, unit u of copy k zeroed (+0.0) where
    ranks[k, u] < thresholds[k] and kept bit for bit elsewhere. ``thresholds``: a list, or an
    int64 tensor already on the device (no copy in a forward hook)."""
    if not isinstance(thresholds, torch.Tensor):
        thresholds = _to_device(torch.tensor(thresholds, dtype=torch.int64), logical.device)
    keep = (ranks.to(logical.device) >= thresholds[:, None])[:, None, :, None]
    return torch.where(keep, logical, torch.zeros((), dtype=logical.dtype, device=logical.device))


def expand_ranked(x: torch.Tensor, ranks: torch.Tensor, thresholds, inner: int) -> torch.Tensor:
    """expand_masked with an explicit order per copy instead of a keyed permutation: copy k of x
    (B, ...) zeroes the units u with ranks[k, u] < thresholds[k] (targeted ablation,
    fu_fast.analysis.orders). Units as in expand_masked (NCHW order whatever the memory format).
    A PyTorch composition on every device, with the kernels' semantics: ablated elements are +0.0
    and kept ones keep their bits."""
    batch, units = x.shape[0], x[0].numel() // inner
    out = _zero_ranked(x.reshape(1, batch, units, inner), ranks, thresholds)
    return out.reshape((len(thresholds) * batch,) + tuple(x.shape[1:]))


def mask_rows_ranked(x: torch.Tensor, ranks: torch.Tensor, thresholds, inner: int) -> torch.Tensor:
    """mask_rows with an explicit order per copy (see expand_ranked): x holds K = len(thresholds)
    copies of a batch; returns the masked copies (a new tensor)."""
    copies = len(thresholds)
    if copies == 0 or x.shape[0] % copies:
        raise FuFastError(f"mask_rows_ranked: the tensor has {x.shape[0]} rows, which are not {copies} copies "
                          "of a batch")
    batch, units = x.shape[0] // copies, x[0].numel() // inner
    return _zero_ranked(x.reshape(copies, batch, units, inner), ranks, thresholds).reshape(x.shape)


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
