"""Plain PyTorch / NumPy references of every native kernel, and the naive ablation path.

These are the test oracles (each kernel is compared with its reference on fresh random
inputs) and the baseline of the benchmarks. They favour obviousness over speed: masks
are materialised, covariance is computed from the full sample matrix, and the naive
path runs one full forward pass per mask, as the paper's code does.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .hooks import forward_hooks, on_call

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_ROUNDS = 6


def _mix64(z: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser; uint64 arithmetic wraps modulo 2^64 as in C++.
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _feistel(x: np.ndarray, key: int, half: int) -> np.ndarray:
    half_mask = np.uint64((1 << half) - 1)
    left, right = x >> np.uint64(half), x & half_mask
    for round_ in range(_ROUNDS):
        round_key = np.uint64((key + round_ * _GOLDEN) & _MASK64)
        f = _mix64(right ^ round_key) & half_mask
        left, right = right, left ^ f
    return (left << np.uint64(half)) | right


def permutation_ranks(key: int, n: int) -> np.ndarray:
    """rank_key(u) for u < n: the keyed Feistel bijection of csrc/permutation.h."""
    bits = int(n - 1).bit_length() if n > 1 else 0
    half = max(1, (bits + 1) // 2)
    with np.errstate(over="ignore"):
        x = _feistel(np.arange(n, dtype=np.uint64), key, half)
        outside = x >= np.uint64(n)
        while outside.any():  # cycle walking
            x[outside] = _feistel(x[outside], key, half)
            outside = x >= np.uint64(n)
    return x.astype(np.int64)


def ablation_masks(keys: Iterable[int], thresholds: Iterable[int], units: int) -> torch.Tensor:
    """Boolean (K, units) tensor, True where a unit is ablated (rank < threshold)."""
    rows = [torch.from_numpy(permutation_ranks(k, units)) < t for k, t in zip(keys, thresholds)]
    return torch.stack(rows)


def expand_masked(x: torch.Tensor, keys: list[int], thresholds: list[int], inner: int) -> torch.Tensor:
    """K masked copies of x (B, ...) stacked to (K*B, ...), masks materialised."""
    batch = x.shape[0]
    units = x[0].numel() // inner
    keep = ~ablation_masks(keys, thresholds, units).to(x.device)            # (K, units)
    rows = x.reshape(1, batch, units, inner) * keep.reshape(len(keys), 1, units, 1).to(x.dtype)
    return rows.reshape((len(keys) * batch,) + tuple(x.shape[1:]))


def mask_rows(x: torch.Tensor, keys: list[int], thresholds: list[int], inner: int) -> torch.Tensor:
    """x (K*B, ...) with copy k (rows k*B .. (k+1)*B - 1) masked by mask k, masks materialised;
    a new tensor. Ablated elements become +0.0 and kept ones keep their bits (NaN payloads
    included), as in the kernels: a select, not a product, which would give -0.0 and NaN."""
    num_masks = len(keys)
    batch = x.shape[0] // num_masks
    units = x[0].numel() // inner
    keep = ~ablation_masks(keys, thresholds, units).to(x.device)            # (K, units)
    rows = x.reshape(num_masks, batch, units, inner)
    masked = torch.where(keep.reshape(num_masks, 1, units, 1), rows, torch.zeros((), dtype=x.dtype, device=x.device))
    return masked.reshape(x.shape)


_TWO_PI = 6.283185307179586    # the double nearest 2 pi


def normal(key: int, example, element) -> np.ndarray:
    """normal(key, example, element) of csrc/noise.h for arrays of examples and elements (broadcast
    together): keyed standard normals from NumPy uint64 counters and a float64 Box-Muller."""
    example = np.asarray(example, dtype=np.int64).astype(np.uint64)
    element = np.asarray(element, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        seed = _mix64(np.uint64(key & _MASK64) ^ _mix64(example))
        counter = seed ^ _mix64(element)
        z1 = _mix64(counter + np.uint64(_GOLDEN))
        z2 = _mix64(counter + np.uint64((2 * _GOLDEN) & _MASK64))
    u1 = ((z1 >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 2.0**-53     # (0, 1]
    u2 = (z2 >> np.uint64(11)).astype(np.float64) * 2.0**-53                        # [0, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)


def round_to_dtype(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 values rounded to nearest even in dtype (on their device). float64 -> float32 is one
    correct conversion; bfloat16 and float16 are reached through float32 rounded to odd (truncated,
    its last bit set when inexact), which keeps the one rounding correct: PyTorch's own
    float64 -> float16/bfloat16 conversion rounds twice, through float32 to nearest."""
    if dtype == torch.float64:
        return values.clone()
    single = values.to(torch.float32)
    if dtype == torch.float32:
        return single
    back = single.to(torch.float64)
    inexact = (back != values).to(torch.int32)
    bits = single.view(torch.int32) - (back.abs() > values.abs()).to(torch.int32)   # truncate toward zero
    return (bits | inexact).view(torch.float32).to(dtype)


def _noise_sigma(scales: list[float], unit_std: torch.Tensor, inner: int, device) -> torch.Tensor:
    """(K, row) noise standard deviations scales[k] * unit_std[u] per element, in float64."""
    per_element = unit_std.to(device=device, dtype=torch.float64).repeat_interleave(inner)
    return torch.tensor(scales, dtype=torch.float64, device=device)[:, None] * per_element[None, :]


def _noisy(rows: torch.Tensor, keys: list[int], scales: list[float], unit_std: torch.Tensor, inner: int,
           first_example: int) -> torch.Tensor:
    """rows (K, B, row) in NCHW order with copy k's noise added: the float64 sum rounded to the dtype,
    and src's bits where the scale or sigma is 0."""
    copies, batch, row = rows.shape
    examples = first_example + np.arange(batch, dtype=np.int64)[:, None]
    elements = np.arange(row, dtype=np.int64)[None, :]
    normals = torch.from_numpy(np.stack([normal(key, examples, elements) if scale != 0 else np.zeros((batch, row))
                                         for key, scale in zip(keys, scales)])).to(rows.device)
    sigma = _noise_sigma(scales, unit_std, inner, rows.device)[:, None, :]                  # (K, 1, row)
    noisy = round_to_dtype(rows.to(torch.float64) + sigma * normals, rows.dtype)
    unchanged = (sigma == 0) | (torch.tensor(scales, dtype=torch.float64, device=rows.device) == 0)[:, None, None]
    return torch.where(unchanged, rows, noisy)


def expand_noise(x: torch.Tensor, keys: list[int], scales: list[float], unit_std: torch.Tensor, inner: int,
                 first_example: int) -> torch.Tensor:
    """K noisy copies of x (B, ...) stacked to (K*B, ...): copy k, example b, element e (NCHW order) is
    x + scales[k] * unit_std[e // inner] * normal(keys[k], first_example + b, e), computed in float64
    and rounded to x's dtype; x's bits where that standard deviation is 0. The normals are drawn
    with NumPy on the CPU."""
    batch, row = x.shape[0], x[0].numel()
    rows = x.reshape(1, batch, row).expand(len(keys), batch, row)
    return _noisy(rows, keys, scales, unit_std, inner, first_example).reshape((len(keys) * batch,) + tuple(x.shape[1:]))


def noise_rows(x: torch.Tensor, keys: list[int], scales: list[float], unit_std: torch.Tensor, inner: int,
               first_example: int) -> torch.Tensor:
    """x (K*B, ...) with copy k (rows k*B .. (k+1)*B - 1) given copy k's noise, as expand_noise; a new
    tensor."""
    copies = len(keys)
    batch = x.shape[0] // copies
    rows = x.reshape(copies, batch, x[0].numel())
    return _noisy(rows, keys, scales, unit_std, inner, first_example).reshape(x.shape)


def label_agreement(logits: torch.Tensor, base_labels: torch.Tensor, num_masks: int) -> torch.Tensor:
    """Per mask, the count of rows whose argmax equals the base label."""
    labels = logits.argmax(dim=1).reshape(num_masks, -1)
    return (labels == base_labels.reshape(1, -1).to(labels.device)).sum(dim=1)


def gather_rows(activation: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The (len(rows), C) sample matrix: row b*H*W + s of the flattened positions."""
    if activation.dim() == 2:
        return activation[rows.to(activation.device)]
    batch, channels = activation.shape[:2]
    flat = activation.reshape(batch, channels, -1).permute(0, 2, 1).reshape(-1, channels)
    return flat[rows.to(activation.device)]


def covariance_accumulate(activation: torch.Tensor, rows: torch.Tensor, count: torch.Tensor,
                          mean: torch.Tensor, comoment: torch.Tensor) -> None:
    """Chan et al.'s merge of one batch of sampled rows into float64 running moments."""
    samples = gather_rows(activation, rows).to(torch.float64)
    n_b = samples.shape[0]
    batch_mean = samples.mean(dim=0)
    centred = samples - batch_mean
    batch_comoment = (centred.T @ centred).to(comoment.device)
    batch_mean = batch_mean.to(mean.device)
    n_a = float(count.item())
    n = n_a + n_b
    delta = batch_mean - mean
    comoment += batch_comoment + torch.outer(delta, delta) * (n_a * n_b / n)
    mean += delta * (n_b / n)
    count.fill_(n)


@torch.inference_mode()
def naive_ablation_counts(model: torch.nn.Module, module: torch.nn.Module, batches,
                          keys: list[int], thresholds: list[int], inner: int, call: int | None = None, *,
                          features_last: bool = False, forward=None, token_mask=None) -> np.ndarray:
    """Agreement counts by one full forward pass per mask and batch (the paper's way).

    A forward hook multiplies the module's output by a materialised 0/1 mask (at its ``call``-th
    call in a forward pass, for a module that runs several times). Units are runs of ``inner``
    elements of a row in NCHW order, or with ``features_last`` the last dimension's features at
    each of ``inner`` positions (a (B, T, D) token layer). ``forward`` maps inputs to logits
    (default: the model); (B, T, C) logits count every token, or those ``token_mask(inputs)``
    keeps.
    """
    forward = forward or model
    counts = np.zeros(len(keys), dtype=np.int64)

    def labels(inputs):
        logits = forward(inputs)
        return logits.argmax(dim=-1).reshape(-1)

    for inputs in batches:
        base = labels(inputs)
        kept = torch.ones_like(base, dtype=torch.bool) if token_mask is None else token_mask(inputs).reshape(-1)
        for k, (key, threshold) in enumerate(zip(keys, thresholds)):
            def hook(_module, _inputs, output, key=key, threshold=threshold):
                units = output[0].numel() // inner
                keep = (~ablation_masks([key], [threshold], units)[0]).to(output.device, output.dtype)
                if features_last:
                    return (output.reshape(-1, inner, units) * keep.reshape(1, 1, units)).reshape(output.shape)
                return (output.reshape(-1, units, inner) * keep.reshape(1, units, 1)).reshape(output.shape)

            with forward_hooks([(module, on_call(call, hook))]):
                counts[k] += int(((labels(inputs) == base) & kept).sum())
    return counts
