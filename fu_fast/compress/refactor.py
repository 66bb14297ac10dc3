"""Activational low-rank refactorisation (the paper's Appendix C), from a layer's statistics.

Let A (samples x m) be a layer's activations and A_c = A - 1 mu^T their centred version.
Keeping the units S and dropping D, the least-squares fit of the dropped units on the kept ones

    A_D ~= A_S C + 1 d^T,   C = pinv(A_c,S) A_c,D = Sigma_SS^+ Sigma_SD,   d = mu_D - C^T mu_S

is what W' = pinv(A') A W computes with centring: the consumer (y = W a + b) becomes

    W'_S = W_S + W_D C^T,   b' = b + W_D d,

and the dropped units' rows and columns go. It needs only the mean and covariance of A, so
conv layers (positions as extra samples of a channel, as for redundancy in docs/definitions.md)
cost no more than FC layers. The kept units are chosen by a column-pivoted QR of A_c, done
as the pivoted Cholesky factorisation of A_c^T A_c (the same pivots in exact arithmetic, on
an m x m matrix instead of samples x m): each step keeps the unit with the most variance
left unexplained by the units kept so far, so the basis is nested in m'.
"""

from __future__ import annotations

import numpy as np
import torch

# Residual variances below this share of the largest are numerically zero: the unit is a
# combination of units already kept (duplicates, dead units, exact Section 3 copies).
_RANK_EPS = 1e-12


def statistics(activations: torch.Tensor, sample_cap: int,
               generator: torch.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and covariance (float64) of a layer's units, and the number of samples.

    FC (N, m): one sample per example. Conv (N, m, H, W): one per (example, position); more
    than ``sample_cap`` positions are thinned to a uniform sample without replacement.
    """
    if activations.dim() == 4:
        rows = activations.permute(0, 2, 3, 1).reshape(-1, activations.shape[1])
        if rows.shape[0] > sample_cap:
            pick = torch.randperm(rows.shape[0], generator=generator)[:sample_cap]
            rows = rows[pick.to(rows.device)]
    else:
        rows = activations.reshape(activations.shape[0], -1)
    rows = rows.to(torch.float64)
    mean = rows.mean(0)
    centred = rows - mean
    covariance = centred.T @ centred / max(rows.shape[0] - 1, 1)
    return mean.cpu().numpy(), covariance.cpu().numpy(), rows.shape[0]


def pivot_order(covariance: np.ndarray) -> np.ndarray:
    """All units in the pivot order of a column-pivoted QR of the centred activations.

    Pivoted Cholesky of the covariance: at each step the unit with the largest residual
    variance (its variance not explained by the units before it). Units whose residual is
    numerically zero follow, in order of their own variance, since any choice among them spans
    nothing new.
    """
    m = covariance.shape[0]
    cov = torch.from_numpy(np.array(covariance, dtype=np.float64))
    residual = cov.diagonal().clone().clamp_min(0.0)
    scale = float(residual.max()) if m else 0.0
    factor = torch.zeros(m, m, dtype=torch.float64)
    order: list[int] = []
    remaining = torch.ones(m, dtype=torch.bool)
    for step in range(m):
        candidates = torch.where(remaining, residual, torch.tensor(-1.0, dtype=torch.float64))
        best = int(torch.argmax(candidates))
        if scale <= 0.0 or float(residual[best]) <= _RANK_EPS * scale:
            break
        pivot = float(residual[best]) ** 0.5
        column = (cov[:, best] - factor[:, :step] @ factor[best, :step]) / pivot
        column[~remaining] = 0.0
        column[best] = pivot
        factor[:, step] = column
        remaining[best] = False
        residual = residual - column ** 2
        residual[~remaining] = 0.0
        order.append(best)
    rest = [int(u) for u in np.argsort(-np.diag(covariance), kind="stable") if remaining[int(u)]]
    return np.array(order + rest, dtype=np.int64)


def coefficients(mean: np.ndarray, covariance: np.ndarray, kept: np.ndarray,
                 dropped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C (|S| x |D|) and d (|D|) with a_D ~= C^T a_S + d, by least squares on the centred units.

    pinv, not solve: Sigma_SS may be singular (dead kept units when m' exceeds the rank).
    """
    if len(dropped) == 0:
        return np.zeros((len(kept), 0)), np.zeros(0)
    s_ss = covariance[np.ix_(kept, kept)]
    s_sd = covariance[np.ix_(kept, dropped)]
    c = torch.linalg.pinv(torch.from_numpy(np.ascontiguousarray(s_ss)), hermitian=True,
                          rtol=1e-12).numpy() @ s_sd
    d = mean[dropped] - c.T @ mean[kept]
    return c, d


def rewrite(weight: torch.Tensor, bias: torch.Tensor | None, kept: np.ndarray, dropped: np.ndarray,
            c: np.ndarray, d: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The consumer's weight (the (out, units, R) view) and bias with the dropped units folded
    into the kept ones: W_S += W_D C^T per kernel (or spatial) position, b += W_D d summed over
    positions. The dropped columns are zeroed, so the full-width result already computes the
    thin network (on inputs where the fit holds) and can be evaluated before any surgery.

    A Conv2d consumer with zero padding sees 0, not the offset d, outside the image: there the
    bias term overcounts, so the rewrite is exact only away from the borders (reported per layer).
    """
    w64 = weight.detach().to(torch.float64)
    kept_t = torch.as_tensor(kept, dtype=torch.long, device=weight.device)
    dropped_t = torch.as_tensor(dropped, dtype=torch.long, device=weight.device)
    c_t = torch.as_tensor(c, dtype=torch.float64, device=weight.device)
    d_t = torch.as_tensor(d, dtype=torch.float64, device=weight.device)
    new = w64.clone()
    w_d = w64[:, dropped_t]                                     # (out, |D|, R)
    new[:, kept_t] += torch.einsum("odr,sd->osr", w_d, c_t)
    new[:, dropped_t] = 0.0
    offset = torch.einsum("odr,d->o", w_d, d_t)
    if bias is not None:
        new_bias = (bias.detach().to(torch.float64) + offset).to(bias.dtype)
    elif torch.any(offset != 0):
        new_bias = offset.to(weight.dtype)
    else:
        new_bias = None
    return new.to(weight.dtype), new_bias
