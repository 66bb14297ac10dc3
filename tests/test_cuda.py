"""The CUDA kernels on a GPU (the module is skipped without a usable GPU and CUDA kernels):
every kernel against the CPU kernel and the float64 references on fresh random inputs, odd
sizes, every dtype and memory layout, every GPU backend, and the whole analysis against the
CPU's. `pytest -m cuda` runs them; tests/test_dispatch.py and tests/test_cuda_emulation.py
cover the GPU path where there is no GPU."""

import numpy as np
import pytest
import torch

import fu_fast
from fu_fast import cupy_kernels, kernels, reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and kernels.gpu_backend() != "torch"),
                                 reason="needs a CUDA GPU and CUDA kernels (compiled in, or cupy)")]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}   # element size -> integer type of its bits


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(BITS[x.element_size()])


def random_bits(shape, dtype, generator) -> torch.Tensor:
    """Values of random bits (NaN payloads, infinities, subnormals and -0.0 among them)."""
    limits = torch.iinfo(BITS[dtype.itemsize])
    return torch.randint(limits.min, limits.max, shape, dtype=BITS[dtype.itemsize], generator=generator).view(dtype)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4097, 65_537])
def test_ranks_are_bit_identical_to_the_cpu(n):
    for key in (0, 1, 2**63 + 5, 2**64 - 1):
        np.testing.assert_array_equal(kernels.permutation_ranks(key, n, "cuda").cpu().numpy(),
                                      kernels.permutation_ranks(key, n).numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, unit, channels_last", [
    ((1, 5), "position", False), ((3, 37), "position", False), ((4, 64), "position", False),
    ((2, 3, 5, 7), "position", False), ((2, 3, 5, 7), "channel", False), ((5, 16, 4, 4), "position", False),
    ((2, 3, 5, 7), "position", True), ((3, 8, 6, 6), "channel", True), ((9, 33, 31, 29), "position", True)])
def test_expand_masked_equals_the_cpu_kernel(dtype, shape, unit, channels_last, generator):
    x = torch.randn(shape, generator=generator).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    keys = [11, 11, 11, 2**63 + 3, 7]
    thresholds = [0, units // 3, units, units // 2, max(0, units - 1)]
    on_gpu = kernels.expand_masked(x.cuda(), keys, thresholds, inner)
    assert on_gpu.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.equal(on_gpu.cpu(), kernels.expand_masked(x, keys, thresholds, inner))
    assert torch.equal(on_gpu.cpu(), reference.expand_masked(x.contiguous(), keys, thresholds, inner))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_expand_masked_handles_unaligned_rows(dtype, generator):
    """A view one element into its device storage (2, 4 or 8 bytes from 16-byte alignment)
    cannot take 16-byte accesses; made on the device, so no copy realigns it."""
    storage = torch.randn(3 * 64 + 1, generator=generator).to(dtype).cuda()
    x = storage[1:].view(3, 64)
    assert x.data_ptr() % 16 != 0
    out = kernels.expand_masked(x, [5, 9], [10, 40], 1)
    assert torch.equal(out.cpu(), reference.expand_masked(x.cpu(), [5, 9], [10, 40], 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, unit, channels_last", [
    ((1, 5), "position", False), ((3, 37), "position", False), ((4, 64), "position", False),
    ((2, 3, 5, 7), "position", False), ((2, 3, 5, 7), "channel", False), ((5, 16, 4, 4), "position", False),
    ((2, 3, 5, 7), "position", True), ((3, 8, 6, 6), "channel", True), ((9, 33, 31, 29), "position", True)])
def test_mask_rows_equals_the_cpu_kernel_bit_for_bit(dtype, shape, unit, channels_last, generator):
    keys = [11, 11, 11, 2**63 + 3, 7, 7]
    x = random_bits((len(keys) * shape[0],) + shape[1:], dtype, generator)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    thresholds = [0, units // 3, units, units // 2, max(0, units - 1), -1]
    on_device = x.cuda()
    on_gpu = kernels.mask_rows(on_device, keys, thresholds, inner)
    assert on_gpu is on_device                                     # masked in place
    on_cpu = kernels.mask_rows(x.clone(), keys, thresholds, inner)
    assert torch.equal(bits(on_gpu.cpu()), bits(on_cpu))
    assert torch.equal(bits(on_cpu), bits(reference.mask_rows(x, keys, thresholds, inner)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_mask_rows_handles_unaligned_rows(dtype, generator):
    """Rows one element into their device storage take the scalar kernel."""
    storage = random_bits((2 * 3 * 64 + 1,), dtype, generator)
    x = storage.cuda()[1:].view(6, 64)
    assert x.data_ptr() % 16 != 0
    out = kernels.mask_rows(x, [5, 9], [10, 40], 1)
    assert torch.equal(bits(out.cpu()), bits(reference.mask_rows(storage[1:].view(6, 64), [5, 9], [10, 40], 1)))


def gpu_normals(key, examples, elements, first_example=0, backend=None):
    """normal(key, first_example + b, e) as a GPU computes it: the noise of a float64 zero with scale 1
    and unit standard deviation 1 is the normal itself."""
    zeros = torch.zeros(examples, elements, dtype=torch.float64, device="cuda")
    ones = torch.ones(elements, dtype=torch.float64, device="cuda")
    return kernels.expand_noise(zeros, [key], [1.0], ones, 1, first_example, backend=backend).cpu().numpy()


@pytest.mark.parametrize("first_example", [0, 2**40 - 100])
def test_gpu_normals_are_within_2_to_the_minus_49_of_the_reference(first_example):
    """libdevice's log and cos are not the C library's (csrc/noise.h): the GPU's normals agree with
    the NumPy reference and the CPU kernel to a relative 2^-49, and most of them exactly."""
    for key in (0, 2**64 - 1, 0x243F6A8885A308D3):
        got = gpu_normals(key, 500, 1000, first_example)
        expected = reference.normal(key, first_example + np.arange(500)[:, None], np.arange(1000)[None, :])
        cpu = kernels.expand_noise(torch.zeros(500, 1000, dtype=torch.float64), [key], [1.0],
                                   torch.ones(1000, dtype=torch.float64), 1, first_example).numpy()
        for other in (expected, cpu):
            assert (np.abs(got - other) <= 2.0**-49 * np.abs(other)).all()
            assert (got == other).mean() > 0.9


def noise_inputs(shape, unit, dtype, channels_last, generator):
    x = torch.randn(shape, generator=generator).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    unit_std = torch.rand(units, generator=generator, dtype=torch.float64) + 0.25
    unit_std[0] = 0.0
    return x, inner, [11, 11, 2**63 + 3, 7, 7], [0.0, 0.1, 1.0, 3.0, 0.0], unit_std


def check_noisy_copies(on_gpu, on_cpu, source, scales):
    """Copies of scale 0 bit for bit; the rest within the tolerance of csrc/noise.h."""
    batch = source.shape[0] // len(scales)
    for k, scale in enumerate(scales):
        if scale == 0:
            assert torch.equal(bits(on_gpu[k * batch:(k + 1) * batch].contiguous()),
                               bits(source[k * batch:(k + 1) * batch].contiguous()))
    assert kernels.noise_close(on_gpu, on_cpu, source).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, unit, channels_last", [
    ((1, 5), "position", False), ((3, 37), "position", False), ((2, 3, 5, 7), "position", False),
    ((2, 3, 5, 7), "channel", False), ((2, 3, 5, 7), "position", True), ((3, 8, 6, 6), "channel", True),
    ((9, 33, 31, 29), "position", True)])
def test_noise_agrees_with_the_cpu_kernel_within_the_tolerance(dtype, shape, unit, channels_last, generator):
    x, inner, keys, scales, unit_std = noise_inputs(shape, unit, dtype, channels_last, generator)
    first = 2**33 + 1
    on_cpu = kernels.expand_noise(x, keys, scales, unit_std, inner, first)
    on_gpu = kernels.expand_noise(x.cuda(), keys, scales, unit_std.cuda(), inner, first)
    assert on_gpu.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    copies = torch.cat([x] * len(keys))
    check_noisy_copies(on_gpu.cpu(), on_cpu, copies, scales)
    # In place, on the copies stacked on the device.
    on_device = copies.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    on_device = on_device.cuda()
    in_place = kernels.noise_rows(on_device, keys, scales, unit_std.cuda(), inner, first)
    assert in_place is on_device
    check_noisy_copies(in_place.cpu(), on_cpu, copies, scales)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masks_, batch, classes", [(1, 1, 1), (5, 7, 11), (3, 33, 1000), (2, 5, 37)])
def test_label_agreement_equals_the_cpu_kernel(dtype, masks_, batch, classes, generator):
    logits = torch.randint(-3, 4, (masks_ * batch, classes), generator=generator).to(dtype)   # many ties
    logits[torch.rand(logits.shape, generator=generator) < 0.01] = float("nan")
    base = torch.randint(0, classes, (batch,), generator=generator)
    base[: batch // 2] = logits[: batch // 2].argmax(dim=1)
    expected = kernels.label_agreement(logits, base, masks_)
    assert torch.equal(kernels.label_agreement(logits.cuda(), base.cuda(), masks_).cpu(), expected)
    assert torch.equal(expected, reference.label_agreement(logits, base, masks_))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, channels_last", [((1, 1), False), ((9, 1), False), ((300, 65), False),
                                                  ((6, 3, 5, 7), False), ((6, 3, 5, 7), True),
                                                  ((16, 70, 9, 9), False), ((16, 70, 9, 9), True)])
def test_covariance_equals_the_float64_reference(dtype, shape, channels_last, generator):
    channels = shape[1]
    state_gpu = [torch.zeros(1, dtype=torch.float64, device="cuda"),
                 torch.zeros(channels, dtype=torch.float64, device="cuda"),
                 torch.zeros(channels, channels, dtype=torch.float64, device="cuda")]
    state_cpu = [t.cpu() for t in state_gpu]
    samples = []
    for _ in range(3):
        activation = (torch.randn(shape, generator=generator) * 2 + 5).to(dtype)
        if channels_last:
            activation = activation.to(memory_format=torch.channels_last)
        total = activation[:, 0].numel()
        rows = torch.nonzero(torch.rand(total, generator=generator) < 0.8).flatten()
        kernels.covariance_accumulate(activation.cuda(), rows.cuda(), *state_gpu)
        kernels.covariance_accumulate(activation, rows, *state_cpu)
        samples.append(reference.gather_rows(activation.double(), rows).numpy())
    samples = np.concatenate(samples)
    centred = samples - samples.mean(axis=0)
    assert state_gpu[0].item() == len(samples)
    np.testing.assert_allclose(state_gpu[1].cpu().numpy(), samples.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state_gpu[2].cpu().numpy(), centred.T @ centred, rtol=1e-10,
                               atol=1e-9 * len(samples))
    for gpu_t, cpu_t in zip(state_gpu, state_cpu):
        torch.testing.assert_close(gpu_t.cpu(), cpu_t, rtol=1e-11, atol=1e-9)


def test_low_precision_covariance_error_is_at_most_twice_the_torch_composition(generator):
    """flash-attention's rule: against float64, the kernel's error at most 2x that of the
    PyTorch composition at the same precision (here bfloat16 activations)."""
    x = (torch.randn(64, 96, 14, 14, generator=generator) + 3).to(torch.bfloat16).cuda()
    rows = torch.arange(64 * 196, device="cuda")
    exact = reference.gather_rows(x.double(), rows)
    exact = (exact - exact.mean(0)).T @ (exact - exact.mean(0))
    low = reference.gather_rows(x, rows)                               # the composition, in bf16
    composed = ((low - low.mean(0)).T @ (low - low.mean(0))).double()
    state = [torch.zeros(1, dtype=torch.float64, device="cuda"), torch.zeros(96, dtype=torch.float64, device="cuda"),
             torch.zeros(96, 96, dtype=torch.float64, device="cuda")]
    kernels.covariance_accumulate(x, rows, *state)
    kernel_error = (state[2] - exact).abs().max().item()
    composed_error = (composed - exact).abs().max().item()
    assert kernel_error <= 2 * composed_error


@pytest.mark.parametrize("unit, channels_last", [("position", False), ("channel", False), ("position", True)])
def test_analysis_on_the_gpu_gives_the_cpu_result(unit, channels_last, generator):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(5 * 6 * 6, 4)).double()
    x = torch.randn(23, 3, 6, 6, generator=generator, dtype=torch.float64)
    cpu = fu_fast.analyze(model, x, layers=["1"], repeats=2, unit=unit, batch_size=7)
    on_gpu = fu_fast.analyze(model.cuda(), x, layers=["1"], repeats=2, unit=unit, device="cuda",
                             channels_last=channels_last, batch_size=10)
    assert on_gpu.layers["1"].curves == cpu.layers["1"].curves
    assert on_gpu.layers["1"].redundant_units == cpu.layers["1"].redundant_units
    assert on_gpu.layers["1"].mean_abs_r == pytest.approx(cpu.layers["1"].mean_abs_r, rel=1e-9)
    assert on_gpu.build["backend"] == "cuda" and on_gpu.build["kernels"] == kernels.gpu_backend()


def gpu_backends():
    """The CUDA kernel backends (compiled, cupy) that can run on this GPU, to be forced in turn."""
    names = ["native"] if kernels.cuda_kernels_compiled() and kernels.gpu_backend() == "native" else []
    return names + (["cupy"] if cupy_kernels.available() else [])


@pytest.mark.parametrize("shape", [(4, 8, 4, 4), (4, 6, 5, 5)])     # rows of 512 bytes (16-byte path), 600 bytes
def test_every_gpu_backend_gives_the_cpu_bits(shape, generator):
    """The compiled and the cupy kernels agree with the CPU kernels bit for bit (ranks, both
    expansion and in-place masking paths, agreement), the keyed noise within its tolerance and the
    covariance to rounding, subnormal inputs included."""
    backends = gpu_backends()
    if len(backends) < 1:
        pytest.skip("no CUDA kernels (compiled or cupy) to compare")
    x = torch.randn(shape, generator=generator)
    subnormals = torch.tensor([1e-45, 3e-39, -1e-40, 1e-38]).repeat(shape[2] * shape[3])
    x[0, 0] = subnormals[: shape[2] * shape[3]].view(shape[2:])
    keys, thresholds = [3, 3, 2**63 + 1], [10, 75, x[0].numel()]
    logits = torch.tensor([[1e-45, 2e-45, 0.0], [0.0, -1e-45, -0.0], [float("nan"), 1.0, float("nan")]] * 2)
    base = torch.tensor([1, 0])
    rows = torch.arange(0, shape[0] * shape[2] * shape[3], 3)
    cpu_state = [torch.zeros(n, dtype=torch.float64) for n in (1, shape[1], shape[1] ** 2)]
    kernels.covariance_accumulate(x, rows, cpu_state[0], cpu_state[1], cpu_state[2].view(shape[1], -1))
    for backend in backends:
        assert torch.equal(kernels.permutation_ranks(keys[2], 4097, "cuda", backend=backend).cpu(),
                           kernels.permutation_ranks(keys[2], 4097))
        assert torch.equal(kernels.expand_masked(x.cuda(), keys, thresholds, 1, backend=backend).cpu(),
                           kernels.expand_masked(x, keys, thresholds, 1))
        copies = x.repeat(len(keys), 1, 1, 1)
        assert torch.equal(bits(kernels.mask_rows(copies.cuda(), keys, thresholds, 1, backend=backend).cpu()),
                           bits(kernels.mask_rows(copies.clone(), keys, thresholds, 1)))
        assert torch.equal(kernels.label_agreement(logits.cuda(), base.cuda(), 3, backend=backend).cpu(),
                           kernels.label_agreement(logits, base, 3))
        # Keyed noise within the tolerance of csrc/noise.h (the copy of scale 0 bit for bit).
        unit_std = torch.rand(x[0].numel(), generator=generator, dtype=torch.float64) + 0.5
        scales, copies = [0.0, 1.0, 2.0], x.repeat(len(keys), 1, 1, 1)
        noisy = kernels.expand_noise(x.cuda(), keys, scales, unit_std.cuda(), 1, 3, backend=backend).cpu()
        check_noisy_copies(noisy, kernels.expand_noise(x, keys, scales, unit_std, 1, 3), copies, scales)
        in_place = kernels.noise_rows(copies.cuda(), keys, scales, unit_std.cuda(), 1, 3, backend=backend)
        check_noisy_copies(in_place.cpu(), noisy, copies, scales)
        state = [t.cuda() * 0 for t in cpu_state]
        kernels.covariance_accumulate(x.cuda(), rows.cuda(), state[0], state[1], state[2].view(shape[1], -1),
                                      backend=backend)
        for got, expected in zip(state, cpu_state):
            torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
