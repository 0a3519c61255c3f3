"""Covariance families of the Gaussian reverse model and the theory each one claims.

Every family replaces the optimal reverse covariance (docs/theory.md section 3.2)

    Sigma*_t = beta_t I + (beta_t^2 / alpha_t) G = beta~_t I + gamma_t^2 C,
    G = H + I (H = hess log q_t),  C = Cov[x_0 | x_t],  gamma_t^2 = abar_{t-1} beta_t^2 / (1 - abar_t)^2,

by its own ``Sigma_t``. The Gaussian part of a step's KL is ``KL(N(0, Sigma*) || N(0, Sigma_t))
= (1/2) sum_i phi(e_i)``, ``phi(u) = u - log1p(u)``, where ``e_i`` are the eigenvalues of
``Sigma_t^{-1/2} (Sigma* - Sigma_t) Sigma_t^{-1/2}`` ("relative eigenvalues"). Each family forms
``Sigma* - Sigma_t`` from G or C directly, so no nearly equal covariances are ever subtracted.
Where some ``e_i`` is close to -1 (``Sigma*`` far below ``Sigma_t`` in a direction: the first step
of data with an eigenvalue below beta_1), ``log(1 + e_i)`` needs ``1 + e_i`` to its relative
precision, which ``e_i`` (known to an ulp of 1) does not carry: the family then forms ``1 + e_i``,
the eigenvalues of ``Sigma_t^{-1/2} Sigma* Sigma_t^{-1/2}``, from ``Sigma*`` itself, given by the
reference as a positive form (:attr:`ReverseStep.sigma_star`).

Each family also declares its rate: ``steps = Theta(T^-order)``, with the leading constant

    lim T^order * steps = coefficient * int_0^1 beta(tau)^(order + 1) E_{q_tau} ||D||_F^2 dtau

(``order = 1``: ``coefficient = 1/4`` and ``D`` the family's defect; ``order = 2`` (``full``):
``coefficient = 1/12`` and ``||D||^2 = ||grad^3 log q_tau||_F^2``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import InputError
from .operators import SymmetricOperator
from .schedules import Grid
from .stable import u_minus_log1p


@dataclass(frozen=True)
class ReverseStep:
    """What a family needs about step(s) t: per-step scalars (broadcastable against eigenvalues of
    shape (..., d)) and the operators ``G = H + I`` and ``C = Cov[x_0|x_t]`` at ``x_t``.

    ``mean_g`` is ``E_{q_t} tr(G) / d`` (an expectation over x_t, needed by ``analytic``), or None
    where it is G's own mean eigenvalue (G independent of x_t: a Gaussian block on its own), which
    ``g.centred_eigvals`` and ``sigma_star.mean_trace`` then give without cancellation.
    ``sigma_star``: ``Sigma*_t`` as an operator whose eigenvalues are positive forms (not
    ``beta + (beta^2/alpha) g``), where the reference has one; None for mixtures.
    The Gaussian closed form passes operators that compute their eigenvalues only when asked.
    """

    beta: torch.Tensor
    alpha: torch.Tensor
    beta_tilde: torch.Tensor
    gamma2: torch.Tensor
    g: SymmetricOperator
    c: SymmetricOperator
    mean_g: torch.Tensor | None
    sigma_star: SymmetricOperator | None = None

    @staticmethod
    def at(grid: Grid, t, *, g: SymmetricOperator, c: SymmetricOperator, mean_g) -> ReverseStep:
        """Scalars of step(s) ``t`` (an int, or a 1-D tensor of steps, giving shape (n, 1))."""
        return ReverseStep(*ReverseStep.scalars(grid, t), g, c, torch.as_tensor(mean_g))

    @staticmethod
    def scalars(grid: Grid, t) -> tuple[torch.Tensor, ...]:
        """``(beta, alpha, beta_tilde, gamma2)`` of step(s) ``t`` as in :meth:`at`: computed once for
        many steps, rows of them make each chunk's ReverseStep without touching the grid again."""
        t = torch.as_tensor(t)
        pick = (lambda a: a[t - 1, None]) if t.ndim == 1 else (lambda a: a[t - 1])
        one_minus = grid.one_minus_abar
        return ReverseStep.transition_scalars(pick(grid.abar[:-1]), pick(one_minus[:-1]), pick(one_minus[1:]),
                                              pick(grid.log_alpha))

    @staticmethod
    def transition_scalars(abar_prev: torch.Tensor, one_minus_prev: torch.Tensor, one_minus: torch.Tensor,
                           log_alpha: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(beta, alpha, beta_tilde, gamma2)`` of steps from levels ``(abar_prev, 1 - abar_prev)`` to
        levels with ``1 - abar = one_minus``, ``log alpha`` apart: a step's scalars depend on its two
        levels only, so the steps need not form one chain (pathkl.optimal_grid pairs any two levels)."""
        beta = -torch.expm1(log_alpha)
        gamma2 = abar_prev * beta**2 / one_minus**2
        return beta, torch.exp(log_alpha), one_minus_prev * beta / one_minus, gamma2

    @property
    def curvature_scale(self) -> torch.Tensor:
        """``beta^2 / alpha``: ``Sigma* = beta I + (beta^2 / alpha) G``."""
        return self.beta**2 / self.alpha

    def spectral_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_i x_i`` over the eigenvalues of G or C (one basis, so the same multiplicities)."""
        return (self.c if self.g is None else self.g).spectral_sum(x)


@dataclass(frozen=True)
class Family:
    """A covariance family: how it forms ``Sigma_t`` and which rate it claims."""

    name: str
    order: int | None  # steps = Theta(T^-order); None: steps does not vanish as T grows
    coefficient: float
    source: str
    _relative_eigvals: Callable[[ReverseStep], torch.Tensor | None]  # None: e = 0 (Sigma_t = Sigma*)
    _defect_sq_norm: Callable[[SymmetricOperator, torch.Tensor], torch.Tensor] | None = None
    # 1 + e from step.sigma_star; None where e > -1/2 always (beta_tilde: e >= 0; full: e = 0).
    _ratios: Callable[[ReverseStep], torch.Tensor] | None = None
    #: Whether Sigma_t depends on ``step.mean_g`` (an expectation over x_t), so that its error moves the KL.
    uses_mean_g: bool = False

    def relative_eigvals(self, step: ReverseStep) -> torch.Tensor:
        """Eigenvalues of ``Sigma_t^{-1/2} (Sigma*_t - Sigma_t) Sigma_t^{-1/2}``, shape (..., d)."""
        e = self._relative_eigvals(step)
        return torch.zeros_like(step.g.eigvals()) if e is None else e

    def gaussian_step_kl(self, step: ReverseStep, *, work: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """``KL(N(mu*, Sigma*_t) || N(mu*, Sigma_t)) = (1/2) sum_i phi(e_i)``, shape (...); ``1 + e_i``
        from ``step.sigma_star`` where phi needs it (module docstring); exactly 0, with no pass over
        the eigenvalues, where ``Sigma_t = Sigma*``. ``work``: three tensors shaped like the
        eigenvalues for phi to compute in (:func:`~pathkl.stable.u_minus_log1p`)."""
        e = self._relative_eigvals(step)
        if e is None:
            return step.beta.new_zeros(step.g.batch_shape)
        ratios = None if self._ratios is None or step.sigma_star is None else (lambda: self._ratios(step))
        return 0.5 * step.spectral_sum(u_minus_log1p(e, one_plus_u=ratios, work=work))

    def defect_sq_norm(self, g: SymmetricOperator, mean_g: torch.Tensor) -> torch.Tensor:
        """``||D||_F^2`` at each point for an order-1 family (D = its defect, see module doc)."""
        if self._defect_sq_norm is None:
            raise InputError(f"family {self.name!r} has no order-1 defect")
        return self._defect_sq_norm(g, mean_g)


def _beta(step):
    return (step.beta / step.alpha) * step.g.eigvals()


def _beta_ratios(step):
    return step.sigma_star.eigvals() / step.beta


def _beta_tilde(step):
    return (step.gamma2 / step.beta_tilde) * step.c.eigvals()


def _analytic_variance(step):
    """``sigma_t^2 = E tr Sigma*_t / d = beta + (beta^2 / alpha) mean_g``; a positive mean where mean_g
    is G's own (the sum would cancel where Sigma* << beta, e.g. the first step for tiny eigenvalues)."""
    if step.mean_g is None:
        return step.sigma_star.mean_trace()[..., None]
    return step.beta + step.curvature_scale * step.mean_g


def _analytic(step):
    # e = (Sigma* - sigma^2) / sigma^2 = k (G - mean_g) / sigma^2, k = beta^2 / alpha
    centred = step.g.centred_eigvals() if step.mean_g is None else step.g.eigvals() - step.mean_g
    return centred.mul_(step.curvature_scale / _analytic_variance(step))


def _analytic_ratios(step):
    return step.sigma_star.eigvals() / _analytic_variance(step)


def _diag(step):
    # Sigma_t = diag(Sigma*) = k S, k = beta^2 / alpha: e = eig(S^{-1/2} offdiag(G) S^{-1/2}), with S a
    # positive form where the reference has Sigma* (beta / k + diag(G) cancels where Sigma* << beta).
    if step.g.is_diagonal:  # diag(Sigma*) = Sigma*
        return None
    k = step.curvature_scale
    scale = step.g.diagonal() + step.beta / k if step.sigma_star is None else step.sigma_star.diagonal() / k
    return step.g.scaled_offdiagonal_eigvals(scale)


def _diag_ratios(step):
    return step.sigma_star.diagonal_ratio_eigvals()


def _full(step):
    return None


def _offdiagonal_sq_norm(g, mean_g):
    ones = torch.ones_like(g.diagonal())
    # ||offdiag(G)||_F^2 = sum of squared eigenvalues of offdiag(G) (scale S = I).
    return g.spectral_sum(g.scaled_offdiagonal_eigvals(ones) ** 2)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("beta", 1, 0.25, "Ho et al. 2020: Sigma_t = beta_t I", _beta,
               lambda g, mean_g: g.spectral_sum(g.eigvals() ** 2), _beta_ratios),
        Family("beta_tilde", None, 0.0, "Ho et al. 2020: Sigma_t = beta~_t I (infinite at t = 1)",
               _beta_tilde),
        Family("analytic", 1, 0.25, "Bao et al. 2022 (Analytic-DPM): sigma_t^2 = E tr Sigma*_t / d",
               _analytic, lambda g, mean_g: g.spectral_sum((g.eigvals() - mean_g) ** 2), _analytic_ratios,
               uses_mean_g=True),
        Family("diag", 1, 0.25, "Ou et al. 2025 (OCM): Sigma_t = diag(Sigma*_t)", _diag,
               _offdiagonal_sq_norm, _diag_ratios),
        Family("full", 2, 1.0 / 12.0, "full covariance matching: Sigma_t = Sigma*_t", _full),
    )
}


def get_family(name: str) -> Family:
    """The family registered as ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        if name.split(":")[0] in ("lanczos", "rademacher"):
            raise InputError(
                f"{name!r} draws a random, non-Gaussian or probe-dependent reverse kernel, so it has no "
                f"exact path KL; measure it with 'pathkl sample --cov {name}'"
            ) from None
        raise InputError(f"unknown covariance family {name!r}; choose from {', '.join(FAMILIES)}") from None
