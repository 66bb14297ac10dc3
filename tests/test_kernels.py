"""Every native kernel against its plain reference (fu_fast.reference), on fresh random
inputs with odd sizes: n not a power of two, B = 1, C = 1."""

import numpy as np
import pytest
import torch

from fu_fast import _C, kernels, reference
from fu_fast.analysis import masks
from fu_fast.errors import FuFastError

SIZES = [1, 2, 3, 5, 7, 10, 31, 64, 100, 129, 1000, 4097, 65_537]


def random_keys(count, seed=0):
    rng = np.random.default_rng(seed)
    return [int(k) for k in rng.integers(0, 2**64, size=count, dtype=np.uint64)]


@pytest.mark.parametrize("n", SIZES)
def test_ranks_match_reference_and_are_a_permutation(n):
    for key in random_keys(3, seed=n) + [0, 2**64 - 1]:
        native = kernels.permutation_ranks(key, n).numpy()
        np.testing.assert_array_equal(native, reference.permutation_ranks(key, n))
        np.testing.assert_array_equal(np.sort(native), np.arange(n))


def test_ranks_depend_on_the_key_and_look_uniform():
    n = 1000
    a, b = (kernels.permutation_ranks(k, n).numpy() for k in random_keys(2, seed=1))
    assert (a != b).mean() > 0.95
    # The unit at each rank position is uniform over many keys: the mean rank of unit 0
    # over 2,000 keys is (n-1)/2 within a few standard errors (sd = n/sqrt(12*2000)).
    ranks_of_zero = np.array([kernels.permutation_ranks(k, n)[0].item() for k in random_keys(2000, seed=2)])
    assert abs(ranks_of_zero.mean() - (n - 1) / 2) < 4 * n / np.sqrt(12 * 2000)


def test_masks_are_nested_and_exactly_floor_p_n():
    grid = masks.level_grid(21)
    for n in (1, 7, 20, 129, 1000):
        key = masks.mask_key(0, "layer", 1)
        ranks = kernels.permutation_ranks(key, n)
        previous = torch.zeros(n, dtype=torch.bool)
        for p in grid:
            ablated = ranks < masks.threshold(p, n)
            assert int(ablated.sum()) == int(np.floor(round(p * n, 9)))
            assert bool((previous & ~ablated).sum() == 0)  # nested in p
            previous = ablated
    assert masks.threshold(0.35, 20) == 7 and masks.threshold(0.05, 10) == 0


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,unit", [((1, 1), "position"), ((3, 7), "position"), ((2, 129), "position"),
                                        ((5, 3, 4, 5), "position"), ((1, 1, 1, 1), "position"),
                                        ((5, 3, 4, 5), "channel"), ((2, 7, 3, 3), "channel"),
                                        # large enough for the multi-threaded paths
                                        ((64, 4099), "position"), ((9, 33, 31, 29), "channel")])
def test_expand_masked_matches_reference(dtype, shape, unit, generator):
    x = torch.randn(shape, generator=generator).to(dtype)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    keys = random_keys(6, seed=units)
    thresholds = [0, units, 1, units // 2, max(units - 1, 0), units // 3]
    out = kernels.expand_masked(x, keys, thresholds, inner)
    expected = reference.expand_masked(x, keys, thresholds, inner)
    assert out.shape == (6 * shape[0],) + shape[1:] and out.dtype == dtype
    assert torch.equal(out, expected)
    # ablated elements are +0.0 exactly, whatever the sign of the value they replace
    ablated = (expected == 0) & (torch.cat([x] * 6) != 0)
    assert not torch.signbit(out[ablated]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,unit", [((3, 5, 4, 7), "position"), ((2, 7, 3, 3), "channel"),
                                        ((1, 1, 2, 2), "position"), ((9, 33, 31, 29), "position")])
def test_expand_masked_keeps_channels_last_and_ablates_the_same_units(dtype, shape, unit, generator):
    x = torch.randn(shape, generator=generator).to(dtype).to(memory_format=torch.channels_last)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    keys, thresholds = random_keys(4, seed=units), [1, units // 2, units - 1, units // 3]
    out = kernels.expand_masked(x, keys, thresholds, inner)
    if shape[1] > 1:     # a (B, 1, H, W) or (B, C, 1, 1) tensor is both layouts at once
        assert not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, reference.expand_masked(x.contiguous(), keys, thresholds, inner))


@pytest.mark.parametrize("shape,channels_last", [((5, 3, 4, 7), False), ((5, 3, 4, 7), True), ((6, 130), False)])
def test_expand_into_out_writes_every_element_and_returns_it(shape, channels_last, generator):
    x = torch.randn(shape, generator=generator)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    units = x[0].numel()
    keys, thresholds = random_keys(3, seed=units), [0, units // 2, units]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.full((3 * shape[0],) + shape[1:], float("nan")).to(memory_format=layout)   # stale contents show
    assert kernels.expand_masked(x, keys, thresholds, 1, out=out) is out
    assert torch.equal(out, kernels.expand_masked(x, keys, thresholds, 1))
    unit_std, scales = torch.rand(units, dtype=torch.float64, generator=generator), [0.0, 0.5, 2.0]
    out.fill_(float("nan"))
    assert kernels.expand_noise(x, keys, scales, unit_std, 1, 7, out=out) is out
    assert torch.equal(out, kernels.expand_noise(x, keys, scales, unit_std, 1, 7))


def test_expand_refuses_an_out_of_another_shape_dtype_or_layout(generator):
    x = torch.randn(4, 3, 5, 5, generator=generator)
    keys, thresholds = random_keys(2, seed=1), [1, 2]
    for bad in (torch.empty(7, 3, 5, 5), torch.empty(8, 3, 5, 5, dtype=torch.float64),
                torch.empty(8, 3, 5, 5).to(memory_format=torch.channels_last)):
        with pytest.raises(FuFastError, match="^out must be a contiguous torch.float32 tensor of shape"):
            kernels.expand_masked(x, keys, thresholds, 1, out=bad)


BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}   # element size -> integer type of its bits


def special_bits(dtype: torch.dtype) -> torch.Tensor:
    """(4, 53) random bits of ``dtype`` as integers, with NaN payloads, signalling NaNs and infinities
    (units 0-15: exponent all ones), -0.0 (unit 16) and the smallest subnormal (unit 17)."""
    integer = BITS[dtype.itemsize]
    limits = torch.iinfo(integer)
    original = torch.randint(limits.min, limits.max, (4, 53), dtype=integer,
                             generator=torch.Generator().manual_seed(dtype.itemsize))
    original[:, :16] |= torch.tensor(float("inf"), dtype=dtype).view(integer)   # exponent all ones: NaN, inf
    original[:, 16] = limits.min                                               # -0.0
    original[:, 17] = 1                                                        # the smallest subnormal
    return original


def bits(x: torch.Tensor) -> torch.Tensor:
    """x's elements as the integers of their bits: -0.0 differs from +0.0, a NaN equals its own bits."""
    return x.view(BITS[x.element_size()])


def stacked(x: torch.Tensor, copies: int) -> torch.Tensor:
    """copies of x stacked along the batch (the batch expanded before the masked layer), in x's memory format."""
    memory_format = torch.channels_last if x.dim() == 4 and not x.is_contiguous() else torch.contiguous_format
    return torch.cat([x] * copies).contiguous(memory_format=memory_format)


def mask_rows_case(shape, unit, dtype, generator, channels_last=False):
    """(x, K copies of x stacked, inner, keys, thresholds): thresholds 0, all units, in between and
    beyond either end; keys repeated (the CPU kernel groups equal keys)."""
    x = torch.randn(shape, generator=generator).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    a, b, c = random_keys(3, seed=units)
    thresholds = [0, units // 2, units, 1, max(units - 1, 0), units + 3, -2]
    return x, stacked(x, len(thresholds)), inner, [a, a, b, c, c, c, a], thresholds


MASK_ROWS_SHAPES = [((1, 1), "position"), ((3, 7), "position"), ((5, 129), "position"),
                    ((5, 33, 7, 5), "position"), ((5, 33, 7, 5), "channel"), ((1, 1, 1, 1), "position"),
                    ((2, 8, 2, 2), "position"),       # rows of 16-byte multiples for every dtype
                    # large enough for the multi-threaded paths
                    ((64, 4099), "position"), ((9, 33, 31, 29), "channel")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,unit", MASK_ROWS_SHAPES)
def test_mask_rows_matches_reference_in_place(dtype, shape, unit, generator):
    x, rows, inner, keys, thresholds = mask_rows_case(shape, unit, dtype, generator)
    expected = reference.mask_rows(rows, keys, thresholds, inner)
    address = rows.data_ptr()
    out = kernels.mask_rows(rows, keys, thresholds, inner)
    assert out is rows and out.data_ptr() == address            # masked where it lies
    assert out.shape == (len(keys) * shape[0],) + shape[1:] and out.dtype == dtype
    # Bit for bit: ablated elements are +0.0 exactly, whatever the sign of the value they replace.
    assert torch.equal(bits(out), bits(expected))
    # Copy 0 (threshold 0) is x; copy 2 (threshold = units) is all zeros.
    batch = shape[0]
    assert torch.equal(bits(out[:batch]), bits(x))
    assert not bits(out[2 * batch:3 * batch]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,unit", [((3, 5, 4, 7), "position"), ((2, 7, 3, 3), "channel"),
                                        ((5, 33, 7, 5), "channel"), ((1, 1, 2, 2), "position"),
                                        ((9, 33, 31, 29), "position")])
def test_mask_rows_masks_channels_last_in_place_and_ablates_the_same_units(dtype, shape, unit, generator):
    x, rows, inner, keys, thresholds = mask_rows_case(shape, unit, dtype, generator, channels_last=True)
    if shape[1] > 1:     # a (B, 1, H, W) or (B, C, 1, 1) tensor is both layouts at once
        assert not rows.is_contiguous() and rows.is_contiguous(memory_format=torch.channels_last)
    expected = reference.mask_rows(rows.contiguous(), keys, thresholds, inner)
    out = kernels.mask_rows(rows, keys, thresholds, inner)
    assert out is rows and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(bits(out.contiguous()), bits(expected))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,unit,channels_last", [((5, 33, 7, 5), "position", False),
                                                      ((5, 33, 7, 5), "channel", False),
                                                      ((5, 33, 7, 5), "position", True),
                                                      ((3, 8, 6, 6), "channel", True), ((7, 37), "position", False)])
def test_mask_rows_of_repeated_rows_equals_expand_masked(dtype, shape, unit, channels_last, generator):
    x, rows, inner, keys, thresholds = mask_rows_case(shape, unit, dtype, generator, channels_last)
    expanded = kernels.expand_masked(x, keys, thresholds, inner)
    assert torch.equal(bits(kernels.mask_rows(rows, keys, thresholds, inner)), bits(expanded))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_rows_keeps_every_bit_it_does_not_ablate(dtype):
    """NaN payloads, signalling NaNs, infinities, -0.0 and subnormals pass unchanged through a
    copy with threshold 0 and through the kept units of a partial mask (the kernel never computes
    with the values); ablated elements become +0.0 whatever they held."""
    original = special_bits(dtype)
    units = original.shape[1]
    keys, thresholds = [7, 7], [0, units // 2]           # copy 0 (rows 0, 1) untouched, copy 1 half ablated
    out = kernels.mask_rows(original.clone().view(dtype), keys, thresholds, 1)
    assert torch.isnan(original.view(dtype)).sum() > 16 and torch.equal(bits(out[:2]), original[:2])
    ablated = reference.ablation_masks([7], [units // 2], units)[0]
    assert int(ablated.sum()) == units // 2
    assert torch.equal(bits(out[2:])[:, ~ablated], original[2:, ~ablated])
    assert not bits(out[2:])[:, ablated].any()
    assert torch.equal(bits(out), bits(reference.mask_rows(original.view(dtype), keys, thresholds, 1)))


def test_mask_rows_masks_a_contiguous_copy_of_any_other_layout(generator):
    """A tensor neither contiguous nor channels_last is left as it is; a masked contiguous copy is
    returned."""
    base = torch.randn(6, 9, 5, generator=generator)
    keys, thresholds = [3, 4, 5], [0, 11, 45]
    for x in (base.transpose(1, 2), base[:, :, ::2], base.permute(0, 2, 1)[:, 1:]):
        x_bits = bits(x).clone()
        out = kernels.mask_rows(x, keys, thresholds, 1)
        assert out.data_ptr() != x.data_ptr() and out.is_contiguous()
        assert torch.equal(bits(x), x_bits)                          # the input is unchanged
        assert torch.equal(bits(out), bits(reference.mask_rows(x.contiguous(), keys, thresholds, 1)))


def test_mask_rows_refuses_a_row_count_that_is_not_copies_of_a_batch():
    with pytest.raises(FuFastError, match=r"^mask_rows: the tensor has 7 rows, which are not 3 masked copies of a "
                                          r"batch \(a positive multiple of 3 rows\)$"):
        kernels.mask_rows(torch.zeros(7, 4), [1, 2, 3], [0, 1, 2], 1)
    with pytest.raises(FuFastError, match="has 0 rows"):
        kernels.mask_rows(torch.zeros(0, 4), [1], [1], 1)
    with pytest.raises(FuFastError, match="not 0 masked copies"):
        kernels.mask_rows(torch.zeros(2, 4), [], [], 1)
    with pytest.raises(FuFastError, match="2 mask keys but 1 thresholds"):
        kernels.mask_rows(torch.zeros(2, 4), [1, 2], [1], 1)
    with pytest.raises(FuFastError, match="unsupported dtype"):
        kernels.mask_rows(torch.zeros(2, 4, dtype=torch.int32), [1, 2], [1, 1], 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masks_,batch,classes", [(1, 1, 1), (3, 1, 10), (4, 7, 3), (2, 33, 1000)])
def test_label_agreement_matches_argmax_reference(dtype, masks_, batch, classes, generator):
    # Small integer logits make ties common; argmax must pick the first maximum like torch.
    logits = torch.randint(-3, 4, (masks_ * batch, classes), generator=generator).to(dtype)
    logits[torch.rand(logits.shape, generator=generator) < 0.02] = float("nan")
    base = torch.randint(0, classes, (batch,), generator=generator)
    base[: batch // 2] = logits[: batch // 2].argmax(dim=1)  # some agreement for mask 0
    expected = reference.label_agreement(logits, base, masks_)
    assert torch.equal(kernels.label_agreement(logits, base, masks_), expected)
    # A strided (non-contiguous rows) view reads the same rows.
    padded = torch.zeros(masks_ * batch, classes + 3, dtype=dtype)
    padded[:, :classes] = logits
    assert torch.equal(kernels.label_agreement(padded[:, :classes], base, masks_), expected)


def _accumulate(batches, channels):
    count = torch.zeros(1, dtype=torch.float64)
    mean = torch.zeros(channels, dtype=torch.float64)
    comoment = torch.zeros(channels, channels, dtype=torch.float64)
    for activation, rows in batches:
        kernels.covariance_accumulate(activation, rows, count, mean, comoment)
    return count, mean, comoment


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,channels_last", [((1, 1), False), ((9, 1), False), ((17, 5), False),
                                                  ((6, 3, 5, 7), False), ((1, 1, 1, 1), False),
                                                  ((4, 13, 3, 3), False), ((6, 3, 5, 7), True),
                                                  ((4, 13, 3, 3), True),
                                                  # large enough for the multi-threaded paths
                                                  ((40, 37, 8, 8), False), ((40, 37, 8, 8), True),
                                                  ((3000, 65), False),
                                                  # whole panels of 8 units, several blocks of 256 samples,
                                                  # several spans of samples (each in L2 for all panel pairs)
                                                  ((700, 128), False), ((1200, 300), False), ((9, 16, 8, 8), False),
                                                  ((9, 16, 8, 8), True)])
def test_covariance_accumulate_matches_numpy(dtype, shape, channels_last, generator):
    channels = shape[1]
    spatial = shape[2] * shape[3] if len(shape) == 4 else 1
    batches, samples = [], []
    for _ in range(4):
        # a large common offset checks that the shifted sums keep float64 accuracy
        activation = (torch.randn(shape, generator=generator) * 3 + 1e4 * (dtype == torch.float64)).to(dtype)
        if channels_last:
            activation = activation.to(memory_format=torch.channels_last)
        total = shape[0] * spatial
        keep = torch.rand(total, generator=generator) < 0.7
        rows = torch.nonzero(keep).flatten()
        batches.append((activation, rows))
        samples.append(reference.gather_rows(activation.double(), rows).numpy())
    all_samples = np.concatenate(samples)
    count, mean, comoment = _accumulate(batches, channels)
    assert count.item() == len(all_samples)
    np.testing.assert_allclose(mean.numpy(), all_samples.mean(axis=0), rtol=1e-12, atol=1e-12)
    expected = (all_samples - all_samples.mean(axis=0)).T @ (all_samples - all_samples.mean(axis=0))
    np.testing.assert_allclose(comoment.numpy(), expected, rtol=1e-9, atol=1e-8 * max(1.0, len(all_samples)))
    np.testing.assert_array_equal(comoment.numpy(), comoment.numpy().T)


def test_covariance_accumulate_matches_its_torch_twin(generator):
    activation = torch.randn(8, 11, 6, 5, generator=generator)
    rows = torch.randperm(8 * 30, generator=generator)[:100].sort().values
    native = _accumulate([(activation, rows)], 11)
    twin = [torch.zeros(1, dtype=torch.float64), torch.zeros(11, dtype=torch.float64),
            torch.zeros(11, 11, dtype=torch.float64)]
    reference.covariance_accumulate(activation, rows, *twin)
    for a, b in zip(native, twin):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


def test_bindings_refuse_null_pointers_and_bad_sizes():
    with pytest.raises(ValueError, match="null pointer"):
        _C.permutation_ranks(1, 10, 0)
    with pytest.raises(ValueError, match="n must be"):
        _C.permutation_ranks(1, 0, 8)
    with pytest.raises(ValueError, match="element size"):
        _C.expand_masked(8, 8, 1, 1, 1, 1, 1, False, 3, 8, 8, 1)
    with pytest.raises(ValueError, match="channels \\* spatial"):
        _C.expand_masked(8, 8, 1, 12, 1, 5, 2, True, 4, 8, 8, 1)
    with pytest.raises(ValueError, match="^mask_rows: element size"):
        _C.mask_rows(8, 1, 1, 1, 1, 1, False, 3, 8, 8, 1)
    with pytest.raises(ValueError, match="^mask_rows: a channels_last row must hold channels \\* spatial"):
        _C.mask_rows(8, 1, 12, 1, 5, 2, True, 4, 8, 8, 1)
    with pytest.raises(ValueError, match="^mask_rows: sizes must be positive"):
        _C.mask_rows(8, 0, 12, 1, 12, 1, False, 4, 8, 8, 1)
    with pytest.raises(ValueError, match="^data: null pointer"):
        _C.mask_rows(0, 1, 12, 1, 12, 1, False, 4, 8, 8, 1)


def special_values(dtype) -> torch.Tensor:
    """Every bit pattern of a 16-bit type, or for float32 each exponent class with random
    mantissas (subnormals, the smallest and largest normals), zeros of both signs, infinities."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    rng = np.random.default_rng(5)
    exponents = np.repeat(np.arange(256, dtype=np.uint32), 64)
    bits = (rng.integers(0, 2, exponents.size, dtype=np.uint32) << 31) | (exponents << 23) | \
        rng.integers(0, 2**23, exponents.size, dtype=np.uint32)
    edges = np.array([0, 1, 2**23 - 1, 2**23, 0x7F7FFFFF, 0x7F800000, 0x80000001], dtype=np.uint32)
    return torch.from_numpy(np.concatenate([bits, edges, edges | 2**31]).view(np.int32)).view(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernels_read_every_value_exactly_subnormals_included(dtype):
    """The kernels convert to float64 with integer operations (the same code on every backend):
    a one-row covariance update leaves each value as the mean, which must be its exact float64."""
    values = special_values(dtype)
    values = values[torch.isfinite(values)]
    width = 256
    values = torch.cat([values, values[: (-values.numel()) % width]]).view(-1, 1, width)
    for row in values:
        state = [torch.zeros(1, dtype=torch.float64), torch.zeros(width, dtype=torch.float64),
                 torch.zeros(width, width, dtype=torch.float64)]
        kernels.covariance_accumulate(row, torch.tensor([0]), *state)
        # Exact equality (the merge's arithmetic turns -0.0 into +0.0, which equality ignores).
        assert torch.equal(state[1], row[0].double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_label_agreement_tells_subnormals_apart(dtype):
    tiny = torch.finfo(dtype).smallest_normal / 4              # a subnormal of the type
    logits = torch.tensor([[tiny, 2 * tiny, 0.0], [0.0, -tiny, -0.0], [-tiny, -2 * tiny, -0.0]]).to(dtype)
    assert (logits[0, 1] > logits[0, 0]) and logits[0, 0] > 0
    assert torch.equal(kernels.label_agreement(logits, torch.tensor([1, 0, 2]), 1), torch.tensor([3]))


# Keyed Gaussian noise (csrc/noise.h): normal(key, example, element), expand_noise and noise_rows.

def kernel_normals(key: int, examples: int, elements: int, first_example: int = 0) -> np.ndarray:
    """normal(key, first_example + b, e) for b < examples, e < elements, from the CPU kernel: the noise
    of a float64 zero with scale 1 and unit standard deviation 1 is the normal itself (0 + 1 * n)."""
    zeros = torch.zeros(examples, elements, dtype=torch.float64)
    return kernels.expand_noise(zeros, [key], [1.0], torch.ones(elements, dtype=torch.float64), 1,
                                first_example).numpy()


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many float64 values lie between a and b, plus one (0 when equal; +0.0 and -0.0 are equal)."""
    def ordinal(v):
        bits = np.ascontiguousarray(v, dtype=np.float64).view(np.int64)
        magnitude = bits & np.int64(2**63 - 1)
        return np.where(bits < 0, -magnitude, magnitude)
    return np.abs(ordinal(a) - ordinal(b))


def test_normals_are_standard_normal():
    """10^6 draws: mean, variance, tail mass and the whole distribution (Kolmogorov-Smirnov) within
    5 standard errors of N(0, 1)."""
    n = kernel_normals(0x243F6A8885A308D3, 1000, 1000).ravel()
    count = n.size
    assert abs(n.mean()) < 5 / np.sqrt(count)
    assert abs(n.var() - 1) < 5 * np.sqrt(2 / count)
    tail = 2 * float(torch.special.ndtr(torch.tensor(-3.0, dtype=torch.float64)))        # P(|n| > 3)
    assert abs((np.abs(n) > 3).mean() - tail) < 5 * np.sqrt(tail * (1 - tail) / count)
    cdf = torch.special.ndtr(torch.from_numpy(np.sort(n))).numpy()
    steps = np.arange(1, count + 1) / count
    ks = max(np.abs(steps - cdf).max(), np.abs(steps - 1 / count - cdf).max())
    assert ks < 1.95 / np.sqrt(count)          # the Kolmogorov-Smirnov critical value at 0.1%
    assert np.isfinite(n).all() and np.abs(n).max() < 8.6    # sqrt(-2 ln 2^-53) = 8.57 bounds |n|


def test_normals_are_uncorrelated_across_keys_examples_and_elements():
    """Correlations (of the values and of their squares) between draws of other keys, neighbouring
    examples and neighbouring elements, near 0 (5 standard errors of 10^6 pairs)."""
    a = kernel_normals(1, 1000, 1000)
    limit = 5 / np.sqrt(a.size)
    pairs = {
        "keys 1 and 2": (a, kernel_normals(2, 1000, 1000)),
        "keys 0 and 2^64 - 1": (kernel_normals(0, 1000, 1000), kernel_normals(2**64 - 1, 1000, 1000)),
        "neighbouring examples": (a[:-1], a[1:]),
        "neighbouring elements": (a[:, :-1], a[:, 1:]),
        "examples 2^40 apart": (a, kernel_normals(1, 1000, 1000, first_example=2**40)),
        "element e and example e": (a, a.T),
    }
    for name, (x, y) in pairs.items():
        assert abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < limit, name
        assert abs(np.corrcoef(x.ravel() ** 2, y.ravel() ** 2)[0, 1]) < limit, name


@pytest.mark.parametrize("first_example", [0, 2**40 - 100, 2**62 + 3])
def test_normals_equal_the_reference_within_2_ulp(first_example):
    """The CPU kernel's normals against reference.normal (NumPy counters, NumPy's float64 log and cos):
    the counters and every other operation are the same, and NumPy's log and cos are within an ulp of
    the C library's, so at most 2 ulp apart, and nearly always equal (csrc/noise.h)."""
    examples, elements = 200, 1000
    for key in [0, 2**64 - 1] + random_keys(2, seed=first_example % 1000):
        got = kernel_normals(key, examples, elements, first_example)
        expected = reference.normal(key, first_example + np.arange(examples)[:, None], np.arange(elements)[None, :])
        distance = ulp_distance(got, expected)
        assert distance.max() <= 2
        assert (distance == 0).mean() > 0.99


def noise_case(shape, unit, dtype, generator, copies=5, channels_last=False):
    """(x, inner, keys, scales, unit_std): keys with repeats, scales 0 and in between, unit
    standard deviations around 1 with unit 0's zero (a dead unit)."""
    x = torch.randn(shape, generator=generator).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    inner = shape[2] * shape[3] if unit == "channel" else 1
    units = x[0].numel() // inner
    a, b, c = random_keys(3, seed=units)
    keys = [a, b, a, c, c, a][:copies]
    scales = [0.0, 0.1, 1.0, 3.0, 0.5, 0.0][:copies]
    unit_std = torch.rand(units, generator=generator, dtype=torch.float64) * 2 + 0.1
    if units > 1:
        unit_std[0] = 0.0
    return x, inner, keys, scales, unit_std


NOISE_SHAPES = [((1, 1), "position"), ((3, 7), "position"), ((2, 129), "position"), ((5, 3, 4, 5), "position"),
                ((1, 1, 1, 1), "position"), ((5, 3, 4, 5), "channel"), ((2, 7, 3, 3), "channel"),
                # large enough for the multi-threaded paths
                ((64, 4099), "position"), ((9, 33, 31, 29), "channel")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,unit", NOISE_SHAPES)
def test_expand_noise_matches_reference(dtype, shape, unit, generator):
    x, inner, keys, scales, unit_std = noise_case(shape, unit, dtype, generator)
    batch, first = shape[0], 12_345
    out = kernels.expand_noise(x, keys, scales, unit_std, inner, first)
    expected = reference.expand_noise(x, keys, scales, unit_std, inner, first)
    assert out.shape == (len(keys) * batch,) + shape[1:] and out.dtype == dtype
    close = kernels.noise_close(out, expected, stacked(x, len(keys)))
    assert close.all()
    assert torch.eq(bits(out), bits(expected)).float().mean() > 0.99      # the same bits, but for rare elements
    # Copy 0 (scale 0) is x bit for bit; unit 0 (standard deviation 0) keeps its bits in every copy.
    assert torch.equal(bits(out[:batch]), bits(x))
    if unit_std.numel() > 1:
        units_of = out.reshape(len(keys), batch, -1, inner)
        assert torch.equal(bits(units_of[:, :, 0]), bits(x.reshape(1, batch, -1, inner)[:, :, 0].expand_as(
            units_of[:, :, 0])))
    # The noise has the standard deviation asked for: a unit's noise over many elements (float64).
    if dtype == torch.float64 and out.numel() > 10**5:
        noise = (out.reshape(len(keys), batch, -1, inner) - x.reshape(1, batch, -1, inner)) / \
            unit_std.reshape(1, 1, -1, 1).clamp(min=1e-300)
        for k in (1, 2, 3):
            sample = noise[k][:, 1:].flatten() / scales[k]
            assert abs(float(sample.std()) - 1) < 5 * np.sqrt(2 / sample.numel()) + 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_expand_noise_rounds_the_float64_sum_to_nearest_even(dtype, generator):
    """With the kernel's own normals, x + sigma * n computed in float64 and rounded to nearest even
    (reference.round_to_dtype) is the kernel's result bit for bit, for inputs of every magnitude:
    subnormal results, results that overflow to infinity, and noise from far below an ulp to far
    above x."""
    integer = BITS[dtype.itemsize]
    limits = torch.iinfo(integer)
    batch, row = 64, 515
    x = torch.randint(limits.min, limits.max, (batch, row), dtype=integer, generator=generator).view(dtype)
    x[~torch.isfinite(x)] = 0.0
    x[:4] *= torch.finfo(dtype).tiny                  # subnormal and tiny values
    exponents = torch.randint(-160, 60, (row,), generator=generator).to(torch.float64)
    if dtype == torch.float64:
        exponents = exponents * 6
    unit_std = torch.exp2(exponents)                  # noise of every magnitude, one per element (unit)
    unit_std[:3] = torch.finfo(dtype).max             # overflow to infinity
    key, scale, first = 77, 1.5, 2**33
    out = kernels.expand_noise(x, [key], [scale], unit_std, 1, first)
    normals = torch.from_numpy(kernel_normals(key, batch, row, first))
    expected = reference.round_to_dtype(x.double() + (scale * unit_std)[None, :] * normals, dtype)
    assert torch.equal(bits(out), bits(expected))
    assert torch.isinf(out).any()
    if dtype != torch.float64:
        assert ((out != 0) & (out.abs() < torch.finfo(dtype).tiny)).any()          # subnormal results
    if dtype in (torch.float32, torch.float16):
        # The reference's rounding is the direct conversion (NumPy converts float64 to float16 in one
        # rounding), checked on the same sums.
        sums = (x.double() + (scale * unit_std)[None, :] * normals).numpy()
        numpy_dtype = np.float16 if dtype == torch.float16 else np.float32
        with np.errstate(over="ignore"):
            direct = torch.from_numpy(sums.astype(numpy_dtype))
        assert torch.equal(bits(direct), bits(expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,unit", [((3, 5, 4, 7), "position"), ((2, 7, 3, 3), "channel"),
                                        ((1, 1, 2, 2), "position"), ((9, 33, 31, 29), "position")])
def test_expand_noise_of_channels_last_equals_nchw(dtype, shape, unit, generator):
    """The noise of an element depends on its NCHW index and its unit only: a channels_last input
    gets the same values, bit for bit, in a channels_last output."""
    x, inner, keys, scales, unit_std = noise_case(shape, unit, dtype, generator, channels_last=True)
    out = kernels.expand_noise(x, keys, scales, unit_std, inner, 5)
    if shape[1] > 1:     # a (B, 1, H, W) or (B, C, 1, 1) tensor is both layouts at once
        assert not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last)
    nchw = kernels.expand_noise(x.contiguous(), keys, scales, unit_std, inner, 5)
    assert torch.equal(bits(out.contiguous()), bits(nchw))


def test_noise_does_not_depend_on_how_the_batch_is_split(generator):
    """Examples are numbered globally: the batch in three pieces (first_example the piece's start)
    gets the noise of the whole batch, expanded and in place."""
    x, inner, keys, scales, unit_std = noise_case((10, 3, 5, 7), "position", torch.float32, generator)
    copies, first = len(keys), 1_000_000
    whole = kernels.expand_noise(x, keys, scales, unit_std, inner, first).reshape(copies, 10, -1)
    pieces = [(0, 3), (3, 4), (4, 10)]
    parts = [kernels.expand_noise(x[a:b], keys, scales, unit_std, inner, first + a).reshape(copies, b - a, -1)
             for a, b in pieces]
    assert torch.equal(bits(torch.cat(parts, dim=1)), bits(whole))
    parts = [kernels.noise_rows(stacked(x[a:b], copies), keys, scales, unit_std, inner, first + a)
             .reshape(copies, b - a, -1) for a, b in pieces]
    assert torch.equal(bits(torch.cat(parts, dim=1)), bits(whole))
    # Another first example is other noise.
    other = kernels.expand_noise(x, keys, scales, unit_std, inner, first + 1).reshape(copies, 10, -1)
    assert (other[1] != whole[1]).float().mean() > 0.9


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,unit,channels_last", [((5, 33, 7, 5), "position", False),
                                                      ((5, 33, 7, 5), "channel", False),
                                                      ((5, 33, 7, 5), "position", True),
                                                      ((3, 8, 6, 6), "channel", True), ((7, 37), "position", False),
                                                      ((64, 4099), "position", False)])
def test_noise_rows_of_stacked_copies_equals_expand_noise_in_place(dtype, shape, unit, channels_last, generator):
    x, inner, keys, scales, unit_std = noise_case(shape, unit, dtype, generator, copies=6,
                                                  channels_last=channels_last)
    rows = stacked(x, len(keys))
    address = rows.data_ptr()
    out = kernels.noise_rows(rows, keys, scales, unit_std, inner, 9)
    assert out is rows and out.data_ptr() == address                   # changed where it lies
    assert torch.equal(bits(out.contiguous()), bits(kernels.expand_noise(x, keys, scales, unit_std, inner, 9)
                                                    .contiguous()))
    batch = shape[0]
    assert torch.equal(bits(out[:batch]), bits(x)) and torch.equal(bits(out[5 * batch:]), bits(x))   # scale 0
    assert kernels.noise_close(out, reference.noise_rows(stacked(x, len(keys)), keys, scales, unit_std, inner, 9),
                               stacked(x, len(keys))).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_keeps_every_bit_where_its_standard_deviation_is_0(dtype):
    """A copy of scale 0 and the units of standard deviation 0 keep NaN payloads, signalling NaNs,
    infinities, -0.0 and subnormals, expanded and in place; elsewhere NaN stays NaN and an infinity
    stays that infinity."""
    integer = BITS[dtype.itemsize]
    original = special_bits(dtype)
    original[:, 18:22] = torch.tensor([float("inf"), float("inf"), -float("inf"), -float("inf")],
                                      dtype=dtype).view(integer)
    x = original.view(dtype)
    unit_std = torch.ones(53, dtype=torch.float64)
    unit_std[::2] = 0.0                                  # even units keep their bits in every copy
    keys, scales = [7, 8], [0.0, 2.0]
    out = kernels.expand_noise(x, keys, scales, unit_std, 1, 0)
    in_place = kernels.noise_rows(stacked(x, 2), keys, scales, unit_std, 1, 0)
    for result in (out, in_place):
        assert torch.equal(bits(result[:4]), original)                            # scale 0
        assert torch.equal(bits(result[4:, ::2]), original[:, ::2])               # standard deviation 0
        noisy, before = result[4:, 1::2], x[:, 1::2]
        assert torch.equal(torch.isnan(noisy), torch.isnan(before))
        infinite = torch.isinf(before)
        assert infinite.any() and torch.equal(noisy[infinite], before[infinite])
        small = before.abs() < 1                       # noise of standard deviation 2 changes these
        assert small.any() and (noisy[small] != before[small]).float().mean() > 0.9


def test_noise_kernels_refuse_what_would_read_past_their_buffers():
    x, std = torch.zeros(4, 6), torch.ones(6, dtype=torch.float64)
    with pytest.raises(FuFastError, match="^expand_noise: 2 noise keys but 1 scales$"):
        kernels.expand_noise(x, [1, 2], [1.0], std, 1, 0)
    with pytest.raises(FuFastError, match="no noisy copies"):
        kernels.expand_noise(x, [], [], std, 1, 0)
    with pytest.raises(FuFastError, match="must be finite and >= 0"):
        kernels.expand_noise(x, [1], [-1.0], std, 1, 0)
    with pytest.raises(FuFastError, match="must be finite and >= 0"):
        kernels.expand_noise(x, [1], [float("nan")], std, 1, 0)
    with pytest.raises(FuFastError, match="^expand_noise: unit_std must be a float64 tensor of 3 values, one per unit"):
        kernels.expand_noise(x, [1], [1.0], std, 2, 0)
    with pytest.raises(FuFastError, match="unit_std must be a float64 tensor"):
        kernels.expand_noise(x, [1], [1.0], std.float(), 1, 0)
    with pytest.raises(FuFastError, match="not a whole number of units of 4 elements"):
        kernels.expand_noise(x, [1], [1.0], std, 4, 0)
    with pytest.raises(FuFastError, match="first_example must be >= 0"):
        kernels.expand_noise(x, [1], [1.0], std, 1, -1)
    with pytest.raises(FuFastError, match="first_example must be >= 0"):
        kernels.expand_noise(x, [1], [1.0], std, 1, 2**63 - 2)
    with pytest.raises(FuFastError, match="has no rows"):
        kernels.expand_noise(torch.zeros(0, 6), [1], [1.0], std, 1, 0)
    with pytest.raises(FuFastError, match="unsupported dtype"):
        kernels.expand_noise(x.int(), [1], [1.0], std, 1, 0)
    with pytest.raises(FuFastError, match=r"^noise_rows: the tensor has 4 rows, which are not 3 noisy copies of a "
                                          r"batch \(a positive multiple of 3 rows\)$"):
        kernels.noise_rows(x, [1, 2, 3], [1.0, 1.0, 1.0], std, 1, 0)
    with pytest.raises(FuFastError, match="^noise_rows: 2 noise keys but 1 scales$"):
        kernels.noise_rows(x, [1, 2], [1.0], std, 1, 0)
    # The bindings check what reaches them directly.
    with pytest.raises(ValueError, match="^unknown dtype code$"):
        _C.expand_noise(8, 8, 1, 1, 1, 1, 1, False, 9, 8, 8, 8, 0, 1)
    with pytest.raises(ValueError, match="^expand_noise: first_example must be >= 0"):
        _C.expand_noise(8, 8, 1, 1, 1, 1, 1, False, 0, 8, 8, 8, -1, 1)
    with pytest.raises(ValueError, match="^noise_rows: sizes must be positive"):
        _C.noise_rows(8, 0, 1, 1, 1, 1, False, 0, 8, 8, 8, 0, 1)
    with pytest.raises(ValueError, match="^unit_std: null pointer"):
        _C.noise_rows(8, 1, 1, 1, 1, 1, False, 0, 8, 8, 0, 0, 1)


def test_noise_non_contiguous_input_gets_a_changed_contiguous_copy(generator):
    base = torch.randn(6, 9, 5, generator=generator)
    x = base.transpose(1, 2)
    before = bits(x).clone()
    std = torch.ones(45, dtype=torch.float64)
    out = kernels.noise_rows(x, [3, 4, 5], [0.0, 1.0, 2.0], std, 1, 0)
    assert out.data_ptr() != x.data_ptr() and out.is_contiguous() and torch.equal(bits(x), before)
    assert torch.equal(bits(out), bits(kernels.noise_rows(x.contiguous(), [3, 4, 5], [0.0, 1.0, 2.0], std, 1, 0)))
