"""Numeric spot checks against pathkl's own references, with an independent dense answer.

For a Gaussian ``x_0 ~ N(m, S)`` the pair ``(x_0, x_t)`` (and ``(x_{t-1}, x_t)``) is jointly
Gaussian, so every conditional moment follows from a Schur complement of the dense joint
covariance: that is the independent answer the closed forms of the package are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from pathkl.references.gaussian import GaussianReference
from pathkl.schedules import NoiseLevel, get_schedule

DTYPE = torch.float64


@dataclass(frozen=True)
class GaussianCase:
    """A correlated Gaussian reference, points ``x`` drawn from ``q_t`` and the step ``t`` levels."""

    reference: GaussianReference
    mean: torch.Tensor
    cov: torch.Tensor
    prev: NoiseLevel
    level: NoiseLevel
    x: torch.Tensor

    @property
    def alpha(self) -> torch.Tensor:
        return self.level.abar / self.prev.abar

    @property
    def beta(self) -> torch.Tensor:
        return -torch.expm1(torch.log(self.level.abar) - torch.log(self.prev.abar))


@cache
def gaussian_case(dim: int = 4, steps: int = 20, t: int = 7, seed: int = 0) -> GaussianCase:
    """Non-diagonal covariance with eigenvalues spread over two decades, cosine grid step ``t``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=DTYPE))
    eig = torch.logspace(-1, 1, dim, dtype=DTYPE)
    cov = (q * eig) @ q.T
    cov = (cov + cov.T) / 2
    mean = torch.randn(dim, generator=gen, dtype=DTYPE)
    grid = get_schedule("cosine").grid(steps)
    ref = GaussianReference.from_covariance(cov, mean=mean)
    x = ref.sample(5, grid.level(t), generator=gen)
    return GaussianCase(ref, mean, cov, grid.level(t - 1), grid.level(t), x)


def conditional(mean_a, cov_aa, mean_b, cov_bb, cov_ab, b):
    """Mean (n, d_a) and covariance (d_a, d_a) of ``a | b`` for a joint Gaussian (Schur complement)."""
    gain = torch.linalg.solve(cov_bb, cov_ab.T).T
    return mean_a + (b - mean_b) @ gain.T, cov_aa - gain @ cov_ab.T


def dense_posterior(case: GaussianCase, lv: NoiseLevel):
    """``E[x_0 | x_t]`` and ``Cov[x_0 | x_t]`` at ``case.x`` from the dense joint of (x_0, x_t)."""
    a = lv.abar.sqrt()
    eye = torch.eye(case.cov.shape[0], dtype=DTYPE)
    cov_tt = lv.abar * case.cov + lv.one_minus_abar * eye
    return conditional(case.mean, case.cov, a * case.mean, cov_tt, a * case.cov, case.x)


def dense_reverse_kernel(case: GaussianCase):
    """Mean and covariance of ``q(x_{t-1} | x_t)`` at ``case.x`` from the dense joint."""
    eye = torch.eye(case.cov.shape[0], dtype=DTYPE)
    cov_prev = case.prev.abar * case.cov + case.prev.one_minus_abar * eye
    cov_t = case.level.abar * case.cov + case.level.one_minus_abar * eye
    sa = case.alpha.sqrt()
    return conditional(case.prev.abar.sqrt() * case.mean, cov_prev,
                       case.level.abar.sqrt() * case.mean, cov_t, sa * cov_prev, case.x)
