"""The exact best K-step time grid among N + 1 candidate levels, by dynamic programming (docs/grids.md).

The path-space KL of a grid ``0 = tau_0 < ... < tau_K = 1`` (pathkl.pathspace) is a sum over its
consecutive pairs of levels plus the terminal term,

    KL = sum_k c(tau_{k-1}, tau_k) + KL(q_{tau_K} || N(0, I)),
    c(s, t) = E_{x_t ~ q_t} KL(q(x_s | x_t) || p(x_s | x_t)),

because a step's reverse kernel and the family's covariance depend on its two levels only (its
``abar_s``, ``abar_t`` and ``log alpha``). So the best K-step subsequence of the candidates is a
shortest path with exactly K edges: O(N^2) pair costs, O(K N^2) dynamic programming (the skip-step
form of Analytic-DPM, Bao et al. 2022, section 4, there for isotropic covariances only; here for every
family and reference). The terminal term depends on the grid only through the last interior level
where the schedule caps the last step's ``beta`` (cosine), and is then folded into that last pair.

Pair costs come from the Gaussian closed form (one compressed spectrum for all pairs, rounding bounds)
or from the engine, one two-level grid per pair, with the engine's errors. The chosen grid's KL is
recomputed by :func:`pathkl.pathspace.path_kl` on the grid itself (the number users get), and the
dynamic programme says how far from the true optimum it can be given the pair costs' errors
(:class:`BestGrid`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .asymptotic_grid import asymptotic_density, asymptotic_grid
from .covariances import Family
from .errors import InputError
from .pathspace import PathKL, path_kl, step_kls, terminal_kl
from .references import GaussianReference
from .rules import Rule
from .rules.closed_form import rounding_bound
from .schedules import (
    DTYPE,
    DDPMLinear,
    Grid,
    NoiseLevel,
    Schedule,
    grid_from_chain,
    grid_from_taus,
)

#: Candidate lattices of :meth:`Candidates.uniform`.
SPACINGS = ("uniform", "quadratic")
#: Most candidate levels the O(N^2) pair-cost matrix may have (about 200 MB of float64 arrays).
MAX_CANDIDATES = 5000


@dataclass(frozen=True)
class Candidates:
    """The levels a grid may use: ``taus`` (N + 1, increasing from 0 to 1) of a continuous schedule,
    or the chain indices ``0..N`` of a discrete one (``chain_length`` N, ``taus = i / N``)."""

    schedule: Schedule
    taus: torch.Tensor
    chain_length: int | None = None

    @staticmethod
    def uniform(schedule: Schedule, n: int, *, spacing: str = "uniform") -> Candidates:
        """``tau = k / n`` (``spacing="uniform"``) or ``(k / n)^2`` (``"quadratic"``: finer at low
        noise, where the asymptotic density of pathkl.asymptotic_grid concentrates), k = 0..n; for
        ddpm-linear every index of the chain of length n (uniform only)."""
        if not isinstance(n, int) or not 1 <= n <= MAX_CANDIDATES:
            raise InputError(f"the number of candidate steps N must be an integer in 1..{MAX_CANDIDATES}, got {n!r}")
        if spacing not in SPACINGS:
            raise InputError(f"unknown candidate spacing {spacing!r}; choose from {', '.join(SPACINGS)}")
        if isinstance(schedule, DDPMLinear):
            if spacing != "uniform":
                raise InputError("ddpm-linear's candidates are its chain's indices: the spacing is uniform")
            schedule.chain_betas(n)  # checks the chain length
            return Candidates(schedule, torch.arange(n + 1, dtype=DTYPE) / n, n)
        k = torch.arange(n + 1, dtype=DTYPE)
        return Candidates(schedule, k / n if spacing == "uniform" else (k * k) / (n * n))

    @staticmethod
    def from_taus(schedule: Schedule, taus: Sequence[float] | torch.Tensor) -> Candidates:
        """Any levels of a continuous schedule (sorted, duplicates merged; 0 and 1 must be among them)."""
        if isinstance(schedule, DDPMLinear):
            raise InputError("ddpm-linear is discrete: its candidates are the chain indices (Candidates.uniform)")
        t = torch.unique(torch.as_tensor(taus, dtype=DTYPE).flatten())
        if t.numel() < 2 or t[0] != 0.0 or t[-1] != 1.0 or not torch.isfinite(t).all():
            raise InputError("candidate taus must be finite and include 0 and 1")
        if t.numel() > MAX_CANDIDATES + 1:
            raise InputError(f"at most {MAX_CANDIDATES + 1} candidate levels, got {t.numel()}")
        return Candidates(schedule, t)

    @property
    def n(self) -> int:
        """N: the candidates are levels 0..N."""
        return self.taus.numel() - 1

    def grid(self, positions: Sequence[int]) -> Grid:
        """The grid through the candidate levels at ``positions`` (0 = p_0 < ... < p_K = N)."""
        if self.chain_length is not None:
            return grid_from_chain(self.schedule, self.chain_length, np.asarray(positions, dtype=np.int64))
        return grid_from_taus(self.schedule, self.taus[list(positions)])

    def level_log_abar(self) -> torch.Tensor:
        """``log abar`` at every candidate level (the chain's cumulative sums for a discrete schedule)."""
        if self.chain_length is None:
            return self.schedule.log_abar(self.taus)
        steps = torch.log1p(-self.schedule.chain_betas(self.chain_length))
        return torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(steps, 0)])

    def pair_log_alpha(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """``log alpha`` of the steps from level i to level j (before any cap): the schedule's
        cancellation-free form, or the chain's segment sums (running sums from each i)."""
        if self.chain_length is None:
            return self.schedule.log_alpha(self.taus[i], self.taus[j])
        steps = torch.log1p(-self.schedule.chain_betas(self.chain_length)).numpy()
        sums = np.full((self.n + 1, self.n + 1), np.nan)
        for start in range(self.n):
            sums[start, start + 1 :] = np.cumsum(steps[start:])
        return torch.from_numpy(sums[i.numpy(), j.numpy()])


@dataclass(frozen=True)
class PairCosts:
    """``cost[i, j] = c(level i, level j)`` for i < j with its absolute error (``+inf``, error 0,
    where the step is not allowed: j <= i, or a capped step before the last, whose capped ``abar``
    would change every later step), and ``terminal[i]``, the terminal KL of a grid whose last interior
    level is i, with its error. ``method`` names how the costs were computed."""

    candidates: Candidates
    family: Family
    cost: np.ndarray
    error: np.ndarray
    terminal: np.ndarray
    terminal_error: np.ndarray
    method: str

    def closing(self) -> tuple[np.ndarray, np.ndarray]:
        """Cost and error matrices with the terminal term added to the last column (the DP's edges)."""
        cost, error = self.cost.copy(), self.error.copy()
        cost[:, -1] += self.terminal
        error[:, -1] += self.terminal_error
        return cost, error


def _pairs(candidates: Candidates):
    """The allowed steps i < j: their levels, ``log alpha`` after the cap, and the levels' log abar."""
    n = candidates.n
    i, j = torch.triu_indices(n + 1, n + 1, 1)
    log_abar = candidates.level_log_abar()
    raw = candidates.pair_log_alpha(i, j)
    floor = candidates.schedule.min_log_alpha
    capped = raw < floor
    allowed = ~capped | (j == n)
    i, j, raw, capped = i[allowed], j[allowed], raw[allowed], capped[allowed]
    log_alpha = torch.clamp(raw, min=floor)
    # A capped last step ends at abar_s * alpha_cap, as grid_from_taus has it.
    end = torch.where(capped, log_abar[i] + log_alpha, log_abar[j])
    return i, j, log_abar[i], end, log_alpha


def pair_costs(reference, candidates: Candidates, family: Family, *, rtol: float = 1e-6,
               rule: str | Rule | None = None,
               progress: Callable[[int, int], None] | None = None) -> PairCosts:
    """Every allowed pair cost of ``candidates`` for ``family`` on ``reference``, with errors.

    A Gaussian reference takes :meth:`GaussianReference.transition_kls` for all pairs at once (one
    compressed spectrum; errors the closed form's rounding bound, pathkl.rules.closed_form); any
    other reference takes the engine on one two-level grid per pair (``rtol``, ``rule`` as in
    :func:`pathkl.pathspace.path_kl`; ``progress(i, n)`` before each pair), each cost with the
    engine's error (bound plus the 95% half-width where sampled)."""
    n = candidates.n
    i, j, prev_log_abar, end_log_abar, log_alpha = _pairs(candidates)
    values = torch.empty(i.numel(), dtype=DTYPE)
    errors = torch.zeros(i.numel(), dtype=DTYPE)
    if isinstance(reference, GaussianReference):
        values = reference.transition_kls(NoiseLevel.from_log_abar(prev_log_abar),
                                          NoiseLevel.from_log_abar(end_log_abar), log_alpha, family)
        errors = rounding_bound(values, reference.dim)
        method = "closed form"
    else:
        for p in range(i.numel()):
            if progress is not None:
                progress(p, i.numel())
            pair = Grid(candidates.schedule, candidates.taus[torch.stack([i[p], j[p]])],
                        torch.stack([prev_log_abar[p], end_log_abar[p]]), log_alpha[p : p + 1])
            kls = step_kls(reference, pair, family, rtol=rtol, rule=rule)
            values[p], errors[p] = kls.values[0], kls.errors[0]
        method = "engine, one two-level grid per pair"
    cost = np.full((n + 1, n + 1), np.inf)
    error = np.zeros((n + 1, n + 1))
    cost[i.numpy(), j.numpy()] = values.numpy()
    error[i.numpy(), j.numpy()] = errors.numpy()
    terminal, terminal_error = _terminals(reference, i, j, end_log_abar, n, rtol=rtol, rule=rule)
    return PairCosts(candidates, family, cost, error, terminal, terminal_error, method)


def _terminals(reference, i, j, end_log_abar, n, *, rtol, rule) -> tuple[np.ndarray, np.ndarray]:
    """``KL(q_T || N(0, I))`` for each last interior level i (one evaluation per distinct end level)."""
    last = j == n
    ends = end_log_abar[last]
    terminal, error = np.zeros(n + 1), np.zeros(n + 1)
    for value in torch.unique(ends).tolist():
        est = terminal_kl(reference, NoiseLevel.from_log_abar(torch.tensor(value, dtype=DTYPE)), rtol=rtol, rule=rule)
        at = i[last][ends == value].numpy()
        terminal[at], error[at] = est.value, est.error
    return terminal, error


@dataclass(frozen=True)
class BestGrid:
    """The K-step subsequence minimising the sum of the pair costs (terminal included).

    With every pair cost within its error of the true one (|c - c_true| <= e: certain for bounds, a
    95% interval each for Monte Carlo), any grid's true KL lies within the sum of its pairs' errors of
    its cost sum. Hence the true optimum over the candidates lies in ``[lower, value + error]``:
    ``lower`` is the optimum of the costs ``max(c - e, 0)`` (a second dynamic programme; no grid's
    true KL is below it), ``value + error`` bounds the chosen grid's true KL. ``regret_bound =
    value + error - lower``: how much more than the best grid among the candidates the chosen one can
    truly cost."""

    positions: tuple[int, ...]
    value: float
    error: float
    lower: float

    @property
    def regret_bound(self) -> float:
        return self.value + self.error - self.lower


def shortest_path(cost: np.ndarray, steps: int) -> tuple[list[int], float]:
    """Exact minimum of ``sum_k cost[p_{k-1}, p_k]`` over ``0 = p_0 < ... < p_K = N`` (K = ``steps``)
    by dynamic programming over the number of steps taken, O(K N^2); ``cost`` is (N+1, N+1) with
    ``+inf`` where a step is not allowed. Returns the positions and the minimum."""
    n = cost.shape[0] - 1
    if not isinstance(steps, int) or not 1 <= steps <= n:
        raise InputError(f"the number of steps K must be an integer in 1..N = {n}, got {steps!r}")
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    back = np.zeros((steps, n + 1), dtype=np.int64)
    for k in range(steps):
        total = best[:, None] + cost  # total[i, j]: best k-step path to i, then the step i -> j
        back[k] = np.argmin(total, axis=0)
        best = total[back[k], np.arange(n + 1)]
    positions = [n]
    for k in range(steps - 1, -1, -1):
        positions.append(int(back[k, positions[-1]]))
    return positions[::-1], float(best[n])


def best_grid(costs: PairCosts, steps: int) -> BestGrid:
    """The best ``steps``-step grid among ``costs``' candidates and its certainty (:class:`BestGrid`)."""
    cost, error = costs.closing()
    positions, value = shortest_path(cost, steps)
    if math.isinf(value):
        raise InputError(f"every {steps}-step grid through these candidates has an infinite KL for "
                         f"{costs.family.name!r}")
    path_error = math.fsum(error[a, b] for a, b in itertools.pairwise(positions))
    _, lower = shortest_path(np.maximum(cost - error, 0.0), steps)
    return BestGrid(tuple(positions), value, path_error, lower)


@dataclass(frozen=True)
class GridChoice:
    """A grid chosen for ``family`` with its exact path KL, and the uniform grid's for comparison.
    ``best`` is the dynamic programme's account (None for a grid not chosen by it)."""

    method: str
    grid: Grid
    indices: tuple[int, ...] | None  # chain indices for a discrete schedule
    kl: PathKL
    uniform: PathKL
    best: BestGrid | None = None
    candidates: int | None = None

    @property
    def ratio(self) -> float:
        """``kl.total / uniform.total``."""
        return self.kl.total / self.uniform.total if self.uniform.total else math.nan

    def as_dict(self) -> dict:
        out = {"method": self.method, "K": self.grid.T, "taus": self.grid.taus.tolist(),
               "kl": self.kl.total, "kl_error": self.kl.total_error, "steps": self.kl.steps,
               "steps_error": self.kl.steps_error, "terminal": self.kl.terminal,
               "terminal_error": self.kl.terminal_error,
               "uniform_kl": self.uniform.total, "uniform_kl_error": self.uniform.total_error,
               "ratio": self.ratio, "kl_method": self.kl.method}
        if self.indices is not None:
            out["indices"] = list(self.indices)
        if self.best is not None:
            out.update(candidates=self.candidates, dp_value=self.best.value, dp_error=self.best.error,
                       optimum_lower=self.best.lower, regret_bound=self.best.regret_bound)
        return out


#: Default number N of candidate steps: closed-form pair costs are cheap, each engine pair cost is a
#: quadrature (about 0.01-0.7 s for the rotated 2-D mixture).
GAUSSIAN_CANDIDATES, ENGINE_CANDIDATES = 1000, 32


def default_candidates(reference) -> int:
    """:data:`GAUSSIAN_CANDIDATES` for a Gaussian reference, :data:`ENGINE_CANDIDATES` otherwise."""
    return GAUSSIAN_CANDIDATES if isinstance(reference, GaussianReference) else ENGINE_CANDIDATES


def choose_grid(reference, schedule: Schedule, family: Family, steps: int, *, method: str = "dp",
                candidates: int | None = None, spacing: str = "uniform", rtol: float = 1e-6,
                rule: str | Rule | None = None, density_nodes: int | None = None) -> GridChoice:
    """A ``steps``-step grid for ``family`` on ``reference`` and ``schedule``: ``method="dp"`` the
    best subsequence of :meth:`Candidates.uniform` (``candidates`` = N, default
    :func:`default_candidates`, for ddpm-linear the chain length; ``spacing`` its lattice),
    ``"asymptotic"`` the grid of the leading-term density (pathkl.asymptotic_grid); its exact path
    KL and the uniform grid's."""
    if candidates is None:
        candidates = default_candidates(reference)
    if method == "dp":
        pool = Candidates.uniform(schedule, candidates, spacing=spacing)
        if steps > pool.n:
            raise InputError(f"K = {steps} steps need at least as many candidate steps, got N = {pool.n}")
        best = best_grid(pair_costs(reference, pool, family, rtol=rtol, rule=rule), steps)
        grid, size = pool.grid(best.positions), pool.n
        indices = best.positions if pool.chain_length is not None else None
    elif method == "asymptotic":
        density = asymptotic_density(reference, schedule, family, nodes=density_nodes)
        grid, indices = asymptotic_grid(density, schedule, steps, chain_length=candidates)
        best = size = None
    else:
        raise InputError(f"unknown grid method {method!r}; choose dp or asymptotic")
    kl = path_kl(reference, grid, family, rtol=rtol, rule=rule)
    uniform = path_kl(reference, uniform_grid(schedule, steps, chain_length=candidates), family, rtol=rtol, rule=rule)
    return GridChoice(method, grid, indices, kl, uniform, best, size)


def uniform_grid(schedule: Schedule, steps: int, *, chain_length: int = 1000) -> Grid:
    """The uniform K-step grid; for ddpm-linear the evenly spaced indices of the chain (DDIM's)."""
    if isinstance(schedule, DDPMLinear):
        indices = np.round(np.linspace(0, chain_length, steps + 1)).astype(np.int64)
        return grid_from_chain(schedule, chain_length, indices)
    return schedule.grid(steps)
