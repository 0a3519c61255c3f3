"""The path-space KL engine (docs/errors.md):

    KL(q(x_{0:T}) || p(x_{0:T})) = KL(q_T || N(0, I)) + sum_t E_{x_t ~ q_t} KL(q(.|x_t) || p(.|x_t)),

reported as ``terminal`` (first term), ``steps`` (the sum) and ``total``, each with the absolute error
pathkl vouches for. A reference only knows its closed forms; how each expectation over x_t is
computed is chosen here, per independent block of the reference (:func:`choose_method`):

- ``closed form``: Gaussian blocks; the error is a rounding bound;
- ``quadrature``: mixtures in d <= 3 (pathkl.mixture_kl), each step climbing a ladder of paired
  rules until its a-posteriori error estimate meets ``rtol``;
- ``monte carlo``: mixtures in d > 3, or any mixture when ``rule="monte carlo"`` (pathkl.mixture_mc,
  sample sizes and seed from ``monte_carlo``); the error is the half-width of the 95% interval.

Where the error cannot be brought within ``rtol`` the result says so (``met_rtol`` False) and still
reports the error it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import mixture_kl, mixture_mc
from .covariances import Family
from .errors import InputError
from .estimate import Z95, Estimate
from .mixture_mc import MonteCarlo
from .references import GaussianReference, MixtureReference
from .references.product import blocks
from .schedules import DTYPE, Grid, NoiseLevel

CLOSED_FORM, QUADRATURE, MONTE_CARLO = "closed form", "quadrature", "monte carlo"
#: Rounding allowance of a closed-form step KL, relative: the relative eigenvalues carry a few ulps
#: each (no subtraction of nearly equal numbers), phi is evaluated to a few ulps, and the terms are
#: positive; checked against 50-digit arithmetic in tests/test_pathspace.py.
ROUNDING = 64 * torch.finfo(DTYPE).eps
#: Monte Carlo sample sizes and seed unless given.
DEFAULT_MONTE_CARLO = MonteCarlo()


@dataclass(frozen=True)
class StepKLs:
    """Per-step KLs, t = 1..T, with a deterministic error bound and a Monte Carlo standard error each."""

    values: torch.Tensor
    bound: torch.Tensor
    stderr: torch.Tensor

    @property
    def errors(self) -> torch.Tensor:
        """The absolute error of each step: ``bound + z95 * stderr``."""
        return self.bound + Z95 * self.stderr

    def __add__(self, other: StepKLs) -> StepKLs:
        return StepKLs(self.values + other.values, self.bound + other.bound, torch.hypot(self.stderr, other.stderr))

    def total(self, first_step: int = 1) -> Estimate:
        """Sum of steps ``first_step..T`` (``math.fsum``; ``inf`` if any term is, exactly)."""
        kept = slice(first_step - 1, None)
        values = self.values[kept].tolist()
        if math.inf in values:
            return Estimate(math.inf)
        return Estimate(math.fsum(values), math.fsum(self.bound[kept].tolist()),
                        math.sqrt(math.fsum((self.stderr[kept] ** 2).tolist())))


@dataclass(frozen=True)
class PathKL:
    """Path-space KL and its parts, each with its absolute error (``*_error``: bound plus 1.96 Monte
    Carlo standard errors). ``steps`` sums ``per_step[first_step - 1:]``; ``total`` is ``+inf`` whenever
    a summed step is (exactly: no error)."""

    terminal: float
    steps: float
    total: float
    terminal_error: float
    steps_error: float
    total_error: float
    per_step: torch.Tensor
    per_step_error: torch.Tensor
    method: str
    rtol: float
    first_step: int = 1
    steps_stderr: float = 0.0
    terminal_stderr: float = 0.0

    @property
    def met_rtol(self) -> bool:
        """Whether ``total``'s error is within ``rtol`` of it."""
        return math.isinf(self.total) or self.total_error <= self.rtol * abs(self.total)

    @property
    def stderr(self) -> float:
        """Monte Carlo standard error of ``total`` (0 without sampling)."""
        return math.hypot(self.steps_stderr, self.terminal_stderr)

    @property
    def ci95(self) -> tuple[float, float]:
        """``total -+ total_error``."""
        return (self.total - self.total_error, self.total + self.total_error)

    def as_dict(self) -> dict:
        out = {"terminal": self.terminal, "terminal_error": self.terminal_error, "steps": self.steps,
               "steps_error": self.steps_error, "total": self.total, "total_error": self.total_error,
               "method": self.method, "rtol": self.rtol, "met_rtol": self.met_rtol, "first_step": self.first_step}
        if MONTE_CARLO in self.method:
            out.update(steps_stderr=self.steps_stderr, terminal_stderr=self.terminal_stderr, stderr=self.stderr,
                       ci95=list(self.ci95))
        return out


def choose_method(block, *, rule: str | None = None) -> str:
    """How the expectations over x_t of one block are computed: in closed form for a Gaussian; for a
    mixture, ``rule`` if given (``quadrature`` or ``monte carlo``), else quadrature in d <= 3 (its rules
    climb to the tolerance) and Monte Carlo beyond."""
    if isinstance(block, GaussianReference):
        return CLOSED_FORM
    if not isinstance(block, MixtureReference):
        raise InputError(f"no path-space KL for a reference of type {type(block).__name__}")
    if rule not in (None, QUADRATURE, MONTE_CARLO):
        raise InputError(f"unknown rule {rule!r}; choose {QUADRATURE!r} or {MONTE_CARLO!r}")
    if rule == QUADRATURE and block.dim > mixture_kl.MAX_QUADRATURE_DIM:
        raise InputError(f"quadrature reaches mixtures of d <= {mixture_kl.MAX_QUADRATURE_DIM}, got d = {block.dim}")
    return rule or (QUADRATURE if block.dim <= mixture_kl.MAX_QUADRATURE_DIM else MONTE_CARLO)


def method(reference, *, rule: str | None = None) -> str:
    """The methods of ``reference``'s blocks, joined with ' + ' (e.g. ``quadrature + closed form``)."""
    return " + ".join(dict.fromkeys(choose_method(b, rule=rule) for b in blocks(reference)))


def _block_step_kls(block, grid: Grid, family: Family, rtol: float, rule, mc: MonteCarlo, mean_g) -> StepKLs:
    how = choose_method(block, rule=rule)
    if how == CLOSED_FORM:
        values = block.step_kls(grid, family, mean_g=mean_g)[0]
        bound = torch.where(torch.isinf(values), 0.0, ROUNDING * values)
        return StepKLs(values, bound, torch.zeros_like(values))
    if how == QUADRATURE:
        values, errors = mixture_kl.step_kls(block, grid, family, rtol=rtol, mean_g=mean_g)
        return StepKLs(values, errors, torch.zeros_like(values))
    values, variances = mixture_mc.step_kls(block, grid, family, mc, mean_g=mean_g)
    return StepKLs(values, torch.zeros_like(values), variances.clamp_min(0.0).sqrt())


def expected_trace_excess(reference, lv: NoiseLevel, *, rule: str | None = None,
                          monte_carlo: MonteCarlo = DEFAULT_MONTE_CARLO) -> torch.Tensor:
    """``E_{q_t} tr G`` (``G = hess log q_t + I``) at levels of any shape: the sum over blocks."""
    def one(block):
        how = choose_method(block, rule=rule)
        if how == CLOSED_FORM:
            return block.expected_trace_excess(lv)
        if how == QUADRATURE:
            return mixture_kl.expected_trace_excess(block, lv)
        return mixture_mc.expected_trace_excess(block, lv, monte_carlo)

    return sum(one(b) for b in blocks(reference))


def step_kls(reference, grid: Grid, family: Family, *, rtol: float = 1e-6, rule: str | None = None,
             monte_carlo: MonteCarlo = DEFAULT_MONTE_CARLO) -> StepKLs:
    """Per-step ``E_{q_t} KL(q(.|x_t) || p(.|x_t))``, t = 1..T, with errors: the sum over independent
    blocks (pathkl.references.product), ``analytic`` with the global ``E tr G / d``."""
    parts = blocks(reference)
    mean_g = None
    if family.name == "analytic" and len(parts) > 1:
        levels = NoiseLevel(grid.abar[1:], grid.one_minus_abar[1:])
        mean_g = expected_trace_excess(reference, levels, rule=rule, monte_carlo=monte_carlo)
        mean_g = mean_g / reference.dim
    total = None
    for block in parts:
        part = _block_step_kls(block, grid, family, rtol, rule, monte_carlo, mean_g)
        total = part if total is None else total + part
    return total


def terminal_kl(reference, lv: NoiseLevel, *, rtol: float = 1e-6, rule: str | None = None,
                monte_carlo: MonteCarlo = DEFAULT_MONTE_CARLO) -> Estimate:
    """``KL(q_T || N(0, I))`` with its error: the sum over blocks."""
    def one(block) -> Estimate:
        how = choose_method(block, rule=rule)
        if how == CLOSED_FORM:
            value = block.terminal_kl(lv)
            return Estimate(value, ROUNDING * abs(value))
        if how == QUADRATURE:
            return mixture_kl.terminal_kl(block, lv, rtol=rtol)
        return mixture_mc.terminal_kl(block, lv, monte_carlo)

    return sum((one(b) for b in blocks(reference)), Estimate(0.0))


def leading_integrand(reference, family: Family, lv: NoiseLevel) -> Estimate:
    """``E_{q_tau} ||D||_F^2``, the integrand of ``family``'s leading constant (pathkl.covariances), with
    its quadrature error: the sum over blocks (``analytic`` with the global ``E tr G / d``)."""
    if family.order not in (1, 2):
        raise InputError(f"family {family.name!r} claims no vanishing rate, so it has no leading constant")
    parts = blocks(reference)
    if any(choose_method(b) == MONTE_CARLO for b in parts):
        raise InputError("leading constants need quadrature: mixtures must have d <= 3")
    mean_g = expected_trace_excess(reference, lv) / reference.dim if len(parts) > 1 else None

    def one(block) -> Estimate:
        if choose_method(block) == CLOSED_FORM:
            value = (block.expected_excess_functional(family.defect_sq_norm, lv, mean_g=mean_g)
                     if family.order == 1 else block.expected_third_derivative_sq_norm(lv))
            return Estimate(value, ROUNDING * abs(value))
        if family.order == 1:
            return mixture_kl.expected_excess_functional(block, family.defect_sq_norm, lv, mean_g=mean_g)
        return mixture_kl.expected_third_derivative_sq_norm(block, lv)

    return sum((one(b) for b in parts), Estimate(0.0))


def path_kl(reference, grid: Grid, family: Family, *, rtol: float = 1e-6, rule: str | None = None,
            monte_carlo: MonteCarlo = DEFAULT_MONTE_CARLO, first_step: int = 1) -> PathKL:
    """The path-space KL of ``family`` against the exact reverse chain of ``reference`` on ``grid``.

    ``rtol``: the relative error the quadrature rules climb to (closed forms are exact to rounding;
    Monte Carlo reports its interval, set by ``monte_carlo``'s sample sizes). ``rule`` forces
    ``quadrature`` or ``monte carlo`` for the mixture blocks (:func:`choose_method`). ``first_step`` > 1 leaves steps
    ``1 .. first_step - 1`` out of ``steps`` and ``total`` (the documented way to report
    ``beta_tilde``, whose step t = 1 is infinite since ``beta~_1 = 0``).
    """
    if not 1 <= first_step <= grid.T:
        raise InputError(f"first step must be between 1 and T = {grid.T}, got {first_step}")
    if not rtol > 0:
        raise InputError(f"rtol must be > 0, got {rtol}")
    per_step = step_kls(reference, grid, family, rtol=rtol, rule=rule, monte_carlo=monte_carlo)
    # A Monte Carlo estimate may dip below 0 within its noise; a bounded one may not beyond its bound.
    sampled = bool((per_step.stderr > 0).any())
    if not sampled and (per_step.values < -per_step.bound).any():
        raise ArithmeticError("a per-step KL came out negative beyond its error: this is a bug, please report it")
    steps = per_step.total(first_step)
    terminal = terminal_kl(reference, grid.level(grid.T), rtol=rtol, rule=rule, monte_carlo=monte_carlo)
    total = steps + terminal
    total_error = 0.0 if math.isinf(total.value) else total.error
    return PathKL(terminal.value, steps.value, total.value, terminal.error, steps.error, total_error,
                  per_step.values, per_step.errors, method(reference, rule=rule), rtol, first_step,
                  steps.stderr, terminal.stderr)
