"""One type for every number pathkl is not certain of: a value and the absolute error pathkl vouches for.

An :class:`Estimate` carries two kinds of error, because they combine differently:

- ``bound``: a deterministic bound (rounding of a closed form, a quadrature rule's error estimate);
  bounds of a sum add.
- ``stderr``: the standard error of a Monte Carlo mean; independent standard errors of a sum add in
  quadrature.

The error reported to users is ``error = bound + z95 * stderr``: the bound plus the half-width of the
95% normal interval (docs/errors.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """``value`` with a deterministic error ``bound`` and a Monte Carlo standard error ``stderr``."""

    value: float
    bound: float = 0.0
    stderr: float = 0.0

    @property
    def error(self) -> float:
        """The absolute error vouched for: ``bound + z95 * stderr``."""
        return self.bound + Z95 * self.stderr

    @property
    def ci95(self) -> tuple[float, float]:
        """``value -+ error``: a 95% interval for Monte Carlo, a certain one for bounds alone."""
        return (self.value - self.error, self.value + self.error)

    def __add__(self, other: Estimate | float) -> Estimate:
        if isinstance(other, Estimate):
            return Estimate(self.value + other.value, self.bound + other.bound, math.hypot(self.stderr, other.stderr))
        return Estimate(self.value + float(other), self.bound, self.stderr)

    __radd__ = __add__

    def __float__(self) -> float:
        return self.value

    def as_dict(self) -> dict:
        return {"value": self.value, "error": self.error, "stderr": self.stderr}


@dataclass(frozen=True)
class StepKLs:
    """Per-step values, t = 1..T, each with a deterministic error bound and a Monte Carlo standard
    error (the per-step form of :class:`Estimate`)."""

    values: torch.Tensor
    bound: torch.Tensor
    stderr: torch.Tensor
    #: A bound on the error of the sum over all steps, tighter than ``sum(bound)`` where errors are
    #: claimed jointly (pathkl.rules.stepsum: a panel's estimate bounds its steps' errors together and
    #: each step claims all of it); None: ``sum(bound)``.
    sum_bound: float | None = None

    @staticmethod
    def bounded(values: torch.Tensor, bound: torch.Tensor) -> StepKLs:
        """Values with deterministic bounds only (no sampling)."""
        return StepKLs(values, bound, torch.zeros_like(values))

    @property
    def errors(self) -> torch.Tensor:
        """The absolute error of each step: ``bound + z95 * stderr``."""
        return self.bound + Z95 * self.stderr

    def _sum_bound(self) -> float:
        return math.fsum(self.bound.tolist()) if self.sum_bound is None else self.sum_bound

    def __add__(self, other: StepKLs) -> StepKLs:
        joint = None if self.sum_bound is None and other.sum_bound is None else self._sum_bound() + other._sum_bound()
        return StepKLs(self.values + other.values, self.bound + other.bound, torch.hypot(self.stderr, other.stderr),
                       joint)

    def total(self, first_step: int = 1) -> Estimate:
        """Sum of steps ``first_step..T`` (``math.fsum``; ``inf`` if any term is, exactly); its bound is
        :attr:`sum_bound` for the whole chain, the per-step bounds' sum for a part of it."""
        kept = slice(first_step - 1, None)
        values = self.values[kept].tolist()
        if math.inf in values:
            return Estimate(math.inf)
        bound = self._sum_bound() if first_step == 1 else math.fsum(self.bound[kept].tolist())
        return Estimate(math.fsum(values), bound, math.sqrt(math.fsum((self.stderr[kept] ** 2).tolist())))
