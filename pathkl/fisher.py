"""The diffusion Fisher ``F_t(x) = -hess log q_t(x)``: its trace and products in closed form, and the
two routes they are measured against, autodiff and Hutchinson probes (docs/fisher.md).

With ``alpha^2 = abar`` and ``sigma^2 = 1 - abar``, for empirical data (Wang et al. 2025, "Efficiently
access diffusion Fisher", arXiv 2505.23264, Prop. 1)

    F = I / sigma^2 - (alpha^2 / sigma^4) C(x),   C(x) = sum_i w_i y_i y_i^T - ybar ybar^T = Cov[x_0 | x_t],

so ``tr F`` and ``F v`` cost O(N d) (``EmpiricalReference.hessian_trace`` and ``.hvp``); for a Gaussian
mixture ``F = E_w V_k^{-1} - Cov_w(s_k)`` (the cumulant form of ``MixtureReference``), O(K d). These
functions take any reference with ``hvp`` and ``hessian_trace``; the autodiff routes take only a
log-density, so they share no formula with the closed forms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import InputError
from .lanczos import Matvec
from .schedules import NoiseLevel

LogDensity = Callable[[torch.Tensor], torch.Tensor]
"""``x -> log q(x)`` for one point, (d,) -> () (e.g. ``lambda z: reference.log_prob(z[None], lv)[0]``)."""


def fisher_matvec(reference, x: torch.Tensor, v: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
    """``F_t(x) v = -hess log q_t(x) v`` row-wise, (n, d), from the reference's closed form."""
    return -reference.hvp(x, v, lv)


def fisher_trace(reference, x: torch.Tensor, lv: NoiseLevel) -> torch.Tensor:
    """``tr F_t(x)`` per row, (n,), from the reference's closed form."""
    return -reference.hessian_trace(x, lv)


def _negative_hvp(log_prob: LogDensity, point: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return -torch.func.jvp(torch.func.grad(log_prob), (point,), (direction,))[1]


def autodiff_fisher_matvec(log_prob: LogDensity, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F v = -(d/de) grad log q(x + e v)`` at e = 0 (``torch.func.jvp`` of ``torch.func.grad``),
    row-wise over x and v of shape (n, d): the Hessian-vector product of forward-over-reverse mode."""
    return torch.func.vmap(lambda p, u: _negative_hvp(log_prob, p, u))(x, v)


def autodiff_fisher_trace(log_prob: LogDensity, x: torch.Tensor, *, chunk: int = 64) -> torch.Tensor:
    """``tr F`` at one point x (d,) as ``sum_i e_i . F e_i``: d Hessian-vector products, ``chunk`` at a
    time (exact to rounding; O(d) times the cost of one product)."""
    d = x.shape[-1]
    products = torch.func.vmap(lambda u: _negative_hvp(log_prob, x, u))
    total = x.new_zeros(())
    for start in range(0, d, chunk):
        basis = torch.eye(d, dtype=x.dtype, device=x.device)[start:start + chunk]
        total = total + products(basis).diagonal(offset=start).sum()
    return total


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson trace estimates per row, ``trace`` (n,), with ``stderr`` (n,) from the spread over
    probes; ``probes`` products were made per row."""

    trace: torch.Tensor
    stderr: torch.Tensor
    probes: int


def hutchinson_trace(matvec: Matvec, shape: tuple[int, int], probes: int, *, generator=None,
                     dtype=torch.float64, device=None) -> TraceEstimate:
    """``tr A ~ (1/M) sum_m v_m . A v_m`` with M Rademacher probes per row (Hutchinson 1990).

    Unbiased, with variance ``2 (||A||_F^2 - sum_i A_ii^2) / M`` (docs/fisher.md; claim
    ``df.hutchinson-variance``): for ``F = I/sigma^2 - (alpha^2/sigma^4) C`` only the off-diagonal of C
    contributes (``v . v = d`` exactly). The reported standard error is the sample one."""
    if probes < 2:
        raise InputError(f"a Hutchinson trace needs M >= 2 probes (for a standard error), got {probes}")
    total = torch.zeros(shape[0], dtype=dtype, device=device)
    total_sq = torch.zeros_like(total)
    for _ in range(probes):
        v = 2.0 * torch.randint(0, 2, shape, generator=generator, dtype=dtype, device=device) - 1.0
        term = (v * matvec(v)).sum(-1)
        total += term
        total_sq += term * term
    mean = total / probes
    variance = (total_sq / probes - mean * mean).clamp_min(0.0) * probes / (probes - 1)
    return TraceEstimate(mean, (variance / probes).sqrt(), probes)


__all__ = ["LogDensity", "TraceEstimate", "autodiff_fisher_matvec", "autodiff_fisher_trace", "fisher_matvec",
           "fisher_trace", "hutchinson_trace"]
