"""The path-space KL engine (docs/theory.md section 4.1, docs/errors.md):

    KL(q(x_{0:T}) || p(x_{0:T})) = KL(q_T || N(0, I)) + sum_t E_{x_t ~ q_t} KL(q(.|x_t) || p(.|x_t)),

reported as ``terminal`` (first term), ``steps`` (the sum) and ``total``, each with the absolute error
pathkl vouches for. A reference only knows its closed forms; how each expectation over x_t is
computed is a rule (pathkl.rules), chosen per independent block of the reference by
:func:`pathkl.rules.select_rule`: closed form for Gaussian blocks, quadrature for mixtures in
d <= 3, Monte Carlo beyond. Where the error cannot be brought within ``rtol`` the result says so
(``met_rtol`` False) and still reports the error it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .covariances import Family
from .errors import InputError
from .estimate import Estimate, StepKLs
from .references.product import blocks
from .rules import MonteCarlo, Rule, select_rule
from .schedules import Grid, NoiseLevel
from .threads import one_thread


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
        if MonteCarlo.name in self.method:
            out.update(steps_stderr=self.steps_stderr, terminal_stderr=self.terminal_stderr, stderr=self.stderr,
                       ci95=list(self.ci95))
        return out


def method(reference, *, rule: str | Rule | None = None) -> str:
    """The rules of ``reference``'s blocks by name, joined with ' + ' (e.g. ``quadrature + closed form``)."""
    return " + ".join(dict.fromkeys(select_rule(b, rule=rule).name for b in blocks(reference)))


def expected_trace_excess(reference, lv: NoiseLevel, *, rule: str | Rule | None = None) -> torch.Tensor:
    """``E_{q_t} tr G`` (``G = hess log q_t + I``) at levels of any shape: the sum over blocks."""
    return sum(select_rule(b, rule=rule).expected_trace_excess(b, lv) for b in blocks(reference))


def _global_mean_g(reference, lv: NoiseLevel, rule) -> torch.Tensor | None:
    """A product's ``E tr G / d`` over all its blocks (``analytic`` couples them through it); None for
    a single block, which computes its own."""
    if len(blocks(reference)) == 1:
        return None
    return expected_trace_excess(reference, lv, rule=rule) / reference.dim


def step_kls(reference, grid: Grid, family: Family, *, rtol: float = 1e-6,
             rule: str | Rule | None = None) -> StepKLs:
    """Per-step ``E_{q_t} KL(q(.|x_t) || p(.|x_t))``, t = 1..T, with errors: the sum over independent
    blocks (pathkl.references.product), ``analytic`` with the global ``E tr G / d``."""
    mean_g = None
    if family.uses_mean_g:
        mean_g = _global_mean_g(reference, NoiseLevel(grid.abar[1:], grid.one_minus_abar[1:]), rule)
    parts = [select_rule(b, rule=rule).step_kls(b, grid, family, rtol=rtol, mean_g=mean_g) for b in blocks(reference)]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def terminal_kl(reference, lv: NoiseLevel, *, rtol: float = 1e-6, rule: str | Rule | None = None) -> Estimate:
    """``KL(q_T || N(0, I))`` with its error: the sum over blocks."""
    return sum((select_rule(b, rule=rule).terminal_kl(b, lv, rtol=rtol) for b in blocks(reference)), Estimate(0.0))


def leading_integrand(reference, family: Family, lv: NoiseLevel) -> Estimate:
    """``E_{q_tau} ||D||_F^2``, the integrand of ``family``'s leading constant on ``reference``
    (:meth:`Family.rate`, pathkl.covariances), with its error: the sum over blocks (``analytic`` with
    the global ``E tr G / d``)."""
    rate = family.rate(reference)
    if rate.order is None:
        raise InputError(f"family {family.name!r} claims no vanishing rate, so it has no leading constant")
    mean_g = _global_mean_g(reference, lv, None)
    return sum((select_rule(b).leading_integrand(b, rate, lv, mean_g=mean_g) for b in blocks(reference)),
               Estimate(0.0))


def path_kl(reference, grid: Grid, family: Family, *, rtol: float = 1e-6, rule: str | Rule | None = None,
            first_step: int = 1) -> PathKL:
    """The path-space KL of ``family`` against the exact reverse chain of ``reference`` on ``grid``.

    ``rtol``: the relative error the quadrature rules climb to (closed forms are exact to rounding;
    Monte Carlo reports the interval its sample sizes give). ``rule`` forces a rule for the mixture
    blocks: a name (``"quadrature"``, ``"monte carlo"``) or a rule object such as
    ``pathkl.rules.MonteCarlo(outer=1024, seed=3)`` (:func:`pathkl.rules.select_rule`).
    ``first_step`` > 1 leaves steps ``1 .. first_step - 1`` out of ``steps`` and ``total`` (the
    documented way to report ``beta_tilde``, whose step t = 1 is infinite since ``beta~_1 = 0``).
    """
    if not 1 <= first_step <= grid.T:
        raise InputError(f"first step must be between 1 and T = {grid.T}, got {first_step}")
    if not rtol > 0:
        raise InputError(f"rtol must be > 0, got {rtol}")
    with one_thread():  # pathkl.threads: cache-sized arrays, and shared machines
        per_step = step_kls(reference, grid, family, rtol=rtol, rule=rule)
        terminal = terminal_kl(reference, grid.level(grid.T), rtol=rtol, rule=rule)
    # A Monte Carlo estimate may dip below 0 within its noise; a bounded one may not beyond its bound.
    sampled = bool((per_step.stderr > 0).any())
    if not sampled and (per_step.values < -per_step.bound).any():
        raise ArithmeticError("a per-step KL came out negative beyond its error: this is a bug, please report it")
    steps = per_step.total(first_step)
    total = steps + terminal
    total_error = 0.0 if math.isinf(total.value) else total.error
    return PathKL(terminal.value, steps.value, total.value, terminal.error, steps.error, total_error,
                  per_step.values, per_step.errors, method(reference, rule=rule), rtol, first_step,
                  steps.stderr, terminal.stderr)
