"""The closed-form rule: Gaussian blocks, every expectation over x_t exact (the reverse kernels are
Gaussian with x-independent covariances), the error a rounding bound (docs/errors.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..estimate import Estimate, StepKLs
from ..references import GaussianReference
from ..schedules import DTYPE, Grid, NoiseLevel

#: Rounding allowance of a closed-form value, relative: the relative eigenvalues carry a few ulps each
#: (no subtraction of nearly equal numbers), phi is evaluated to a few ulps, and the terms are
#: positive; checked against 50-digit arithmetic in tests/test_pathspace.py.
ROUNDING = 64 * torch.finfo(DTYPE).eps
#: Absolute allowance per eigenvalue term of a positive step KL: a term in the subnormal range has
#: an ulp of 2^-1074 whatever its size, so there the relative allowance is not one (a step KL of
#: 2.05e-311 was off by 2e-324 with a stated error of 0).
UNDERFLOW = 64 * math.ulp(0.0)


def rounding_bound(values: torch.Tensor, dim: int) -> torch.Tensor:
    """The rounding allowance of closed-form step KLs over ``dim`` eigenvalue terms: relative
    (:data:`ROUNDING`) plus, for a positive value, the absolute :data:`UNDERFLOW` per term; 0 where
    the value is infinite (exactly so)."""
    floor = (values > 0).to(values.dtype) * (UNDERFLOW * dim)  # a float32 scalar would flush it to 0
    return torch.where(torch.isinf(values), 0.0, ROUNDING * values + floor)


@dataclass(frozen=True)
class ClosedForm:
    """Exact expectations for Gaussian blocks, in the interface of pathkl.rules."""

    name: ClassVar[str] = "closed form"

    def accepts(self, block) -> bool:
        return isinstance(block, GaussianReference)

    def step_kls(self, block, grid: Grid, family, *, rtol: float, mean_g: torch.Tensor | None = None) -> StepKLs:
        values = block.step_kls(grid, family, mean_g=mean_g)[0]
        return StepKLs.bounded(values, rounding_bound(values, block.dim))

    def terminal_kl(self, block, lv: NoiseLevel, *, rtol: float) -> Estimate:
        value = block.terminal_kl(lv)
        return Estimate(value, ROUNDING * abs(value))

    def expected_trace_excess(self, block, lv: NoiseLevel) -> torch.Tensor:
        return block.expected_trace_excess(lv)

    def leading_integrand(self, block, rate, lv: NoiseLevel, *, mean_g=None) -> Estimate:
        value = (block.expected_excess_functional(rate.defect_sq_norm, lv, mean_g=mean_g)
                 if rate.order == 1 else block.expected_third_derivative_sq_norm(lv))
        return Estimate(value, ROUNDING * abs(value))
