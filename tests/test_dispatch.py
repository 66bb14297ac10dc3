"""The GPU path without a GPU: the choice of the GPU backend per device (compiled kernels,
cupy, PyTorch references; known-answer launches; fallback with one warning line), kernel
failures named as such, and the CUDA sources as cupy compiles them at run time (NVRTC: headers
by name, flush-to-zero, the cache key)."""

import re
import types
import warnings

import pytest
import torch

import fu_fast
from fu_fast import cupy_kernels, kernels


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
    with pytest.raises(fu_fast.FuFastError, match=r"^the masked pass at layer '1': the model returned 5 rows of logits "
                                                  r"for \d+ copies of 5 examples; expected \d+ \(the part after "
                                                  r"the layer must keep examples apart\)$"):
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
    before = {name: cupy_kernels.program_text(name) for name in ("ablation_cuda.cu", "noise_cuda.cu",
                                                                 "covariance_cuda.cu")}
    assert before["ablation_cuda.cu"].endswith((tmp_path / "csrc/cuda/ablation_cuda.cu").read_text())
    for header in ("common.h", "permutation.h", "ablation.h", "noise.h", "covariance.h"):
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
    with pytest.raises(ValueError, match="^mask_rows_cuda: element size must be 2, 4 or 8 bytes"):
        jit.mask_rows(16, 1, 4, 1, 4, 1, False, 3, 16, 16, 1, stream=0)
    with pytest.raises(ValueError, match="^mask_rows_cuda: at most 65535 masks"):
        jit.mask_rows(16, 1, 4, 1, 4, 1, False, 4, 16, 16, 65536, stream=0)
    with pytest.raises(ValueError, match="^expand_noise_cuda: at most 65535 copies per call$"):
        jit.expand_noise(16, 16, 1, 4, 1, 4, 1, False, 0, 16, 16, 16, 0, 65536, stream=0)
    with pytest.raises(ValueError, match="^noise_rows_cuda: at most 65535 copies per call$"):
        jit.noise_rows(16, 1, 4, 1, 4, 1, False, 0, 16, 16, 16, 0, 65536, stream=0)
    with pytest.raises(ValueError, match="^unknown dtype code$"):
        jit.noise_rows(16, 1, 4, 1, 4, 1, False, 4, 16, 16, 16, 0, 1, stream=0)
    with pytest.raises(ValueError, match="too many channels"):
        jit.covariance_accumulate(16, 0, 1, 32 * 65536, 1, 1, 1, 0, 16, 1, 16, 16, 16, workspace=16, stream=0)


def nvrtc_ptx(code: bytes, program_name: str, options: tuple[str, ...]) -> bytes:
    """What cupy's RawModule does on a GPU machine, done here with NVRTC directly: the PTX of a
    program, or a test failure showing NVRTC's log."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="NVRTC's Python bindings (cuda-bindings)")
    _, program = nvrtc.nvrtcCreateProgram(code, program_name.encode(), 0, [], [])
    encoded = [o.encode() for o in options]
    (result,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
    # NVRTC writes into the buffers it is given: they must be mutable (a bytes object such as
    # b" " * 1 is an interned singleton, and overwriting it corrupts the interpreter).
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = bytearray(size)
    nvrtc.nvrtcGetProgramLog(program, log)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, bytes(log).decode()
    _, size = nvrtc.nvrtcGetPTXSize(program)
    ptx = bytearray(size)
    nvrtc.nvrtcGetPTX(program, ptx)
    return bytes(ptx)


@pytest.mark.parametrize("source, kernels_expected", [
    ("ablation_cuda.cu", ["fu_permutation_ranks", "fu_expand_masked_vec16", "fu_expand_masked_scalar",
                          "fu_mask_rows_vec16", "fu_mask_rows_scalar", "fu_label_agreement"]),
    ("noise_cuda.cu", ["fu_expand_noise", "fu_noise_rows"]),
    ("covariance_cuda.cu", ["fu_covariance_batch_mean", "fu_covariance_cross", "fu_covariance_merge_comoment",
                            "fu_covariance_merge_mean"])])
def test_cuda_sources_compile_at_run_time_with_nvrtc(source, kernels_expected):
    """The .cu file compiles with the options fu_fast.cupy_kernels passes and defines every kernel
    it launches."""
    ptx = nvrtc_ptx(cupy_kernels.program_text(source).encode(), source, cupy_kernels.compile_options("compute_80"))
    assert sorted(re.findall(rb"\.entry (\w+)", ptx)) == sorted(k.encode() for k in kernels_expected)


@pytest.mark.parametrize("source", ["ablation_cuda.cu", "covariance_cuda.cu"])
def test_kernels_keep_subnormals_when_compiled_with_flush_to_zero(source, tmp_path):
    """cupy appends -ftz=true to every run-time compilation (after the caller's options, so it
    cannot be undone): the kernels must hold no single-precision instruction that it would turn
    into one flushing subnormals to zero, or the cupy path would differ from the CPU's bits.
    Compiled under a program name in a directory whose parent holds a poisoned ablation.h,
    covariance.h and common.h, as a stray file in the system's temporary directory would be."""
    for header in ("ablation.h", "covariance.h", "common.h", "permutation.h"):
        (tmp_path / header).write_text('#error "a stray header was included"\n')
    (tmp_path / "program").mkdir()
    ptx = nvrtc_ptx(cupy_kernels.program_text(source).encode(), str(tmp_path / "program" / "kern.cu"),
                    cupy_kernels.compile_options("compute_90") + ("-ftz=true",))
    assert not re.findall(rb"\S*\.ftz\S*", ptx)
    assert b".f32" not in ptx


def test_noise_kernels_compute_the_same_when_compiled_with_flush_to_zero():
    """The noise kernels compute in double, but libdevice's log holds one single-precision
    instruction: on its special-case path (zero, negative, infinite or NaN input) it compares the
    input's high word, as a float, with zero to tell log(0) = -inf from a NaN. cupy's -ftz=true
    turns that comparison into one that also takes a subnormal float as zero (a negative double
    below 2^-1015 would then give -inf), and changes nothing else. u1 lies in [2^-53, 1] and never
    takes that path, so the cupy kernels compute what the compiled ones do."""
    options = cupy_kernels.compile_options("compute_90")
    plain, flushing = (nvrtc_ptx(cupy_kernels.program_text("noise_cuda.cu").encode(), "noise_cuda.cu", options + extra)
                       .decode().splitlines() for extra in ((), ("-ftz=true",)))
    assert len(plain) == len(flushing)
    changed = [(a, b) for a, b in zip(plain, flushing) if a != b]
    assert changed and all(re.fullmatch(r"\s*setp\.eq\.f32\s+%p\d+, %f\d+, 0f00000000;", a)
                           and b == a.replace("setp.eq.f32", "setp.eq.ftz.f32") for a, b in changed)
    # The comparison is the only single-precision instruction (the one other .ftz instruction, an
    # approximate double reciprocal, is .ftz under every option).
    single = {line.split()[0] for line in flushing if ".f32" in line and not line.lstrip().startswith(".reg")}
    assert single == {"setp.eq.ftz.f32"}
    assert {line.split()[0] for line in plain if ".ftz" in line} == {"rcp.approx.ftz.f64"}


class FakeCupy:
    """Just enough of cupy to see on which device the kernels are loaded: a RawModule binds its
    functions to the device current when they are fetched."""

    def __init__(self):
        self.current, self.fetched, self.codes = 0, [], []
        fake = self

        class Device:
            def __init__(self, index):
                self.index = index

            def __enter__(self):
                self.previous, fake.current = fake.current, self.index

            def __exit__(self, *exc):
                fake.current = self.previous

        class RawModule:
            def __init__(self, code, options):
                fake.codes.append((code, options))

            def get_function(self, name):
                fake.fetched.append((name, fake.current))
                return name

        self.cuda = types.SimpleNamespace(Device=Device)
        self.RawModule = RawModule


def test_cupy_kernels_are_loaded_on_the_device_they_run_on(monkeypatch):
    import sys

    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    cupy_kernels.load.cache_clear()
    try:
        on_one, on_zero = cupy_kernels.load(1), cupy_kernels.load(0)
        assert cupy_kernels.load(1) is on_one and on_one is not on_zero       # once per device
    finally:
        cupy_kernels.load.cache_clear()
    kernels_per_load = len(fake.fetched) // 2
    assert kernels_per_load == 12 and len({name for name, _ in fake.fetched}) == kernels_per_load
    assert {device for _, device in fake.fetched[:kernels_per_load]} == {1}
    assert {device for _, device in fake.fetched[kernels_per_load:]} == {0}
    assert fake.current == 0
    # The program text holds the digest of the headers (cupy's cache key), and headers are found
    # through -I only.
    code, options = fake.codes[0]
    assert code.startswith("// fu-fast headers sha256 ") and options == cupy_kernels.compile_options()
