"""CUDA kernels against the CPU kernels and the references (need a GPU: marked `cuda`,
skipped where none is usable), and the CPU-side selection logic (always run)."""

import numpy as np
import pytest
import torch

import fu_fast
from fu_fast import kernels, reference

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.cuda_kernels_compiled()),
                         reason="needs a CUDA GPU and a build with the CUDA kernels")


def test_cuda_kernels_are_reported_as_compiled_exactly_when_built_in():
    assert kernels.cuda_kernels_compiled() == ("cuda" in fu_fast.build_info()["backends"])
    assert kernels._native(torch.zeros(1)) and not kernels._native(torch.zeros(1, device="meta"))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4097])
def test_ranks_are_bit_identical_to_the_cpu(n):
    for key in (0, 1, 2**63 + 5, 2**64 - 1):
        np.testing.assert_array_equal(kernels.permutation_ranks(key, n, "cuda").cpu().numpy(),
                                      kernels.permutation_ranks(key, n).numpy())


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, inner", [((1, 5), 1), ((3, 37), 1), ((2, 3, 5, 7), 1), ((2, 3, 5, 7), 35)])
def test_expand_masked_equals_the_cpu_kernel(dtype, shape, inner, generator):
    x = torch.randn(shape, generator=generator).to(dtype)
    units = x[0].numel() // inner
    keys = [11, 11, 11, 2**63 + 3]
    thresholds = [0, units // 3, units, units // 2]
    on_gpu = kernels.expand_masked(x.cuda(), keys, thresholds, inner).cpu()
    assert torch.equal(on_gpu, kernels.expand_masked(x, keys, thresholds, inner))
    assert torch.equal(on_gpu, reference.expand_masked(x, keys, thresholds, inner))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_label_agreement_equals_the_cpu_kernel(dtype, generator):
    masks, batch, classes = 5, 7, 11
    logits = torch.randn(masks * batch, classes, generator=generator).to(dtype)
    logits[3, 4] = float("nan")
    logits[9, :] = 1.0                                   # ties: the first index wins
    base = torch.randint(0, classes, (batch,), generator=generator)
    base[3 % batch] = 4
    expected = kernels.label_agreement(logits, base, masks)
    assert torch.equal(kernels.label_agreement(logits.cuda(), base.cuda(), masks).cpu(), expected)
    assert torch.equal(expected, reference.label_agreement(logits, base, masks))


@pytest.mark.cuda
@gpu
def test_analysis_on_the_gpu_gives_the_cpu_curves(generator):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(5 * 6 * 6, 4)).double()
    x = torch.randn(23, 3, 6, 6, generator=generator, dtype=torch.float64)
    cpu = fu_fast.analyze(model, x, layers=["1"], repeats=2)
    gpu_result = fu_fast.analyze(model.cuda(), x, layers=["1"], repeats=2, device="cuda")
    assert gpu_result.layers["1"].curves == cpu.layers["1"].curves
    assert gpu_result.layers["1"].redundant_units == cpu.layers["1"].redundant_units
    assert gpu_result.build["backend"] == "cuda"
