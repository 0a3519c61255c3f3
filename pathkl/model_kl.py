"""The exact path-space KL of any Gaussian reverse model against an exact reference (docs/learned.md).

A model ``p(x_T) = N(0, I)``, ``p(x_{t-1} | x_t) = N(mu_theta(x_t), Sigma_theta(x_t))`` with a learned
mean and a diagonal or isotropic covariance (what learned covariance heads predict: OCM, SN-DDPM,
I-DDPM, Analytic-DPM). ``log N(y; m, S)`` is a quadratic in y, so its expectation under the exact
kernel ``q(. | x)`` sees only the kernel's mean ``mu*`` and covariance ``Sigma*`` (docs/learned.md
section 1), and per step

    KL(q(.|x) || p(.|x)) = J(x) + (1/2) delta^T Sigma_theta^-1 delta + KL(N(0, Sigma*) || N(0, Sigma_theta)),

``delta = mu* - mu_theta``, ``J`` the exact kernel's negentropy (the ``full`` family's step KL,
docs/theory.md section 4.2). For ``Sigma_theta = diag(s)`` the covariance part splits once more,

    KL(N(0, Sigma*) || N(0, diag s)) = K_diag(x) + (1/2) sum_i phi(Sigma*_ii / s_i - 1),   phi(u) = u - log1p(u),

``K_diag`` the Gaussian part of the ``diag`` family (what no diagonal covariance removes) and the
second term the mismatch of the model's diagonal. So the path KL is the ``diag`` family's path KL
(pathkl.path_kl, with its errors) plus ``sum_t E_{q_t}`` of the mean part and the mismatch, which a
rule of pathkl.rules integrates with an error: the paired quadrature ladder for d <= 3, stratified
Monte Carlo in any d (its 95% half-width). Everything the model is asked is ``mean(x, t, grid)`` and
``variance(x, t, grid)`` at the rule's points.
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
    """A Gaussian reverse model: at the points ``x`` (n, d) of level t, the mean of ``x_{t-1}``
    and the diagonal of its covariance. ``t`` is the step of ``grid`` (1..T), from ``x_t`` to ``x_{t-1}``."""

    def mean(self, x: torch.Tensor, t: int, grid: Grid) -> torch.Tensor:
        """``mu_theta(x)``, shape (n, d)."""

    def variance(self, x: torch.Tensor, t: int, grid: Grid) -> torch.Tensor:
        """The diagonal of ``Sigma_theta(x)``, all > 0: shape (n, d), (d,) for one diagonal at every
        point, (n, 1) or () for an isotropic covariance (whatever broadcasts to (n, d))."""


@dataclass(frozen=True)
class DiagonalGaussianModel:
    """A :class:`GaussianReverseModel` from two functions ``(x, t, grid) -> tensor``, e.g. a trained
    network's mean and covariance heads. For a score network ``s(x, t)`` of a DDPM chain the mean is
    ``(x + beta_t s(x, t)) / sqrt(alpha_t)`` (docs/theory.md section 2.2; ``grid.beta[t - 1]``,
    ``grid.alpha[t - 1]``)."""

    mean: Callable[[torch.Tensor, int, Grid], torch.Tensor]
    variance: Callable[[torch.Tensor, int, Grid], torch.Tensor]


@dataclass(frozen=True)
class ModelPathKL:
    """The path-space KL of a Gaussian reverse model and its parts, each an :class:`Estimate` (value,
    deterministic bound, Monte Carlo standard error; ``.error`` is what pathkl vouches for):

    - ``terminal``: ``KL(q_T || N(0, I))``;
    - ``full``: ``sum_t E J_t``, the ``full`` family's steps (no Gaussian model does better);
    - ``mean``: ``sum_t E (1/2) delta^T Sigma_theta^-1 delta``;
    - ``covariance``: ``sum_t E KL(N(0, Sigma*) || N(0, Sigma_theta))`` = ``offdiagonal + mismatch``:
      ``offdiagonal`` the ``diag`` family's excess over ``full`` (what no diagonal covariance removes),
      ``mismatch`` that of the model's diagonal over ``diag(Sigma*)``;
    - ``steps`` = ``full + mean + covariance`` (summed from ``first_step``) and ``total`` = ``terminal + steps``.

    ``per_step`` / ``per_step_error``: the model's step KLs, t = 1..T (NaN before ``first_step``)."""

    terminal: Estimate
    full: Estimate
    mean: Estimate
    covariance: Estimate
    offdiagonal: Estimate
    mismatch: Estimate
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
        out = {name: getattr(self, name).as_dict() for name in parts}
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


def step_integrands(reference, model: GaussianReverseModel, grid: Grid, t: int):
    """The function ``x -> (values, bounds)`` of step t that the rules integrate: columns
    ``(1/2) delta^T diag(s)^-1 delta`` and ``(1/2) sum_i phi(Sigma*_ii / s_i - 1)`` at the points x
    (n, d), and bounds on their rounding (module docstring; docs/learned.md section 2)."""
    lv = grid.level(t)
    beta, alpha, beta_tilde, gamma2 = ReverseStep.scalars(grid, t)
    root_alpha = alpha.sqrt()

    def integrands(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = reference.score(x, lv)
        exact = (x + beta * score) / root_alpha
        sigma_star = beta_tilde + gamma2 * reference.posterior_cov_diagonal(x, lv)
        # Not under no_grad: a model may differentiate inside (a score from an energy network).
        mu = torch.as_tensor(model.mean(x, t, grid), dtype=DTYPE).detach()
        s = _variances(model.variance(x, t, grid), x.shape, t)
        if mu.shape != x.shape or not torch.isfinite(mu).all():
            raise InputError(f"step {t}: the model's mean must be finite with shape {tuple(x.shape)}, got "
                             f"{tuple(mu.shape)}")
        delta = exact - mu
        u = (sigma_star - s) / s
        mean_part = 0.5 * (delta**2 / s).sum(-1)
        mismatch = 0.5 * u_minus_log1p(u, one_plus_u=lambda: sigma_star / s).sum(-1)
        # |d delta| <= e (ulps of its terms); d phi(u) = u/(1+u) d(1+u), |d(1+u)| <= rho (1+u).
        e = _MEAN_ULPS * _EPS * ((x.abs() + beta * score.abs()) / root_alpha + mu.abs())
        mean_bound = ((delta.abs() * e + 0.5 * e**2) / s).sum(-1)
        mismatch_bound = 0.5 * _SIGMA_ULPS * _EPS * u.abs().sum(-1)
        return torch.stack([mean_part, mismatch], -1), torch.stack([mean_bound, mismatch_bound], -1)

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
    """The path-space KL ``KL(q(x_{0:T}) || p(x_{0:T}))`` of ``model`` (a :class:`GaussianReverseModel`)
    against the exact reverse chain of ``reference`` (Gaussian or mixture) on ``grid``, split as
    :class:`ModelPathKL` says, every part with its error (module docstring, docs/learned.md).

    ``rule``: how the model's parts are integrated over ``x_t`` and the mixture's ``full``/``diag``
    path KLs are computed: a name (``"quadrature"``, ``"monte carlo"``) or a rule object such as
    ``pathkl.rules.MonteCarlo(outer=4096, seed=1)``; None: quadrature for d <= 3 (climbing to
    ``rtol``), Monte Carlo beyond (the 95% interval of its sample size; each step's draws are seeded
    by ``(seed, t)``). ``first_step`` as in :func:`pathkl.path_kl`."""
    if not 1 <= first_step <= grid.T:
        raise InputError(f"first step must be between 1 and T = {grid.T}, got {first_step}")
    if not rtol > 0:
        raise InputError(f"rtol must be > 0, got {rtol}")
    chosen = _expectation_rule(reference, rule)
    block = _integrated_reference(reference, chosen)
    full = path_kl(reference, grid, get_family("full"), rtol=rtol, rule=rule, first_step=first_step)
    diag = path_kl(reference, grid, get_family("diag"), rtol=rtol, rule=rule, first_step=first_step)
    terminal, full_steps = _parts(full)
    _, diag_steps = _parts(diag)
    per_step = torch.full((grid.T,), math.nan, dtype=DTYPE)
    per_step_error = torch.full((grid.T,), math.nan, dtype=DTYPE)
    mean, mismatch = Estimate(0.0), Estimate(0.0)
    for t in range(first_step, grid.T + 1):
        step_mean, step_mismatch = chosen.expectation(block, grid.level(t), step_integrands(reference, model, grid, t),
                                                      rtol=rtol, key=t)
        mean, mismatch = mean + step_mean, mismatch + step_mismatch
        per_step[t - 1] = diag.per_step[t - 1] + step_mean.value + step_mismatch.value
        per_step_error[t - 1] = diag.per_step_error[t - 1] + step_mean.error + step_mismatch.error
    offdiagonal = _difference(diag_steps, full_steps)
    steps = diag_steps + mean + mismatch
    method = " + ".join(dict.fromkeys([full.method, chosen.name]))
    return ModelPathKL(terminal, full_steps, mean, offdiagonal + mismatch, offdiagonal, mismatch, steps,
                       terminal + steps, per_step, per_step_error, method, rtol, first_step)
