"""The exact path-space KL of any Gaussian reverse model against an exact reference (docs/learned.md).

A model ``p(x_T) = N(0, I)``, ``p(x_{t-1} | x_t) = N(mu_theta(x_t), Sigma_theta(x_t))`` with a learned
mean and a learned covariance: diagonal or isotropic (what learned covariance heads predict: OCM,
SN-DDPM, I-DDPM, Analytic-DPM), dense (small d), or low rank plus diagonal,
``Sigma_theta = diag(s) + U U^T`` (a low-rank head). ``log N(y; m, S)`` is a quadratic in y, so its
expectation under the exact kernel ``q(. | x)`` sees only the kernel's mean ``mu*`` and covariance
``Sigma*`` (docs/learned.md section 1), and per step

    KL(q(.|x) || p(.|x)) = J(x) + (1/2) delta^T Sigma_theta^-1 delta + KL(N(0, Sigma*) || N(0, Sigma_theta)),

``delta = mu* - mu_theta``, ``J`` the exact kernel's negentropy (the ``full`` family's step KL,
docs/theory.md section 4.2). The covariance part is evaluated without cancellation as
``(1/2) sum_i phi(u_i)``, ``phi(u) = u - log1p(u)``, over the eigenvalues ``u_i`` of the whitened
difference ``G (Sigma* - Sigma_theta) G^T`` with ``G Sigma_theta G^T = I`` (docs/learned.md section 2):
``G = L^-1`` (Cholesky) for a dense covariance, ``G = (I + W W^T)^{-1/2} diag(s)^{-1/2}``,
``W = diag(s)^{-1/2} U``, for a low-rank one (the Woodbury identity in symmetric-root form: O(d^2 r)
beyond the eigenvalues, no d x d factorisation of Sigma_theta, and no log-determinant at all). For a
diagonal ``Sigma_theta = diag(s)`` it splits once more without forming Sigma*,

    KL(N(0, Sigma*) || N(0, diag s)) = K_diag(x) + (1/2) sum_i phi(Sigma*_ii / s_i - 1),

``K_diag`` the Gaussian part of the ``diag`` family (what no diagonal covariance removes) and the
second term the mismatch of the model's diagonal. So the path KL is the ``full`` family's path KL
(the ``diag`` family's for a diagonal model; pathkl.path_kl, with its errors) plus ``sum_t E_{q_t}``
of the mean part and the covariance part (the mismatch), which a rule of pathkl.rules integrates with
an error: the paired quadrature ladder for d <= 3, stratified Monte Carlo in any d (its 95%
half-width). Everything the model is asked is ``mean(x, t, grid)`` and ``variance(x, t, grid)`` or
``covariance(x, t, grid)`` at the rule's points (:class:`GaussianReverseModel`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .covariances import ReverseStep
from .errors import InputError
from .estimate import Z95, Estimate
from .families import get_family
from .pathspace import PathKL, path_kl
from .references import GaussianReference, MixtureReference
from .rules import MONTE_CARLO, QUADRATURE, RULES, MonteCarlo, QuadratureRule
from .rules.quadrature import MAX_QUADRATURE_DIM
from .schedules import DTYPE, Grid
from .stable import u_minus_log1p

_EPS = torch.finfo(DTYPE).eps
#: Rounding of the exact mean ``(x + beta s) / sqrt(alpha)`` and of ``delta``, in ulps of their terms.
_MEAN_ULPS = 16
#: Relative rounding of ``Sigma*_ii = beta~ + gamma^2 diag C(x)`` (positive terms; C's centred second
#: moments cancel to a few ulps of the component means' scale).
_SIGMA_ULPS = 64


@runtime_checkable
class GaussianReverseModel(Protocol):
    """A Gaussian reverse model: at the points ``x`` (n, d) of level t, the mean of ``x_{t-1}`` and its
    covariance. ``t`` is the step of ``grid`` (1..T), from ``x_t`` to ``x_{t-1}``.

    The covariance comes from exactly one of two methods:

    - ``variance(x, t, grid)``: the diagonal of ``Sigma_theta(x)``, all > 0: shape (n, d), (d,) for one
      diagonal at every point, (n, 1) or () for an isotropic covariance (whatever broadcasts to (n, d));
    - ``covariance(x, t, grid)``: a dense symmetric positive definite (n, d, d) or (d, d) tensor (small
      d), or a :class:`LowRankPlusDiagonal`.

    :class:`DiagonalGaussianModel` and :class:`FullGaussianModel` make one from functions."""

    def mean(self, x: torch.Tensor, t: int, grid: Grid) -> torch.Tensor:
        """``mu_theta(x)``, shape (n, d)."""


@dataclass(frozen=True)
class LowRankPlusDiagonal:
    """``Sigma_theta = diag(diagonal) + factor factor^T``: ``diagonal`` > 0 broadcasting to (n, d) as a
    model's ``variance`` does, ``factor`` (n, d, r) or (d, r), any r >= 0 (what a low-rank head predicts)."""

    diagonal: torch.Tensor
    factor: torch.Tensor


@dataclass(frozen=True)
class DiagonalGaussianModel:
    """A :class:`GaussianReverseModel` from two functions ``(x, t, grid) -> tensor``, e.g. a trained
    network's mean and covariance heads. For a score network ``s(x, t)`` of a DDPM chain the mean is
    ``(x + beta_t s(x, t)) / sqrt(alpha_t)`` (docs/theory.md section 2.2; ``grid.beta[t - 1]``,
    ``grid.alpha[t - 1]``)."""

    mean: Callable[[torch.Tensor, int, Grid], torch.Tensor]
    variance: Callable[[torch.Tensor, int, Grid], torch.Tensor]


@dataclass(frozen=True)
class FullGaussianModel:
    """A :class:`GaussianReverseModel` with a dense or low-rank-plus-diagonal covariance from two
    functions: ``mean(x, t, grid)`` and ``covariance(x, t, grid)`` (a dense (n, d, d) or (d, d) tensor,
    or a :class:`LowRankPlusDiagonal`)."""

    mean: Callable[[torch.Tensor, int, Grid], torch.Tensor]
    covariance: Callable[[torch.Tensor, int, Grid], torch.Tensor | LowRankPlusDiagonal]


@dataclass(frozen=True)
class ModelPathKL:
    """The path-space KL of a Gaussian reverse model and its parts, each an :class:`Estimate` (value,
    deterministic bound, Monte Carlo standard error; ``.error`` is what pathkl vouches for):

    - ``terminal``: ``KL(q_T || N(0, I))``;
    - ``full``: ``sum_t E J_t``, the ``full`` family's steps (no Gaussian model does better);
    - ``mean``: ``sum_t E (1/2) delta^T Sigma_theta^-1 delta``;
    - ``covariance``: ``sum_t E KL(N(0, Sigma*) || N(0, Sigma_theta))``; for a diagonal model (one
      given by ``variance``) it is ``offdiagonal + mismatch``: ``offdiagonal`` the ``diag`` family's
      excess over ``full`` (what no diagonal covariance removes), ``mismatch`` that of the model's
      diagonal over ``diag(Sigma*)``; both None for a dense or low-rank model, which has no such floor;
    - ``steps`` = ``full + mean + covariance`` (summed from ``first_step``) and ``total`` = ``terminal + steps``.

    ``per_step`` / ``per_step_error``: the model's step KLs, t = 1..T (NaN before ``first_step``)."""

    terminal: Estimate
    full: Estimate
    mean: Estimate
    covariance: Estimate
    offdiagonal: Estimate | None
    mismatch: Estimate | None
    steps: Estimate
    total: Estimate
    per_step: torch.Tensor
    per_step_error: torch.Tensor
    method: str
    rtol: float
    first_step: int = 1

    @property
    def met_rtol(self) -> bool:
        """Whether ``total``'s error is within ``rtol`` of it."""
        return math.isinf(self.total.value) or self.total.error <= self.rtol * abs(self.total.value)

    def as_dict(self) -> dict:
        parts = ("terminal", "full", "mean", "covariance", "offdiagonal", "mismatch", "steps", "total")
        out = {name: None if getattr(self, name) is None else getattr(self, name).as_dict() for name in parts}
        out.update(per_step=self.per_step.tolist(), per_step_error=self.per_step_error.tolist(),
                   method=self.method, rtol=self.rtol, met_rtol=self.met_rtol, first_step=self.first_step)
        return out


def _expectation_rule(reference, rule):
    """The rule that integrates the model's parts over ``x_t``: ``rule`` (a name or a rule object),
    else quadrature for d <= 3 and Monte Carlo beyond (closed forms know nothing of a model)."""
    if isinstance(rule, str):
        if rule not in RULES:
            raise InputError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
        rule = RULES[rule]
    if rule is None:
        rule = QUADRATURE if reference.dim <= MAX_QUADRATURE_DIM else MONTE_CARLO
    if not isinstance(rule, (QuadratureRule, MonteCarlo)):
        raise InputError(f"the {rule.name} rule cannot integrate a model over x_t; use quadrature (d <= "
                         f"{MAX_QUADRATURE_DIM}) or monte carlo")
    if isinstance(rule, QuadratureRule) and reference.dim > MAX_QUADRATURE_DIM:
        raise InputError(f"the quadrature rule integrates over x_t for d <= {MAX_QUADRATURE_DIM}, got d = "
                         f"{reference.dim}; use monte carlo")
    return rule


def _integrated_reference(reference, rule):
    """``reference`` as the rule integrates over it: quadrature places its nodes in mixture
    components, so a Gaussian becomes a one-component mixture (d <= 3, exact)."""
    if not isinstance(reference, (GaussianReference, MixtureReference)):
        raise InputError(f"model_path_kl takes a Gaussian or mixture reference, got {type(reference).__name__} "
                         "(a model couples a product's blocks, so its parts cannot be summed over them)")
    if isinstance(rule, QuadratureRule) and isinstance(reference, GaussianReference):
        cov = reference.basis.dense(reference.eigenvalues)
        return MixtureReference.from_components([1.0], reference.mean[None], covs=cov[None])
    return reference


def _variances(value, shape: torch.Size, t: int) -> torch.Tensor:
    s = torch.as_tensor(value, dtype=DTYPE).detach()
    try:
        s = s.expand(shape)
    except RuntimeError:
        raise InputError(f"step {t}: the model's variance has shape {tuple(s.shape)}, expected (n, d) = "
                         f"{tuple(shape)}, (d,), (n, 1) or a scalar") from None
    if not (torch.isfinite(s).all() and (s > 0).all()):
        raise InputError(f"step {t}: the model's variances must be finite and > 0")
    return s


def is_diagonal(model) -> bool:
    """Whether ``model`` gives its covariance by ``variance`` (True) or ``covariance`` (False);
    :class:`InputError` unless it has exactly one of them and a ``mean``."""
    has = [callable(getattr(model, name, None)) for name in ("mean", "variance", "covariance")]
    if not has[0] or has[1] == has[2]:
        raise InputError("a Gaussian reverse model needs mean(x, t, grid) and exactly one of variance(x, t, grid) "
                         "(a diagonal) or covariance(x, t, grid) (dense or LowRankPlusDiagonal)")
    return has[1]


class _Whitening:
    """A model covariance ``B = Sigma_theta`` at the points, with a map ``G`` such that
    ``G B G^T = I`` and bounds ``lam_min <= lambda_min(B)``, ``norm >= ||B||_2`` per point."""

    matrix: torch.Tensor
    lam_min: torch.Tensor
    norm: torch.Tensor

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """``G y`` for ``y`` (n, d, m)."""
        raise NotImplementedError


class _CholeskyWhitening(_Whitening):
    """Dense ``B = L L^T``, ``G = L^-1``."""

    def __init__(self, cov: torch.Tensor, batch: torch.Size, t: int):
        d = batch[-1]
        b = torch.as_tensor(cov, dtype=DTYPE).detach()
        try:
            b = b.expand(*batch[:-1], d, d)
        except RuntimeError:
            raise InputError(f"step {t}: the model's covariance has shape {tuple(b.shape)}, expected "
                             f"{(*batch[:-1], d, d)} or {(d, d)}") from None
        scale = b.abs().amax((-2, -1))
        if not torch.isfinite(b).all() or ((b - b.transpose(-2, -1)).abs().amax((-2, -1)) > 1e-10 * scale).any():
            raise InputError(f"step {t}: the model's covariance must be finite and symmetric")
        self.matrix = 0.5 * (b + b.transpose(-2, -1))
        self.chol, info = torch.linalg.cholesky_ex(self.matrix)
        eigenvalues = torch.linalg.eigvalsh(self.matrix)
        if (info != 0).any() or not (eigenvalues[..., 0] > 0).all():
            raise InputError(f"step {t}: the model's covariance must be positive definite")
        self.lam_min, self.norm = eigenvalues[..., 0], eigenvalues[..., -1]

    def apply(self, y):
        return torch.linalg.solve_triangular(self.chol, y, upper=False)


class _LowRankWhitening(_Whitening):
    """``B = D + U U^T``, ``D = diag(s)``: with ``W = D^{-1/2} U`` and ``W^T W = V diag(sigma^2) V^T``,
    ``G = (I + W K W^T) D^{-1/2}``, ``K = V diag(g(sigma^2)) V^T``,
    ``g(q) = ((1 + q)^{-1/2} - 1) / q = -1 / (sqrt(1 + q) (1 + sqrt(1 + q)))``, so that
    ``I + W K W^T = (I + W W^T)^{-1/2}`` (on the range of W it scales by ``(1 + sigma^2)^{-1/2}``) and
    ``G B G^T = I``. Costs O(d r^2) to set up and O(d r m) per application; ``lambda_min(B) >= min s``,
    ``||B||_2 <= max s + ||U||_F^2``."""

    def __init__(self, cov: LowRankPlusDiagonal, batch: torch.Size, t: int):
        s = _variances(cov.diagonal, batch, t)
        u = torch.as_tensor(cov.factor, dtype=DTYPE).detach()
        if u.ndim not in (2, 3) or u.shape[-2] != batch[-1]:
            raise InputError(f"step {t}: the model's low-rank factor has shape {tuple(u.shape)}, expected "
                             f"(n, d, r) or (d, r) with d = {batch[-1]}")
        try:
            u = u.expand(*batch, u.shape[-1])
        except RuntimeError:
            raise InputError(f"step {t}: the model's low-rank factor has shape {tuple(u.shape)}, expected "
                             f"{(*batch, u.shape[-1])} or {(batch[-1], u.shape[-1])}") from None
        if not torch.isfinite(u).all():
            raise InputError(f"step {t}: the model's low-rank factor must be finite")
        self.root = s.sqrt()
        self.w = u / self.root[..., None]
        q, v = torch.linalg.eigh(self.w.transpose(-2, -1) @ self.w)
        root_one_plus = (1.0 + q.clamp_min(0.0)).sqrt()
        self.k = (v * (-1.0 / (root_one_plus * (1.0 + root_one_plus)))[..., None, :]) @ v.transpose(-2, -1)
        self.matrix = torch.diag_embed(s) + u @ u.transpose(-2, -1)
        self.lam_min = s.amin(-1)
        self.norm = s.amax(-1) + (u**2).sum((-2, -1))

    def apply(self, y):
        z = y / self.root[..., None]
        return z + self.w @ (self.k @ (self.w.transpose(-2, -1) @ z))


def _whitening(cov, batch: torch.Size, t: int) -> _Whitening:
    if isinstance(cov, LowRankPlusDiagonal):
        return _LowRankWhitening(cov, batch, t)
    return _CholeskyWhitening(cov, batch, t)


def _phi_bound(u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``sum_i |phi(u_i + e_i) - phi(u_i)|`` over ``|e_i| <= delta``: ``phi' = u / (1 + u)``,
    ``phi'' = 1 / (1 + u)^2``, so each term is at most ``|u| delta / (1 + u) + delta^2 / (2 (1 + u - delta)^2)``
    (infinite once ``delta >= 1 + u``)."""
    gap = 1.0 + u - delta
    terms = u.abs() * delta / (1.0 + u) + delta**2 / (2.0 * gap**2)
    return torch.where(gap > 0, terms, math.inf).sum(-1)


def _exact_mean(reference, x, lv, beta, root_alpha):
    """``mu* = (x + beta s) / sqrt(alpha)`` and the rounding allowance of each of its entries."""
    score = reference.score(x, lv)
    exact = (x + beta * score) / root_alpha
    return exact, _MEAN_ULPS * _EPS * (x.abs() + beta * score.abs()) / root_alpha


def _model_mean(model, x, t, grid) -> torch.Tensor:
    # Not under no_grad: a model may differentiate inside (a score from an energy network).
    mu = torch.as_tensor(model.mean(x, t, grid), dtype=DTYPE).detach()
    if mu.shape != x.shape or not torch.isfinite(mu).all():
        raise InputError(f"step {t}: the model's mean must be finite with shape {tuple(x.shape)}, got "
                         f"{tuple(mu.shape)}")
    return mu


def step_integrands(reference, model: GaussianReverseModel, grid: Grid, t: int):
    """The function ``x -> (values, bounds)`` of step t that the rules integrate: columns
    ``(1/2) delta^T Sigma_theta^-1 delta`` and the covariance part at the points x (n, d), and bounds on
    their rounding (module docstring; docs/learned.md section 2). The covariance part is the mismatch
    ``(1/2) sum_i phi(Sigma*_ii / s_i - 1)`` for a diagonal model, ``KL(N(0, Sigma*) || N(0, Sigma_theta))``
    otherwise."""
    if is_diagonal(model):
        return _diagonal_integrands(reference, model, grid, t)
    return _covariance_integrands(reference, model, grid, t)


def _diagonal_integrands(reference, model, grid: Grid, t: int):
    lv = grid.level(t)
    beta, alpha, beta_tilde, gamma2 = ReverseStep.scalars(grid, t)
    root_alpha = alpha.sqrt()

    def integrands(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        exact, e_exact = _exact_mean(reference, x, lv, beta, root_alpha)
        sigma_star = beta_tilde + gamma2 * reference.posterior_cov_diagonal(x, lv)
        mu = _model_mean(model, x, t, grid)
        s = _variances(model.variance(x, t, grid), x.shape, t)
        delta = exact - mu
        u = (sigma_star - s) / s
        mean_part = 0.5 * (delta**2 / s).sum(-1)
        mismatch = 0.5 * u_minus_log1p(u, one_plus_u=lambda: sigma_star / s).sum(-1)
        # |d delta| <= e (ulps of its terms); d phi(u) = u/(1+u) d(1+u), |d(1+u)| <= rho (1+u).
        e = e_exact + _MEAN_ULPS * _EPS * mu.abs()
        mean_bound = ((delta.abs() * e + 0.5 * e**2) / s).sum(-1)
        mismatch_bound = 0.5 * _SIGMA_ULPS * _EPS * u.abs().sum(-1)
        return torch.stack([mean_part, mismatch], -1), torch.stack([mean_bound, mismatch_bound], -1)

    return integrands


def _covariance_integrands(reference, model, grid: Grid, t: int):
    lv = grid.level(t)
    beta, alpha, beta_tilde, gamma2 = ReverseStep.scalars(grid, t)
    root_alpha = alpha.sqrt()

    def integrands(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = x.shape[-1]
        exact, e_exact = _exact_mean(reference, x, lv, beta, root_alpha)
        eye = torch.eye(d, dtype=DTYPE, device=x.device)
        sigma_star = beta_tilde * eye + gamma2 * reference.posterior_cov(x, lv)
        mu = _model_mean(model, x, t, grid)
        white = _whitening(model.covariance(x, t, grid), x.shape, t)
        delta = exact - mu
        mean_part = 0.5 * (white.apply(delta[..., None])[..., 0] ** 2).sum(-1)

        def whitened(a: torch.Tensor) -> torch.Tensor:
            m = white.apply(white.apply(a).transpose(-2, -1))
            return torch.linalg.eigvalsh(0.5 * (m + m.transpose(-2, -1)))

        # G (Sigma* - B) G^T: the difference first (exact where the two nearly agree, Sterbenz), so
        # its eigenvalues u carry the relative precision of a small KL; 1 + u from G Sigma* G^T.
        u = whitened(sigma_star - white.matrix)
        covariance = 0.5 * u_minus_log1p(u, one_plus_u=lambda: whitened(sigma_star)).sum(-1)
        # Rounding: Sigma* to _SIGMA_ULPS relative (normwise), and the Cholesky / triangular solves /
        # eigvalsh, backward stable, to O(d eps) of ||Sigma*|| + ||B||; whitened, these move each u_i by
        # at most delta_u (Weyl), and phi by _phi_bound. The mean part: |d (1/2)|y|^2| <= |y| |G e| +
        # |G e|^2 / 2 with |G e| <= |e| / sqrt(lambda_min(B)), plus the solves' relative O(d eps cond B).
        ulps = _SIGMA_ULPS * d * _EPS
        delta_u = ulps * (torch.linalg.matrix_norm(sigma_star) + white.norm) / white.lam_min
        cov_bound = 0.5 * _phi_bound(u, delta_u[..., None])
        e = torch.linalg.vector_norm(e_exact + _MEAN_ULPS * _EPS * mu.abs(), dim=-1) / white.lam_min.sqrt()
        mean_bound = (2.0 * mean_part).sqrt() * e + 0.5 * e**2 + ulps * white.norm / white.lam_min * mean_part
        return torch.stack([mean_part, covariance], -1), torch.stack([mean_bound, cov_bound], -1)

    return integrands


def _parts(result: PathKL) -> tuple[Estimate, Estimate]:
    """``terminal`` and ``steps`` of a path KL as Estimates (bound = error less the 95% half-width)."""
    def estimate(value, error, stderr):
        return Estimate(value, max(error - Z95 * stderr, 0.0), stderr)

    return (estimate(result.terminal, result.terminal_error, result.terminal_stderr),
            estimate(result.steps, result.steps_error, result.steps_stderr))


def _difference(a: Estimate, b: Estimate) -> Estimate:
    """``a - b`` with the errors of both (bounds add; standard errors in quadrature, which covers the
    positively correlated estimates of common random numbers)."""
    return Estimate(a.value - b.value, a.bound + b.bound, math.hypot(a.stderr, b.stderr))


def model_path_kl(reference, grid: Grid, model: GaussianReverseModel, *, rtol: float = 1e-6, rule=None,
                  first_step: int = 1) -> ModelPathKL:
    """The path-space KL ``KL(q(x_{0:T}) || p(x_{0:T}))`` of ``model`` (a :class:`GaussianReverseModel`:
    diagonal, dense or low-rank-plus-diagonal covariance) against the exact reverse chain of
    ``reference`` (Gaussian or mixture) on ``grid``, split as :class:`ModelPathKL` says, every part with
    its error (module docstring, docs/learned.md).

    ``rule``: how the model's parts are integrated over ``x_t`` and the mixture's ``full``/``diag``
    path KLs are computed: a name (``"quadrature"``, ``"monte carlo"``) or a rule object such as
    ``pathkl.rules.MonteCarlo(outer=4096, seed=1)``; None: quadrature for d <= 3 (climbing to
    ``rtol``), Monte Carlo beyond (the 95% interval of its sample size; each step's draws are seeded
    by ``(seed, t)``). ``first_step`` as in :func:`pathkl.path_kl`."""
    if not 1 <= first_step <= grid.T:
        raise InputError(f"first step must be between 1 and T = {grid.T}, got {first_step}")
    if not rtol > 0:
        raise InputError(f"rtol must be > 0, got {rtol}")
    diagonal = is_diagonal(model)
    chosen = _expectation_rule(reference, rule)
    block = _integrated_reference(reference, chosen)
    full = path_kl(reference, grid, get_family("full"), rtol=rtol, rule=rule, first_step=first_step)
    terminal, full_steps = _parts(full)
    # A diagonal model's covariance part starts from the diag family's floor; any other from full's.
    base = path_kl(reference, grid, get_family("diag"), rtol=rtol, rule=rule, first_step=first_step) if diagonal else full
    _, base_steps = _parts(base)
    per_step = torch.full((grid.T,), math.nan, dtype=DTYPE)
    per_step_error = torch.full((grid.T,), math.nan, dtype=DTYPE)
    mean, excess = Estimate(0.0), Estimate(0.0)
    for t in range(first_step, grid.T + 1):
        step_mean, step_excess = chosen.expectation(block, grid.level(t), step_integrands(reference, model, grid, t),
                                                    rtol=rtol, key=t)
        mean, excess = mean + step_mean, excess + step_excess
        per_step[t - 1] = base.per_step[t - 1] + step_mean.value + step_excess.value
        per_step_error[t - 1] = base.per_step_error[t - 1] + step_mean.error + step_excess.error
    offdiagonal = _difference(base_steps, full_steps) if diagonal else None
    covariance = offdiagonal + excess if diagonal else excess
    steps = base_steps + mean + excess
    method = " + ".join(dict.fromkeys([full.method, chosen.name]))
    return ModelPathKL(terminal, full_steps, mean, covariance, offdiagonal, excess if diagonal else None, steps,
                       terminal + steps, per_step, per_step_error, method, rtol, first_step)
