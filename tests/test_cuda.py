"""The CUDA kernels.

Always run (no GPU needed): the choice of the GPU backend (compiled kernels, cupy, or the
PyTorch references) and the run-time compilation of the .cu sources by NVRTC, which is what
the cupy path does on a machine with a GPU. Marked `cuda` (skipped without a usable GPU):
every kernel against the CPU kernel and the float64 references on fresh random inputs,
odd sizes, every dtype and memory layout, and the whole analysis against the CPU's.
"""

import re
import types

import numpy as np
import pytest
import torch

import fu_fast
from fu_fast import cupy_kernels, kernels, reference

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.gpu_backend() != "torch"),
                         reason="needs a CUDA GPU and CUDA kernels (compiled in, or cupy)")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def test_gpu_backend_prefers_compiled_kernels_then_cupy_then_torch(monkeypatch):
    assert kernels.cuda_kernels_compiled() == ("cuda" in fu_fast.build_info()["backends"])
    without_cuda = types.SimpleNamespace(permutation_ranks=None)      # a _C built for the CPU only
    for compiled, cupy_ok, expected in [(True, True, "native"), (True, False, "native"),
                                        (False, True, "cupy"), (False, False, "torch")]:
        monkeypatch.setattr(kernels, "_C", fu_fast._C if compiled else without_cuda)
        monkeypatch.setattr(cupy_kernels, "available", lambda ok=cupy_ok: ok)
        if compiled and not kernels.cuda_kernels_compiled():
            continue    # this build has no CUDA kernels to prefer
        assert kernels.gpu_backend() == expected
    # CPU tensors never go to a GPU backend.
    assert kernels._cuda_kernels(torch.zeros(1)) is None


def test_cupy_backend_needs_cupy_and_a_gpu(monkeypatch):
    monkeypatch.setattr(cupy_kernels.importlib.util, "find_spec", lambda name: None)
    assert not cupy_kernels.available()
    monkeypatch.setattr(cupy_kernels.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not cupy_kernels.available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cupy_kernels.available()     # the sources are found beside the package


@pytest.mark.parametrize("source, kernels_expected", [
    ("ablation_cuda.cu", ["fu_permutation_ranks", "fu_expand_masked_vec16", "fu_expand_masked_scalar",
                          "fu_label_agreement"]),
    ("covariance_cuda.cu", ["fu_covariance_batch_mean", "fu_covariance_cross", "fu_covariance_merge_comoment",
                            "fu_covariance_merge_mean"])])
def test_cuda_sources_compile_at_run_time_with_nvrtc(source, kernels_expected):
    """What cupy's RawModule does on a GPU machine, done here with NVRTC directly: the .cu file
    compiles with the options fu_fast.cupy_kernels passes and defines every kernel it launches."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="NVRTC's Python bindings (cuda-bindings)")
    code = (cupy_kernels.source_dir() / "cuda" / source).read_bytes()
    _, program = nvrtc.nvrtcCreateProgram(code, source.encode(), 0, [], [])
    options = [o.encode() for o in cupy_kernels.compile_options("compute_80")]
    (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    # NVRTC writes into the buffers it is given: they must be mutable (a bytes object such as
    # b" " * 1 is an interned singleton, and overwriting it corrupts the interpreter).
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = bytearray(size)
    nvrtc.nvrtcGetProgramLog(program, log)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, bytes(log).decode()
    _, size = nvrtc.nvrtcGetPTXSize(program)
    ptx = bytearray(size)
    nvrtc.nvrtcGetPTX(program, ptx)
    assert sorted(re.findall(rb"\.entry (\w+)", bytes(ptx))) == sorted(k.encode() for k in kernels_expected)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4097, 65_537])
def test_ranks_are_bit_identical_to_the_cpu(n):
    for key in (0, 1, 2**63 + 5, 2**64 - 1):
        np.testing.assert_array_equal(kernels.permutation_ranks(key, n, "cuda").cpu().numpy(),
                                      kernels.permutation_ranks(key, n).numpy())


@pytest.mark.cuda
@gpu
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


@pytest.mark.cuda
@gpu
def test_expand_masked_handles_unaligned_rows(generator):
    # A view that starts 4 bytes into its storage cannot take 16-byte accesses.
    storage = torch.randn(3 * 64 + 1, generator=generator)
    x = storage[1:].view(3, 64)
    out = kernels.expand_masked(x.cuda(), [5, 9], [10, 40], 1)
    assert torch.equal(out.cpu(), reference.expand_masked(x, [5, 9], [10, 40], 1))


@pytest.mark.cuda
@gpu
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


@pytest.mark.cuda
@gpu
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


@pytest.mark.cuda
@gpu
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


@pytest.mark.cuda
@gpu
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
    assert on_gpu.build["backend"] == "cuda"


@pytest.mark.cuda
@gpu
def test_cupy_kernels_equal_the_compiled_ones(generator):
    pytest.importorskip("cupy")
    if not kernels.cuda_kernels_compiled():
        pytest.skip("this build has no compiled CUDA kernels to compare with")
    jit, native = cupy_kernels.load(), fu_fast._C
    x = torch.randn(4, 6, 5, 5, generator=generator, device="cpu").cuda()
    keys = kernels.signed_keys([3, 3, 2**63 + 1]).cuda()
    thresholds = torch.tensor([10, 75, 150], device="cuda")
    outs = []
    for backend in (jit, native):
        out = torch.empty(3 * 4, 6, 5, 5, device="cuda")
        backend.expand_masked_cuda(x.data_ptr(), out.data_ptr(), 4, 150, 1, 6, 25, False, 4, keys.data_ptr(),
                                   thresholds.data_ptr(), 3, torch.cuda.current_stream().cuda_stream)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
