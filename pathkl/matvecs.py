"""Covariance-vector products of the optimal reverse covariance, without forming it.

A reverse step from ``x_t`` (DDPM, or DDIM with parameter eta; docs/theory.md section 2.1) draws
``x_{t-1} = m_t(x_t) + noise`` with the exact mean and, for the optimal kernel, the covariance

    Sigma_t(x) = s_t^2 I + lam_t^2 C(x),   C(x) = Cov[x_0 | x_t = x],

where ``x_{t-1} = lam_t x_0 + (affine in x_t) + s_t eps`` under the (generalised) forward posterior:
DDPM (eta = 1): ``s^2 = beta~_t``, ``lam = gamma_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t)``, so
``Sigma = Sigma*_t``; DDIM(eta): ``s^2 = eta^2 beta~_t``,
``lam = sqrt(abar_{t-1}) - sqrt(1 - abar_{t-1} - s^2) sqrt(abar_t / (1 - abar_t))``.
The mean is ``m_t(x) = lam_t xhat_0(x) + kappa_t x`` with ``xhat_0 = E[x_0 | x_t]`` and
``kappa_t = sqrt(1 - abar_{t-1} - s^2) / sqrt(1 - abar_t)``.

Products ``Sigma_t v`` two ways, which the tests check against each other:
(a) :class:`JvpCovariance`: Tweedie, ``d xhat_0 / dx = sqrt(abar_t) C / (1 - abar_t)``, so
    ``Sigma_t v = s^2 v + lam^2 (1 - abar_t) / sqrt(abar_t) J_{xhat_0} v``: one JVP of any denoiser
    (for DDPM this is ``(beta_t / sqrt(alpha_t)) J_{mu*_t} v``);
    :class:`LinearizedCovariance` linearises the denoiser once (``torch.func.linearize``) and then
    runs only the linear part per product;
    :class:`DifferenceCovariance` replaces the JVP by a forward difference (one evaluation per
    product, error ~sqrt(eps) relative);
(b) :func:`closed_form_cov_matvec`: ``s^2 v + lam^2 reference.posterior_cov_matvec(x, v, lv)``.
And the diagonal estimate ``rademacher:M`` (OCM paper eq. 9): ``mean_m v_m * (Sigma v_m)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .covariances import ReverseStep
from .errors import InputError
from .lanczos import Matvec

Denoiser = Callable[[torch.Tensor], torch.Tensor]
"""``x_t -> E[x_0 | x_t]`` row-wise, (n, d) -> (n, d), at a fixed noise level."""


class JvpCovariance:
    """``v -> Sigma_t(x) v`` from one JVP (``torch.func.jvp``) of ``denoiser`` at ``x`` per product.

    Each JVP also returns the denoiser's value ``xhat_0(x)``; :meth:`denoised` reuses it, so a step
    that makes k >= 1 products costs k JVPs in all (a plain evaluation only when k = 0).
    """

    def __init__(self, denoiser: Denoiser, x: torch.Tensor, step: ReverseStep):
        self._denoiser, self._x, self._step = denoiser, x, step
        self._value: torch.Tensor | None = None

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        value, tangent = torch.func.jvp(self._denoiser, (self._x,), (v,))
        self._value = value
        return self._step.s2 * v + self._step.jacobian_scale * tangent

    def denoised(self) -> torch.Tensor:
        """``xhat_0(x)``, from the last JVP when there was one."""
        return self._denoiser(self._x) if self._value is None else self._value


class LinearizedCovariance:
    """``v -> Sigma_t(x) v`` from ``torch.func.linearize``: the denoiser is linearised at ``x`` once per
    step (its value, and its JVP traced into a graph whose primal computations are folded into
    constants), then each product runs only that linear graph.

    A product then costs about one evaluation (0.9-2.8 of them for a small MLP on CPU), but the
    linearisation itself (tracing with ``make_fx`` and constant folding, Python-level work) costs tens
    to hundreds of evaluations on CPU, so for the few products of a reverse step it is slower than
    :class:`JvpCovariance` there (benchmarks/bench_lgs_forward_passes.py prints both).
    """

    def __init__(self, denoiser: Denoiser, x: torch.Tensor, step: ReverseStep):
        with warnings.catch_warnings():  # const_fold's notice about its own constant attributes
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node", category=UserWarning)
            self._value, self._linear = torch.func.linearize(denoiser, x)
        self._step = step

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self._step.s2 * v + self._step.jacobian_scale * self._linear(v)

    def denoised(self) -> torch.Tensor:
        """``xhat_0(x)``, computed by the linearisation."""
        return self._value


class DifferenceCovariance:
    """``v -> Sigma_t(x) v`` with ``J_{xhat_0} v ~ (xhat_0(x + h v) - xhat_0(x)) / h``: one denoiser
    evaluation per product, and ``xhat_0(x)`` (needed for the mean anyway) evaluated once.

    The cheap alternative to :class:`JvpCovariance` where forward-mode AD is slow (on CPU a torch JVP
    costs 2-6 evaluations). Per row ``h = sqrt(eps) (1 + ||x||) / ||v||``: the truncation error is
    ``O(h ||d^2 xhat_0||)`` and the rounding error ``O(eps ||xhat_0|| / h)``, both about
    ``sqrt(eps) ~ 1.5e-8`` relative for a smooth denoiser of unit scale in float64 (exact to rounding
    for an affine one, e.g. a Gaussian reference's). Not for float32 (``sqrt(eps) ~ 3e-4``).
    """

    def __init__(self, denoiser: Denoiser, x: torch.Tensor, step: ReverseStep):
        self._denoiser, self._x, self._step = denoiser, x, step
        self._value = denoiser(x)
        self._root_eps = torch.finfo(x.dtype).eps ** 0.5
        self._x_scale = 1.0 + torch.linalg.vector_norm(x, dim=1, keepdim=True)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v_norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        h = self._root_eps * self._x_scale / torch.where(v_norm > 0, v_norm, 1.0)
        difference = (self._denoiser(self._x + h * v) - self._value) / h
        return self._step.s2 * v + self._step.jacobian_scale * difference

    def denoised(self) -> torch.Tensor:
        """``xhat_0(x)``."""
        return self._value


def closed_form_cov_matvec(reference, x: torch.Tensor, step: ReverseStep) -> Matvec:
    """``v -> Sigma_t(x) v = s^2 v + lam^2 Cov[x_0 | x_t = x] v`` from the reference's closed form."""
    lam2 = step.lam**2

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return step.s2 * v + lam2 * reference.posterior_cov_matvec(x, v, step.level)

    return matvec


@dataclass(frozen=True)
class DiagonalEstimate:
    """``rademacher:M``: ``diagonal`` (n, d) ``= mean_m v_m * (A v_m)``, unbiased for ``diag(A)``
    (``E[v_i v_j] = delta_ij``), and its per-entry standard error ``stderr`` (n, d) from the spread
    over probes (the exact variance is ``sum_{j != i} A_ij^2 / M``)."""

    diagonal: torch.Tensor
    stderr: torch.Tensor


def rademacher_diagonal(matvec: Matvec, shape: tuple[int, int], probes: int, *, generator=None,
                        dtype=torch.float64, device=None) -> DiagonalEstimate:
    """Hutchinson-type diagonal estimate with ``probes`` Rademacher vectors per row (M products)."""
    if probes < 2:
        raise InputError(f"rademacher:M needs M >= 2 probes (for a standard error), got {probes}")
    total = torch.zeros(shape, dtype=dtype, device=device)
    total_sq = torch.zeros_like(total)
    for _ in range(probes):
        v = 2.0 * torch.randint(0, 2, shape, generator=generator, dtype=dtype, device=device) - 1.0
        term = v * matvec(v)
        total += term
        total_sq += term * term
    mean = total / probes
    variance = (total_sq / probes - mean * mean).clamp_min(0.0) * probes / (probes - 1)
    return DiagonalEstimate(mean, (variance / probes).sqrt())
