"""The quadrature rule: deterministic path-space KL of mixture references in d <= 3, every number
with an a-posteriori error (docs/errors.md).

Per step t, ``E_{x_t ~ q_t} [J(x_t) + K_f(x_t)]``: the reverse kernel's negentropy J
(pathkl.negentropy, the same for every family, computed once per grid and cached) plus the family's
Gaussian step KL K_f (pathkl.covariances). ``full`` is ``E J`` alone.

Outer expectation over ``x_t ~ q_t = sum_j pi_j N(sqrt(abar) m_j, V_j)``: in each component's own
coordinates, by Gauss-Hermite or, where the posterior weights switch sharply, by a lattice
(:class:`Quadrature`). Inner, J: Gauss-Hermite in the N-form or the q-form (:func:`negentropy`).
Every rule is a pair, so every value comes with an error estimate, and each step climbs
:data:`LADDER` by two routes, the entropy chain rule and the inner-quadrature negentropy, until its
error is within ``rtol`` (:func:`_climb`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..covariances import MATCHED, ReverseStep
from ..errors import InputError
from ..estimate import Estimate, StepKLs
from ..negentropy import (
    SKIP_BELOW,
    WhitenedMixture,
    n_form_terms,
    negentropy_bound,
    q_form_terms,
    reverse_kernel_whitened,
    terminal_mixture,
)
from ..operators import SmallDense
from ..references import MixtureReference
from ..schedules import DTYPE, Grid, NoiseLevel
from ..stable import log_det_one_plus
from ..third_derivative import third_derivative_sq_norm
from .nodes import affordable, companion, cosets, finest_affordable, hermite, lattice
from .stepsum import Interpolated, chebyshev_lobatto, interpolated_steps, lagrange_weights

MAX_QUADRATURE_DIM = 3
# Points per batch in the inner quadrature (memory: points * K * nodes * d doubles).
_BATCH_ELEMENTS = 1 << 22
# Posterior log-odds beyond this are not a switch worth resolving (weight ratio e^-40).
_LOG_ODDS_SEEN = 40.0
# Rounding allowance, relative, added to every error: the terms of a step are positive (psi >= 0,
# phi >= 0) or cancel to within this in the q-form's closed part.
_ROUNDING = 1e-13
# Shares of a step's tolerance that route (a) gives to the points it leaves out and to the inner
# rules (the rest is for the outer rule's estimate).
_SKIP_SHARE, _INNER_SHARE = 0.25, 0.25
# Memory for the outer nodes' G and C kept per reference (for its latest grid) for the families'
# Gaussian parts: at T = 4096 on the rotated mixture the families after `full` filled 1.05 GB of it.
_NODE_CACHE_BYTES = 1 << 31


@dataclass(frozen=True)
class Quadrature:
    """The rules of the engine.

    Outer, ``E_{x_t ~ q_t}``, in each component's coordinates ``x = sqrt(abar) m_k + V_k^{1/2} xi``:
    where the posterior weights switch sharply, the trapezoid rule on the lattice ``h Z^d`` inside
    the ball ``|xi| <= 9.1`` (weights ``exp(-|xi|^2 / 2)``, normalised), elsewhere Gauss-Hermite with
    ``smooth`` nodes per dimension. The lattice converges like ``exp(-2 pi a / h)`` for an integrand
    analytic in a strip of half-width ``a``, and ``a ~ 1 / S``, ``S`` the largest ``|V_c^{1/2} (s_j -
    s_l)|`` (the gradient in xi of the log-odds ``log w_j / w_l``) over the coarse lattice of each
    component c where both weights exceed ``e^-40``. So at each level ``h = min(coarse, resolution /
    S)``, rounded down to ``coarse * 2^(-i/4)`` so that steps share lattices, and Gauss-Hermite where
    ``S <= smooth_below``. Gauss-Hermite has no such control: at the low-noise steps of the rotated
    mixture it moved by 1e-2 between 32 and 64 nodes, where the lattice converges geometrically.

    Inner, J: Gauss-Hermite where the kernel is nearly Gaussian (N-form: every ``|zeta_k| <= 1`` and
    ``||R_k||_F <= near_gaussian``), with ``inner`` nodes per dimension where both are at most
    ``near_gaussian / 2`` and ``inner_wide`` (None: ``inner``) above; ``separated`` nodes where it is not (q-form),
    module docstring. The N-form's integrand narrows to width ``sqrt(1 - r)`` for each eigenvalue r
    of ``R_k``: at T = 16 (rotated mixture, step 4) the N-form up to ``||R_k||_F = 1`` with 12 nodes
    was off by 2e-5, with 48 by 2e-7.

    Every rule is a pair, so that each number comes with an a-posteriori error estimate. Outer: the
    lattice with its copy shifted by ``h/2`` in every coordinate (their mean the value), and its
    copies shifted along each axis but the last, so that the estimate sees every class of aliasing
    terms (:func:`standard_rule`, :func:`~pathkl.rules.nodes.cosets`); Gauss-Hermite ``smooth`` with
    ``smooth + smooth // 2`` nodes (value the larger rule, estimate their whole difference). Inner:
    each Gauss-Hermite rule of n nodes with its companion of ``n + n // 2`` (:func:`negentropy`). A step's error is the outer estimate plus the outer expectation
    of the inner estimates plus the certified bounds of the points it skipped (docs/errors.md).
    """

    resolution: float = 2.0
    coarse: float = 0.3
    smooth_below: float = 1.0
    smooth: int = 24
    inner: int = 12
    inner_wide: int | None = None
    separated: int = 48
    near_gaussian: float = 1.0

    @staticmethod
    def hermite(outer: int, *, inner: int, separated: int) -> Quadrature:
        """Gauss-Hermite everywhere with ``outer`` nodes per dimension (no lattice)."""
        return Quadrature(smooth_below=math.inf, smooth=outer, inner=inner, separated=separated)

    @property
    def outer(self) -> tuple[float, float, float, int]:
        """What the outer rules depend on (the inner ones on the rest)."""
        return self.resolution, self.coarse, self.smooth_below, self.smooth


#: The rules a step climbs, cheap to fine, until its error estimate meets the requested tolerance
#: (d = 2, 3). The first two are Gauss-Hermite everywhere (8 and 14 outer nodes); the others put a lattice where
#: the posterior weights switch sharply and refine the inner rules. Measured on the rotated mixture
#: (benchmarks/bench_mixture.py): the first meets 1e-6 at the high-noise steps, the lattices are
#: needed at the low-noise steps of every T and for every step of T <= 16. The third, a lattice twice
#: as coarse (``resolution`` 4) with few inner nodes, is where most of those steps stop now that the
#: budget is shared over the chain (docs/errors.md): T = 16 5.2 -> 3.9 s, T = 256 41 -> 29 s.
LADDER = (
    Quadrature.hermite(8, inner=4, separated=8),
    Quadrature.hermite(14, inner=6, separated=12),
    Quadrature(resolution=4.0, smooth=24, inner=8, inner_wide=16, separated=32, near_gaussian=0.5),
    Quadrature(smooth=24, inner=12, inner_wide=24, separated=48, near_gaussian=0.5),
    Quadrature(inner_wide=36, separated=96, near_gaussian=0.5),
    Quadrature(resolution=1.4, coarse=0.2, inner=24, inner_wide=48, separated=128, near_gaussian=0.35),
)
#: The ladder in one dimension, where fine rules are cheap.
LADDER_1D = (
    Quadrature.hermite(16, inner=8, separated=24),
    Quadrature(resolution=1.0, coarse=0.2, smooth=48, inner=24, inner_wide=48, separated=80, near_gaussian=0.5),
    Quadrature(resolution=0.7, coarse=0.15, smooth=96, inner=48, inner_wide=96, separated=160, near_gaussian=0.5),
    Quadrature(resolution=0.5, coarse=0.1, smooth=128, inner=64, inner_wide=128, separated=256, near_gaussian=0.35),
    Quadrature(resolution=0.35, coarse=0.07, smooth=160, inner=96, inner_wide=192, separated=384, near_gaussian=0.25),
)


def ladder_for(d: int) -> tuple[Quadrature, ...]:
    """The ladder of rules for dimension d."""
    return LADDER_1D if d == 1 else LADDER



def _check_dim(reference) -> None:
    if reference.dim > MAX_QUADRATURE_DIM:
        raise InputError(
            f"the mixture path-space KL uses quadrature and supports d <= {MAX_QUADRATURE_DIM}, got d = {reference.dim}"
        )


def outer_nodes(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor, rule):
    """Nodes x (..., Q K, d) and weights (Q K,) for ``E_{q_t}``: the standard-normal ``rule`` (nodes,
    weights) in each component's coordinates; abar of shape (...)."""
    xi, wq = rule
    k, d = reference.size, reference.dim
    nu = reference.marginal_eigenvalues(abar, one_minus_abar)[..., None, :, :]  # (..., 1, K, e)
    noise = reference.covs.apply(nu.sqrt(), xi[:, None, :].expand(xi.shape[0], k, d))
    x = abar.sqrt()[..., None, None, None] * reference.means + noise
    weights = (wq[:, None] * reference.weights).reshape(-1)
    return x.reshape(*x.shape[:-3], -1, d), weights


def spacing(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor, quad: Quadrature) -> torch.Tensor:
    """The outer lattice spacing h at each level (abar and 1 - abar of shape (L,)), :class:`Quadrature`;
    ``h = inf`` where the level is smooth enough for Gauss-Hermite. A function of the level and the
    rule alone, so it is cached per level on the reference (every rung, route and family of a run asks
    for the same levels again; the sharpness scan on the coarse lattice was a quarter of a T = 64 run)."""
    if quad.smooth_below == math.inf:
        return torch.full_like(abar, math.inf)
    cache = reference._cache.setdefault(("h", quad), {})
    keys = list(zip(abar.tolist(), one_minus_abar.tolist()))
    missing = torch.tensor([i for i, key in enumerate(keys) if key not in cache], dtype=torch.long)
    if missing.numel():
        found = _spacing(reference, abar[missing], one_minus_abar[missing], quad)
        cache.update(zip((keys[i] for i in missing.tolist()), found.tolist()))
    return torch.tensor([cache[key] for key in keys], dtype=DTYPE)


def _spacing(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor, quad: Quadrature) -> torch.Tensor:
    """:func:`spacing` computed (a lattice rule, ``smooth_below`` finite)."""
    k, d = reference.size, reference.dim
    per_level = lattice(quad.coarse, d)[1].numel() * k**3 * d
    size = max(1, _BATCH_ELEMENTS // per_level)
    sharpness = torch.cat([_sharpness(reference, abar[i : i + size], one_minus_abar[i : i + size], quad)
                           for i in range(0, abar.numel(), size)])
    raw = (quad.resolution / sharpness).clamp(max=quad.coarse)
    halvings = torch.ceil(4.0 * torch.log2(quad.coarse / raw) - 1e-9).clamp_min(0.0)
    # From integers in Python, so that equal quarter-octaves give bit-equal spacings (shared lattices).
    h = torch.tensor([quad.coarse * 2.0 ** (-i / 4) for i in halvings.tolist()], dtype=DTYPE)
    return torch.where(sharpness <= quad.smooth_below, math.inf, h)


def _sharpness(reference, abar, one_minus_abar, quad) -> torch.Tensor:
    """``S`` of :class:`Quadrature` at each level: the largest ``|V_c^{1/2} (s_j - s_l)|`` over the
    coarse lattice of each component c where ``w_j, w_l > e^-40``."""
    if reference.size == 1:  # one posterior weight, 1 everywhere: nothing switches
        return torch.zeros(abar.numel(), dtype=DTYPE)
    x, _ = outer_nodes(reference, abar, one_minus_abar, lattice(quad.coarse, reference.dim))
    post = reference.posterior(x, abar[:, None], one_minus_abar[:, None])
    n_levels, k, d = abar.numel(), reference.size, reference.dim
    scores = post.scores.reshape(n_levels, -1, k, k, d)  # (L, Q, c, j, d): nodes of component c
    seen = post.log_weights.reshape(n_levels, -1, k, k) > -_LOG_ODDS_SEEN
    j, l = torch.triu_indices(k, k, 1)
    diff = scores[..., j, :] - scores[..., l, :]  # (L, Q, c, pairs, d)
    cov = reference.covs.dense(reference.marginal_eigenvalues(abar, one_minus_abar))  # (L, c, d, d)
    sq = torch.einsum("nqcpa,ncab,nqcpb->nqcp", diff, cov, diff)
    return torch.where(seen[..., j] & seen[..., l], sq, 0.0).flatten(1).amax(1).sqrt()




def standard_rule(h: float, d: int, quad: Quadrature) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paired rule for ``E_{N(0, I_d)}`` at spacing h (Gauss-Hermite where ``h = inf``): nodes,
    value weights w (P,) and error weights e (M, P), so that ``sum(w f)`` is the value and
    ``sum_m |sum(e_m f)|`` its error estimate (:func:`paired_sums`, :class:`Quadrature`). Lattice:
    the :func:`~pathkl.rules.nodes.cosets` ``Q_0, Q_1, Q_(e_i)``, value ``(Q_0 + Q_1) / 2``, estimate
    ``|Q_0 - Q_1| / 2 + sum_i |Q_0 - Q_(e_i)|``. The axis terms count twice: where the integrand
    varies along a diagonal, ``|Q_0 - Q_(e_i)| / 2`` is the value's error itself (its class
    ``(1, 1)``), not a coarser rule's, so it needs a margin. Gauss-Hermite ``w = (0, w2)``,
    ``e = (w1, -w2)``."""
    if h == math.inf:
        (x1, w1), (x2, w2) = hermite(quad.smooth, d), hermite(companion(quad.smooth), d)
        return torch.cat([x1, x2]), torch.cat([torch.zeros_like(w1), w2]), torch.cat([w1, -w2])[None]
    rules = [lattice(h, d, c) for c in cosets(d)]
    n = len(rules)

    def on_cosets(coefficients):  # sum_c coefficient_c Q_c as weights over every coset's nodes
        return torch.cat([c * weights for c, (_, weights) in zip(coefficients, rules)])

    axis_rows = [on_cosets([1.0] + [-1.0 if j == i else 0.0 for j in range(1, n)]) for i in range(2, n)]
    e = torch.stack([on_cosets([0.5, -0.5] + [0.0] * (n - 2))] + axis_rows)
    return torch.cat([nodes for nodes, _ in rules]), on_cosets([0.5, 0.5] + [0.0] * (n - 2)), e


def paired_sums(values: torch.Tensor, w: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paired rule's value ``sum(w f)`` and estimate ``sum_m |sum(e_m f)|`` over the last axis of
    ``values`` (..., P) (:func:`standard_rule`). A node of weight 0 adds nothing, also where f is
    +inf (beta_tilde at t = 1), which would otherwise turn the sum into NaN."""
    value = torch.where(w == 0, 0.0, values * w).sum(-1)
    estimate = torch.where(e == 0, 0.0, values[..., None, :] * e).sum(-1).abs().sum(-1)
    return value, estimate


def node_weights(w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """(P,): how much an error at each node can move the paired rule's value and its estimate."""
    return w.abs() + e.abs().sum(0)


def level_rule(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor, h: float, quad: Quadrature):
    """``outer_nodes`` for spacing h (:func:`standard_rule`): nodes, value weights (Q K,) and error
    weights (M, Q K), both repeated over components like the weights."""
    xi, wq, eq = standard_rule(h, reference.dim, quad)
    x, w = outer_nodes(reference, abar, one_minus_abar, (xi, wq))
    return x, w, (eq[..., None] * reference.weights).flatten(-2)


def whitened_kl(mix: WhitenedMixture, *, nodes: int, form: str) -> torch.Tensor:
    """``KL(sum_k w_k N(zeta_k, I - R_k) || N(0, I))`` per batch entry by Gauss-Hermite with ``nodes``
    per dimension: ``form="N"`` (psi form) or ``"q"`` (phi form), module docstring."""
    d = mix.zeta.shape[-1]
    xi, wq = hermite(nodes, d)
    parts, chol = mix.parts()
    if form == "N":
        psi, _ = n_form_terms(mix, xi.expand(mix.zeta.shape[0], *xi.shape), parts)
        return (wq * psi).sum(-1)
    closed, excess = q_form_terms(mix, xi, parts, chol)
    # J >= 0; the sum cancels to within rounding of its terms (seen: -1.6e-32 where a far component has
    # a tiny weight), so a negative value is rounding and is reported as 0.
    return (closed + (torch.exp(mix.log_weights) * (excess * wq).sum(-1)).sum(-1)).clamp_min(0.0)


def negentropy(mix: WhitenedMixture, quad: Quadrature, tolerance=None) -> tuple[torch.Tensor, torch.Tensor]:
    """J per batch entry and an estimate of the inner rule's error.

    Skipped (0, with its certified bound as the error) where :func:`negentropy_bound` is below 1e-24;
    N-form where nearly Gaussian (every ``|zeta_k| <= 1`` and ``||R_k||_F <= near_gaussian``,
    :class:`Quadrature`), with ``inner`` nodes where both are at most ``near_gaussian / 2`` and
    ``inner_wide`` above; q-form with ``separated`` nodes elsewhere. Each rule of n nodes runs with its
    companion of ``n + n // 2``: the value is the companion's, the error their difference.

    ``tolerance`` (a function of the current values, giving each entry's allowed error; None: the
    rules above as they are) makes the rules adaptive: each entry starts from the pair at a quarter of
    the rule's n and climbs through companions (n, companion(n), companion(companion(n)), ...: each
    step reuses the last rule) until its error is within its tolerance or the rule's own n is
    reached (:func:`_node_ladder`), so that the points far from the switching band, whose kernels are
    nearly Gaussian, stop at a few nodes."""
    n_batch = mix.log_weights.shape[0]
    out, err = torch.zeros(n_batch, dtype=DTYPE), torch.zeros(n_batch, dtype=DTYPE)
    bound = negentropy_bound(mix)
    active = bound > SKIP_BELOW
    err[~active] = bound[~active]
    zeta, r = mix.zeta.norm(dim=-1).amax(-1), torch.linalg.matrix_norm(mix.r).amax(-1)
    small, near = zeta.maximum(r) <= 0.5 * quad.near_gaussian, (zeta <= 1.0) & (r <= quad.near_gaussian)
    rules = (("N", small, quad.inner), ("N", near & ~small, quad.inner_wide or quad.inner), ("q", ~near, quad.separated))
    groups = []
    for form, mask, n in rules:
        idx = torch.nonzero(active & mask).flatten()
        ladder = _node_ladder(n, adaptive=tolerance is not None)
        last = _whitened_kl_batched(mix, idx, ladder[0], form)
        out[idx] = _whitened_kl_batched(mix, idx, ladder[1], form)
        err[idx] = (out[idx] - last).abs()
        groups.append((form, idx, ladder, out[idx].clone()))
    if tolerance is None:
        return out, err
    for form, idx, ladder, last in groups:
        for n in ladder[2:]:
            open_ = err[idx] > tolerance(out)[idx]
            if not open_.any():
                break
            idx, last = idx[open_], out[idx[open_]].clone()
            out[idx] = _whitened_kl_batched(mix, idx, n, form)
            err[idx] = (out[idx] - last).abs()
    return out, err


def _node_ladder(n: int, *, adaptive: bool) -> tuple[int, ...]:
    """The node counts a rule of n nodes climbs: ``(n, companion(n))``, or, adaptive, from about n / 4
    through companions up to the first count >= companion(n)."""
    if not adaptive:
        return (n, companion(n))
    counts = [max(4, n // 4)]
    while counts[-1] < companion(n):
        counts.append(companion(counts[-1]))
    return tuple(counts)


def _whitened_kl_batched(mix: WhitenedMixture, idx: torch.Tensor, nodes: int, form: str) -> torch.Tensor:
    """:func:`whitened_kl` at the entries ``idx``, in batches that fit the memory budget."""
    if not idx.numel():
        return torch.zeros(0, dtype=DTYPE)
    k, d = mix.zeta.shape[-2:]
    batch = max(1, _BATCH_ELEMENTS // ((k if form == "N" else k * k) * nodes**d * d))
    return torch.cat([whitened_kl(mix.subset(sel), nodes=nodes, form=form) for sel in torch.split(idx, batch)])


# ---- one chunk of steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class _StepNodes:
    """Outer nodes of a chunk of steps with everything at them: shapes (S, P, ...)."""

    weights: torch.Tensor  # (P,) value weights of the paired rule (standard_rule)
    error_weights: torch.Tensor  # (M, P) its error weights
    post: object
    g: torch.Tensor
    c: torch.Tensor | None  # None unless asked for (Family.uses_c)
    abar: torch.Tensor  # (S, 1)

    def integrate(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``E_{q_t}`` of values (S, P) and the paired rule's error estimate (:func:`paired_sums`)."""
        return paired_sums(values, self.weights, self.error_weights)

    def integrate_error(self, errors: torch.Tensor) -> torch.Tensor:
        """What pointwise errors (S, P) of the integrand can move the value and its estimate by."""
        return (errors * node_weights(self.weights, self.error_weights)).sum(-1)


def _step_nodes(reference, grid: Grid, idx: torch.Tensor, h: float, quad: Quadrature, *,
                with_c: bool = False) -> _StepNodes:
    """Steps idx on the outer rule of spacing h: the posterior, G and (``with_c``) C at the nodes."""
    abar, om = grid.abar[idx], grid.one_minus_abar[idx]
    x, w, e = level_rule(reference, abar, om, h, quad)
    post = reference.posterior(x, abar[:, None], om[:, None])
    g = reference.excess(post, abar[:, None])
    c = reference.posterior_cov_dense(post, abar[:, None], om[:, None]) if with_c else None
    _remember_nodes(reference, grid, idx, h, quad, g, c)
    return _StepNodes(w, e, post, g, c, abar[:, None])


def _node_cache(reference, grid: Grid, h: float, quad: Quadrature) -> tuple[dict, dict]:
    """The outer nodes' G and C cached on the reference for the latest grid only (a new grid empties
    it): the whole store (its byte count) and the entries ``{t: (G, C)}`` of the rule ``(quad, h)``."""
    key = _grid_key(grid)
    if reference._cache.get("GC", {}).get("grid") != key:
        reference._cache["GC"] = {"grid": key, "bytes": 0, "rules": {}}
    store = reference._cache["GC"]
    return store, store["rules"].setdefault((quad, h), {})


def _remember_nodes(reference, grid: Grid, t: torch.Tensor, h: float, quad: Quadrature, g: torch.Tensor,
                    c: torch.Tensor | None) -> None:
    """Keeps the G and C (S, P, d, d; C may be None) of steps t on the rule ``(quad, h)`` for the
    families' Gaussian parts (:func:`_gaussian_nodes`), while the store holds at most
    :data:`_NODE_CACHE_BYTES`; an entry with C replaces one without."""
    store, cache = _node_cache(reference, grid, h, quad)
    per_step = 8 * g[0].numel() * (1 if c is None else 2)
    for i, s in enumerate(t.tolist()):
        known = cache.get(s)
        if known is not None and (c is None or known[1] is not None):
            continue
        freed = 0 if known is None else 8 * known[0].numel()
        if store["bytes"] - freed + per_step <= _NODE_CACHE_BYTES:
            cache[s] = (g[i].clone(), None if c is None else c[i].clone())
            store["bytes"] += per_step - freed


def _gaussian_nodes(reference, grid: Grid, t: torch.Tensor, h: float, quad: Quadrature, *,
                    with_c: bool = False) -> _StepNodes:
    """:func:`_step_nodes` for the families' Gaussian parts (no posterior), from the latest grid's
    cache of G and C where they are there (:func:`_remember_nodes`): they are most of a family's
    cost once E J is known, every family of a ``rates`` run asks for them on the same rules at one T
    after another (pathkl.rates.ladder_rates), and routes (a), (b) and (c) of ``E J`` leave the G
    of each step's own level there (C only for a family that reads it, ``Family.uses_c``: forming it
    in route (c) took ``full`` at T = 4096 from 57 to 67 s). A cache over every grid filled up with
    the first T's; this one, at T = 2048 on the rotated mixture, took ``beta`` from 8.4 to 1.7 s and
    ``diag`` from 9.3 to 2.4 s after ``analytic``."""
    _, cache = _node_cache(reference, grid, h, quad)
    steps = t.tolist()
    found = {s: cache[s] for s in steps if s in cache and (not with_c or cache[s][1] is not None)}
    missing = torch.tensor([s for s in steps if s not in found], dtype=torch.long)
    if missing.numel():
        nodes = _step_nodes(reference, grid, missing, h, quad, with_c=with_c)
        found |= {s: (nodes.g[i], None if nodes.c is None else nodes.c[i]) for i, s in enumerate(missing.tolist())}
    abar = grid.abar[t]
    _, w, e = level_rule(reference, abar, grid.one_minus_abar[t], h, quad)
    g = torch.stack([found[s][0] for s in steps])
    c = torch.stack([found[s][1] for s in steps]) if with_c else None
    return _StepNodes(w, e, None, g, c, abar[:, None])


def _grid_key(grid: Grid):
    return (grid.schedule.name, grid.log_abar.numpy().tobytes(), grid.log_alpha.numpy().tobytes())


def _sampled_spacings(reference, grid: Grid, steps: torch.Tensor, quad: Quadrature) -> torch.Tensor:
    """The a-priori outer spacing h of the (increasing) ``steps``: :func:`spacing` at every
    ``stride``-th of them (at most 257 levels), each step taking the smaller h of the two sampled
    levels around it."""
    n = steps.numel()
    stride = -(-n // 256)
    sampled = steps[torch.arange(0, n + stride - 1, stride).clamp(max=n - 1)]
    h = spacing(reference, grid.abar[sampled], grid.one_minus_abar[sampled], quad)
    if stride == 1:
        return h
    between = torch.minimum(h[:-1], h[1:]).repeat_interleave(stride)
    return torch.cat([h[:1], between])[:n]


def _by_spacing(reference, h: torch.Tensor, quad: Quadrature, *, chunked: bool = True):
    """Positions in h grouped by equal spacing, in chunks that fit the memory budget (``chunked``; else
    whole): (positions, h)."""
    for value in torch.unique(h).tolist():
        members = torch.nonzero(h == value).flatten()
        size = max(1, _BATCH_ELEMENTS // _level_elements(reference, value, quad)) if chunked else members.numel()
        for chunk in torch.split(members, size):
            yield chunk, value


#: Route (c) is tried on lattices of at most this resolution: its cancelled integrand, O(beta_t) terms
#: cancelling to E J_t, needs the bands resolved far better than the lattice's ``exp(-2 pi^2 / 4)``
#: at resolution 4. On the rotated mixture (T = 512..4096) that rung met no step's tolerance where its
#: spacing was below ``coarse`` (failing by 1e2 to 1e5), and where it was ``coarse`` the next rung is
#: the same lattice: 6-7 s of ``full`` at T = 2048 and 4096.
_DE_BRUIJN_RESOLUTION = 2.0


def _rungs(d: int) -> tuple[tuple[object, int], ...]:
    """The order in which a step tries (route, ladder level): each of :func:`_routes` up the ladder.
    Routes (b) and (c) have no inner rules, so they skip a level whose outer rule is the previous
    level's (:data:`LADDER`'s fifth): it gave the same values again (2.3 s of ``full`` at T = 4096 on
    the rotated mixture). Route (c) skips the lattices coarser than :data:`_DE_BRUIJN_RESOLUTION`."""
    ladder = ladder_for(d)

    def tried(route, level: int) -> bool:
        if route is _expected_negentropy:
            return True
        if route is _de_bruijn_negentropy and ladder[level].resolution > _DE_BRUIJN_RESOLUTION:
            return False
        return level == 0 or ladder[level].outer != ladder[level - 1].outer

    return tuple((route, level) for route in _routes() for level in range(len(ladder)) if tried(route, level))


def _routes() -> tuple[object, ...]:
    """The routes to ``E J_t``, cheap to dear: (b) :func:`_chain_rule_negentropy`, (c)
    :func:`_de_bruijn_negentropy`, (a) :func:`_expected_negentropy`."""
    return (_chain_rule_negentropy, _de_bruijn_negentropy, _expected_negentropy)


@dataclass
class _ClimbState:
    """Where each step of one grid stands on the ladder (:func:`_climb`): the best value so far, its
    error, the next rung to try, and each route's rounding floor at the last rung it was tried (0
    before)."""

    values: torch.Tensor
    errors: torch.Tensor
    next_rung: torch.Tensor
    floors: torch.Tensor  # (T, routes): in the order of _routes()

    @staticmethod
    def empty(T: int) -> _ClimbState:
        return _ClimbState(torch.zeros(T, dtype=DTYPE), torch.full((T,), math.inf, dtype=DTYPE),
                           torch.zeros(T, dtype=torch.long), torch.zeros(T, len(_routes()), dtype=DTYPE))


def _climb(reference, grid: Grid, steps: torch.Tensor, state: _ClimbState, tol) -> None:
    """``E_{q_t} J_t`` at ``steps`` (1-based), each step climbing the rungs (:func:`_rungs`: the cheap
    route (b), :func:`_chain_rule_negentropy`, up :data:`LADDER`, then route (a),
    :func:`_expected_negentropy`) until its error is within ``tol(values)`` (its tolerance, absolute,
    given the value), the rungs end, or the next lattice would not fit in memory. A route is not tried
    again for a step once its rounding floor alone exceeds the tolerance (route (b) at large T). The
    climb advances ``state``, so a later call on it with a tighter tolerance resumes where this one
    stopped; each step keeps the value with the smallest error."""
    rungs = _rungs(reference.dim)
    ladder = ladder_for(reference.dim)
    index = steps - 1
    limit = lambda at: tol(at, state.values[index[at]])

    def open_steps() -> torch.Tensor:
        at = torch.arange(steps.numel())
        i = index[at]
        return at[~(state.errors[i] <= limit(at)) & (state.next_rung[i] < len(rungs))]

    pending = open_steps()
    while pending.numel():
        rung = int(state.next_rung[index[pending]].min())
        group = pending[state.next_rung[index[pending]] == rung]
        route, level = rungs[rung]
        which = _routes().index(route)
        group = group[state.floors[index[group], which] <= limit(group)]
        quad = ladder[level]
        trial = _route_spacings(reference, grid, steps[group], quad, route)
        fits = affordable(trial, reference.dim)
        # Route (c) batches its steps itself: a run of consecutive steps shares its levels.
        for sel, h in _by_spacing(reference, trial[fits], quad, chunked=route is not _de_bruijn_negentropy):
            pos = group[fits][sel]
            at = index[pos]
            value, error, floor = run_rung(reference, grid, at + 1, route, h, quad, limit(pos))
            state.floors[at, which] = floor
            # An untrusted value (error inf) is kept until a trusted one comes: floors are judged by it.
            better = (error < state.errors[at]) | (~torch.isfinite(state.errors[at]) & torch.isfinite(value))
            at = at[better]
            state.values[at], state.errors[at] = value[better], error[better]
        state.next_rung[index[pending[state.next_rung[index[pending]] == rung]]] = rung + 1
        pending = open_steps()


def run_rung(reference, grid: Grid, t: torch.Tensor, route, h: float, quad: Quadrature, tol: torch.Tensor):
    """``route`` on one rung (``quad`` at spacing h) for steps t, as the climb runs it: value, error
    and rounding floor, the error infinite where a Gauss-Hermite rung is not trusted
    (:func:`_hermite_trusted`)."""
    value, error, floor = route(reference, grid, t, h, quad, tol)
    if quad.smooth_below == math.inf:
        error = torch.where(_hermite_trusted(reference, grid, t, route), error, math.inf)
    return value, error, floor


def _route_spacings(reference, grid: Grid, steps: torch.Tensor, quad: Quadrature, route) -> torch.Tensor:
    """The outer spacing of ``route`` at ``steps``: level t's (:func:`_sampled_spacings`), and for
    route (c), whose levels from t - 1 to t share one lattice, the smaller of levels t's and t - 1's."""
    if not steps.numel():
        return torch.zeros(0, dtype=DTYPE)
    h = _sampled_spacings(reference, grid, steps, quad)
    if route is _de_bruijn_negentropy:
        h = torch.minimum(h, _sampled_spacings(reference, grid, steps - 1, quad))
    return h


def _hermite_trusted(reference, grid: Grid, t: torch.Tensor, route) -> torch.Tensor:
    """Where a Gauss-Hermite-everywhere rung's error estimate is trusted for steps t: at levels the
    default rule finds smooth (sharpness at most ``smooth_below``, :class:`Quadrature`), t's for route
    (a) and also t - 1's for routes (b) and (c). Elsewhere the posterior weights switch within the rule's reach
    and the pair's difference is no bound: on a 1-D two-component chain (T = 512, step 116) Gauss-Hermite
    16 / 24 differed by 7.6e-15 where the true error was 1.7e-14."""
    levels = [t] if route is _expected_negentropy else [t, t - 1]
    return torch.stack([hermite_trusted_at(reference, grid.abar[i], grid.one_minus_abar[i]) for i in levels]).all(0)


def hermite_trusted_at(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor) -> torch.Tensor:
    """Whether a Gauss-Hermite pair's difference is trusted as the error of an outer expectation over
    ``q`` at these levels: where the default rule finds the level smooth (no lattice, :class:`Quadrature`).
    Where the posterior weights switch within the rule's reach, two Gauss-Hermite rules can agree far
    better than either is right."""
    return spacing(reference, abar, one_minus_abar, Quadrature()) == math.inf


def _negentropy_chain(reference, grid: Grid, rtol: float) -> Interpolated:
    """``E_{q_t} J_t``, t = 1..T, by the step-index rule at ``rtol`` (the ``full`` family's chain),
    cached on the reference: a function of (reference, grid, rtol) only, so every family's path KL
    adds its Gaussian part to the same values whatever was computed before in the process."""
    _check_dim(reference)
    key = ("J",) + _grid_key(grid) + (rtol,)
    if key not in reference._cache:
        state = _ClimbState.empty(grid.T)

        def evaluate(steps, step_rtol, atol):
            return _finite_steps(reference, grid, steps, atol, lambda at, at_atol: _negentropies(
                reference, grid, at, state, rtol=step_rtol, atol=at_atol))

        reference._cache[key] = interpolated_steps(evaluate, grid.T, rtol=rtol,
                                                   log_scale=_leading_log_scale(grid, MATCHED.order))
    return reference._cache[key]


def _finite_steps(reference, grid: Grid, steps: torch.Tensor, atol: torch.Tensor, evaluate):
    """``evaluate(steps, atol) -> (values, errors)`` at the steps that are finite, and +inf exactly
    (error 0) at those from the noise-free level of data with point masses (``1 - abar_{t-1} = 0``,
    :attr:`MixtureReference.has_point_masses`)."""
    singular = reference.has_point_masses & (grid.one_minus_abar[steps - 1] == 0)
    values, errors = evaluate(steps[~singular], atol[~singular])
    out = torch.full((steps.numel(),), math.inf, dtype=DTYPE).masked_scatter(~singular, values)
    return out, torch.zeros(steps.numel(), dtype=DTYPE).masked_scatter(~singular, errors)


def _negentropies(reference, grid: Grid, steps: torch.Tensor, state: _ClimbState, *, rtol: float,
                  atol: torch.Tensor | None = None):
    """``E J_t`` at ``steps`` (1-based), ``state`` climbed until each error is within
    ``rtol |E J_t| + atol`` (:func:`_climb`): values and errors."""
    atol = torch.zeros(steps.numel(), dtype=DTYPE) if atol is None else atol
    _climb(reference, grid, steps, state, lambda at, values: rtol * values.abs() + atol[at])
    index = steps - 1
    return state.values[index], state.errors[index]


def expected_negentropies(reference, grid: Grid, *, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``E_{x_t ~ q_t} J_t(x_t)`` for t = 1..T and their errors, every step evaluated."""
    _check_dim(reference)
    return _negentropies(reference, grid, torch.arange(1, grid.T + 1), _ClimbState.empty(grid.T), rtol=rtol)


def expected_negentropy_at(reference, grid: Grid, idx: torch.Tensor, quad: Quadrature) -> tuple[torch.Tensor, torch.Tensor]:
    """``E_{q_t} J_t`` for the steps ``idx`` (a 1-D tensor of t) by the one rule ``quad``, and its errors."""
    values, errors = torch.empty(idx.numel(), dtype=DTYPE), torch.empty(idx.numel(), dtype=DTYPE)
    h = spacing(reference, grid.abar[idx], grid.one_minus_abar[idx], quad)
    for sel, value in _by_spacing(reference, h, quad):
        values[sel], errors[sel], _ = _expected_negentropy(reference, grid, idx[sel], value, quad)
    return values, errors


def _level_expectation(reference, abar: torch.Tensor, one_minus_abar: torch.Tensor, quad: Quadrature,
                       kappa: torch.Tensor | None = None, *, steps: tuple[Grid, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``E_{q}[-log q + (1/2) log det(I + kappa G)]`` (the last term only where ``kappa`` is given) at
    levels (L,), by the paired rule at each level's own spacing: values, the pair's error estimates
    (each term's apart) and a rounding floor of 1e-14 of ``E |term|`` (log-sum-exp and the sums). The
    entropy term of each level is cached on the reference (:func:`_level_entropies`): route (b) needs
    H(q_t) for step t and again for step t + 1, where the posterior at the level is already known.
    ``steps``: the grid and steps whose own levels these are, whose G is kept for the families'
    Gaussian parts (:func:`_remember_nodes`)."""
    values, errors, floors = (torch.full_like(abar, math.inf) for _ in range(3))
    h_all = spacing(reference, abar, one_minus_abar, quad)
    fits = torch.nonzero(affordable(h_all, reference.dim)).flatten()
    entropies = _level_entropies(reference, quad)
    todo = fits if kappa is not None else fits[[(a, o) not in entropies for a, o in
                                                zip(abar[fits].tolist(), one_minus_abar[fits].tolist())]]
    for chunk, h in _by_spacing(reference, h_all[todo], quad):  # levels that do not fit stay at +inf
        sel = todo[chunk]
        x, w, e = level_rule(reference, abar[sel], one_minus_abar[sel], h, quad)
        post = reference.posterior(x, abar[sel, None], one_minus_abar[sel, None])
        f = -post.log_prob
        parts = [(*paired_sums(f, w, e), 1e-14 * (f.abs() * w).sum(-1))]
        entropies.update(zip(zip(abar[sel].tolist(), one_minus_abar[sel].tolist()), zip(*(p.tolist() for p in parts[0]))))
        if kappa is not None:
            g = reference.excess(post, abar[sel, None])
            if steps is not None:
                _remember_nodes(reference, steps[0], steps[1][sel], h, quad, g, None)
            f = 0.5 * log_det_one_plus(kappa[sel, None], g)
            parts.append((*paired_sums(f, w, e), 1e-14 * (f.abs() * w).sum(-1)))
            values[sel], errors[sel], floors[sel] = (sum(p[i] for p in parts) for i in range(3))
    if kappa is None and fits.numel():
        rows = torch.tensor([entropies[key] for key in zip(abar[fits].tolist(), one_minus_abar[fits].tolist())], dtype=DTYPE)
        values[fits], errors[fits], floors[fits] = rows.unbind(-1)
    return values, errors, floors


def _level_entropies(reference, quad: Quadrature) -> dict:
    """``H(q)`` at levels by ``quad`` on each level's own spacing, with its pair's error estimate and
    rounding floor, cached on the reference: ``{(abar, 1 - abar): (value, error, floor)}``."""
    return reference._cache.setdefault(("H", quad), {})


def _chain_rule_negentropy(reference, grid: Grid, idx: torch.Tensor, h: float, quad: Quadrature, tol=None):
    """Route (b), the entropy chain rule (docs/theory.md section 4.3, docs/errors.md):
    ``E J_t = (1/2) E_{q_t} log det(I + k G) + H(q_t) - H(q_{t-1})``, ``k = beta_t / alpha_t``. Only
    outer integrals, so it is cheap where route (a) is dear (strongly non-Gaussian kernels, small T);
    its terms are O(1) and cancel to E J_t, so its error is large where E J_t is tiny (large T), and
    there route (a) wins. Not for t = 1 with point masses in the data (H(q_0) = -inf): NaN. The
    spacing h of route (a) is not used: each level takes its own, nor is the tolerance (it has no
    inner rules to adapt).""" 
    kappa = grid.beta[idx - 1] / grid.alpha[idx - 1]
    a, a_err, a_floor = _level_expectation(reference, grid.abar[idx], grid.one_minus_abar[idx], quad, kappa,
                                           steps=(grid, idx))
    b, b_err, b_floor = _level_expectation(reference, grid.abar[idx - 1], grid.one_minus_abar[idx - 1], quad)
    value, floor = a - b, a_floor + b_floor
    return value, torch.where(torch.isfinite(value), a_err + b_err + floor, math.inf), floor


#: Gauss-Lobatto 5 points on [-1, 1] and Simpson's rule on the three among them (nodes, Lobatto
#: weights, Simpson weights; 0 off Simpson's nodes): Lobatto exact to degree 7, Simpson to degree 3.
#: The end +1 is the step's own level, whose tr G route (c) has already, so a step costs four levels
#: of its own where Gauss-Kronrod 7 cost seven.
_LOBATTO_5 = (
    (-1.0, 0.1, 1.0 / 3.0),
    (-math.sqrt(3.0 / 7.0), 49.0 / 90.0, 0.0),
    (0.0, 32.0 / 45.0, 4.0 / 3.0),
    (math.sqrt(3.0 / 7.0), 49.0 / 90.0, 0.0),
    (1.0, 0.1, 1.0 / 3.0),
)
#: The Kronrod extension of :data:`_LOBATTO_5`: Lobatto's nodes in its order, then four new ones
#: between them (nodes, weights), the nine exact to degree 13. Where Simpson's estimate of a step's
#: u-integral is too coarse (steps of beta_t ~ 1e-2: 1e-12 where 1e-15 was asked) the four new levels
#: make the estimate Lobatto's own error. (Weights and nodes: the moments of [-1, 1] up to degree 12
#: solved with mpmath at 40 digits; tests/test_routes.py checks them.)
_LOBATTO_KRONROD_9 = (
    (-1.0, 0.030643738977072310405643738977),
    (-math.sqrt(3.0 / 7.0), 0.283978778048121113814544471479),
    (0.0, 0.343762087210363072432037949279),
    (math.sqrt(3.0 / 7.0), 0.283978778048121113814544471479),
    (1.0, 0.030643738977072310405643738977),
    (-0.890405527512668786570290741897, 0.179262699553207355980284020183),
    (-0.340982265910992971513068178279, 0.334233739816417683583508794722),
    (0.340982265910992971513068178279, 0.334233739816417683583508794722),
    (0.890405527512668786570290741897, 0.179262699553207355980284020183),
)
# Route (c) is trusted where the step in u is at most this share of the smallest marginal variance at
# level t - 1 (the scale on which E tr G_u varies there), so that Lobatto's 5 points resolve it.
_DE_BRUIJN_REACH = 0.5
#: Chebyshev-Lobatto points of a run's interpolant in u and of its nested lower set (every other one).
_RUN_POINTS = 17
#: The fewest steps that share a run's levels: fewer take :data:`_LOBATTO_5`'s four levels each.
_RUN_STEPS = 5
# A run spans at most this share of the smallest marginal variance at its start: the interpolant's
# singularities are that far off, so its lower set of 9 points is resolved to about 1e-14 (Bernstein
# ellipse r ~ 34) and the pair's difference is the lower set's error, far below the steps' terms.
_RUN_REACH = 0.125


@dataclass(frozen=True)
class _URule:
    """The u-integrals ``int_{u_{t-1}}^{u_t} f du`` of route (c) for some steps as weighted sums over
    levels: levels (L, m) as ``log abar``, L = 1 for a run of steps sharing them (``run``), else one
    row per step; value and lower weights (n, m), in units of u; the value and lower weights (n, 2)
    of each step's own level t, whose f route (c) has already; whether each step's rule is trusted
    (n,)."""

    log_abar: torch.Tensor
    value: torch.Tensor
    lower: torch.Tensor
    own: torch.Tensor
    trusted: torch.Tensor
    run: bool

    def rows(self, chunk: torch.Tensor) -> _URule:
        """The rule of the steps ``chunk`` (a run's levels stay shared)."""
        levels = self.log_abar if self.run else self.log_abar[chunk]
        return _URule(levels, self.value[chunk], self.lower[chunk], self.own[chunk], self.trusted[chunk], self.run)


def _u_rules(reference, grid: Grid, idx: torch.Tensor):
    """Route (c)'s u-rules for the steps idx (ascending): ``(positions, _URule)``. Runs of at least
    three steps (not necessarily consecutive) whose span in u is within :data:`_RUN_REACH` of the smallest marginal
    variance at the run's start share one interpolant (:func:`_run_rule`: 17 levels for the run where
    a single step takes 4); the other steps take Gauss-Lobatto 5 each (:func:`_lobatto_rule`), which
    route (c) extends where it needs to (:func:`_kronrod_extension`)."""
    smallest = reference.marginal_eigenvalues(grid.abar[idx - 1, None], grid.one_minus_abar[idx - 1, None]).flatten(1).amin(1)
    step = -grid.log_alpha[idx - 1]
    # u at each level, from the steps' -log alpha (a span is a difference of these).
    u = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(-grid.log_alpha, 0)]).tolist()
    t, reach = idx.tolist(), (_RUN_REACH * smallest).tolist()
    runs, singles, i = [], [], 0
    while i < len(t):
        j = i + 1
        while j < len(t) and u[t[j]] - u[t[i] - 1] <= reach[i]:
            j += 1
        (runs if j - i >= _RUN_STEPS else singles).append(torch.arange(i, j))
        i = j
    for run in runs:
        yield run, _run_rule(grid, idx[run])
    if singles:
        singles = torch.cat(singles)
        yield singles, _lobatto_rule(grid, idx[singles], step[singles] <= _DE_BRUIJN_REACH * smallest[singles])


def _lobatto_rule(grid: Grid, t: torch.Tensor, trusted: torch.Tensor) -> _URule:
    """Gauss-Lobatto 5 on each step's own interval, Simpson's rule on three of its points the lower
    rule; the end u_t is the step's own level."""
    nodes, lobatto, simpson = (torch.tensor(column, dtype=DTYPE) for column in zip(*_LOBATTO_5))
    return _single_step_rule(grid, t, trusted, nodes, lobatto, simpson)


def _kronrod_extension(grid: Grid, t: torch.Tensor, trusted: torch.Tensor) -> _URule:
    """The Kronrod 9 of :data:`_LOBATTO_KRONROD_9` on each step's own interval, Lobatto 5 the lower
    rule: the levels those of :func:`_lobatto_rule` (the same floats) and then the four new ones."""
    nodes, kronrod = (torch.tensor(column, dtype=DTYPE) for column in zip(*_LOBATTO_KRONROD_9))
    lobatto = torch.tensor([row[1] for row in _LOBATTO_5] + [0.0] * 4, dtype=DTYPE)
    order = [0, 1, 2, 3, 5, 6, 7, 8, 4]  # the end +1, the step's own level, last
    return _single_step_rule(grid, t, trusted, nodes[order], kronrod[order], lobatto[order])


def _single_step_rule(grid: Grid, t: torch.Tensor, trusted: torch.Tensor, nodes: torch.Tensor,
                      value: torch.Tensor, lower: torch.Tensor) -> _URule:
    """A rule on [-1, 1] (nodes, value and lower weights; the last node +1) on each step's own
    interval in u, its last level the step's own."""
    step = -grid.log_alpha[t - 1]
    log_abar = grid.log_abar[t - 1, None] - 0.5 * (1.0 + nodes[:-1]) * step[:, None]
    value, lower = 0.5 * step[:, None] * value, 0.5 * step[:, None] * lower
    own = torch.stack([value[:, -1], lower[:, -1]], 1)
    return _URule(log_abar, value[:, :-1], lower[:, :-1], own, trusted, run=False)


def _run_rule(grid: Grid, t: torch.Tensor) -> _URule:
    """One interpolant for a run of steps t (ascending, gaps allowed): the :data:`_RUN_POINTS`
    Chebyshev-Lobatto levels of its span, from level ``t_0 - 1`` to level ``t_n``, each step's weights
    the integrals of their Lagrange basis over its interval (Gauss-Legendre of 9 points, exact for the
    degree 16), the lower weights those of every other level. The intervals come from the steps'
    ``-log alpha``, not from differences of ``log abar``."""
    every = -grid.log_alpha[t[0] - 1 : t[-1]]  # the span's steps, t_0 .. t_n
    span = math.fsum(every.tolist())
    start = (torch.cumsum(every, 0) - every)[t - t[0]]  # u_{t-1} - u_{t_0 - 1}
    step = every[t - t[0]]
    half, mid = step / span, (2.0 * start + step) / span - 1.0  # the intervals in [-1, 1]
    points = chebyshev_lobatto(_RUN_POINTS)
    x, w = (torch.tensor(v, dtype=DTYPE) for v in np.polynomial.legendre.leggauss(9))
    at = (mid[:, None] + half[:, None] * x).reshape(-1)

    def integrals(nodes):  # (steps, len(nodes)): int over each step's interval in u of each basis
        basis = lagrange_weights(nodes, at).reshape(t.numel(), x.numel(), -1)
        return 0.5 * step[:, None] * (w[None, :, None] * basis).sum(1)

    value, lower = integrals(points), torch.zeros(t.numel(), _RUN_POINTS, dtype=DTYPE)
    lower[:, ::2] = integrals(points[::2])
    levels = grid.log_abar[t[0] - 1] - 0.5 * span * (1.0 + points)
    return _URule(levels[None], value, lower, torch.zeros(t.numel(), 2, dtype=DTYPE),
                  torch.ones(t.numel(), dtype=torch.bool), run=True)


def _de_bruijn_negentropy(reference, grid: Grid, idx: torch.Tensor, h: float, quad: Quadrature, tol=None):
    """Route (c), the entropy chain rule with the entropy difference by de Bruijn's identity
    (docs/theory.md section 4.3, docs/errors.md): ``E J_t = (1/2) E_{q_t} log det(I + k G_t) - (1/2)
    int_{u_{t-1}}^{u_t} E_{q_u} tr G_u du``, ``u = -log abar``, ``k = beta_t / alpha_t``. The u-integral
    by the steps' :func:`_u_rules` (value) against their lower rules (estimate: their difference);
    every level on the same standard nodes of spacing h, so that the outer pair's estimate is that of
    the cancelled integrand: its terms are O(beta_t) where route (b)'s are O(1), so its rounding floor
    (1e-14 of the terms' and of G's parts' ``E |.|``,
    :meth:`~pathkl.references.MixtureReference.excess_trace`) is O(beta_t) smaller. Untrusted (error
    inf) where a step's own rule does not resolve the u-integral (:func:`_u_rules`; near a point
    mass). A single step's u-rule is extended where ``tol`` (absolute, per step; None: 0) asks for it
    (:func:`_extended_where_needed`). The steps are batched here, not by the caller, so that a run's
    levels are computed once."""
    tol = torch.zeros(idx.numel(), dtype=DTYPE) if tol is None else tol
    order = torch.argsort(idx)
    value, error, floor = (torch.empty(idx.numel(), dtype=DTYPE) for _ in range(3))
    for at, rule in _u_rules(reference, grid, idx[order]):
        traces = _level_traces(reference, rule.log_abar, h, quad) if rule.run else None
        room = 0 if rule.run else 2 * rule.log_abar.shape[-1]  # a single step's levels and its extension's
        for chunk in _step_chunks(reference, at.numel(), h, quad, room):
            part, pos = rule.rows(chunk), order[at[chunk]]
            own = _own_level(reference, grid, idx[pos], h, quad)
            part_traces = traces if rule.run else _level_traces(reference, part.log_abar, h, quad)
            found = _de_bruijn_on(own, part, part_traces)
            if not rule.run:
                found = _extended_where_needed(reference, grid, idx[pos], h, quad, own, part, part_traces, found, tol[pos])
            value[pos], error[pos], floor[pos] = found[:3]
    return value, error, floor


def _extended_where_needed(reference, grid: Grid, idx: torch.Tensor, h: float, quad: Quadrature, own: _OwnLevel,
                           rule: _URule, traces, found, tol: torch.Tensor):
    """Route (c)'s single steps (value, error, floor, u-estimate ``found`` by their Lobatto ``rule`` on
    its levels' ``traces``) with the :func:`_kronrod_extension` where a step's error is above ``tol``
    and the extension can bring it within, or the u-estimate is most of the error: four more levels."""
    value, error, floor, in_u = found
    wide = (error > tol) & ((error - in_u <= tol) | (2.0 * in_u > error))
    if wide.any():
        extension = _kronrod_extension(grid, idx[wide], rule.trusted[wide])
        more = _level_traces(reference, extension.log_abar[:, -4:], h, quad)
        traces = tuple(torch.cat([known[wide], new], 1) for known, new in zip(traces, more))
        value, error, floor, in_u = (v.clone() for v in found)
        value[wide], error[wide], floor[wide], in_u[wide] = _de_bruijn_on(own.rows(wide), extension, traces)
    return value, error, floor, in_u


def _step_chunks(reference, n: int, h: float, quad: Quadrature, levels: int):
    """Positions 0..n-1 in chunks whose nodes (each step's level and its ``levels`` own) fit the
    memory budget."""
    return torch.split(torch.arange(n), max(1, _BATCH_ELEMENTS // (_level_elements(reference, h, quad) * (1 + levels))))


def _level_elements(reference, h: float, quad: Quadrature) -> int:
    """Memory of one level on the standard rule of spacing h, in doubles (``K^2 P d^2``)."""
    return reference.size**2 * standard_rule(h, reference.dim, quad)[1].numel() * reference.dim**2


def _level_traces(reference, log_abar: torch.Tensor, h: float, quad: Quadrature):
    """``tr G`` at the standard nodes of spacing h at levels (L, m) (as ``log abar``), and the size of
    its parts (the rounding scale, :meth:`~pathkl.references.MixtureReference.excess_trace`): each
    (L, m, P), the levels in chunks that fit the memory budget."""
    trace, size = [], []
    for chunk in torch.split(log_abar.reshape(-1), max(1, _BATCH_ELEMENTS // _level_elements(reference, h, quad))):
        abar, om = torch.exp(chunk), -torch.expm1(chunk)
        x, _, _ = level_rule(reference, abar, om, h, quad)
        within, spread = reference.excess_trace(reference.posterior(x, abar[:, None], om[:, None]), abar[:, None])
        trace.append(within + spread)
        size.append(within.abs() + spread)
    return tuple(torch.cat(parts).reshape(*log_abar.shape, -1) for parts in (trace, size))


@dataclass(frozen=True)
class _OwnLevel:
    """Route (c) at steps' own levels t on the standard nodes of spacing h: the terms
    ``(1/2) log det(I + k G_t)``, ``tr G_t`` and the size of its parts (the rounding scale,
    :meth:`~pathkl.references.MixtureReference.excess_trace`), each (S, P); k (S, 1); the paired
    rule's value and error weights."""

    terms: torch.Tensor
    trace: torch.Tensor
    size: torch.Tensor
    kappa: torch.Tensor
    w: torch.Tensor
    e: torch.Tensor

    def rows(self, which: torch.Tensor) -> _OwnLevel:
        return _OwnLevel(self.terms[which], self.trace[which], self.size[which], self.kappa[which], self.w, self.e)


def _own_level(reference, grid: Grid, idx: torch.Tensor, h: float, quad: Quadrature) -> _OwnLevel:
    """:class:`_OwnLevel` of the steps idx, from their :func:`_step_nodes` (which keep G for the
    families)."""
    kappa = (grid.beta[idx - 1] / grid.alpha[idx - 1])[:, None]
    nodes = _step_nodes(reference, grid, idx, h, quad)
    terms = 0.5 * log_det_one_plus(kappa, nodes.g)
    # The rounding scale of each term is that of G's parts, not of G: they cancel (see excess_trace).
    within, spread = reference.excess_trace(nodes.post, nodes.abar)
    return _OwnLevel(terms, within + spread, within.abs() + spread, kappa, nodes.weights, nodes.error_weights)


def _de_bruijn_on(own: _OwnLevel, rule: _URule, traces):
    """Route (c) for steps at their own levels with their u-rule and its levels' ``tr G`` and sizes
    (:func:`_level_traces`): value, error, rounding floor and the u-rule's estimate (in the error)."""
    trace, size = traces

    def weighted(weights, values):  # sum_j weights[s, j] values[., j, :] -> (S, P)
        return weights @ values[0] if values.shape[0] == 1 else (weights[:, None, :] @ values)[:, 0]

    value_u = 0.5 * (weighted(rule.value, trace) + rule.own[:, :1] * own.trace)
    lower_u = 0.5 * (weighted(rule.lower, trace) + rule.own[:, 1:] * own.trace)
    size = (own.terms.abs() + 0.5 * (own.kappa + rule.own[:, :1].abs()) * own.size
            + 0.5 * weighted(rule.value.abs(), size))
    value, outer = paired_sums(own.terms - value_u, own.w, own.e)
    in_u = ((value_u - lower_u) * own.w).sum(-1).abs()
    floor = 1e-14 * (size * own.w.abs()).sum(-1)
    trusted = torch.isfinite(value) & rule.trusted
    return value, torch.where(trusted, outer + in_u + floor, math.inf), floor, in_u


def _expected_negentropy(reference, grid: Grid, idx: torch.Tensor, h: float, quad: Quadrature,
                         tol: torch.Tensor | None = None):
    """``E_{q_t} J_t`` on one paired rule, its error and its rounding floor: the outer estimate plus what the inner
    estimates and skipped points can move it by.

    ``tol`` (per step, absolute; None: 0) is the error the step is climbing to. Points are left out
    (their certified bounds, :func:`negentropy_bound`, go into the error) while their bounds add up to
    at most :data:`_SKIP_SHARE` of ``tol`` or 1e-13 of all finite bounds; if what was left out is
    above that share and 1e-12 of the result, it is computed too. The low-noise steps' J lives on the
    thin bands where the posterior weights switch, so most lattice nodes are left out. The inner
    rules refine point by point (:func:`negentropy`) until their errors, weighted as the outer rule
    weighs them, add up to at most :data:`_INNER_SHARE` of ``tol``."""
    tol = torch.zeros(idx.numel(), dtype=DTYPE) if tol is None else tol
    nodes = _step_nodes(reference, grid, idx, h, quad)
    kappa = (grid.beta[idx - 1] / grid.alpha[idx - 1])[:, None]
    mix = reverse_kernel_whitened(reference, nodes.post, nodes.abar, kappa, nodes.g)
    bound = negentropy_bound(mix).reshape(idx.numel(), -1)
    weight = node_weights(nodes.weights, nodes.error_weights).expand_as(bound)
    keep = _above_negligible(bound * weight, _SKIP_SHARE * tol)
    j, inner = torch.zeros_like(bound), torch.zeros_like(bound)
    j[keep], inner[keep] = negentropy(mix.subset(keep.flatten()), quad, _inner_tolerance(keep, weight, tol))
    value, _ = nodes.integrate(j)
    allowed = torch.maximum(1e-12 * value, _SKIP_SHARE * tol)
    unsure = (nodes.integrate_error(torch.where(keep, 0.0, bound)) > allowed)[:, None] & ~keep
    if unsure.any():
        j[unsure], inner[unsure] = negentropy(mix.subset(unsure.flatten()), quad, _inner_tolerance(unsure, weight, tol))
    skipped = torch.where(keep | unsure, 0.0, bound)
    value, outer = nodes.integrate(j)
    return value, outer + nodes.integrate_error(inner + skipped) + _ROUNDING * value, _ROUNDING * value


def _inner_tolerance(mask: torch.Tensor, weight: torch.Tensor, tol: torch.Tensor):
    """The inner rules' tolerance at the points of ``mask`` (S, P), as a function of their current
    values: ``_INNER_SHARE tol_s (J_p / V_s + 1 / (c_p n_s)) / 2`` with ``c_p`` the point's outer weight,
    ``V_s = sum_p c_p J_p`` and ``n_s`` the points of step s, so that ``sum_p c_p tol_p`` is
    ``_INNER_SHARE tol_s``: half of it by value, half spread evenly. None where every ``tol`` is 0."""
    if not (tol > 0).any():
        return None
    step = torch.nonzero(mask)[:, 0]
    c = weight[mask]
    count = mask.sum(-1).clamp_min(1).to(DTYPE)

    def tolerance(values: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(mask.shape[0], dtype=DTYPE).index_add_(0, step, c * values)
        by_value = torch.where(total[step] > 0, values / total[step], 0.0)
        return 0.5 * _INNER_SHARE * tol[step] * (by_value + 1.0 / (c * count[step]))

    return tolerance


def _above_negligible(bound: torch.Tensor, allowance: torch.Tensor) -> torch.Tensor:
    """Mask (S, P) of the entries outside the smallest set whose sum is at most ``allowance`` (S,)
    or 1e-13 of the row's finite entries, whichever is larger (an infinite bound is never left out)."""
    ordered, _ = torch.sort(bound, -1)
    finite = torch.where(torch.isfinite(bound), bound, 0.0).sum(-1, keepdim=True)
    small = torch.cumsum(ordered, -1) <= torch.maximum(1e-13 * finite, allowance[:, None])
    count = small.sum(-1, keepdim=True)
    threshold = torch.where(count > 0, ordered.gather(-1, (count - 1).clamp_min(0)), -1.0)
    return bound > threshold


def step_kls(reference, grid: Grid, family, *, rtol: float,
             mean_g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step ``E_{q_t} KL(q(.|x_t) || p(.|x_t))``, t = 1..T, and their errors
    (:func:`interpolated_step_kls`)."""
    result = interpolated_step_kls(reference, grid, family, rtol=rtol, mean_g=mean_g)
    return result.values, result.errors


def interpolated_step_kls(reference, grid: Grid, family, *, rtol: float,
                          mean_g: torch.Tensor | None = None) -> Interpolated:
    """Per-step ``E_{q_t} KL(q(.|x_t) || p(.|x_t)) = E J_t + E K_f,t``, t = 1..T, each part by its own
    step-index rule (:func:`~pathkl.rules.stepsum.interpolated_steps`) at ``rtol``: ``E J`` the
    ``full`` chain's, shared by every family (:func:`_negentropy_chain`), ``E K_f`` from the
    family's Gaussian parts alone (:func:`_gaussian_parts`; 0 where the family is exact on the
    reference). Both parts are >= 0, so errors within ``rtol`` of each part's sum are within ``rtol``
    of the path KL's. ``mean_g`` (T,) replaces ``E tr G / d`` when this is one block of a product
    (``analytic``)."""
    negentropy = _negentropy_chain(reference, grid, rtol)
    if family.exact_on(reference):
        return negentropy

    def evaluate(steps, step_rtol, atol):
        parts, errors = _finite_steps(reference, grid, steps, atol, lambda at, at_atol: _gaussian_parts(
            reference, grid, family, at, mean_g, lambda i, values: step_rtol * values[i].abs() + at_atol[i]))
        return parts, torch.where(torch.isinf(parts), 0.0, errors)  # beta_tilde's step 1: +inf exactly (beta~_1 = 0)

    gaussian = interpolated_steps(evaluate, grid.T, rtol=rtol, log_scale=_leading_log_scale(grid, family.order(reference)))
    return Interpolated(negentropy.values + gaussian.values, negentropy.errors + gaussian.errors,
                        negentropy.sum_error + gaussian.sum_error, negentropy.evaluated | gaussian.evaluated)


def _leading_log_scale(grid: Grid, order: int | None) -> torch.Tensor | None:
    """``log beta_t^(order + 1)``, the leading factor of a step KL of ``steps = Theta(T^-order)``
    (:class:`~pathkl.covariances.Rate`), which the step-index rule divides out (pathkl.rules.stepsum);
    None where the family's steps do not vanish."""
    return None if order is None else (order + 1) * torch.log(grid.beta)


def step_kls_at(reference, grid: Grid, family, steps: torch.Tensor, *, rtol: float,
                atol: torch.Tensor | None = None, mean_g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``E_{q_t} KL(q(.|x_t) || p(.|x_t))`` at ``steps`` (1-based) and their errors: E J, climbed until
    its error is within ``rtol E J + atol`` (``atol`` per step, default 0), plus the family's Gaussian
    part on the cheapest outer rule that meets what is left of the step's tolerance
    (:func:`_gaussian_parts`). With point
    masses in the data a step from the noise-free level (``1 - abar_{t-1} = 0``: step 1 of a grid from
    tau = 0) is +inf exactly (:attr:`MixtureReference.has_point_masses`). Every step evaluated on a
    fresh climb, so the values depend on this call alone (the step-index rule's check, tests/test_stepsum.py)."""
    _check_dim(reference)
    singular = reference.has_point_masses & (grid.one_minus_abar[steps - 1] == 0)
    if singular.any():
        values, errors = torch.full((steps.numel(),), math.inf, dtype=DTYPE), torch.zeros(steps.numel(), dtype=DTYPE)
        later = ~singular
        if later.any():
            values[later], errors[later] = step_kls_at(reference, grid, family, steps[later], rtol=rtol,
                                                       atol=None if atol is None else atol[later], mean_g=mean_g)
        return values, errors
    values, errors = (part.clone() for part in _negentropies(reference, grid, steps, _ClimbState.empty(grid.T),
                                                             rtol=rtol, atol=atol))
    if family.exact_on(reference):  # Sigma_t = Sigma*_t: no Gaussian part
        return values, errors
    atol = torch.zeros(steps.numel(), dtype=DTYPE) if atol is None else atol

    def allowed(at, parts):  # the step's tolerance less E J's error (half of it where E J took it all)
        tol = rtol * (values[at] + parts[at]).abs() + atol[at]
        return torch.where(errors[at] < tol, tol - errors[at], 0.5 * tol)

    part, error = _gaussian_parts(reference, grid, family, steps, mean_g, allowed)
    values, errors = values + part, errors + error
    # beta_tilde's first step is +inf exactly (beta~_1 = 0).
    return values, torch.where(torch.isinf(values), 0.0, errors)


def _gaussian_parts(reference, grid: Grid, family, steps: torch.Tensor, mean_g: torch.Tensor | None, allowed):
    """``E_{q_t} K_f`` at ``steps`` and their errors, each step up the ladder's outer rules (level t's
    spacing; a Gauss-Hermite rung only where trusted, :func:`hermite_trusted_at`; a lattice only
    where it fits in memory) until its error is
    within ``allowed(positions, parts)`` (what the step's tolerance leaves after E J's error) or the
    rungs end, keeping the smallest error. The Gaussian parts of the isotropic and diagonal families
    are O(beta_t^2) where E J is O(beta_t^3), so their share of the tolerance is loose, and most steps
    stop on a coarse rule where E J needed a fine one (``rates``, mog-rotated, T = 512: the three
    families after ``full`` took 32 s on E J's rules)."""
    parts = torch.zeros(steps.numel(), dtype=DTYPE)
    errors = torch.full((steps.numel(),), math.inf, dtype=DTYPE)
    pending = torch.arange(steps.numel())
    for quad in ladder_for(reference.dim):
        if not pending.numel():
            break
        h = _sampled_spacings(reference, grid, steps[pending], quad)
        usable = affordable(h, reference.dim)
        if quad.smooth_below == math.inf:
            t = steps[pending]
            usable &= hermite_trusted_at(reference, grid.abar[t], grid.one_minus_abar[t])
        pending, h = pending[usable], h[usable]
        for sel, value in _by_spacing(reference, h, quad):
            at = pending[sel]
            part, error = _gaussian_part_on(reference, grid, family, steps[at], value, quad, mean_g)
            better = (error < errors[at]) | torch.isinf(errors[at])
            parts[at[better]], errors[at[better]] = part[better], error[better]
        pending = torch.arange(steps.numel())
        pending = pending[~((errors <= allowed(pending, parts)) | torch.isinf(parts))]  # beta_tilde's step 1: +inf
    return parts, errors


def _gaussian_part_on(reference, grid: Grid, family, t: torch.Tensor, h: float, quad: Quadrature,
                      mean_g: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``E_{q_t} K_f`` on one paired outer rule and its error: the pair's estimate, rounding, and for
    a family that uses ``E tr G / d`` what that mean's error can move it by."""
    nodes = _gaussian_nodes(reference, grid, t, h, quad, with_c=family.uses_c)
    own, own_error = _step_mean_g(nodes, None if mean_g is None else mean_g[t - 1])
    part, error = nodes.integrate(_gaussian_part(family, grid, t, nodes, own))
    error = error + _ROUNDING * part.abs()
    if family.uses_mean_g:
        up, down = (nodes.integrate(_gaussian_part(family, grid, t, nodes, own + sign * own_error))[0]
                    for sign in (1.0, -1.0))
        error = error + torch.maximum((up - part).abs(), (down - part).abs())
    return part, error


def _gaussian_part(family, grid: Grid, t: torch.Tensor, nodes: _StepNodes, mean_g: torch.Tensor) -> torch.Tensor:
    """The family's Gaussian step KL K_f at the outer nodes of steps t, with ``E tr G / d = mean_g``."""
    step = ReverseStep.at(grid, t[:, None, None], g=SmallDense(nodes.g), c=None if nodes.c is None else SmallDense(nodes.c),
                          mean_g=mean_g[:, None, None])
    return family.gaussian_step_kl(step)


def _mean_trace(g: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``E tr G / d`` from G (..., P, d, d) at outer nodes of weights (P,): shape (...)."""
    return (torch.diagonal(g, dim1=-2, dim2=-1).sum(-1) * weights).sum(-1) / g.shape[-1]


def _step_mean_g(nodes: _StepNodes, given: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``E tr G / d`` per step (S,) and a bound on its error. From the nodes' G in the centred form
    ``g0 + E (tr G / d - g0)``, g0 its value at the heaviest node, which is exact where G does not
    vary (one component): the pair's error estimate, 16 ulps of the sum of |terms|, and the rounding
    of the final sum, at most ``min(|E (.) - g0|, eps |mean|)`` (either addend is a float next to the
    sum). ``given`` (a product's global mean) carries 16 ulps. ``analytic`` depends on this mean at
    second order (its KL is stationary at the exact mean), so its rounding alone moved a one-point
    dataset's step KL (isotropic: exactly 0) to 1e-31; :func:`step_kls_at` adds what the error can
    move each step's KL by, for a family whose covariance uses it (``Family.uses_mean_g``)."""
    eps = torch.finfo(DTYPE).eps
    if given is not None:
        return given, 16 * eps * given.abs()
    trace = torch.diagonal(nodes.g, dim1=-2, dim2=-1).sum(-1) / nodes.g.shape[-1]
    g0 = trace[:, nodes.weights.argmax()][:, None]
    offset, pair_error = nodes.integrate(trace - g0)
    mean = g0[:, 0] + offset
    rounding = 16 * eps * ((trace - g0).abs() * nodes.weights.abs()).sum(-1) + torch.minimum(offset.abs(), eps * mean.abs())
    return mean, pair_error + rounding


def leading_rule(d: int) -> Quadrature:
    """The rule for outer expectations with no inner integral (leading-constant integrands, E tr G):
    the first rung of the ladder whose lattices resolve the switching of the posterior weights at the
    default ``resolution`` (the third in 1-D, the fourth in 2-D and 3-D, after the coarse lattice rung)."""
    return LADDER_1D[2] if d == 1 else LADDER[3]


def expected_trace_excess(reference, lv: NoiseLevel) -> torch.Tensor:
    """``E_{q_t} tr G`` at levels of any shape (...) (batched over the levels), shape (...)."""
    _check_dim(reference)
    quad = leading_rule(reference.dim)
    abar = torch.as_tensor(lv.abar, dtype=DTYPE)
    flat = abar.reshape(-1)
    om = torch.as_tensor(lv.one_minus_abar, dtype=DTYPE).expand_as(abar).reshape(-1)
    out = torch.empty_like(flat)
    h = torch.tensor([finest_affordable(v, reference.dim) for v in spacing(reference, flat, om, quad).tolist()], dtype=DTYPE)
    for sel, value in _by_spacing(reference, h, quad):
        x, w, _ = level_rule(reference, flat[sel], om[sel], value, quad)
        g = reference.excess(reference.posterior(x, flat[sel, None], om[sel, None]), flat[sel, None])
        out[sel] = reference.dim * _mean_trace(g, w)
    return out.reshape(abar.shape)


# ---- terminal KL, leading-constant integrands, the chain-rule route ----------------------------


def terminal_kl(reference, lv: NoiseLevel, *, rtol: float) -> Estimate:
    """``KL(q_T || N(0, I))``: q_T is the whitened mixture with ``zeta_k = sqrt(abar) m_k`` and
    ``I - R_k = V_k``, i.e. ``R_k = U_k diag(abar (1 - lambda_k)) U_k^T``. Each rule of the ladder's
    inner rules with its companion, climbing until the difference meets ``rtol`` (not
    :func:`negentropy`: its skip bound assumes a moment-matched N(0, I), which q_T is not)."""
    _check_dim(reference)
    mix = terminal_mixture(reference, lv)
    size = float(mix.zeta.norm(dim=-1).max().maximum(torch.linalg.matrix_norm(mix.r).max()))
    best = Estimate(math.nan, math.inf)
    for quad in ladder_for(reference.dim):
        near = size <= quad.near_gaussian
        n, form = (quad.inner, "N") if near else (quad.separated, "q")
        value = float(whitened_kl(mix, nodes=companion(n), form=form)[0])
        error = abs(value - float(whitened_kl(mix, nodes=n, form=form)[0])) + _ROUNDING * value
        if error < best.bound:
            best = Estimate(value, error)
        if best.bound <= rtol * best.value:
            break
    return best






def _level_points(reference, lv: NoiseLevel, quad: Quadrature):
    """Nodes, value weights and error weights of ``quad``'s paired rule for ``E_{q_t}`` at one level
    (its own spacing, the finest affordable)."""
    h = finest_affordable(float(spacing(reference, lv.abar.reshape(1), lv.one_minus_abar.reshape(1), quad)[0]), reference.dim)
    return level_rule(reference, lv.abar, lv.one_minus_abar, h, quad)


def _level_nodes(reference, lv: NoiseLevel, quad: Quadrature):
    x, w, e = _level_points(reference, lv, quad)
    return reference.posterior(x, lv.abar, lv.one_minus_abar), w, e


def expectation(reference, lv: NoiseLevel, integrands, *, rtol: float) -> tuple[Estimate, ...]:
    """``E_{q_t}`` of each column of ``integrands(x) -> (values (P, m), bounds (P, m))`` (``bounds``:
    the rounding of each value) by the paired outer rules of the ladder, climbing until the pairs'
    estimates together are within ``rtol`` of the columns' summed magnitude (the rounding bounds do
    not fall with the rule, and a column may be exactly 0, e.g. the mean part of an exact mean); the
    rung with the smallest total error otherwise; Gauss-Hermite-everywhere rungs only where
    :func:`hermite_trusted_at` trusts them (the steps' rule, :func:`_climb`). A value's error is the pair's estimate, what the
    bounds can move it by, and the rounding allowance."""
    _check_dim(reference)
    trusted = bool(hermite_trusted_at(reference, lv.abar.reshape(1), lv.one_minus_abar.reshape(1))[0])
    best = None
    for quad in ladder_for(reference.dim):
        if quad.smooth_below == math.inf and not trusted:  # :func:`hermite_trusted_at`
            continue
        x, w, e = _level_points(reference, lv, quad)
        values, bounds = integrands(x)
        value, estimate = paired_sums(values.T, w, e)
        error = estimate + node_weights(w, e) @ bounds + _ROUNDING * value.abs()
        if best is None or float(error.sum()) < float(best[1].sum()):
            best = (value, error)
        if float(estimate.sum()) <= rtol * float(value.abs().sum()):
            break
    return tuple(Estimate(float(v), float(b)) for v, b in zip(*best))


def _integrated(values: torch.Tensor, w: torch.Tensor, e: torch.Tensor) -> Estimate:
    """``E_{q_t}`` of values at the nodes (P,), or of one value for all, with its error."""
    value, estimate = (float(part) for part in paired_sums(values.expand_as(w), w, e))
    return Estimate(value, estimate + _ROUNDING * abs(value))


def expected_excess_functional(reference, fn, lv: NoiseLevel, *, mean_g=None) -> Estimate:
    """``E_{q_t} fn(G(x_t), E tr G / d)`` with G as a dense operator; ``mean_g`` overrides ``E tr G / d``
    (one block of a product)."""
    _check_dim(reference)
    post, w, e = _level_nodes(reference, lv, leading_rule(reference.dim))
    g = reference.excess(post, lv.abar)
    mean_g = _mean_trace(g, w) if mean_g is None else torch.as_tensor(mean_g, dtype=DTYPE)
    return _integrated(fn(SmallDense(g), mean_g), w, e)


def expected_third_derivative_sq_norm(reference, lv: NoiseLevel) -> Estimate:
    """``E_{q_t} ||grad^3 log q_t||_F^2`` by the outer quadrature."""
    _check_dim(reference)
    post, w, e = _level_nodes(reference, lv, leading_rule(reference.dim))
    return _integrated(third_derivative_sq_norm(reference, post), w, e)


@dataclass(frozen=True)
class QuadratureRule:
    """The rule for mixture blocks of d <= 3 (module docstring), in the interface of pathkl.rules."""

    name: ClassVar[str] = "quadrature"

    def accepts(self, block) -> bool:
        return isinstance(block, MixtureReference) and block.dim <= MAX_QUADRATURE_DIM

    def step_kls(self, block, grid: Grid, family, *, rtol: float, mean_g: torch.Tensor | None = None) -> StepKLs:
        result = interpolated_step_kls(block, grid, family, rtol=rtol, mean_g=mean_g)
        return StepKLs(result.values, result.errors, torch.zeros_like(result.values), result.sum_error)

    def terminal_kl(self, block, lv: NoiseLevel, *, rtol: float) -> Estimate:
        return terminal_kl(block, lv, rtol=rtol)

    def expected_trace_excess(self, block, lv: NoiseLevel) -> torch.Tensor:
        return expected_trace_excess(block, lv)

    def expectation(self, block, lv: NoiseLevel, integrands, *, rtol: float, key: int = 0) -> tuple[Estimate, ...]:
        """``E_{q_t}`` of arbitrary integrands with errors (:func:`expectation`; deterministic, so
        ``key`` is not used)."""
        return expectation(block, lv, integrands, rtol=rtol)

    def leading_integrand(self, block, rate, lv: NoiseLevel, *, mean_g=None) -> Estimate:
        if rate.order == 1:
            return expected_excess_functional(block, rate.defect_sq_norm, lv, mean_g=mean_g)
        return expected_third_derivative_sq_norm(block, lv)
