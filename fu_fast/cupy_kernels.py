"""The CUDA kernels for a build of fu_fast._C without CUDA: the same sources
(csrc/cuda/*.cu, shipped in the wheel under fu_fast/csrc) compiled at run time by NVRTC
through cupy's RawModule, so a CPU-built wheel still has the GPU path where cupy and a GPU
are present.

The entry points have the names and arguments of fu_fast._C's kernels called with a stream,
so fu_fast.kernels calls either the same way; the launch geometry mirrors the host launchers
of the .cu files (which NVRTC does not compile). Pointers travel as 64-bit integers, as
they do through the pybind11 binding.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

THREADS = 256
_TILE = 32          # kCovTile of covariance_cuda.cu


def source_dir() -> Path:
    """csrc/ as installed in the wheel (fu_fast/csrc) or, in a source checkout, the repository's."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / "cuda" / "ablation_cuda.cu").is_file():
            return candidate
    raise FileNotFoundError("fu_fast's CUDA sources (csrc/cuda/*.cu) are not installed beside the package")


def compile_options(arch: str | None = None) -> tuple[str, ...]:
    """NVRTC options for the .cu sources: the headers are found through csrc/ only (they are
    included by bare name; NVRTC looks beside the program's name first, and cupy names the
    program inside a fresh temporary directory)."""
    options = ("--std=c++17", f"-I{source_dir()}")
    return options + ((f"--gpu-architecture={arch}",) if arch else ())


def unavailable_reason() -> str | None:
    """Why the cupy kernels cannot run here (cupy missing, no GPU, no sources), or None."""
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed (pip install 'fu-fast[cupy]')"
    if not torch.cuda.is_available():
        return "no GPU is usable"
    try:
        source_dir()
    except FileNotFoundError as e:
        return str(e)
    return None


def available() -> bool:
    """Whether cupy is installed, a GPU is usable, and the CUDA sources are at hand."""
    return unavailable_reason() is None


def program_text(name: str) -> str:
    """The source cupy compiles for csrc/cuda/<name>: the .cu text behind a comment holding the
    digest of every header it may include. cupy's disk cache is keyed by the source text only,
    so without the digest a changed header (an upgrade or an editable install in the same
    place) would keep loading kernels compiled from the old one."""
    root = source_dir()
    digest = hashlib.sha256()
    for header in sorted(root.glob("*.h")):
        digest.update(header.name.encode() + b"\0" + header.read_bytes() + b"\0")
    return f"// fu-fast headers sha256 {digest.hexdigest()}\n" + (root / "cuda" / name).read_text()


@functools.lru_cache(maxsize=None)
def load(device_index: int) -> "CupyKernels":
    """The kernels compiled for one GPU (once per process and device; cupy also caches the
    compiled code on disk). A cupy module is bound to the device current when it is loaded, so
    it is loaded with that GPU current."""
    import cupy

    with cupy.cuda.Device(device_index):
        return CupyKernels()


def _blocks(work: int) -> int:
    return max(1, min((work + THREADS - 1) // THREADS, 65535 * 8))


def _ptr(address: int) -> np.uint64:
    return np.uint64(address)


def _masking_geometry(launcher: str, units: int, inner: int, elem_size: int, num_masks: int,
                      buffers: tuple[int, ...]) -> tuple[bool, tuple[int, int]]:
    """The checks and the launch geometry of the C++ masking launchers (check_masking,
    takes_16_byte_vectors and masking_grid in ablation_cuda.cu): whether the rows move as 16-byte
    vectors, and the grid (one thread per vector or per element of a row, y the mask)."""
    if num_masks > 65535:
        raise ValueError(f"{launcher}: at most 65535 masks per call")
    if elem_size not in (2, 4, 8):
        raise ValueError(f"{launcher}: element size must be 2, 4 or 8 bytes")
    elements = units * inner
    vec16 = elements * elem_size % 16 == 0 and all(address % 16 == 0 for address in buffers)
    return vec16, (_blocks(elements * elem_size // 16 if vec16 else elements), num_masks)


def _noise_geometry(launcher: str, batch: int, units: int, inner: int, dtype: int, num_copies: int) -> tuple[int, int]:
    """The checks and the launch grid of the C++ noise launchers (check_noise and noise_grid in
    noise_cuda.cu): one thread per element of a copy's batch rows, y the copy."""
    if num_copies > 65535:
        raise ValueError(f"{launcher}: at most 65535 copies per call")
    if dtype not in (0, 1, 2, 3):
        raise ValueError("unknown dtype code")
    return _blocks(batch * units * inner), num_copies


class CupyKernels:
    def __init__(self):
        import cupy

        self._cupy = cupy
        options = compile_options()
        ablation = cupy.RawModule(code=program_text("ablation_cuda.cu"), options=options)
        noise = cupy.RawModule(code=program_text("noise_cuda.cu"), options=options)
        covariance = cupy.RawModule(code=program_text("covariance_cuda.cu"), options=options)
        # Kernels bind to the current device when first fetched: fetch them all now.
        self._ranks = ablation.get_function("fu_permutation_ranks")
        self._expand_vec16 = ablation.get_function("fu_expand_masked_vec16")
        self._expand_scalar = ablation.get_function("fu_expand_masked_scalar")
        self._mask_rows_vec16 = ablation.get_function("fu_mask_rows_vec16")
        self._mask_rows_scalar = ablation.get_function("fu_mask_rows_scalar")
        self._agreement = ablation.get_function("fu_label_agreement")
        self._expand_noise = noise.get_function("fu_expand_noise")
        self._noise_rows = noise.get_function("fu_noise_rows")
        self._batch_mean = covariance.get_function("fu_covariance_batch_mean")
        self._cross = covariance.get_function("fu_covariance_cross")
        self._merge_comoment = covariance.get_function("fu_covariance_merge_comoment")
        self._merge_mean = covariance.get_function("fu_covariance_merge_mean")

    def _launch(self, kernel, grid, args, stream: int) -> None:
        # PyTorch's current stream, so the kernel is ordered with PyTorch's own work.
        with self._cupy.cuda.ExternalStream(stream):
            kernel(grid, (THREADS,), args)

    def permutation_ranks(self, key, n, ranks, *, stream):
        self._launch(self._ranks, (_blocks(n),), (np.uint64(key), np.int64(n), _ptr(ranks)), stream)

    def expand_masked(self, src, dst, batch, units, inner, channels, spatial, channels_last, elem_size, keys,
                      thresholds, num_masks, *, stream):
        vec16, grid = _masking_geometry("expand_masked_cuda", units, inner, elem_size, num_masks, (src, dst))
        kernel = self._expand_vec16 if vec16 else self._expand_scalar
        args = (_ptr(src), _ptr(dst), np.int64(batch), np.int64(units), np.int64(inner), np.int64(channels),
                np.int64(spatial), np.int32(bool(channels_last)), np.int32(elem_size), _ptr(keys), _ptr(thresholds))
        self._launch(kernel, grid, args, stream)

    def mask_rows(self, data, batch, units, inner, channels, spatial, channels_last, elem_size, keys, thresholds,
                  num_masks, *, stream):
        vec16, grid = _masking_geometry("mask_rows_cuda", units, inner, elem_size, num_masks, (data,))
        kernel = self._mask_rows_vec16 if vec16 else self._mask_rows_scalar
        args = (_ptr(data), np.int64(batch), np.int64(units), np.int64(inner), np.int64(channels),
                np.int64(spatial), np.int32(bool(channels_last)), np.int32(elem_size), _ptr(keys), _ptr(thresholds))
        self._launch(kernel, grid, args, stream)

    def expand_noise(self, src, dst, batch, units, inner, channels, spatial, channels_last, dtype, keys, scales,
                     unit_std, first_example, num_copies, *, stream):
        grid = _noise_geometry("expand_noise_cuda", batch, units, inner, dtype, num_copies)
        args = (_ptr(src), _ptr(dst), np.int64(batch), np.int64(units), np.int64(inner), np.int64(channels),
                np.int64(spatial), np.int32(bool(channels_last)), np.int32(dtype), _ptr(keys), _ptr(scales),
                _ptr(unit_std), np.int64(first_example))
        self._launch(self._expand_noise, grid, args, stream)

    def noise_rows(self, data, batch, units, inner, channels, spatial, channels_last, dtype, keys, scales, unit_std,
                   first_example, num_copies, *, stream):
        grid = _noise_geometry("noise_rows_cuda", batch, units, inner, dtype, num_copies)
        args = (_ptr(data), np.int64(batch), np.int64(units), np.int64(inner), np.int64(channels), np.int64(spatial),
                np.int32(bool(channels_last)), np.int32(dtype), _ptr(keys), _ptr(scales), _ptr(unit_std),
                np.int64(first_example))
        self._launch(self._noise_rows, grid, args, stream)

    def label_agreement(self, logits, dtype, num_masks, batch, classes, row_stride, base_labels, counts, *,
                        stream):
        args = (_ptr(logits), np.int32(dtype), np.int64(num_masks), np.int64(batch), np.int64(classes),
                np.int64(row_stride), _ptr(base_labels), _ptr(counts))
        self._launch(self._agreement, (_blocks(num_masks * batch * 32),), args, stream)

    def covariance_accumulate(self, data, dtype, batch, channels, spatial, stride_batch, stride_channel,
                              stride_spatial, rows, num_rows, count, mean, comoment, *, workspace, stream):
        if num_rows == 0:
            return
        if channels > _TILE * 65535:    # the tile grid's y dimension
            raise ValueError("covariance_accumulate_cuda: too many channels")
        view = (_ptr(data), np.int32(dtype), np.int64(channels), np.int64(spatial), np.int64(stride_batch),
                np.int64(stride_channel), np.int64(stride_spatial), _ptr(rows), np.int64(num_rows))
        batch_mean, batch_comoment = workspace, workspace + 8 * channels
        with self._cupy.cuda.ExternalStream(stream):
            self._cupy.cuda.runtime.memsetAsync(batch_comoment, 0, 8 * channels * channels, stream)
        self._launch(self._batch_mean, (_blocks(channels * THREADS),), view + (_ptr(batch_mean),), stream)
        # Row slices as in covariance_accumulate_cuda: about a thousand blocks, >= 256 rows each.
        tiles = (channels + _TILE - 1) // _TILE
        slices = min(-(-1024 // (tiles * (tiles + 1) // 2)), -(-num_rows // 256), 65535)
        per_slice = -(-num_rows // slices)
        self._launch(self._cross, (tiles, tiles, -(-num_rows // per_slice)),
                     view + (np.int64(per_slice), _ptr(batch_mean), _ptr(batch_comoment)), stream)
        n_b = np.float64(num_rows)
        self._launch(self._merge_comoment, (_blocks(channels * channels),),
                     (_ptr(count), _ptr(mean), _ptr(comoment), _ptr(batch_mean), _ptr(batch_comoment),
                      np.int64(channels), n_b), stream)
        self._launch(self._merge_mean, (1,), (_ptr(count), _ptr(mean), _ptr(batch_mean), np.int64(channels), n_b),
                     stream)
