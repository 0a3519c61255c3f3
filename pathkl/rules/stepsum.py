"""A rule on the step index: every per-step value of a long chain from a few evaluated steps.

On a grid that follows a smooth schedule, the per-step KL ``v_t`` is a smooth function of t (to
leading order ``T^-(p+1) f(t / T)``, f analytic), so long stretches of the chain need not be evaluated
step by step. :func:`interpolated_steps` splits 1..T into dyadic panels ``[1, 64], [65, 128],
[129, 256], ...`` and, on each panel, evaluates ``v`` at three nested sets of Chebyshev-Lobatto
points rounded to integers (``n1 < n2 < n3``, each ``n_{i+1} = 2 n_i - 1``, so each set contains the
last), and interpolates ``log v`` at every other step by the polynomials ``P1, P2, P3`` through them
(``log v`` is far smoother than v, whose panels span orders of magnitude at the ends of a chain).

A known factor. ``v_t ~ beta_t^(p+1) f(t / T)`` carries the singularity of ``log beta_t`` where the
schedule's beta vanishes: for the linear schedule 0.1 + 19.9 tau at ``t = -T / 199`` (20 steps before
step 1 at T = 4096), close enough to ``[1, 64]`` that Chebyshev interpolation there converges like
``3^-n``. The caller may name such a factor ``s_t`` (``log_scale``), and ``log(v / s)`` is then what
is interpolated: on ``full``'s chain of the rotated mixture at T = 4096 the estimate ``E2`` on
``[1, 64]`` fell from 4.3e-12 to 5.4e-16 with ``s = beta^3`` (on ``[65, 128]`` from 4.8e-13 to 1.7e-15),
where it had to be evaluated step by step.

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
evaluated steps' own errors propagate through the interpolation weights; before the nest is judged
its nodes are evaluated to the other half of the panel's share, each node an equal part divided by
its sensitivity ``g_j = sum_i P3_i |l_j(i)|``. A panel whose 9-node nest fails tries the 17-node one
(which holds those 9), and one that fails both is split in two and tried again; panels too short
for distinct nodes are evaluated step by step (exact up to the steps' own errors). A grid that is not smooth in t (an arbitrary ``--taus`` list) therefore ends
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

#: Node counts of the nested Chebyshev sets, smallest first, and the shortest panel (in steps) each may
#: be used on: shorter panels would round two nodes to one integer. A panel tries them in turn before
#: it is split; each set holds the last's nodes, so a failed nest's evaluations are not lost.
NESTS = ((3, 5, 9, 48), (5, 9, 17, 54))
#: Largest ratio E2 / E1 at which the nest is taken to converge.
CONVERGED = 0.2
#: Panels of the first split: ``[1, FIRST]`` and then dyadic ``[2^k + 1, 2^(k+1)]``.
FIRST = 64
#: Share of a panel's budget its interpolation estimate may take (the rest is for the steps' own errors).
SHARE = 0.5
#: Relative tolerance of the pilot pass, which only estimates the chain's sum (to share the budget).
PILOT = 1e-3
#: Largest relative error asked of a step that an interpolant goes through (it must be known to 10%).
LOOSEST = 1e-2
#: Fraction of ``rtol`` times the pilot's sum that the budget is, and how many times the pass is
#: repeated with the sum it found when its error came out above ``rtol`` times that sum.
SAFETY, ROUNDS = 0.9, 3


def chebyshev_lobatto(n: int) -> torch.Tensor:
    """The n Chebyshev-Lobatto points ``cos(pi j / (n - 1))`` of ``[-1, 1]``, ascending (those of n are
    every other one of ``2n - 1``'s)."""
    return torch.cos(math.pi * torch.arange(n - 1, -1, -1, dtype=DTYPE) / (n - 1))


def chebyshev_steps(a: int, b: int, n: int) -> torch.Tensor:
    """The n Chebyshev-Lobatto points of ``[a, b]`` rounded to integers (ascending; the points of
    ``n`` are a subset of those of ``2n - 1``, also after rounding)."""
    return torch.round(0.5 * (a + b) + 0.5 * (b - a) * chebyshev_lobatto(n)).long()


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


Evaluate = Callable[[torch.Tensor, float, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _Steps:
    """The evaluated steps: ``ensure(steps, rtol, atol)`` asks ``evaluate`` for those not yet known
    to ``rtol |v| + atol`` (each may be asked again, tighter)."""

    def __init__(self, evaluate: Evaluate, T: int, log_scale: torch.Tensor | None):
        self.evaluate = evaluate
        self.log_scale = torch.zeros(T, dtype=DTYPE) if log_scale is None else log_scale.to(DTYPE)
        self.values, self.errors = torch.zeros(T, dtype=DTYPE), torch.full((T,), math.inf, dtype=DTYPE)
        self.done = torch.zeros(T, dtype=torch.bool)

    def ensure(self, steps: torch.Tensor, rtol: float, atol: torch.Tensor | None = None) -> None:
        atol = torch.zeros(steps.numel(), dtype=DTYPE) if atol is None else atol
        i = steps - 1
        open_ = ~(self.errors[i] <= rtol * self.values[i].abs() + atol)
        if open_.any():
            v, e = self.evaluate(steps[open_], rtol, atol[open_])
            self.values[i[open_]], self.errors[i[open_]] = v, e
            self.done[i[open_]] = True


def interpolated_steps(evaluate: Evaluate, T: int, *, rtol: float,
                       log_scale: torch.Tensor | None = None) -> Interpolated:
    """``v_t``, t = 1..T, from ``evaluate(steps, rtol, atol) -> (values, errors)``, which must return
    each step's value with an error that it tries to bring within ``rtol |v_t| + atol_t`` (a 1-D tensor
    of steps, 1-based, ascending; a step may be asked again with a smaller tolerance). The values must
    be > 0 wherever a panel is to be interpolated. ``log_scale`` (T,): the logarithm of a known
    factor ``s_t`` of ``v_t`` whose singularity ``v_t / s_t`` does not share (the leading power of
    ``beta_t``), so that ``log(v_t / s_t)`` is what is interpolated (module docstring); None: 0.

    The error budget is shared over the chain, not over each step (module docstring): a pilot pass
    (every panel's nodes to :data:`PILOT`) estimates the sum S, and the pass proper gives each panel
    ``SAFETY rtol S (s_p / S + L_p / T) / 2`` (``s_p`` its sum, ``L_p`` its length), so a step that holds
    a small part of the sum is asked for a correspondingly small part of the accuracy. Where the
    errors found add up to more than ``rtol`` times the sum found, the pass is repeated with that sum
    (at most :data:`ROUNDS` times)."""
    steps = _Steps(evaluate, T, log_scale)
    total = _pilot(steps, T)
    for _ in range(ROUNDS):
        result = _pass(steps, T, SAFETY * rtol * total, total)
        found = float(result.values.sum())
        if not result.sum_error > rtol * found or found >= total:
            break
        total = found
    return result


def _initial_panels(T: int) -> list[tuple[int, int]]:
    edges = [0, min(FIRST, T)]
    while edges[-1] < T:
        edges.append(min(2 * edges[-1], T))
    return [(a + 1, b) for a, b in itertools.pairwise(edges)]


def _nests(a: int, b: int) -> list[list[torch.Tensor]]:
    """The node sets of each nest that fits ``[a, b]``, smallest first (:data:`NESTS`)."""
    return [[chebyshev_steps(a, b, n) for n in sizes] for *sizes, shortest in NESTS if b - a + 1 >= shortest]


def _pilot(steps: _Steps, T: int) -> float:
    """The chain's sum to about :data:`PILOT`: every first panel's smallest nest (or all its steps)
    evaluated to that tolerance, each panel summed by its interpolant where the nest converges and by
    its mean node value times its length elsewhere."""
    total = 0.0
    for a, b in _initial_panels(T):
        nodes = next(iter(_nests(a, b)), None)
        every = torch.arange(a, b + 1)
        steps.ensure(every if nodes is None else nodes[-1], PILOT)
        if nodes is None:
            total += float(_finite(steps.values[every - 1]).sum())
            continue
        fit = _log_interpolation(steps, nodes, every)
        total += float(fit[0].sum()) if fit is not None else float(_finite(steps.values[nodes[-1] - 1]).mean()) * (b - a + 1)
    return total


def _finite(values: torch.Tensor) -> torch.Tensor:
    """The values with +-inf as 0: an infinite step (beta_tilde's first, a point mass's) is exact and
    takes no part of the budget, which is shared by the finite ones."""
    return torch.where(torch.isfinite(values), values, 0.0)


def _pass(steps: _Steps, T: int, budget: float, total: float) -> Interpolated:
    """One pass over the panels with the absolute ``budget`` for the chain's sum, shared by the
    pilot's ``total`` (:func:`interpolated_steps`)."""
    def share(panel_sum: float, length: int) -> float:
        return 0.5 * budget * ((panel_sum / total if total > 0 else 0.0) + length / T)

    interp_v, interp_prop = torch.zeros(T, dtype=DTYPE), torch.zeros(T, dtype=DTYPE)
    step_estimate = torch.zeros(T, dtype=DTYPE)  # the estimate of the panel each interpolated step is in
    interpolated = torch.zeros(T, dtype=torch.bool)
    panel_estimates = []
    pending = _initial_panels(T)
    while pending:
        a, b = pending.pop()
        every = torch.arange(a, b + 1)
        nests = _nests(a, b)
        if not nests:
            steps.ensure(every, PILOT)
            v = _finite(steps.values[every - 1]).clamp_min(0.0)
            s = float(v.sum())
            # Each step's part of the panel's share: half by its value, half by its length.
            atol = 0.5 * share(s, every.numel()) * ((v / s if s > 0 else torch.zeros_like(v)) + 1.0 / every.numel())
            steps.ensure(every, 0.0, atol)
            continue
        fit = next((fit for fit in (_panel_fit(steps, nodes, every, share) for nodes in nests) if fit is not None), None)
        if fit is None:
            middle = (a + b) // 2
            pending += [(a, middle), (middle + 1, b)]
            continue
        interp_v[a - 1 : b], estimate, interp_prop[a - 1 : b] = fit
        step_estimate[a - 1 : b], interpolated[a - 1 : b] = estimate, True
        panel_estimates.append(estimate)
    # An evaluated step keeps its own value where that is the better known (the panel's estimate is
    # still counted in the sum's error).
    own = steps.done & (~interpolated | (steps.errors < interp_prop + step_estimate))
    values = torch.where(own, steps.values, interp_v)
    propagated = torch.where(own, steps.errors, interp_prop)
    step_estimate = torch.where(own, 0.0, step_estimate)
    return Interpolated(values, propagated + step_estimate, math.fsum(propagated.tolist()) + math.fsum(panel_estimates),
                        steps.done)


def _panel_fit(steps: _Steps, nodes, every: torch.Tensor, share):
    """The nest's :func:`_log_interpolation` on one panel with its nodes evaluated to what the panel
    would need, or None where it fails or its estimate exceeds :data:`SHARE` of the panel's share."""
    steps.ensure(nodes[-1], PILOT)
    # The nodes to what the panel would need before the nest is judged: at the pilot's 1e-3 their
    # noise alone can fail it (mog-rotated, T = 1024: [65, 96], E2 ~ E1 ~ 2e-11).
    finest = _finest(steps, nodes, every)
    if finest is not None:
        # Relative errors r_j of the nodes move the panel's sum by sum_j g_j r_j, g_j = sum_i p3_i |l_j(i)|;
        # each node takes an equal part of the budget (the split that costs least when every digit
        # costs the same), so a node where the interpolant is small (step 1 of a chain) is asked little.
        gains = finest @ lagrange_weights(nodes[-1], every).abs()
        part = (1.0 - SHARE) * share(float(finest.sum()), every.numel()) / nodes[-1].numel()
        r = torch.where(gains > 0, part / gains, LOOSEST).clamp(max=LOOSEST)
        steps.ensure(nodes[-1], 0.0, r * steps.values[nodes[-1] - 1])
    fit = _log_interpolation(steps, nodes, every)
    return None if fit is None or fit[1] > SHARE * share(float(fit[0].sum()), every.numel()) else fit


def _usable(known: _Steps, x: torch.Tensor) -> bool:
    """Whether the values at steps x can be interpolated in log: finite, > 0, known to 10%."""
    v, e = known.values[x - 1], known.errors[x - 1]
    return bool(torch.isfinite(v).all() and (v > 0).all() and (e < 0.1 * v).all())


def _interpolant(known: _Steps, x: torch.Tensor, weights: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``s exp P`` at steps, P the polynomial through ``log(v / s)`` at the nodes x, whose Lagrange
    basis at the steps is ``weights``."""
    return torch.exp(weights @ (torch.log(known.values[x - 1]) - known.log_scale[x - 1]) + known.log_scale[steps - 1])


def _finest(known: _Steps, nodes, steps) -> torch.Tensor | None:
    """The finest interpolant at steps, or None where its nodes are not :func:`_usable`."""
    x = nodes[-1]
    return _interpolant(known, x, lagrange_weights(x, steps), steps) if _usable(known, x) else None


def _log_interpolation(known: _Steps, nodes, steps):
    """The nested interpolants of ``log(v / s)`` on one panel (module docstring): ``(s exp P3 at
    steps, the panel's interpolation estimate, the evaluated steps' errors propagated to each
    step)``, or None where the nest does not show plain convergence (or its nodes are not
    :func:`_usable`)."""
    if not _usable(known, nodes[-1]):
        return None
    v, e = known.values[nodes[-1] - 1], known.errors[nodes[-1] - 1]
    log_w = torch.log(known.values) - known.log_scale
    at = known.log_scale[steps - 1]
    weights = [lagrange_weights(x, steps) for x in nodes]
    p1, p2, p3 = (_interpolant(known, x, w, steps) for x, w in zip(nodes, weights))
    # Rounding of each exponent: a few ulps of each of its terms, relative in v.
    rounding = [4 * torch.finfo(DTYPE).eps * p * (w.abs() @ log_w[x - 1].abs() + at.abs() + 1.0)
                for p, w, x in zip((p1, p2, p3), weights, nodes)]
    e1, e2 = float((p2 - p1).abs().sum()), float((p3 - p2).abs().sum())
    # Plain convergence, or agreement to rounding (log w of degree below the nodes: the nest is exact).
    if not (e2 <= CONVERGED * e1 or e2 <= float((rounding[1] + rounding[2]).sum())):
        return None
    estimate = e2
    # |log(v_j +- err_j) - log v_j| <= r / (1 - r), r = err_j / v_j; through exp(sum_j l_j log w_j + log s).
    r = e / v
    propagated = p3 * torch.expm1(weights[-1].abs() @ (r / (1.0 - r)))
    return p3, estimate, propagated + rounding[2]
