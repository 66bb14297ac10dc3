"""The CUDA sources of csrc/cuda, unmodified, run on the CPU under an emulated CUDA runtime
(tests/cuda_emulation): the real launchers and kernels, reached through the real bindings of
csrc/bindings.cpp called with a stream (stream 0) and host pointers as device memory, against the CPU
kernels of fu_fast._C (byte for byte where the contract says so) and the float64 references of
fu_fast.reference, on fresh random inputs.

The emulator runs one block at a time, a synchronising kernel with one OS thread per CUDA thread
and any other kernel one thread after another, and refuses launches the way sm_80/sm_90 do. It
cannot show timing, effects of the GPU's memory model, or anything nvcc compiles differently
from the host compiler; and since blocks run one at a time, a race between blocks (a plain add
where an atomicAdd is needed) goes unseen.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch

from cuda_emulation import build as emulation
from fu_fast import _C, kernels, reference

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}   # element size -> integer type of its bits


class Emulator:
    """The emulated module (its kernels called with a stream run the CUDA twins) and the emulator's controls."""

    def __init__(self, built: emulation.Build):
        spec = importlib.util.spec_from_file_location("fu_fast_cuda_emulation._C", built.library)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.kernels = built.kernels
        # The same path, so the same loaded image: the controls act on the module's launches.
        self.lib = ctypes.CDLL(str(built.library))
        for name in ("fu_emu_launches", "fu_emu_refused", "fu_emu_blocks_run"):
            getattr(self.lib, name).restype = ctypes.c_ulonglong
            getattr(self.lib, name).argtypes = [ctypes.c_char_p]
        self.lib.fu_emu_mode.argtypes = [ctypes.c_char_p]
        self.lib.fu_emu_last_config.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint)]
        self.lib.fu_emu_set_block_range.argtypes = [ctypes.c_ulonglong, ctypes.c_ulonglong]
        self.lib.fu_emu_set_device_count.argtypes = [ctypes.c_int]
        self.lib.fu_emu_probe_launch.argtypes = [ctypes.c_int] + [ctypes.c_uint] * 6 + [
            ctypes.c_ulonglong, ctypes.POINTER(ctypes.c_ulonglong), ctypes.c_char_p, ctypes.c_ulonglong]

    def launches(self, kernel: str) -> int:
        return self.lib.fu_emu_launches(kernel.encode())

    def refused(self, kernel: str) -> int:
        return self.lib.fu_emu_refused(kernel.encode())

    def blocks_run(self, kernel: str) -> int:
        return self.lib.fu_emu_blocks_run(kernel.encode())

    def mode(self, kernel: str) -> str | None:
        return {-1: None, 0: "sequential", 1: "threaded"}[self.lib.fu_emu_mode(kernel.encode())]

    def last_config(self, kernel: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        dims = (ctypes.c_uint * 6)()
        assert self.lib.fu_emu_last_config(kernel.encode(), dims), f"{kernel} never ran"
        return tuple(dims[:3]), tuple(dims[3:])

    def probe(self, kernel: int, grid, block, shared: int = 0) -> tuple[int, str | None]:
        """Launch a kernel of tests/cuda_emulation/probe.cu: (CUDA threads that ran, the error
        check_launch raised or None)."""
        ran = ctypes.c_ulonglong(0)
        message = ctypes.create_string_buffer(512)
        failed = self.lib.fu_emu_probe_launch(kernel, *grid, *block, shared, ctypes.byref(ran), message, 512)
        return ran.value, message.value.decode() if failed else None


PROBE, PROBE_BOUNDED, PROBE_HIDDEN_BARRIER, PROBE_DIVERGENT_BARRIER = range(4)   # as in probe.cu


@pytest.fixture(scope="module")
def emulator():
    try:
        built = emulation.build()
    except emulation.Unavailable as e:
        pytest.skip(f"the CUDA emulation cannot be built here: {e}")
    return Emulator(built)


@pytest.fixture
def emu(emulator):
    emulator.lib.fu_emu_reset()
    yield emulator
    emulator.lib.fu_emu_reset()


def random_keys(count, rng):
    return [int(k) for k in rng.integers(0, 2**64, size=count, dtype=np.uint64)]


def numpy_rng(generator):
    """A numpy generator seeded from the test's torch generator (for 64-bit keys)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def case_id(value):
    """Readable test ids for dtypes, shapes and memory formats."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return {True: "channels_last", False: "contiguous"}[value]


def aligned_at(nbytes: int, offset: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat tensor of nbytes whose data starts offset bytes past a 16-byte boundary."""
    raw = torch.empty(nbytes + 32, dtype=torch.uint8)
    start = (-raw.data_ptr()) % 16 + offset
    return raw[start:start + nbytes].view(dtype)


def test_build_info_reports_the_emulated_device_and_clears_the_error_it_meets(emu):
    info = emu.module.build_info()
    assert info["backends"] == ["cpu", "cuda"]
    assert (info["cuda_devices"], info["cuda_error"]) == (1, "")
    assert info["cuda_runtime_version"] == info["cuda_driver_version"] == 13000
    emu.lib.fu_emu_set_device_count(0)
    info = emu.module.build_info()
    assert (info["cuda_devices"], info["cuda_error"]) == (0, "no CUDA-capable device is detected")
    # cuda_status() cleared the error cudaGetDeviceCount left, or this launch's check would raise it.
    ranks = torch.empty(5, dtype=torch.int64)
    emu.module.permutation_ranks(1, 5, ranks.data_ptr(), stream=0)
    np.testing.assert_array_equal(ranks.numpy(), reference.permutation_ranks(1, 5))


def test_only_the_synchronising_kernels_get_a_thread_per_cuda_thread(emu):
    csrc = {name: (kernel.threaded, kernel.max_threads) for name, kernel in emu.kernels.items()
            if not name.startswith("fu_emu_")}
    assert csrc == {"fu_permutation_ranks": (False, 0), "fu_expand_masked_vec16": (False, 0),
                    "fu_expand_masked_scalar": (False, 0), "fu_mask_rows_vec16": (False, 0),
                    "fu_mask_rows_scalar": (False, 0), "fu_expand_noise": (False, 0), "fu_noise_rows": (False, 0),
                    "fu_label_agreement": (True, 0),
                    "fu_covariance_batch_mean": (True, 0), "fu_covariance_cross": (True, 256),
                    "fu_covariance_merge_comoment": (False, 0), "fu_covariance_merge_mean": (True, 0)}
    # ... and the launches carry that decision.
    counts = torch.zeros(1, dtype=torch.int64)
    logits, base = torch.zeros(1, 3), torch.zeros(1, dtype=torch.int64)
    emu.module.label_agreement(logits.data_ptr(), 0, 1, 1, 3, 3, base.data_ptr(), counts.data_ptr(), stream=0)
    emu.module.permutation_ranks(1, 3, counts.data_ptr(), stream=0)
    assert (emu.mode("fu_label_agreement"), emu.mode("fu_permutation_ranks")) == ("threaded", "sequential")


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1000, 4097, 65_537])
def test_permutation_ranks_equal_the_cpu_and_the_reference(emu, n, generator):
    for key in random_keys(2, numpy_rng(generator)) + [0, 2**64 - 1]:
        emulated, cpu = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
        emu.module.permutation_ranks(key, n, emulated.data_ptr(), stream=0)
        _C.permutation_ranks(key, n, cpu.data_ptr())
        np.testing.assert_array_equal(emulated.numpy(), cpu.numpy())
        np.testing.assert_array_equal(emulated.numpy(), reference.permutation_ranks(key, n))
    assert emu.launches("fu_permutation_ranks") == 4


def expand_both(emu, x, keys, thresholds, inner, channels_last, src_offset=0, dst_offset=0):
    """Run the emulated and the CPU expansion of x (logical NCHW or (B, C); laid out NHWC in
    memory when channels_last), the emulated one from and to buffers at the given byte offsets
    from 16-byte alignment. Returns (emulated, cpu) outputs in memory order, and the reference
    in memory order."""
    batch, num_masks = x.shape[0], len(keys)
    units = x[0].numel() // inner
    channels = x.shape[1]
    spatial = x[0].numel() // channels
    memory = (x.permute(0, 2, 3, 1) if channels_last else x).contiguous().flatten()
    src = aligned_at(memory.numel() * x.element_size(), src_offset, x.dtype)
    src.copy_(memory)
    dst = aligned_at(num_masks * memory.numel() * x.element_size(), dst_offset, x.dtype)
    cpu = torch.empty(num_masks * memory.numel(), dtype=x.dtype)
    masks = torch.cat([kernels.signed_keys(keys), torch.tensor(thresholds, dtype=torch.int64)])
    args = (batch, units, inner, channels, spatial, channels_last, x.element_size(), masks.data_ptr(),
            masks[num_masks:].data_ptr(), num_masks)
    emu.module.expand_masked(src.data_ptr(), dst.data_ptr(), *args, stream=0)
    _C.expand_masked(memory.data_ptr(), cpu.data_ptr(), *args)
    expected = reference.expand_masked(x, keys, thresholds, inner)
    if channels_last:
        expected = expected.permute(0, 2, 3, 1)
    return dst, cpu, expected.contiguous().flatten()


def check_expansion(dst, cpu, expected, element_size):
    bits = BITS[element_size]
    assert torch.equal(dst.view(bits), cpu.view(bits))          # byte for byte the CPU kernel's
    assert torch.equal(dst, expected)
    # Ablated elements are +0.0, whatever the sign of the value they replace (the reference
    # multiplies by 0 and gives -0.0 for negative values).
    assert not torch.signbit(dst[expected == 0]).any()


EXPANSION_LAYOUTS = {
    # name: (odd shape, shape whose rows are a multiple of 16 bytes, unit, channels_last)
    "nchw-position": ((3, 33, 31, 29), (2, 12, 5, 4), "position", False),
    "nchw-channel": ((3, 33, 31, 29), (2, 12, 5, 4), "channel", False),
    "channels_last-position": ((3, 33, 31, 29), (2, 12, 5, 4), "position", True),
    "channels_last-channel": ((3, 33, 31, 29), (2, 12, 5, 4), "channel", True),
    "linear": ((5, 37), (4, 24), "position", False),
}


def expansion_input(shape, unit, dtype, generator):
    x = torch.randn(shape, generator=generator).to(dtype)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    a, b, c = random_keys(3, numpy_rng(generator))
    # Repeated keys (the CPU kernel groups them); thresholds 0, n and in between.
    return x, inner, [a, a, b, c, c], [0, units // 2, units, 1, units - 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=case_id)
@pytest.mark.parametrize("rows", ["odd", "multiple of 16 bytes"])
@pytest.mark.parametrize("layout", list(EXPANSION_LAYOUTS))
def test_expand_masked_equals_the_cpu_and_the_reference(emu, dtype, rows, layout, generator):
    odd_shape, even_shape, unit, channels_last = EXPANSION_LAYOUTS[layout]
    shape = odd_shape if rows == "odd" else even_shape
    x, inner, keys, thresholds = expansion_input(shape, unit, dtype, generator)
    dst, cpu, expected = expand_both(emu, x, keys, thresholds, inner, channels_last)
    check_expansion(dst, cpu, expected, x.element_size())
    vec16 = rows != "odd"
    assert (emu.launches("fu_expand_masked_vec16"), emu.launches("fu_expand_masked_scalar")) == (vec16, not vec16)
    # One thread per 16-byte vector or per element of a row, blockIdx.y the mask.
    work = x[0].numel() * x.element_size() // 16 if vec16 else x[0].numel()
    assert emu.last_config(f"fu_expand_masked_{'vec16' if vec16 else 'scalar'}") == (
        ((work + 255) // 256, len(keys), 1), (256, 1, 1))


@pytest.mark.parametrize("dtype, src_offset, dst_offset", [
    (dtype, src, dst) for dtype in (torch.float16, torch.float32, torch.float64)
    for src in (0, 2, 4, 8) for dst in (0, 2, 4, 8)
    if src % dtype.itemsize == 0 and dst % dtype.itemsize == 0])
def test_expand_masked_takes_16_byte_accesses_only_where_both_rows_are_aligned(emu, dtype, src_offset, dst_offset,
                                                                               generator):
    _, shape, unit, channels_last = EXPANSION_LAYOUTS["channels_last-channel"]
    x, inner, keys, thresholds = expansion_input(shape, unit, dtype, generator)
    dst, cpu, expected = expand_both(emu, x, keys, thresholds, inner, channels_last, src_offset, dst_offset)
    check_expansion(dst, cpu, expected, x.element_size())
    vec16 = src_offset == dst_offset == 0
    assert (emu.launches("fu_expand_masked_vec16"), emu.launches("fu_expand_masked_scalar")) == (vec16, not vec16)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(BITS[x.element_size()])


def masking_input(shape, unit, dtype, generator):
    """x of random bits (NaN payloads, infinities, subnormals and -0.0 among them: the kernels must
    move bits, never values), inner, and masks with repeated keys and thresholds 0, all units, in
    between and beyond either end."""
    integer = BITS[dtype.itemsize]
    limits = torch.iinfo(integer)
    x = torch.randint(limits.min, limits.max, shape, dtype=integer, generator=generator).view(dtype)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    a, b, c = random_keys(3, numpy_rng(generator))
    return x, inner, [a, a, b, c, c, a, b], [0, units // 2, units, 1, units - 1, -1, units + 1]


def mask_both(emu, x, keys, thresholds, inner, channels_last, offset=0):
    """Mask K stacked copies of x (logical NCHW or (B, C); laid out NHWC in memory when
    channels_last) in place with the emulated kernels, in a buffer offset bytes past 16-byte
    alignment, and with the CPU kernel. Returns (emulated, cpu, reference), flat in memory order."""
    batch, num_masks = x.shape[0], len(keys)
    units = x[0].numel() // inner
    channels = x.shape[1]
    spatial = x[0].numel() // channels
    copies = torch.cat([x] * num_masks)
    memory = (copies.permute(0, 2, 3, 1) if channels_last else copies).contiguous().flatten()
    data = aligned_at(memory.numel() * x.element_size(), offset, x.dtype)
    bits(data).copy_(bits(memory))
    cpu = memory.clone()
    masks = torch.cat([kernels.signed_keys(keys), torch.tensor(thresholds, dtype=torch.int64)])
    args = (batch, units, inner, channels, spatial, channels_last, x.element_size(), masks.data_ptr(),
            masks[num_masks:].data_ptr(), num_masks)
    emu.module.mask_rows(data.data_ptr(), *args, stream=0)
    _C.mask_rows(cpu.data_ptr(), *args)
    expected = reference.mask_rows(copies, keys, thresholds, inner)
    if channels_last:
        expected = expected.permute(0, 2, 3, 1)
    return data, cpu, expected.contiguous().flatten()


def check_masking(data, cpu, expected):
    assert torch.equal(bits(data), bits(cpu))          # byte for byte the CPU kernel's
    assert torch.equal(bits(data), bits(expected))     # kept bits as they were, ablated ones +0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=case_id)
@pytest.mark.parametrize("rows", ["odd", "multiple of 16 bytes"])
@pytest.mark.parametrize("layout", list(EXPANSION_LAYOUTS))
def test_mask_rows_equals_the_cpu_and_the_reference(emu, dtype, rows, layout, generator):
    odd_shape, even_shape, unit, channels_last = EXPANSION_LAYOUTS[layout]
    shape = odd_shape if rows == "odd" else even_shape
    x, inner, keys, thresholds = masking_input(shape, unit, dtype, generator)
    check_masking(*mask_both(emu, x, keys, thresholds, inner, channels_last))
    vec16 = rows != "odd"
    assert (emu.launches("fu_mask_rows_vec16"), emu.launches("fu_mask_rows_scalar")) == (vec16, not vec16)
    # One thread per 16-byte vector or per element of a row, blockIdx.y the mask.
    work = x[0].numel() * x.element_size() // 16 if vec16 else x[0].numel()
    assert emu.last_config(f"fu_mask_rows_{'vec16' if vec16 else 'scalar'}") == (
        ((work + 255) // 256, len(keys), 1), (256, 1, 1))


@pytest.mark.parametrize("dtype, offset", [(dtype, offset) for dtype in (torch.float16, torch.float32, torch.float64)
                                           for offset in (0, 2, 4, 8) if offset % dtype.itemsize == 0])
def test_mask_rows_takes_16_byte_accesses_only_where_the_rows_are_aligned(emu, dtype, offset, generator):
    _, shape, unit, channels_last = EXPANSION_LAYOUTS["channels_last-channel"]
    x, inner, keys, thresholds = masking_input(shape, unit, dtype, generator)
    check_masking(*mask_both(emu, x, keys, thresholds, inner, channels_last, offset))
    vec16 = offset == 0
    assert (emu.launches("fu_mask_rows_vec16"), emu.launches("fu_mask_rows_scalar")) == (vec16, not vec16)


def noise_input(shape, unit, dtype, generator):
    """x, inner, keys (repeated), scales (0 among them) and unit standard deviations (unit 0's zero)."""
    x = torch.randn(shape, generator=generator).to(dtype)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    a, b, c = random_keys(3, numpy_rng(generator))
    unit_std = torch.rand(units, generator=generator, dtype=torch.float64) + 0.25
    unit_std[0] = 0.0
    return x, inner, [a, a, b, c, c], [0.0, 0.3, 1.0, 2.5, 0.0], unit_std


def noise_args(x, inner, keys, scales, unit_std, channels_last, first_example, table):
    """The binding's arguments after the data pointer(s), with table the keys then the scales' bits."""
    units = x[0].numel() // inner
    channels = x.shape[1]
    return (x.shape[0], units, inner, channels, x[0].numel() // channels, channels_last, DTYPE_CODES[x.dtype],
            table.data_ptr(), table[len(keys):].data_ptr(), unit_std.data_ptr(), first_example, len(keys))


def noise_table(keys, scales):
    return torch.cat([kernels.signed_keys(keys), torch.tensor(scales, dtype=torch.float64).view(torch.int64)])


def in_memory_order(x, channels_last):
    return (x.permute(0, 2, 3, 1) if channels_last else x).contiguous().flatten()


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=case_id)
@pytest.mark.parametrize("rows", ["odd", "multiple of 16 bytes"])
@pytest.mark.parametrize("layout", list(EXPANSION_LAYOUTS))
def test_expand_noise_equals_the_cpu_byte_for_byte_and_the_reference(emu, dtype, rows, layout, generator):
    """The emulated CUDA twin computes its normals with the host's log and cos, the C library's that the
    CPU kernel calls (both built with -ffp-contract=off), so every other difference would be a
    difference of the kernels' arithmetic: the bytes must be equal. Against the NumPy reference, the
    tolerance of csrc/noise.h."""
    odd_shape, even_shape, unit, channels_last = EXPANSION_LAYOUTS[layout]
    x, inner, keys, scales, unit_std = noise_input(odd_shape if rows == "odd" else even_shape, unit, dtype, generator)
    first = 2**40 + 3
    table = noise_table(keys, scales)
    args = noise_args(x, inner, keys, scales, unit_std, channels_last, first, table)
    src = in_memory_order(x, channels_last)
    emulated, cpu = (torch.full((len(keys) * src.numel(),), float("nan"), dtype=dtype) for _ in range(2))
    emu.module.expand_noise(src.data_ptr(), emulated.data_ptr(), *args, stream=0)
    _C.expand_noise(src.data_ptr(), cpu.data_ptr(), *args)
    assert torch.equal(bits(emulated), bits(cpu))
    expected = reference.expand_noise(x, keys, scales, unit_std, inner, first)
    copies = torch.cat([x] * len(keys))
    assert kernels.noise_close(emulated, in_memory_order(expected, channels_last),
                               in_memory_order(copies, channels_last)).all()
    batch_rows = src.numel()
    for k in (0, 4):                                                      # scale 0: the input's bits
        assert torch.equal(bits(emulated[k * batch_rows:(k + 1) * batch_rows]), bits(src))
    # One thread per element of a copy's batch rows, blockIdx.y the copy.
    assert emu.launches("fu_expand_noise") == 1
    assert emu.last_config("fu_expand_noise") == (((src.numel() + 255) // 256, len(keys), 1), (256, 1, 1))


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=case_id)
@pytest.mark.parametrize("layout", list(EXPANSION_LAYOUTS))
def test_noise_rows_equals_the_cpu_byte_for_byte_in_place(emu, dtype, layout, generator):
    odd_shape, _, unit, channels_last = EXPANSION_LAYOUTS[layout]
    x, inner, keys, scales, unit_std = noise_input(odd_shape, unit, dtype, generator)
    first = 5
    table = noise_table(keys, scales)
    args = noise_args(x, inner, keys, scales, unit_std, channels_last, first, table)
    memory = in_memory_order(torch.cat([x] * len(keys)), channels_last)
    data, cpu = memory.clone(), memory.clone()
    emu.module.noise_rows(data.data_ptr(), *args, stream=0)
    _C.noise_rows(cpu.data_ptr(), *args)
    assert torch.equal(bits(data), bits(cpu))
    # The in-place twin of the expansion: the same bytes as fu_expand_noise gives.
    src = in_memory_order(x, channels_last)
    expanded = torch.empty_like(memory)
    emu.module.expand_noise(src.data_ptr(), expanded.data_ptr(), *args, stream=0)
    assert torch.equal(bits(data), bits(expanded))
    assert emu.last_config("fu_noise_rows") == (((src.numel() + 255) // 256, len(keys), 1), (256, 1, 1))


def test_noise_rows_leaves_a_copy_of_scale_0_unread(emu):
    """Blocks of a copy whose scale is 0 return before touching the rows: NaN-boxed sentinels there
    (which any arithmetic would quiet) keep their bits, and so do the elements of a unit whose
    standard deviation is 0."""
    rows = torch.full((3 * 2 * 40,), 0x7FA00001, dtype=torch.int32)       # a signalling NaN with a payload
    rows[80:160] = torch.arange(80, dtype=torch.float32).view(torch.int32)   # copy 1 gets noise
    unit_std = torch.ones(40, dtype=torch.float64)
    unit_std[7] = 0.0
    keys, scales = [1, 2, 3], [0.0, 1.0, 0.0]
    table = noise_table(keys, scales)
    before = rows.clone()
    emu.module.noise_rows(rows.data_ptr(), 2, 40, 1, 40, 1, False, 0, table.data_ptr(), table[3:].data_ptr(),
                          unit_std.data_ptr(), 0, 3, stream=0)
    assert torch.equal(rows[:80], before[:80]) and torch.equal(rows[160:], before[160:])
    changed = rows[80:160] != before[80:160]
    assert not changed[7] and not changed[47] and changed.sum() == 78


def test_more_than_65535_noisy_copies_are_refused_by_the_launcher(emu):
    x = torch.randn(2, 8)
    table = torch.zeros(2 * 65_536, dtype=torch.int64)
    unit_std = torch.ones(8, dtype=torch.float64)
    out = torch.empty(8)
    with pytest.raises(ValueError, match="^expand_noise_cuda: at most 65535 copies per call$"):
        emu.module.expand_noise(x.data_ptr(), out.data_ptr(), 2, 8, 1, 8, 1, False, 0, table.data_ptr(),
                                table[65_536:].data_ptr(), unit_std.data_ptr(), 0, 65_536, stream=0)
    with pytest.raises(ValueError, match="^noise_rows_cuda: at most 65535 copies per call$"):
        emu.module.noise_rows(out.data_ptr(), 1, 8, 1, 8, 1, False, 0, table.data_ptr(), table[65_536:].data_ptr(),
                              unit_std.data_ptr(), 0, 65_536, stream=0)
    for kernel in ("fu_expand_noise", "fu_noise_rows"):
        assert emu.launches(kernel) == emu.refused(kernel) == 0


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=case_id)
@pytest.mark.parametrize("num_masks, batch, classes, row_stride", [
    (1, 1, 1, 1), (3, 5, 10, 10), (2, 7, 37, 40), (2, 9, 100, 103), (1, 3, 1000, 1000)])
def test_label_agreement_equals_the_cpu_and_torch_argmax(emu, dtype, num_masks, batch, classes, row_stride,
                                                         generator):
    rows = num_masks * batch
    # Small integers make ties common; NaN counts as maximal, the first maximum wins.
    logits = torch.randint(-3, 4, (rows, classes), generator=generator).to(dtype)
    logits[torch.rand(logits.shape, generator=generator) < 0.03] = float("nan")
    # Row prefixes (the rest of the row is -1): -0.0 == +0.0, so the first; NaN after a number;
    # equal maxima at index 2 (lane 2) and index 33 (lane 1), so index 2 whatever the lanes.
    nan = float("nan")
    special = [[-0.0, 0.0], [1.0, nan, nan], [-1.0, -1.0, 5.0] + [-1.0] * 30 + [5.0]]
    for row, prefix in enumerate(p for p in special if len(p) <= classes):
        if row < rows:
            logits[row] = torch.tensor(prefix + [-1.0] * (classes - len(prefix))).to(dtype)
    # The padding of each row is NaN: a read past the classes would win the argmax.
    padded = torch.full((rows, row_stride), float("nan"), dtype=dtype)
    padded[:, :classes] = logits
    base = torch.randint(0, classes, (batch,), generator=generator)
    base[: batch // 2] = logits[: batch // 2].argmax(dim=1)
    start = torch.arange(7, 7 + num_masks, dtype=torch.int64)   # counts are added to
    emulated, cpu = start.clone(), start.clone()
    args = (DTYPE_CODES[dtype], num_masks, batch, classes, row_stride, base.data_ptr())
    emu.module.label_agreement(padded.data_ptr(), *args, emulated.data_ptr(), stream=0)
    _C.label_agreement(padded.data_ptr(), *args, cpu.data_ptr())
    assert torch.equal(emulated, cpu)
    assert torch.equal(emulated - start, reference.label_agreement(logits, base, num_masks))
    assert emu.launches("fu_label_agreement") == 1


def two_pass_moments(samples):
    mean = samples.mean(axis=0)
    centred = samples - mean
    return mean, centred.T @ centred


COVARIANCE_CASES = [(dtype, shape, channels_last) for dtype in DTYPE_CODES
                    for shape, channels_last in [((700, 1), False), ((400, 37), False), ((9, 5, 9, 9), False),
                                                 ((9, 33, 7, 7), True)]]
COVARIANCE_CASES += [(torch.float32, (6, 100, 8, 8), False), (torch.bfloat16, (6, 65, 8, 8), True)]


@pytest.mark.parametrize("dtype, shape, channels_last", COVARIANCE_CASES, ids=case_id)
def test_covariance_equals_the_float64_two_pass_reference_and_the_cpu(emu, dtype, shape, channels_last, generator):
    channels = shape[1]
    spatial = shape[2] * shape[3] if len(shape) == 4 else 1
    emulated = [torch.zeros(1, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64),
                torch.zeros(channels, channels, dtype=torch.float64)]
    cpu = [t.clone() for t in emulated]
    samples = []
    for _ in range(3):
        # A common offset, large for float64, checks that the sums are centred.
        offset = 1e4 if dtype == torch.float64 else 5.0
        activation = (torch.randn(shape, generator=generator) * 3 + offset).to(dtype)
        if channels_last:
            activation = activation.to(memory_format=torch.channels_last)
        total = shape[0] * spatial
        # Unsorted rows, more than 256 of them: the cross-products take several row slices.
        rows = torch.randperm(total, generator=generator)[: int(total * 0.8)]
        strides = activation.stride()
        args = (DTYPE_CODES[dtype], shape[0], channels, spatial, strides[0], strides[1],
                strides[3] if len(shape) == 4 else 0, rows.data_ptr(), rows.numel())
        # NaN scratch: a read of a workspace element the launcher did not initialise shows.
        workspace = torch.full((channels + channels * channels,), float("nan"), dtype=torch.float64)
        emu.module.covariance_accumulate(activation.data_ptr(), *args, *(t.data_ptr() for t in emulated),
                                         workspace=workspace.data_ptr(), stream=0)
        _C.covariance_accumulate(activation.data_ptr(), *args, *(t.data_ptr() for t in cpu))
        (grid_x, grid_y, grid_z), _ = emu.last_config("fu_covariance_cross")
        tiles = (channels + 31) // 32
        assert (grid_x, grid_y) == (tiles, tiles) and grid_z > 1   # slices merged by atomicAdd
        samples.append(reference.gather_rows(activation.double(), rows).numpy())
    samples = np.concatenate(samples)
    mean, comoment = two_pass_moments(samples)
    count, got_mean, got_comoment = (t.numpy() for t in emulated)
    assert count[0] == len(samples) == cpu[0].item()
    np.testing.assert_allclose(got_mean, mean, rtol=1e-12, atol=1e-12 * np.abs(mean).max())
    assert np.abs(got_comoment - comoment).max() < 1e-10 * np.abs(comoment).max()
    np.testing.assert_array_equal(got_comoment, got_comoment.T)
    np.testing.assert_allclose(got_mean, cpu[1].numpy(), rtol=1e-12, atol=1e-12 * np.abs(mean).max())
    assert np.abs(got_comoment - cpu[2].numpy()).max() < 1e-10 * np.abs(comoment).max()
    assert emu.launches("fu_covariance_cross") == 3


def test_more_than_65535_masks_are_refused_by_the_launcher(emu):
    x = torch.randn(2, 8)
    masks = torch.zeros(2 * 65_536, dtype=torch.int64)
    out = torch.empty(8)
    with pytest.raises(ValueError, match="at most 65535 masks per call"):
        emu.module.expand_masked(x.data_ptr(), out.data_ptr(), 2, 8, 1, 8, 1, False, 4, masks.data_ptr(),
                                 masks[65_536:].data_ptr(), 65_536, stream=0)
    with pytest.raises(ValueError, match="^mask_rows_cuda: at most 65535 masks per call"):
        emu.module.mask_rows(out.data_ptr(), 1, 4, 1, 4, 1, False, 2, masks.data_ptr(), masks[65_536:].data_ptr(),
                             65_536, stream=0)
    for kernel in ("fu_expand_masked_vec16", "fu_expand_masked_scalar", "fu_mask_rows_vec16", "fu_mask_rows_scalar"):
        assert emu.launches(kernel) == emu.refused(kernel) == 0


LIMIT = "probe: invalid configuration argument"


@pytest.mark.parametrize("kernel, grid, block, shared, error", [
    (PROBE, (1, 65_536, 1), (32, 1, 1), 0, LIMIT),
    (PROBE, (1, 1, 65_536), (32, 1, 1), 0, LIMIT),
    (PROBE, (2**31, 1, 1), (32, 1, 1), 0, LIMIT),
    (PROBE, (0, 1, 1), (32, 1, 1), 0, LIMIT),
    (PROBE, (1, 1, 1), (1025, 1, 1), 0, LIMIT),
    (PROBE, (1, 1, 1), (32, 32, 2), 0, LIMIT),
    (PROBE, (1, 1, 1), (1, 1, 65), 0, LIMIT),
    (PROBE, (1, 1, 1), (32, 1, 1), 48 * 1024 + 1, LIMIT),
    (PROBE_BOUNDED, (1, 1, 1), (65, 1, 1), 0, "probe: too many resources requested for launch"),
    # the largest launches that are allowed
    (PROBE, (2**31 - 1, 65_535, 65_535), (1024, 1, 1), 48 * 1024, None),
    (PROBE, (1, 1, 1), (16, 8, 8), 0, None),
    (PROBE_BOUNDED, (1, 1, 1), (64, 1, 1), 0, None),
])
def test_a_launch_beyond_the_hardware_limits_raises_through_check_launch(emu, kernel, grid, block, shared, error):
    name = "fu_emu_probe_bounded" if kernel == PROBE_BOUNDED else "fu_emu_probe"
    threads = block[0] * block[1] * block[2]
    blocks = grid[0] * grid[1] * grid[2]
    emu.lib.fu_emu_set_block_range(blocks - 1, blocks)          # an allowed launch runs its last block
    ran, message = emu.probe(kernel, grid, block, shared)
    assert message == error
    if error:
        assert (ran, emu.launches(name), emu.refused(name)) == (0, 0, 1)
    else:
        assert (ran, emu.launches(name), emu.blocks_run(name)) == (threads, 1, 1)
        assert emu.last_config(name) == (grid, block)
    # check_launch took the error: the next launch starts clean.
    emu.lib.fu_emu_reset()
    assert emu.probe(PROBE, (1, 1, 1), (32, 1, 1)) == (32, None)


def test_a_barrier_in_a_kernel_run_one_thread_after_another_fails_loudly(emu):
    ran, message = emu.probe(PROBE_HIDDEN_BARRIER, (1, 1, 1), (64, 1, 1))
    assert ran == 0 and emu.mode("fu_emu_probe_hidden_barrier") == "sequential"
    assert "__syncthreads() in kernel fu_emu_probe_hidden_barrier" in message


def test_threads_waiting_at_different_barriers_fail_the_launch(emu):
    ran, message = emu.probe(PROBE_DIVERGENT_BARRIER, (1, 1, 1), (64, 1, 1))
    assert emu.mode("fu_emu_probe_divergent_barrier") == "threaded"
    assert "wait at different barriers" in message and ran == 0


def sparse_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    if os.stat(path).st_blocks * 512 > 1 << 20:
        pytest.skip(f"{path.parent} does not hold sparse files")


def masks_keeping_the_last_unit(num_masks, units, rng):
    """Masks of random keys and one threshold under which the last key keeps the last unit and
    ablates about half of the units: (the last key's ranks, the threshold, the kernels' masks
    table of keys then thresholds)."""
    keys = random_keys(num_masks, rng)
    ranks = torch.empty(units, dtype=torch.int64)
    while True:
        _C.permutation_ranks(keys[-1], units, ranks.data_ptr())
        if units // 4 < ranks[units - 1] < 3 * units // 4:
            break
        keys[-1] = random_keys(1, rng)[0]
    np.testing.assert_array_equal(ranks.numpy(), reference.permutation_ranks(keys[-1], units))
    threshold = int(ranks[units - 1])
    return ranks, threshold, torch.cat([kernels.signed_keys(keys), torch.full((num_masks,), threshold,
                                                                                dtype=torch.int64)])


@pytest.mark.parametrize("channels_last, kernel", [(False, "vec16"), (True, "vec16"), (False, "scalar")])
def test_expand_masked_indexes_a_49_gb_output_with_64_bits(emu, tmp_path, channels_last, kernel, generator):
    """ResNet18-4x layer1: K=60 masks of B=256 examples of 256 channels at 56x56, float32, unit =
    position. The output is 60*256*256*56*56*4 bytes (49 GB: 3.1e9 16-byte vectors, 1.2e10
    elements), past 32-bit indices; it lives in a sparse file, and only the last block of the grid
    runs, writing the end of the output. The scalar kernel runs when the output starts 4 bytes
    past a 16-byte boundary."""
    num_masks, batch, channels, height, width = 60, 256, 256, 56, 56
    spatial = height * width
    row = channels * spatial                           # elements, also units (unit = position)
    out_bytes = num_masks * batch * row * 4
    dst_offset, per_thread = (0, 4) if kernel == "vec16" else (4, 1)   # elements per thread and row
    guard = 4096
    if shutil.disk_usage(tmp_path).free < 1 << 30:
        pytest.skip("less than 1 GiB free for the sparse files")
    sparse_file(tmp_path / "src", batch * row * 4)
    sparse_file(tmp_path / "dst", dst_offset + out_bytes + guard)
    try:
        src = np.memmap(tmp_path / "src", dtype=np.float32, mode="r+", shape=(batch, row))
        dst = np.memmap(tmp_path / "dst", dtype=np.uint8, mode="r+", shape=(dst_offset + out_bytes + guard,))
        end = dst_offset + out_bytes
        out = dst[dst_offset:end].view(np.float32).reshape(num_masks * batch, row)

        # The last block's 256 threads take the last elements of every row of the last mask.
        work = row // per_thread
        blocks_x = (work + 255) // 256
        tail = (work - (blocks_x - 1) * 256) * per_thread
        rng = numpy_rng(generator)
        src[:, -tail:] = rng.standard_normal((batch, tail), dtype=np.float32)
        last_rows = out[(num_masks - 1) * batch:]
        sentinel = np.uint32(0x7FA5A5A5)                  # a NaN no kernel writes
        last_rows.view(np.uint32)[:, -tail - 16:-tail] = sentinel
        dst[end:] = 0xA5

        ranks, threshold, masks = masks_keeping_the_last_unit(num_masks, row, rng)

        emu.lib.fu_emu_set_block_range(blocks_x * num_masks - 1, blocks_x * num_masks)
        emu.module.expand_masked(src.ctypes.data, dst.ctypes.data + dst_offset, batch, row, 1, channels, spatial,
                                 channels_last, 4, masks.data_ptr(), masks[num_masks:].data_ptr(), num_masks,
                                 stream=0)
        name = f"fu_expand_masked_{kernel}"
        assert emu.last_config(name) == ((blocks_x, num_masks, 1), (256, 1, 1))
        assert emu.blocks_run(name) == 1

        elements = np.arange(row - tail, row)
        units = (elements % channels) * spatial + elements // channels if channels_last else elements
        ablated = ranks.numpy()[units] < threshold
        expected = np.where(ablated, np.float32(0), src[:, -tail:])
        np.testing.assert_array_equal(last_rows[:, -tail:].view(np.uint32), expected.view(np.uint32))
        assert 0 < ablated.sum() < ablated.size
        assert dst[end - 1] == expected[-1, -1:].view(np.uint8)[-1] != 0
        assert (last_rows.view(np.uint32)[:, -tail - 16:-tail] == sentinel).all()   # nothing before the block
        assert (dst[end:] == 0xA5).all()                                           # nothing past the output
        del src, dst, out, last_rows
        assert os.stat(tmp_path / "dst").st_blocks * 512 < 64 << 20                 # still sparse
    finally:
        for name in ("src", "dst"):
            (tmp_path / name).unlink()


@pytest.mark.parametrize("channels_last, kernel", [(False, "vec16"), (True, "vec16"), (False, "scalar")])
def test_mask_rows_indexes_a_49_gb_tensor_with_64_bits(emu, tmp_path, channels_last, kernel, generator):
    """The 49 GB output of the expansion test above, masked in place: K=60 copies of B=256 rows of
    256x56x56 float32 in a sparse file, of which only the grid's last block runs, masking the end
    of the last mask's rows. The scalar kernel runs when the rows start 4 bytes past a 16-byte
    boundary."""
    num_masks, batch, channels, height, width = 60, 256, 256, 56, 56
    spatial = height * width
    row = channels * spatial                           # elements, also units (unit = position)
    data_bytes = num_masks * batch * row * 4
    offset, per_thread = (0, 4) if kernel == "vec16" else (4, 1)   # elements per thread and row
    guard = 4096
    if shutil.disk_usage(tmp_path).free < 1 << 30:
        pytest.skip("less than 1 GiB free for the sparse file")
    sparse_file(tmp_path / "data", offset + data_bytes + guard)
    try:
        data = np.memmap(tmp_path / "data", dtype=np.uint8, mode="r+", shape=(offset + data_bytes + guard,))
        end = offset + data_bytes
        rows = data[offset:end].view(np.float32).reshape(num_masks * batch, row)

        # The last block's 256 threads take the last elements of every row of the last mask.
        work = row // per_thread
        blocks_x = (work + 255) // 256
        tail = (work - (blocks_x - 1) * 256) * per_thread
        rng = numpy_rng(generator)
        values = rng.standard_normal((batch, tail), dtype=np.float32)
        last_rows = rows[(num_masks - 1) * batch:]
        last_rows[:, -tail:] = values
        sentinel = np.uint32(0x7FA5A5A5)                  # a NaN whose bits a masking may only zero
        last_rows.view(np.uint32)[:, -tail - 16:-tail] = sentinel
        rows.view(np.uint32)[(num_masks - 1) * batch - 1, -tail:] = sentinel   # the mask before's last row
        data[end:] = 0xA5

        ranks, threshold, masks = masks_keeping_the_last_unit(num_masks, row, rng)
        emu.lib.fu_emu_set_block_range(blocks_x * num_masks - 1, blocks_x * num_masks)
        emu.module.mask_rows(data.ctypes.data + offset, batch, row, 1, channels, spatial, channels_last, 4,
                             masks.data_ptr(), masks[num_masks:].data_ptr(), num_masks, stream=0)
        name = f"fu_mask_rows_{kernel}"
        assert emu.last_config(name) == ((blocks_x, num_masks, 1), (256, 1, 1))
        assert emu.blocks_run(name) == 1

        elements = np.arange(row - tail, row)
        units = (elements % channels) * spatial + elements // channels if channels_last else elements
        ablated = ranks.numpy()[units] < threshold
        expected = np.where(ablated, np.float32(0), values)
        np.testing.assert_array_equal(last_rows[:, -tail:].view(np.uint32), expected.view(np.uint32))
        assert 0 < ablated.sum() < ablated.size and not ablated[-1]
        assert (last_rows.view(np.uint32)[:, -tail - 16:-tail] == sentinel).all()   # nothing before the block
        assert (rows.view(np.uint32)[(num_masks - 1) * batch - 1, -tail:] == sentinel).all()   # nor another mask's rows
        assert (data[end:] == 0xA5).all()                                          # nothing past the tensor
        del data, rows, last_rows
        assert os.stat(tmp_path / "data").st_blocks * 512 < 64 << 20                # still sparse
    finally:
        (tmp_path / "data").unlink()


@pytest.mark.parametrize("channels_last", [False, True])
def test_expand_noise_indexes_a_49_gb_output_with_64_bits(emu, tmp_path, channels_last, generator):
    """The 49 GB output of the masked expansion test above with noise instead of masks: K=60 noisy
    copies of B=256 examples of 256 channels at 56x56, float32, unit = position, in a sparse file.
    Only the grid's last block runs: it takes elements of example 167 of the last copy, past 2^32
    elements into the output, which must hold the CPU kernel's bytes for that example's row (run on
    that row alone, its first_example the example's global index)."""
    num_copies, batch, channels, height, width = 60, 256, 256, 56, 56
    spatial = height * width
    row = channels * spatial                           # elements, also units (unit = position)
    work = batch * row                                 # elements of one copy
    out_bytes = num_copies * work * 4
    guard = 4096
    if shutil.disk_usage(tmp_path).free < 1 << 30:
        pytest.skip("less than 1 GiB free for the sparse files")
    sparse_file(tmp_path / "src", work * 4)
    sparse_file(tmp_path / "dst", out_bytes + guard)
    try:
        src = np.memmap(tmp_path / "src", dtype=np.float32, mode="r+", shape=(work,))
        dst = np.memmap(tmp_path / "dst", dtype=np.uint8, mode="r+", shape=(out_bytes + guard,))
        out = dst[:out_bytes].view(np.float32)

        # The last block of the grid (x capped at 65535 * 8 blocks) takes elements first .. first + 255
        # of the copy's batch rows, all in one example's row.
        blocks_x = min((work + 255) // 256, 65535 * 8)
        first_element = (blocks_x - 1) * 256
        assert first_element + blocks_x * 256 >= work            # one pass of the grid-stride loop
        example, offset = divmod(first_element, row)
        assert offset + 256 <= row
        rng = numpy_rng(generator)
        src[first_element:first_element + 256] = rng.standard_normal(256, dtype=np.float32)
        last = (num_copies - 1) * work
        sentinel = np.uint32(0x7FA5A5A5)                  # a NaN no kernel writes
        out.view(np.uint32)[last + first_element - 16:last + first_element] = sentinel
        dst[out_bytes:] = 0xA5
        assert last + first_element > 2**32                  # past 32-bit element (and byte) indices

        keys = random_keys(num_copies, rng)
        table = noise_table(keys, [0.5] * num_copies)
        unit_std = torch.rand(row, generator=generator, dtype=torch.float64) + 0.5
        global_first = 2**40 + 11
        args = (row, 1, channels, spatial, channels_last, 0, table.data_ptr(), table[num_copies:].data_ptr(),
                unit_std.data_ptr(), global_first, num_copies)
        emu.lib.fu_emu_set_block_range(blocks_x * num_copies - 1, blocks_x * num_copies)
        emu.module.expand_noise(src.ctypes.data, dst.ctypes.data, batch, *args, stream=0)
        assert emu.last_config("fu_expand_noise") == ((blocks_x, num_copies, 1), (256, 1, 1))
        assert emu.blocks_run("fu_expand_noise") == 1

        # The CPU kernel on that example's row alone, as the last copy: the same bytes.
        one_row = torch.from_numpy(np.array(src[example * row:(example + 1) * row]))
        expected = torch.empty_like(one_row)
        last_table = noise_table(keys[-1:], [0.5])
        _C.expand_noise(one_row.data_ptr(), expected.data_ptr(), 1, row, 1, channels, spatial, channels_last, 0,
                        last_table.data_ptr(), last_table[1:].data_ptr(), unit_std.data_ptr(), global_first + example,
                        1)
        got = out[last + first_element:last + first_element + 256]
        np.testing.assert_array_equal(got.view(np.uint32), expected[offset:offset + 256].numpy().view(np.uint32))
        assert (got != src[first_element:first_element + 256]).all()
        assert (out.view(np.uint32)[last + first_element - 16:last + first_element] == sentinel).all()
        assert (dst[out_bytes:] == 0xA5).all()                                     # nothing past the output
        del src, dst, out, got
        assert os.stat(tmp_path / "dst").st_blocks * 512 < 64 << 20                 # still sparse
    finally:
        for name in ("src", "dst"):
            (tmp_path / name).unlink()
