"""Checks that the kernels compute what their references compute on this machine: what
`fu-fast info --check` runs after an install on a GPU node.

On the CPU every kernel is compared with its plain reference (fu_fast.reference, float64 where
it matters). On each usable GPU the backend chosen for it (fu_fast.kernels) is compared with the
CPU kernels bit for bit (the covariance to rounding) and with the references, at sizes that take
every code path (16-byte and scalar expansion and in-place masking, rows not 16-byte aligned,
channels_last, fewer and more than 32 classes, several row slices of the covariance), and one
small analysis on the GPU is compared with the same analysis on the CPU. The keyed noise is
compared within the tolerance of csrc/noise.h (kernels.noise_close: backends' log and cos differ
by an ulp or two), and bit for bit where its scale or a unit's standard deviation is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from . import kernels, reference
from .kernels import as_bits, noise_differences

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# (shape, units are channels, channels_last): a linear output, an odd conv output in both
# memory formats and both unit kinds, rows of 16-byte multiples and rows that are not.
EXPANSION_CASES = (((64, 4099), False, False), ((5, 16, 4, 4), False, False), ((9, 33, 31, 29), False, False),
                   ((9, 33, 31, 29), True, False), ((9, 33, 31, 29), False, True), ((3, 8, 6, 6), True, True))
AGREEMENT_CASES = ((1, 1, 1), (5, 7, 11), (3, 33, 1000), (2, 5, 37))   # (masks, batch, classes)
COVARIANCE_CASES = (((9, 1), False), ((300, 65), False), ((2000, 3), False), ((16, 70, 9, 9), False),
                    ((16, 70, 9, 9), True))


@dataclass(frozen=True)
class Check:
    where: str      # "cpu" or "cuda:N"
    name: str
    passed: bool
    detail: str = ""

    def line(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        return f"{status}  {self.where:<7} {self.name}" + (f": {self.detail}" if self.detail else "")


class Mismatch(AssertionError):
    """A kernel's result differs from what it is compared with."""


def iter_checks() -> Iterator[Check]:
    """The CPU checks, then for every usable GPU the checks of its chosen backend, each yielded
    as soon as it is done."""
    yield from _cpu_checks()
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            yield from _gpu_checks(torch.device("cuda", index))


def no_gpu_reason() -> str | None:
    """Why no GPU is usable here, or None when one is."""
    if torch.cuda.is_available():
        return None
    compiled = kernels._C.build_info()
    why = "PyTorch sees no CUDA device"
    if not torch.backends.cuda.is_built():
        why = "this PyTorch was built without CUDA"
    return why + (f"; fu_fast's CUDA runtime says: {compiled['cuda_error']}" if compiled["cuda_error"] else "")


def _check(where: str, name: str, body: Callable[[], str | None]) -> Check:
    try:
        detail = body() or ""
    except Exception as e:  # a check reports every failure, kernels' own errors included
        return Check(where, name, False, f"{type(e).__name__}: {e}".splitlines()[0])
    return Check(where, name, True, detail)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


def _keys(count: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [0, 2**64 - 1] + [int(k) for k in rng.integers(0, 2**64, size=count - 2, dtype=np.uint64)]


def _expansion_inputs(generator):
    for (shape, by_channel, channels_last) in EXPANSION_CASES:
        for dtype in DTYPES:
            x = torch.randn(shape, generator=generator).to(dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            inner = shape[2] * shape[3] if by_channel else 1
            units = x[0].numel() // inner
            thresholds = [0, units, 1, units // 3, units // 2, max(0, units - 1)]
            yield x, _keys(len(thresholds), units), thresholds, inner


# Noise levels of the expansion checks: a copy that must keep its bits, small and large noise.
NOISE_SCALES = (0.0, 0.05, 4.0)


def _noise_inputs(x: torch.Tensor, keys: list[int], inner: int, generator) -> tuple:
    """(keys, scales, unit_std, first_example) for the noisy copies of an expansion case: the case's
    first keys, NOISE_SCALES, a standard deviation per unit with the first unit's 0 (a dead unit keeps
    its bits), and a first example past 2^32."""
    units = x[0].numel() // inner
    unit_std = torch.rand(units, generator=generator, dtype=torch.float64) * 2 + 0.1
    unit_std[0] = 0.0
    return keys[:len(NOISE_SCALES)], list(NOISE_SCALES), unit_std, 2**32 + 5


def _stacked_copies(x: torch.Tensor, count: int) -> torch.Tensor:
    """count copies of x stacked along the batch, in x's memory format: a batch expanded before the
    layer where mask_rows masks it."""
    channels_last = x.dim() == 4 and not x.is_contiguous()
    return torch.cat([x] * count).contiguous(memory_format=torch.channels_last if channels_last
                                             else torch.contiguous_format)


def _agreement_inputs(generator):
    for masks, batch, classes in AGREEMENT_CASES:
        for dtype in DTYPES:
            # Small integers make many ties; a few NaN and signed zeros test torch.argmax's order.
            logits = torch.randint(-3, 4, (masks * batch, classes + 3), generator=generator).to(dtype)
            logits[torch.rand(logits.shape, generator=generator) < 0.02] = float("nan")
            logits[torch.rand(logits.shape, generator=generator) < 0.05] = -0.0
            logits = logits[:, :classes]          # rows further apart than the class count
            base = torch.randint(0, classes, (batch,), generator=generator)
            base[: batch // 2] = logits[: batch // 2].argmax(dim=1)
            yield logits, base, masks


def _covariance_batches(generator):
    for shape, channels_last in COVARIANCE_CASES:
        for dtype in DTYPES:
            batches = []
            for _ in range(3):
                x = (torch.randn(shape, generator=generator) * 2 + 5).to(dtype)
                if channels_last:
                    x = x.to(memory_format=torch.channels_last)
                positions = x[:, 0].numel()
                batches.append((x, torch.nonzero(torch.rand(positions, generator=generator) < 0.8).flatten()))
            yield shape[1], batches


def _moments(channels: int, batches, device="cpu", backend=None) -> list[torch.Tensor]:
    state = [torch.zeros(n, dtype=torch.float64, device=device) for n in (1, channels, channels * channels)]
    for x, rows in batches:
        kernels.covariance_accumulate(x.to(device), rows.to(device), state[0], state[1],
                                      state[2].view(channels, channels), backend=backend)
    return [t.cpu() for t in state]


def _two_pass(batches) -> tuple[np.ndarray, np.ndarray]:
    samples = np.concatenate([reference.gather_rows(x.double(), rows).numpy() for x, rows in batches])
    centred = samples - samples.mean(axis=0)
    return samples.mean(axis=0), centred.T @ centred


def _close_to_two_pass(state, batches) -> None:
    mean, comoment = _two_pass(batches)
    _expect(state[0].item() == sum(rows.numel() for _, rows in batches), "sample count")
    scale = max(1.0, float(np.abs(comoment).max()))
    _expect(float(np.abs(state[1].numpy() - mean).max()) <= 1e-12 * max(1.0, float(np.abs(mean).max())), "mean")
    error = float(np.abs(state[2].numpy().reshape(comoment.shape) - comoment).max()) / scale
    _expect(error < 1e-10, f"co-moment relative error {error:.1e} against the two-pass float64 reference")


def _cpu_checks() -> Iterator[Check]:
    generator = torch.Generator().manual_seed(20261202)

    def ranks():
        for n in (1, 2, 7, 1000, 4097, 65_537):
            for key in _keys(3, n):
                _expect(np.array_equal(kernels.permutation_ranks(key, n).numpy(), reference.permutation_ranks(key, n)),
                        f"ranks of n={n}, key={key}")
        return "n = 1 to 65,537, 3 keys each"

    def expansion():
        for x, keys, thresholds, inner in _expansion_inputs(generator):
            _expect(torch.equal(kernels.expand_masked(x, keys, thresholds, inner),
                                reference.expand_masked(x.contiguous(), keys, thresholds, inner)),
                    f"{tuple(x.shape)} {x.dtype}")
            # The in-place twin on the batch expanded beforehand; its reference keeps exact bits.
            copies = _stacked_copies(x, len(keys))
            expected = reference.mask_rows(copies, keys, thresholds, inner)
            masked = kernels.mask_rows(copies, keys, thresholds, inner)
            _expect(masked is copies, f"in-place masking of {tuple(x.shape)} {x.dtype} made a copy")
            _expect(torch.equal(as_bits(masked), as_bits(expected)), f"in-place masking of {tuple(x.shape)} {x.dtype}")
            # Keyed noise against the float64 reference, and the in-place twin against the expansion.
            noise_keys, scales, unit_std, first = _noise_inputs(x, keys, inner, generator)
            noisy = kernels.expand_noise(x, noise_keys, scales, unit_std, inner, first)
            stacked = _stacked_copies(x, len(scales))
            why = noise_differences(noisy, reference.expand_noise(x, noise_keys, scales, unit_std, inner, first),
                                     stacked, scales)
            _expect(why is None, f"noise of {tuple(x.shape)} {x.dtype}: {why}")
            in_place = kernels.noise_rows(stacked, noise_keys, scales, unit_std, inner, first)
            _expect(in_place is stacked and torch.equal(as_bits(in_place.contiguous()), as_bits(noisy.contiguous())),
                    f"in-place noise of {tuple(x.shape)} {x.dtype}")
        return f"{len(EXPANSION_CASES)} layouts x {len(DTYPES)} dtypes, masked and noisy, expanded and in place"

    def agreement():
        for logits, base, masks in _agreement_inputs(generator):
            _expect(torch.equal(kernels.label_agreement(logits, base, masks),
                                reference.label_agreement(logits, base, masks)),
                    f"{tuple(logits.shape)} {logits.dtype}")
        return f"{len(AGREEMENT_CASES)} sizes x {len(DTYPES)} dtypes, NaN, ties, -0.0"

    def covariance():
        for channels, batches in _covariance_batches(generator):
            _close_to_two_pass(_moments(channels, batches), batches)
        return f"{len(COVARIANCE_CASES)} layouts x {len(DTYPES)} dtypes, 3 batches each"

    yield _check("cpu", "keyed permutation ranks vs reference", ranks)
    yield _check("cpu", "masked and noisy expansion, in place and not, vs reference", expansion)
    yield _check("cpu", "label agreement vs reference", agreement)
    yield _check("cpu", "streaming covariance vs two-pass float64", covariance)
    yield _check("cpu", "analysis (float64) vs the naive path", _analysis_against_naive)


def _gpu_checks(device: torch.device) -> Iterator[Check]:
    where = str(device)
    backend = kernels.gpu_backend_choice(device)
    yield Check(where, f"kernels: {kernels.BACKEND_NAMES[backend.backend]}", True,
                "; ".join(f"{name} passed over: {why}" for name, why in backend.skipped))
    generator = torch.Generator().manual_seed(20261203)

    def ranks():
        for n in (1, 2, 7, 1000, 4097, 65_537):
            for key in _keys(3, n):
                _expect(torch.equal(kernels.permutation_ranks(key, n, device).cpu(), kernels.permutation_ranks(key, n)),
                        f"ranks of n={n}, key={key}")

    def expansion():
        for x, keys, thresholds, inner in _expansion_inputs(generator):
            on_cpu = kernels.expand_masked(x, keys, thresholds, inner)
            on_gpu = kernels.expand_masked(x.to(device), keys, thresholds, inner)
            _expect(on_gpu.is_contiguous(memory_format=torch.channels_last if x.dim() == 4 and not x.is_contiguous()
                                         else torch.contiguous_format), "memory format kept")
            _expect(torch.equal(on_gpu.cpu(), on_cpu), f"{tuple(x.shape)} {x.dtype}")
            # The in-place twin on the batch expanded beforehand, bit for bit.
            copies = _stacked_copies(x, len(keys))
            on_device = copies.to(device)
            masked = kernels.mask_rows(on_device, keys, thresholds, inner)
            _expect(masked is on_device, f"in-place masking of {tuple(x.shape)} {x.dtype} made a copy")
            _expect(torch.equal(as_bits(masked.cpu()), as_bits(kernels.mask_rows(copies, keys, thresholds, inner))),
                    f"in-place masking of {tuple(x.shape)} {x.dtype}")
            # Keyed noise against the CPU kernel (within the tolerance), expanded and in place.
            noise_keys, scales, unit_std, first = _noise_inputs(x, keys, inner, generator)
            on_cpu = kernels.expand_noise(x, noise_keys, scales, unit_std, inner, first)
            on_gpu = kernels.expand_noise(x.to(device), noise_keys, scales, unit_std.to(device), inner, first)
            _expect(on_gpu.is_contiguous(memory_format=torch.channels_last if x.dim() == 4 and not x.is_contiguous()
                                         else torch.contiguous_format), "memory format kept by the noise")
            stacked = _stacked_copies(x, len(scales))
            why = noise_differences(on_gpu, on_cpu, stacked, scales)
            _expect(why is None, f"noise of {tuple(x.shape)} {x.dtype}: {why}")
            on_device = stacked.to(device)
            in_place = kernels.noise_rows(on_device, noise_keys, scales, unit_std.to(device), inner, first)
            _expect(in_place is on_device, f"in-place noise of {tuple(x.shape)} {x.dtype} made a copy")
            why = noise_differences(in_place, on_cpu, stacked, scales)
            _expect(why is None, f"in-place noise of {tuple(x.shape)} {x.dtype}: {why}")
        # Views 2, 4 and 8 bytes from 16-byte alignment, made on the device: the scalar path.
        for dtype in (torch.float16, torch.float32, torch.float64):
            storage = torch.randn(3 * 64 + 1, generator=generator).to(dtype)
            x = storage.to(device)[1:].view(3, 64)
            _expect(torch.equal(kernels.expand_masked(x, [5, 9], [10, 40], 1).cpu(),
                                kernels.expand_masked(storage[1:].view(3, 64), [5, 9], [10, 40], 1)),
                    f"unaligned {dtype}")
            copies = torch.randn(2 * 3 * 64 + 1, generator=generator).to(dtype)
            x = copies.to(device)[1:].view(6, 64)
            _expect(torch.equal(as_bits(kernels.mask_rows(x, [5, 9], [10, 40], 1).cpu()),
                                as_bits(kernels.mask_rows(copies[1:].view(6, 64), [5, 9], [10, 40], 1))),
                    f"in-place masking of unaligned {dtype}")
        return "16-byte and scalar paths, channels_last, unaligned rows, expanded and in place; keyed noise"

    def agreement():
        for logits, base, masks in _agreement_inputs(generator):
            _expect(torch.equal(kernels.label_agreement(logits.to(device), base.to(device), masks).cpu(),
                                kernels.label_agreement(logits, base, masks)), f"{tuple(logits.shape)} {logits.dtype}")

    def covariance():
        worst = 0.0
        for channels, batches in _covariance_batches(generator):
            on_gpu, on_cpu = _moments(channels, batches, device), _moments(channels, batches)
            _close_to_two_pass(on_gpu, batches)
            scale = max(1.0, float(on_cpu[2].abs().max()))
            worst = max(worst, float((on_gpu[2] - on_cpu[2]).abs().max()) / scale)
        _expect(worst < 1e-11, f"co-moment differs from the CPU kernel by {worst:.1e} (relative)")
        return f"largest relative difference from the CPU kernel {worst:.1e}"

    yield _check(where, "keyed permutation ranks = CPU", ranks)
    yield _check(where, "masked and noisy expansion, in place and not = CPU", expansion)
    yield _check(where, "label agreement = CPU", agreement)
    yield _check(where, "streaming covariance vs CPU and two-pass float64", covariance)
    yield _check(where, "analysis (float32) = CPU", lambda: _analysis_on(device))


def _small_conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 12, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(48, 5))


def _analysis_on(device: torch.device) -> str:
    """A small conv net analysed on the GPU and on the CPU (float32, both unit kinds, NCHW and
    channels_last): curves and component counts must be equal."""
    from .analysis import analyze

    model = _small_conv_net()
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for unit, channels_last in (("position", False), ("channel", False), ("position", True)):
        cpu = analyze(model, x, layers=["1", "3"], repeats=2, levels=11, unit=unit, batch_size=16)
        gpu = analyze(model.to(device), x, layers=["1", "3"], repeats=2, levels=11, unit=unit, batch_size=16,
                      device=device, channels_last=channels_last, precision="fp32")
        model.cpu()
        for name in ("1", "3"):
            _expect(gpu.layers[name].curves == cpu.layers[name].curves, f"curves of layer {name} ({unit})")
            _expect(gpu.layers[name].components == cpu.layers[name].components,
                    f"components of layer {name} ({unit})")
    return "layers 1 and 3; units by position and channel; channels_last"


def _analysis_against_naive() -> str:
    """The one-pass analysis against one full forward per mask (fu_fast.reference)."""
    from .analysis import analyze, masks

    model = _small_conv_net().double()
    x = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    result = analyze(model, x, layers=["3"], repeats=2, levels=11, batch_size=10)
    layer = result.layers["3"]
    plan = masks.MaskPlan.build("3", layer.ablation_units, masks.level_grid(11), 2, 0)
    counts = reference.naive_ablation_counts(model, model[3], [x[:10], x[10:20], x[20:]], list(plan.keys),
                                             list(plan.thresholds), 1)
    _expect(plan.curves(counts, 24) == layer.curves, "curves differ from the naive path")
    return "layer 3, 11 levels x 2 repeats"
