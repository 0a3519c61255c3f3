"""Path-space KL between the exact reverse chain and a Gaussian reverse model (DESIGN.md section 2):

    KL(q(x_{0:T}) || p(x_{0:T})) = KL(q_T || N(0, I)) + sum_t E_{x_t ~ q_t} KL(q(.|x_t) || p(.|x_t)),

reported as ``terminal`` (first term), ``steps`` (the sum) and ``total``. Monte Carlo parts (mixtures
in d > 3, pathkl.mixture_mc) come with standard errors and a 95% confidence interval for ``total``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .covariances import Family
from .errors import InputError
from .schedules import Grid

#: Two-sided 95% normal quantile.
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo value with its variance; sums with floats (exact) and independent estimates."""

    value: float
    variance: float

    def __add__(self, other) -> Estimate:
        if isinstance(other, Estimate):
            return Estimate(self.value + other.value, self.variance + other.variance)
        return Estimate(self.value + float(other), self.variance)

    __radd__ = __add__

    def __float__(self) -> float:
        return self.value


@dataclass(frozen=True)
class PathKL:
    """Path-space KL and its parts. ``steps`` sums ``per_step[first_step - 1:]``.

    ``steps_stderr`` and ``terminal_stderr`` are 0 for exact results and Monte Carlo standard errors
    otherwise (independent, so ``stderr`` of ``total`` is their root sum of squares); ``total`` is
    ``+inf`` whenever a summed step is.
    """

    terminal: float
    steps: float
    total: float
    per_step: torch.Tensor
    first_step: int = 1
    steps_stderr: float = 0.0
    terminal_stderr: float = 0.0

    @property
    def stderr(self) -> float:
        """Standard error of ``total``."""
        return math.hypot(self.steps_stderr, self.terminal_stderr)

    @property
    def ci95(self) -> tuple[float, float]:
        """95% normal confidence interval for ``total`` (a point where it is exact)."""
        return (self.total - _Z95 * self.stderr, self.total + _Z95 * self.stderr)

    def as_dict(self) -> dict:
        return {
            "terminal": self.terminal,
            "steps": self.steps,
            "total": self.total,
            "steps_stderr": self.steps_stderr,
            "terminal_stderr": self.terminal_stderr,
            "stderr": self.stderr,
            "ci95": list(self.ci95),
            "first_step": self.first_step,
        }


def _exact_sum(values: torch.Tensor) -> float:
    """Correctly rounded sum (``math.fsum``); ``inf`` if any term is."""
    v = values.detach().cpu().double().numpy()
    return math.inf if (v == math.inf).any() else math.fsum(v)


def path_kl(reference, grid: Grid, family: Family, *, first_step: int = 1) -> PathKL:
    """The path-space KL of ``family`` against the exact reverse chain of ``reference`` on ``grid``.

    ``first_step`` > 1 leaves steps ``1 .. first_step - 1`` out of ``steps`` and ``total`` (the
    documented way to report ``beta_tilde``, whose step t = 1 is infinite since ``beta~_1 = 0``).
    """
    if not 1 <= first_step <= grid.T:
        raise InputError(f"first step must be between 1 and T = {grid.T}, got {first_step}")
    per_step, variances = reference.step_kls(grid, family)
    # A Monte Carlo estimate may dip below 0 within its noise; an exact one may not.
    if variances is None and (per_step < 0).any():
        raise ArithmeticError("a per-step KL came out negative: this is a bug, please report it")
    kept = per_step[first_step - 1 :]
    steps = _exact_sum(kept)
    stderr = 0.0 if variances is None else math.sqrt(_exact_sum(variances[first_step - 1 :]))
    terminal = reference.terminal_kl(grid.level(grid.T))
    terminal_stderr = math.sqrt(terminal.variance) if isinstance(terminal, Estimate) else 0.0
    terminal = float(terminal)
    return PathKL(terminal, steps, terminal + steps, per_step, first_step, stderr, terminal_stderr)
