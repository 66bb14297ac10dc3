"""The CUDA kernels.

Always run (no GPU needed): the choice of the GPU backend (compiled kernels, cupy, or the
PyTorch references) and the run-time compilation of the .cu sources by NVRTC, which is what
the cupy path does on a machine with a GPU. Marked `cuda` (skipped without a usable GPU):
every kernel against the CPU kernel and the float64 references on fresh random inputs,
odd sizes, every dtype and memory layout, and the whole analysis against the CPU's.
"""

import re
import types
import warnings

import numpy as np
import pytest
import torch

import fu_fast
from fu_fast import cupy_kernels, kernels, reference

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.gpu_backend() != "torch"),
                         reason="needs a CUDA GPU and CUDA kernels (compiled in, or cupy)")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


class FakeCompiledModule:
    """fu_fast._C as a build with CUDA kernels reports itself on some machine."""

    def __init__(self, runtime=13000, driver=13000, devices=1, error=""):
        self.status = {"cuda_runtime_version": runtime, "cuda_driver_version": driver, "cuda_devices": devices,
                       "cuda_error": error, "version": fu_fast.__version__}

    cuda_compiled = True

    def build_info(self):
        return dict(self.status)


@pytest.fixture
def fresh_choices(monkeypatch):
    """A process that has chosen no GPU backend yet; known-answer launches pass unless a test
    says otherwise (there is no GPU to run them on here)."""
    monkeypatch.setattr(kernels, "_choices", {})
    launched = []
    monkeypatch.setattr(kernels, "_known_answer", lambda backend, device: launched.append((backend, str(device))))
    monkeypatch.setattr(kernels, "_C", FakeCompiledModule())
    monkeypatch.setattr(cupy_kernels, "unavailable_reason", lambda: None)
    return launched


def test_gpu_backend_prefers_compiled_kernels_then_cupy_then_torch(fresh_choices, monkeypatch, recwarn):
    assert kernels.gpu_backend("cuda:0") == "native"
    assert fresh_choices == [("native", "cuda:0")] and not recwarn.list      # nothing skipped, nothing said
    monkeypatch.setattr(kernels, "_choices", {})
    monkeypatch.setattr(kernels, "_C", types.SimpleNamespace())                # a _C built for the CPU only
    with pytest.warns(kernels.BackendWarning, match=r"^cuda:0: this build of fu_fast has no compiled CUDA "
                                                    r"kernels: using the cupy kernels$"):
        assert kernels.gpu_backend("cuda:0") == "cupy"
    monkeypatch.setattr(kernels, "_choices", {})
    monkeypatch.setattr(cupy_kernels, "unavailable_reason", lambda: "cupy is not installed")
    with pytest.warns(kernels.BackendWarning, match="no compiled CUDA kernels; cupy is not installed: using the "
                                                    "PyTorch reference kernels"):
        assert kernels.gpu_backend("cuda:0") == "torch"
    # CPU tensors never go to a GPU backend.
    assert kernels.kernels_for(torch.device("cpu")) == "cpu"


def test_a_driver_older_than_the_static_runtime_falls_back_with_one_line(fresh_choices, monkeypatch):
    """The compiled kernels of a wheel built against CUDA 13.0 cannot run where the driver
    supports only 12.4: the cupy kernels are used, and one warning line says why."""
    monkeypatch.setattr(kernels, "_C", FakeCompiledModule(runtime=13000, driver=12040, devices=0,
                                                          error="CUDA driver version is insufficient for CUDA "
                                                                "runtime version"))
    with pytest.warns(kernels.BackendWarning) as caught:
        choice = kernels.gpu_backend_choice("cuda:0")
    assert [str(w.message) for w in caught] == [
        "cuda:0: the compiled CUDA kernels need a driver for CUDA 13.0; this driver supports 12.4: "
        "using the cupy kernels"]
    assert choice.backend == "cupy" and fresh_choices == [("cupy", "cuda:0")]
    assert dict(choice.skipped) == {"native": "the compiled CUDA kernels need a driver for CUDA 13.0; "
                                              "this driver supports 12.4"}


def test_a_backend_that_fails_its_known_answer_launch_is_passed_over(fresh_choices, monkeypatch):
    def known_answer(backend, device):
        fresh_choices.append((backend, str(device)))
        if backend == "native":
            raise RuntimeError("expand_masked_cuda: an illegal memory access was encountered\nmore detail")
        if backend == "cupy" and device.index == 1:
            raise kernels.KernelError("ranks differs from the CPU kernel")

    monkeypatch.setattr(kernels, "_known_answer", known_answer)
    with pytest.warns(kernels.BackendWarning, match=r"^cuda:0: the compiled CUDA kernels failed their self-test "
                                                    r"\(RuntimeError: expand_masked_cuda: an illegal memory access "
                                                    r"was encountered\): using the cupy kernels$"):
        assert kernels.gpu_backend("cuda:0") == "cupy"
    with pytest.warns(kernels.BackendWarning, match="cupy kernels failed their self-test .KernelError: ranks "
                                                    "differs from the CPU kernel.: using the PyTorch reference"):
        assert kernels.gpu_backend("cuda:1") == "torch"
    # Chosen once per device: later calls neither launch nor warn again.
    launched = list(fresh_choices)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (kernels.gpu_backend("cuda:0"), kernels.gpu_backend("cuda:1")) == ("cupy", "torch")
    assert fresh_choices == launched


def test_cupy_backend_needs_cupy_and_a_gpu(monkeypatch):
    monkeypatch.setattr(cupy_kernels.importlib.util, "find_spec", lambda name: None)
    assert not cupy_kernels.available()
    assert "cupy is not installed" in cupy_kernels.unavailable_reason()
    monkeypatch.setattr(cupy_kernels.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not cupy_kernels.available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cupy_kernels.available()     # the sources are found beside the package


def test_build_info_shows_the_choice_per_gpu(fresh_choices, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(kernels, "_C", types.SimpleNamespace(build_info=fu_fast._C.build_info))
    with pytest.warns(kernels.BackendWarning):
        info = fu_fast.build_info()
    assert info["gpu_usable"]
    assert info["gpu_kernels"] == {
        f"cuda:{i}": {"backend": "cupy", "skipped": {"native": "this build of fu_fast has no compiled CUDA kernels"}}
        for i in range(2)}


def test_a_failed_kernel_launch_is_named_as_such_not_as_a_model_error(monkeypatch):
    """A kernel that fails inside the masked pass's hook is reported as a kernel failure at that
    layer, never as the model's inability to take a larger batch."""
    def failing_expansion(*args, **kwargs):
        raise kernels.KernelError("the GPU kernel expand_masked_cuda failed on cuda:0: RuntimeError: boom")

    monkeypatch.setattr(kernels, "expand_masked", failing_expansion)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    with pytest.raises(kernels.KernelError, match=r"^the masked pass at layer '1': the GPU kernel expand_masked_cuda "
                                                  r"failed on cuda:0: RuntimeError: boom$"):
        fu_fast.analyze(model, torch.randn(8, 4), layers=["1"])


class FirstRows(torch.nn.Module):
    """A model suffix that keeps a fixed number of rows, whatever the batch: it returns fewer
    rows of logits than the masked copies it was given."""

    def forward(self, x):
        return x[:5]


def test_label_agreement_refuses_logits_with_another_row_count():
    with pytest.raises(fu_fast.FuFastError, match="returned 5 rows of logits for 3 masked copies of 4 examples"):
        kernels.label_agreement(torch.randn(5, 3), torch.zeros(4, dtype=torch.int64), 3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3), FirstRows())
    with pytest.raises(fu_fast.FuFastError, match=r"^the masked pass at layer '1': the model returned 5 rows of "
                                                  r"logits for \d+ masked copies of 5 examples; expected \d+$"):
        fu_fast.analyze(model, torch.randn(5, 4), layers=["1"])


def test_cuda_sources_include_headers_by_name_only():
    """NVRTC resolves a quoted include beside the program's name first, and cupy names its program
    inside a temporary directory: a relative path such as "../ablation.h" would pick up a stray
    file of that name in the system's temporary directory."""
    for source in (cupy_kernels.source_dir() / "cuda").glob("*"):
        for include in re.findall(r'#include\s+"([^"]+)"', source.read_text()):
            assert "/" not in include, f"{source.name} includes {include}"


def test_cupy_cache_key_holds_every_header(monkeypatch, tmp_path):
    """cupy caches compiled kernels by the program text: a changed header must change the text."""
    import shutil

    shutil.copytree(cupy_kernels.source_dir(), tmp_path / "csrc")
    monkeypatch.setattr(cupy_kernels, "source_dir", lambda: tmp_path / "csrc")
    before = {name: cupy_kernels.program_text(name) for name in ("ablation_cuda.cu", "covariance_cuda.cu")}
    assert before["ablation_cuda.cu"].endswith((tmp_path / "csrc/cuda/ablation_cuda.cu").read_text())
    for header in ("common.h", "permutation.h", "ablation.h", "covariance.h"):
        path = tmp_path / "csrc" / header
        original = path.read_text()
        path.write_text(original + "\n// changed\n")
        for name, text in before.items():
            assert cupy_kernels.program_text(name) != text, (header, name)
        path.write_text(original)
    assert {name: cupy_kernels.program_text(name) for name in before} == before


def test_cupy_launcher_checks_what_the_compiled_launcher_checks():
    jit = object.__new__(cupy_kernels.CupyKernels)     # its checks come before any cupy call
    with pytest.raises(ValueError, match="element size must be 2, 4 or 8 bytes"):
        jit.expand_masked(16, 16, 1, 4, 1, 4, 1, False, 3, 16, 16, 1, stream=0)
    with pytest.raises(ValueError, match="at most 65535 masks"):
        jit.expand_masked(16, 16, 1, 4, 1, 4, 1, False, 4, 16, 16, 65536, stream=0)
    with pytest.raises(ValueError, match="too many channels"):
        jit.covariance_accumulate(16, 0, 1, 32 * 65536, 1, 1, 1, 0, 16, 1, 16, 16, 16, workspace=16, stream=0)


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


@pytest.mark.parametrize("source", ["ablation_cuda.cu", "covariance_cuda.cu"])
def test_kernels_keep_subnormals_when_compiled_with_flush_to_zero(source, tmp_path):
    """cupy appends -ftz=true to every run-time compilation (after the caller's options, so it
    cannot be undone): the kernels must hold no single-precision instruction that it would turn
    into one flushing subnormals to zero, or the cupy path would differ from the CPU's bits.
    Compiled under a program name in a directory whose parent holds a poisoned ablation.h,
    covariance.h and common.h, as a stray file in the system's temporary directory would be."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="NVRTC's Python bindings (cuda-bindings)")
    for header in ("ablation.h", "covariance.h", "common.h", "permutation.h"):
        (tmp_path / header).write_text('#error "a stray header was included"\n')
    (tmp_path / "program").mkdir()
    code = cupy_kernels.program_text(source).encode()
    _, program = nvrtc.nvrtcCreateProgram(code, str(tmp_path / "program" / "kern.cu").encode(), 0, [], [])
    options = [o.encode() for o in cupy_kernels.compile_options("compute_90") + ("-ftz=true",)]
    (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = bytearray(size)
    nvrtc.nvrtcGetProgramLog(program, log)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, bytes(log).decode()
    _, size = nvrtc.nvrtcGetPTXSize(program)
    ptx = bytearray(size)
    nvrtc.nvrtcGetPTX(program, ptx)
    assert not re.findall(rb"\S*\.ftz\S*", bytes(ptx))
    assert b".f32" not in bytes(ptx)


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
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_expand_masked_handles_unaligned_rows(dtype, generator):
    """A view one element into its device storage (2, 4 or 8 bytes from 16-byte alignment)
    cannot take 16-byte accesses; made on the device, so no copy realigns it."""
    storage = torch.randn(3 * 64 + 1, generator=generator).to(dtype).cuda()
    x = storage[1:].view(3, 64)
    assert x.data_ptr() % 16 != 0
    out = kernels.expand_masked(x, [5, 9], [10, 40], 1)
    assert torch.equal(out.cpu(), reference.expand_masked(x.cpu(), [5, 9], [10, 40], 1))


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
    assert on_gpu.build["backend"] == "cuda" and on_gpu.build["kernels"] == kernels.gpu_backend()


def gpu_backends():
    """The CUDA kernel backends (compiled, cupy) that can run on this GPU, to be forced in turn."""
    names = ["native"] if kernels.cuda_kernels_compiled() and kernels.gpu_backend() == "native" else []
    return names + (["cupy"] if cupy_kernels.available() else [])


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("shape", [(4, 8, 4, 4), (4, 6, 5, 5)])     # rows of 512 bytes (16-byte path), 600 bytes
def test_every_gpu_backend_gives_the_cpu_bits(shape, generator):
    """The compiled and the cupy kernels agree with the CPU kernels bit for bit (ranks, both
    expansion paths, agreement) and the covariance to rounding, subnormal inputs included."""
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
        assert torch.equal(kernels.label_agreement(logits.cuda(), base.cuda(), 3, backend=backend).cpu(),
                           kernels.label_agreement(logits, base, 3))
        state = [t.cuda() * 0 for t in cpu_state]
        kernels.covariance_accumulate(x.cuda(), rows.cuda(), state[0], state[1], state[2].view(shape[1], -1),
                                      backend=backend)
        for got, expected in zip(state, cpu_state):
            torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
