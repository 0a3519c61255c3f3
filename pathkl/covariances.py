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

Each family also declares its rate (:class:`Rate`): ``steps = Theta(T^-order)``, with the leading constant

    lim T^order * steps = coefficient * int_0^1 beta(tau)^(order + 1) E_{q_tau} ||D||_F^2 dtau

(``order = 1``: ``coefficient = 1/4`` and ``D`` the family's defect; ``order = 2`` (``full``):
``coefficient = 1/12`` and ``||D||^2 = ||grad^3 log q_tau||_F^2``). The rate may depend on the
reference (:meth:`Family.rate`): where the reference makes ``Sigma_t = Sigma*_t`` at every x and t
(``diag`` on data whose Hessian is diagonal, e.g. product-form data) the family has ``full``'s rate.
The entries themselves live in :mod:`pathkl.families`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import InputError
from .operators import SymmetricOperator
from .schedules import Grid, NoiseLevel
from .stable import u_minus_log1p


@dataclass(frozen=True)
class ReverseStep:
    """Reverse step(s) t of a grid, from ``x_t`` to ``x_{t-1}``: what a covariance family's KL and a
    sampler need about them.

    DDIM(eta) (eta = 1 is DDPM) draws ``x_{t-1} = lam xhat_0(x_t) + kappa x_t + noise`` with the optimal
    noise covariance ``s2 I + lam^2 C`` (pathkl.matvecs); for DDPM that is
    ``Sigma*_t = beta I + (beta^2 / alpha) G = beta~ I + gamma^2 C`` (``s2 = beta~``, ``lam^2 = gamma^2``).

    A family's step KL (:meth:`at`) reads the DDPM scalars ``beta, alpha, beta_tilde, gamma2``
    (broadcastable against eigenvalues of shape (..., d)) and the operators ``G = H + I`` and
    ``C = Cov[x_0|x_t]`` at ``x_t``. ``mean_g`` is ``E_{q_t} tr(G) / d`` (an expectation over x_t, needed by
    ``analytic``), or None where it is G's own mean eigenvalue (G independent of x_t: a Gaussian block
    on its own), which ``g.centred_eigvals`` and ``sigma_star.mean_trace`` then give without
    cancellation. ``sigma_star``: ``Sigma*_t`` as an operator whose eigenvalues are positive forms (not
    ``beta + (beta^2/alpha) g``), where the reference has one; None for mixtures. The Gaussian closed
    form passes operators that compute their eigenvalues only when asked.

    A sampler's step (:meth:`ddim`: one step t, Python floats) also carries ``level`` (the noise level
    of ``x_t``) and the DDIM coefficients ``lam, kappa, s2``; it has no operators (a sampler reads the
    reference through covariance-vector products, pathkl.matvecs).
    """

    beta: torch.Tensor | float
    alpha: torch.Tensor | float
    beta_tilde: torch.Tensor | float
    gamma2: torch.Tensor | float
    g: SymmetricOperator | None = None
    c: SymmetricOperator | None = None
    mean_g: torch.Tensor | None = None
    sigma_star: SymmetricOperator | None = None
    level: NoiseLevel | None = None
    lam: float | None = None
    kappa: float | None = None
    s2: float | None = None

    @staticmethod
    def at(grid: Grid, t, *, g: SymmetricOperator, c: SymmetricOperator | None, mean_g) -> ReverseStep:
        """Scalars of step(s) ``t`` (an int, or a 1-D tensor of steps, giving shape (n, 1))."""
        return ReverseStep(*ReverseStep.scalars(grid, t), g, c, torch.as_tensor(mean_g))

    @staticmethod
    def ddim(grid: Grid, t: int, *, eta: float = 1.0) -> ReverseStep:
        """Step ``t`` (1..T) of ``grid`` for a DDIM(eta) sampler; eta = 1 is DDPM's exact reverse kernel:
        ``s2 = eta^2 beta~_t``, ``kappa = sqrt(1 - abar_{t-1} - s2) / sqrt(1 - abar_t)``,
        ``lam = sqrt(abar_{t-1}) - kappa sqrt(abar_t)`` (pathkl.matvecs)."""
        if not 1 <= t <= grid.T:
            raise InputError(f"step t = {t} outside 1..{grid.T}")
        if not 0.0 <= eta <= 1.0:
            raise InputError(f"DDIM eta must lie in [0, 1], got {eta}")
        abar_prev, abar = float(grid.abar[t - 1]), float(grid.abar[t])
        one_minus_prev, one_minus = float(grid.one_minus_abar[t - 1]), float(grid.one_minus_abar[t])
        beta, alpha, beta_tilde = float(grid.beta[t - 1]), float(grid.alpha[t - 1]), float(grid.beta_tilde[t - 1])
        s2 = eta**2 * beta_tilde
        if eta == 1.0:
            # (1 - abar_{t-1} - beta~) = alpha (1 - abar_{t-1})^2 / (1 - abar_t): no cancellation.
            kappa = math.sqrt(alpha) * one_minus_prev / one_minus
            lam = math.sqrt(abar_prev) * beta / one_minus
        else:
            kappa = math.sqrt(max(one_minus_prev - s2, 0.0) / one_minus)
            lam = math.sqrt(abar_prev) - kappa * math.sqrt(abar)
        gamma2 = abar_prev * beta**2 / one_minus**2
        return ReverseStep(beta, alpha, beta_tilde, gamma2, level=grid.level(t), lam=lam, kappa=kappa, s2=s2)

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

    @property
    def jacobian_scale(self) -> float:
        """``lam^2 (1 - abar_t) / sqrt(abar_t)``: ``lam^2 C = jacobian_scale * J_{xhat_0}`` (Tweedie)."""
        return self.lam**2 * float(self.level.one_minus_abar) / math.sqrt(float(self.level.abar))

    def mean(self, x: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        """The step's mean ``lam xhat_0 + kappa x`` (for DDPM, ``mu*_t = (x + beta score)/sqrt(alpha)``)."""
        return self.lam * x0_hat + self.kappa * x


#: ``||D||_F^2`` of a family's defect at each point, from ``G`` and ``E tr G / d``.
DefectNorm = Callable[[SymmetricOperator, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Rate:
    """``steps = Theta(T^-order)`` (None: ``steps`` does not vanish as T grows), with the leading
    constant ``coefficient * int_0^1 beta^(order+1) E ||D||_F^2 dtau`` (module docstring):
    ``defect_sq_norm`` gives ``||D||^2`` for order 1; for order 2 ``D = grad^3 log q`` (None)."""

    order: int | None
    coefficient: float = 0.0
    defect_sq_norm: DefectNorm | None = None


#: The rate where ``Sigma_t = Sigma*_t``: the negentropy of the reverse kernel (0 for Gaussian data).
MATCHED = Rate(2, 1.0 / 12.0)
#: No vanishing rate.
NO_RATE = Rate(None)


def _never(reference) -> bool:
    return False


@dataclass(frozen=True)
class Family:
    """A covariance family: how it forms ``Sigma_t`` for the KL, how it draws its noise in a sampler,
    its legend label and style, and its rate (entries: :mod:`pathkl.families`).

    ``kl_eigvals(step)``: the relative eigenvalues ``e`` of ``Sigma_t`` (module docstring), or None
    where ``e = 0``; ``kl_ratios(step)``: ``1 + e`` from ``step.sigma_star``. ``draw(family, reference,
    x, step, matvec, z, generator)`` draws ``N(0, Sigma_t(x))`` from standard normals ``z`` (n, d) for
    a sampler's :meth:`ReverseStep.ddim` step (``matvec``: ``v -> (s2 I + lam^2 C(x)) v``). Families
    with no ``kl_eigvals`` (``lanczos:k``, ``rademacher:M``) draw a random or probe-dependent kernel
    and have no exact path KL. ``general_rate``: the rate where the reference does not make
    ``Sigma_t = Sigma*_t``; ``optimal_on(reference)`` says where it does (known from the reference's
    structure), and ``optimal`` that it does on every reference.
    ``colour`` is an Okabe-Ito colour; ``shade`` (1..8, sized families) orders several sizes in one
    figure (pathkl.plotting). ``size``: k of ``lanczos:k``, M of ``rademacher:M`` (0 otherwise), each
    one covariance-vector product per reverse step.
    """

    name: str
    source: str
    label: str
    colour: str
    marker: str
    draw: Callable[..., torch.Tensor]
    kl_eigvals: Callable[[ReverseStep], torch.Tensor | None] | None = None
    # None where e > -1/2 always (beta_tilde: e >= 0; full: e = 0).
    kl_ratios: Callable[[ReverseStep], torch.Tensor] | None = None
    general_rate: Rate = NO_RATE
    optimal_on: Callable[[object], bool] = _never
    optimal: bool = False
    #: Whether Sigma_t depends on ``step.mean_g`` (an expectation over x_t), so that its error moves the KL.
    uses_mean_g: bool = False
    #: Whether Sigma_t reads ``step.c = Cov[x_0 | x_t]`` (``beta_tilde``), so that the mixture rules
    #: form it at their nodes; the others read G alone, and C was 40% of the outer nodes' closed forms.
    uses_c: bool = False
    #: The first step of a finite KL (``beta_tilde``: 2, since ``beta~_1 = 0`` makes step 1 +inf).
    first_step: int = 1
    #: Defined for DDPM only (eta = 1), not for DDIM.
    ddpm_only: bool = False
    size: int = 0
    shade: int | None = None

    @property
    def has_kl(self) -> bool:
        """Whether the family forms a Gaussian ``Sigma_t`` of its own, so that its path KL is exact."""
        return self.kl_eigvals is not None

    @property
    def products_per_step(self) -> int:
        """Covariance-vector products per reverse step in a sampler (each one JVP of the posterior mean)."""
        return self.size

    def relative_eigvals(self, step: ReverseStep) -> torch.Tensor:
        """Eigenvalues of ``Sigma_t^{-1/2} (Sigma*_t - Sigma_t) Sigma_t^{-1/2}``, shape (..., d)."""
        e = self.kl_eigvals(step)
        return torch.zeros_like(step.g.eigvals()) if e is None else e

    def gaussian_step_kl(self, step: ReverseStep, *, work: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """``KL(N(mu*, Sigma*_t) || N(mu*, Sigma_t)) = (1/2) sum_i phi(e_i)``, shape (...); ``1 + e_i``
        from ``step.sigma_star`` where phi needs it (module docstring); exactly 0, with no pass over
        the eigenvalues, where ``Sigma_t = Sigma*``. ``work``: three tensors shaped like the
        eigenvalues for phi to compute in (:func:`~pathkl.stable.u_minus_log1p`)."""
        e = self.kl_eigvals(step)
        if e is None:
            return step.beta.new_zeros(step.g.batch_shape)
        ratios = None if self.kl_ratios is None or step.sigma_star is None else (lambda: self.kl_ratios(step))
        return 0.5 * step.spectral_sum(u_minus_log1p(e, one_plus_u=ratios, work=work))

    def rate(self, reference) -> Rate:
        """The rate on ``reference``: :data:`MATCHED` where it makes ``Sigma_t = Sigma*_t``, else
        :attr:`general_rate` (diffrax's ``order(terms)``: the order may depend on the problem)."""
        if not self.has_kl:
            raise InputError(f"{self.name!r} has no exact path KL, so no rate")
        return MATCHED if self.exact_on(reference) else self.general_rate

    def exact_on(self, reference) -> bool:
        """Whether ``Sigma_t = Sigma*_t`` on ``reference``, so that its Gaussian step KL is 0."""
        return self.optimal or self.optimal_on(reference)

    def order(self, reference) -> int | None:
        """``steps = Theta(T^-order)`` on ``reference`` (None: it does not vanish)."""
        return self.rate(reference).order

    def noise(self, reference, x: torch.Tensor, step: ReverseStep, matvec, z: torch.Tensor, *,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw from ``N(0, Sigma_t(x))`` for a sampler's step, from standard normals ``z`` (n, d)."""
        return self.draw(self, reference, x, step, matvec, z, generator)
