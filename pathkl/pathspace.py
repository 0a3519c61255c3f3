"""Path-space KL between the exact reverse chain and a Gaussian reverse model (DESIGN.md section 2):

    KL(q(x_{0:T}) || p(x_{0:T})) = KL(q_T || N(0, I)) + sum_t E_{x_t ~ q_t} KL(q(.|x_t) || p(.|x_t)),

reported as ``terminal`` (first term), ``steps`` (the sum) and ``total``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .covariances import Family
from .errors import InputError
from .schedules import Grid


@dataclass(frozen=True)
class PathKL:
    """Path-space KL and its parts. ``steps`` sums ``per_step[first_step - 1:]``.

    ``steps_stderr`` is 0 for exact results and the Monte Carlo standard error otherwise; ``total``
    is ``+inf`` whenever a summed step is.
    """

    terminal: float
    steps: float
    total: float
    per_step: torch.Tensor
    first_step: int = 1
    steps_stderr: float = 0.0

    def as_dict(self) -> dict:
        return {
            "terminal": self.terminal,
            "steps": self.steps,
            "total": self.total,
            "steps_stderr": self.steps_stderr,
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
    if (per_step < 0).any():
        raise ArithmeticError("a per-step KL came out negative: this is a bug, please report it")
    kept = per_step[first_step - 1 :]
    steps = _exact_sum(kept)
    stderr = 0.0 if variances is None else math.sqrt(_exact_sum(variances[first_step - 1 :]))
    terminal = reference.terminal_kl(grid.level(grid.T))
    return PathKL(terminal, steps, terminal + steps, per_step, first_step, stderr)
