"""A rule on the step index: every per-step value of a long chain from a few evaluated steps.

On a grid that follows a smooth schedule, the per-step KL ``v_t`` is a smooth function of t (to
leading order ``T^-(p+1) f(t / T)``, f analytic), so long stretches of the chain need not be evaluated
step by step. :func:`interpolated_steps` splits 1..T into dyadic panels ``[1, 64], [65, 128],
[129, 256], ...`` and, on each panel, evaluates ``v`` at three nested sets of Chebyshev-Lobatto
points rounded to integers (``n1 < n2 < n3``, each ``n_{i+1} = 2 n_i - 1``, so each set contains the
last), and interpolates ``log v`` at every other step by the polynomials ``P1, P2, P3`` through them
(``log v`` is far smoother than v, whose panels span orders of magnitude at the ends of a chain).

Error. With ``E1 = sum_t |exp P2 - exp P1|`` and ``E2 = sum_t |exp P3 - exp P2|`` over the panel (the
errors of the two coarser interpolants, seen against the next), geometric convergence in the degree
would make ``P3``'s error far smaller than ``E2``, but the doubling degrees converge irregularly
(seen on a sum of Gaussian bumps: ``E1 = 7e-12``, ``E2 = 5.2e-15``, true error of P3 ``8.8e-16``, where
the geometric extrapolation ``E2 (E2 / E1)^2`` claims 1e-21), so the panel's estimate is ``E2`` itself,
the error of the middle interpolant (as nested quadrature rules report the lower rule's error), trusted
only where the nest converges plainly, ``E2 <= E1 / 5``, and at most half of ``rtol`` times the panel's
sum. The estimate
bounds the sum of the panel's interpolation errors, so every interpolated step claims all of it as
its own error, while the sum over the chain counts it once (:attr:`Interpolated.sum_error`). The
evaluated steps' own errors propagate through the interpolation weights. A panel that fails is split
in two and tried again; panels too short for distinct nodes are evaluated step by step (exact up to
the steps' own errors). A grid that is not smooth in t (an arbitrary ``--taus`` list) therefore ends
up evaluated step by step where it needs to be, never interpolated across a kink.
tests/test_stepsum.py checks the claims against every step evaluated, on smooth sequences, on kinks,
on noise and on mixture chains.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..schedules import DTYPE

#: Node counts of the nested Chebyshev sets, largest first, and the shortest panel (in steps) each may
#: be used on: shorter panels would round two nodes to one integer.
NESTS = ((5, 9, 17, 120), (3, 5, 9, 48))
#: Largest ratio E2 / E1 at which the nest is taken to converge.
CONVERGED = 0.2
#: Panels of the first split: ``[1, FIRST]`` and then dyadic ``[2^k + 1, 2^(k+1)]``.
FIRST = 64
#: Share of ``rtol`` a panel's interpolation estimate may take (the rest is for the steps' own errors).
SHARE = 0.5


def chebyshev_steps(a: int, b: int, n: int) -> torch.Tensor:
    """The n Chebyshev-Lobatto points of ``[a, b]`` rounded to integers (ascending; the points of
    ``n`` are a subset of those of ``2n - 1``, also after rounding)."""
    j = torch.arange(n - 1, -1, -1, dtype=DTYPE)
    x = 0.5 * (a + b) + 0.5 * (b - a) * torch.cos(math.pi * j / (n - 1))
    return torch.round(x).long()


def lagrange_weights(nodes: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Matrix ``L`` (len(at), len(nodes)) with ``L[i, j] = l_j(at_i)``, the Lagrange basis of
    ``nodes`` (barycentric form, exact 1 at the nodes themselves)."""
    x, t = nodes.to(DTYPE), at.to(DTYPE)
    diff = x[:, None] - x[None, :]
    diff.fill_diagonal_(1.0)
    w = 1.0 / diff.prod(1)  # barycentric weights
    gap = t[:, None] - x[None, :]
    hit = gap == 0
    terms = w / torch.where(hit, torch.ones_like(gap), gap)
    basis = terms / terms.sum(1, keepdim=True)
    return torch.where(hit.any(1, keepdim=True), hit.to(DTYPE), basis)


@dataclass(frozen=True)
class Interpolated:
    """Per-step values and errors (each error a claim about its own step) and the error of their sum,
    which is tighter than the sum of the per-step errors: a panel's interpolation estimate bounds the
    sum of its steps' errors, and each step claims all of it. ``evaluated`` marks the steps computed."""

    values: torch.Tensor
    errors: torch.Tensor
    sum_error: float
    evaluated: torch.Tensor


def interpolated_steps(evaluate: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], T: int, *,
                       rtol: float) -> Interpolated:
    """``v_t``, t = 1..T, from ``evaluate(steps) -> (values, errors)`` called on as few steps as the
    panels need (module docstring). ``evaluate`` takes a 1-D tensor of steps (1-based, ascending, each
    at most once over all calls); the values must be > 0 wherever a panel is to be interpolated."""
    values, errors = torch.zeros(T, dtype=DTYPE), torch.zeros(T, dtype=DTYPE)
    done = torch.zeros(T, dtype=torch.bool)

    def ensure(steps: torch.Tensor) -> None:
        missing = steps[~done[steps - 1]]
        if missing.numel():
            v, e = evaluate(missing)
            values[missing - 1], errors[missing - 1] = v, e
            done[missing - 1] = True

    out_v, propagated = torch.zeros(T, dtype=DTYPE), torch.zeros(T, dtype=DTYPE)
    step_estimate = torch.zeros(T, dtype=DTYPE)  # the estimate of the panel each interpolated step is in
    panel_estimates = []
    edges = [0, min(FIRST, T)]
    while edges[-1] < T:
        edges.append(min(2 * edges[-1], T))
    pending = [(a + 1, b) for a, b in itertools.pairwise(edges)]
    while pending:
        a, b = pending.pop()
        steps = torch.arange(a, b + 1)
        nest = next((sizes for *sizes, shortest in NESTS if b - a + 1 >= shortest), None)
        if nest is None:
            ensure(steps)
            continue
        nodes = [chebyshev_steps(a, b, n) for n in nest]
        ensure(nodes[-1])
        fit = _log_interpolation(values, errors, nodes, steps)
        if fit is None or fit[1] > SHARE * rtol * float(fit[0].sum()):
            middle = (a + b) // 2
            pending += [(a, middle), (middle + 1, b)]
            continue
        out_v[a - 1 : b], estimate, propagated[a - 1 : b] = fit
        step_estimate[a - 1 : b] = estimate
        panel_estimates.append(estimate)
    # A step evaluated for a panel that was later split keeps its own value and error.
    out_v[done], propagated[done], step_estimate[done] = values[done], errors[done], 0.0
    return Interpolated(out_v, propagated + step_estimate, math.fsum(propagated.tolist()) + math.fsum(panel_estimates),
                        done)


def _log_interpolation(values, errors, nodes, steps):
    """The nested interpolants of ``log v`` on one panel (module docstring): ``(exp P3 at steps, the
    panel's interpolation estimate, the evaluated steps' errors propagated to each step)``, or None
    where the nest does not show plain convergence (or a value is not > 0, or not known to better
    than 10%)."""
    v, e = values[nodes[-1] - 1], errors[nodes[-1] - 1]
    if not (torch.isfinite(v).all() and (v > 0).all() and (e < 0.1 * v).all()):
        return None
    weights = [lagrange_weights(x, steps) for x in nodes]
    p1, p2, p3 = (torch.exp(w @ torch.log(values[x - 1])) for w, x in zip(weights, nodes))
    e1, e2 = float((p2 - p1).abs().sum()), float((p3 - p2).abs().sum())
    if not (e2 <= CONVERGED * e1 or e2 == 0.0):
        return None
    estimate = e2
    # |log(v_j +- err_j) - log v_j| <= r / (1 - r), r = err_j / v_j; through exp(sum_j l_j log v_j).
    r = e / v
    propagated = p3 * torch.expm1(weights[-1].abs() @ (r / (1.0 - r)))
    # Rounding of exp(sum_j l_j log v_j): a few ulps of each term of the exponent, relative in v.
    rounding = 4 * torch.finfo(DTYPE).eps * p3 * (weights[-1].abs() @ torch.log(v).abs() + 1.0)
    return p3, estimate, propagated + rounding
