"""The Monte Carlo rule: path-space KL of mixture references in any dimension, every number with the
half-width of its 95% interval (docs/errors.md).

The split is the quadrature rule's (pathkl.rules.quadrature): per step t the quantity is
``E_{x ~ q_t} [J(x) + K_f(x)]``, ``J`` the negentropy of the reverse kernel (pathkl.negentropy) and
``K_f`` the family's Gaussian step KL. Only the rules change: quadrature becomes Monte Carlo with
control variates (CV), and every estimate comes with its variance.

Outer, stratified by component k of q_t: ``x = sqrt(abar) m_k + U_k diag(sqrt(nu_k)) xi``,
``xi ~ N(0, I)``, ``n`` points per component, stratum weight ``pi_k``. In a stratum the estimate of
``E y`` is the intercept of the least-squares fit ``y ~ 1 + xi + (xi^2 - 1)`` (regressors of mean
exactly 0), with variance ``s^2 [(A^T A)^{-1}]_00``, ``s^2 = RSS / (n - rank A)`` (:func:`intercept`).
The quadratic regressors are dropped when ``n < 4 (2d + 1)``, the linear ones when ``n < 4 (d + 1)``.
Strata are independent: value ``sum_k pi_k b_k``, variance ``sum_k pi_k^2 var_k``; steps are independent,
so the path's variance is the sum of the steps'.

Inner, N-form (kernel nearly Gaussian: ``E eps^2 <= 0.01``, :func:`_n_form_usable`):
``J = E_{z ~ N(0,I)} psi(eps(z))`` with the CVs ``eps`` (mean 0: ``E rho = 1``) and ``eps^2``, whose mean is
the chi-square divergence in closed form (pathkl.negentropy.chi_square). ``psi(e) = e^2/2 - e^3/6 + ...``,
so the residual is ``O(eps^3)`` and J's relative error stays ``O(|eps| / sqrt(m))`` however small J is.
The CV ``eps^2`` needs a finite ``E rho^4``: ``4 (I - R_k)^{-1} - 3 I > 0``, every eigenvalue of ``R_k``
above -1/3. The CVs enter as ``mu2 eps`` and ``eps^2 - mu2`` (``mu2 = E eps^2``; the ``eps^3`` term
projects onto eps with a coefficient ~ mu2) with two coefficients fitted by least squares pooled over
all N-form points of a step (centred within each point): the bias is ``O(1 / (N m))`` of the residual.
Inner, q-form elsewhere: the closed form plus ``sum_k w_k`` times the mean of ``excess_k >= 0`` over ``m``
draws from kernel component k, with CVs ``l_j - E_{N_k} l_j`` (closed form) whose coefficients are
cross-fitted (:func:`_q_form_estimates`). Inner estimates are independent across outer points, so the
outer residuals carry their noise: a step's standard error covers both levels.

``analytic`` uses ``E_{q_t} tr G / d`` estimated from the same outer samples (same CV estimator). The
expected isotropic KL ``E_x KL(N(0, Sigma*(x)) || N(0, s I))`` is stationary in ``s`` at
``s = beta + (beta^2/alpha) E tr G / d``, so an error ``delta`` there moves the step KL by ``O(delta^2)``
only (tests/test_mixture_mc.py: swapping in the quadrature value moves the total by < 1% of its SE).

Terminal ``KL(q_T || N(0, I))``: pathkl.negentropy.terminal_mixture by the inner estimators with
``terminal`` draws.

Reproducibility: each draw comes from a generator seeded by ``(seed, purpose, t)``, so the same settings
give the same bytes and a step's estimate does not depend on which other steps are evaluated; all
families share a step's outer samples (common random numbers) and J is computed once per grid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..covariances import ReverseStep
from ..errors import InputError
from ..estimate import Estimate, StepKLs
from ..negentropy import (
    SKIP_BELOW,
    WhitenedMixture,
    chi_square,
    expected_log_ratios,
    n_form_terms,
    negentropy_bound,
    q_form_terms,
    reverse_kernel_whitened,
    terminal_mixture,
)
from ..operators import Dense
from ..references import GaussianReference, MixtureReference
from ..schedules import DTYPE, Grid, NoiseLevel

_N_FORM_CHI_SQUARE = 0.01
# Elements per batch of points in the inner estimators.
_BATCH_ELEMENTS = 1 << 22
# Generator purposes.
_OUTER, _INNER, _TERMINAL, _TRACE, _EXPECTATION = range(5)


@dataclass(frozen=True)
class MonteCarlo:
    """The Monte Carlo rule (module docstring), in the interface of pathkl.rules, with its sample
    sizes and seed: ``outer`` points per component of q_t, ``inner`` draws per point for J (per kernel
    component in the q-form), ``terminal`` draws for the terminal KL; ``control_variates`` False gives
    the plain estimators (to measure what the CVs gain). ``rtol`` does not change the sample sizes:
    the interval is what these sizes give, and the engine reports whether it meets ``rtol``."""

    name: ClassVar[str] = "monte carlo"
    outer: int = 256
    inner: int = 64
    terminal: int = 1 << 16
    seed: int = 0
    control_variates: bool = True

    def __post_init__(self):
        for name in ("outer", "inner", "terminal"):
            if getattr(self, name) < 4:
                raise InputError(f"Monte Carlo {name} sample size must be >= 4, got {getattr(self, name)}")
        if self.seed < 0:
            raise InputError(f"the seed must be >= 0, got {self.seed}")

    def accepts(self, block) -> bool:
        return isinstance(block, MixtureReference)

    def step_kls(self, block, grid: Grid, family, *, rtol: float, mean_g: torch.Tensor | None = None) -> StepKLs:
        values, variances = step_kls(block, grid, family, self, mean_g=mean_g)
        return StepKLs(values, torch.zeros_like(values), variances.clamp_min(0.0).sqrt())

    def terminal_kl(self, block, lv: NoiseLevel, *, rtol: float) -> Estimate:
        return terminal_kl(block, lv, self)

    def expected_trace_excess(self, block, lv: NoiseLevel) -> torch.Tensor:
        return expected_trace_excess(block, lv, self)

    def leading_integrand(self, block, rate, lv: NoiseLevel, *, mean_g=None) -> Estimate:
        raise InputError("leading constants need quadrature: mixtures must have d <= 3")

    def expectation(self, block, lv: NoiseLevel, integrands, *, rtol: float, key: int = 0) -> tuple[Estimate, ...]:
        """``E_{x ~ q_t}`` of each column of ``integrands(x) -> (values (P, m), bounds (P, m))`` (an
        arbitrary function of the points, e.g. a user's model, and a bound on the rounding of each
        value) over the stratified outer draws (:func:`outer_draws`; any d, a Gaussian block is one
        stratum), with the outer control variates: each estimate with its standard error and, as its
        bound, the expected rounding bound (``rtol`` does not change the sample size). ``key`` seeds the draws (e.g. the step t), so the same
        key gives the same points and different keys independent ones."""
        xi, x, pi = outer_draws(block, lv, self.outer, _generator(self, _EXPECTATION, key))
        values, bounds = integrands(x)
        k, n = xi.shape[:2]
        out = []
        for j in range(values.shape[-1]):
            value, variance = _stratified(values[:, j].reshape(k, n), xi, pi, self)
            bound = float((pi * bounds[:, j].reshape(k, n).mean(-1)).sum())
            out.append(Estimate(value, bound, math.sqrt(max(variance, 0.0))))
        return tuple(out)


def _generator(mc: MonteCarlo, purpose: int, t: int = 0) -> torch.Generator:
    state = np.random.SeedSequence([mc.seed, purpose, t]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# ---- estimators --------------------------------------------------------------------------------


def intercept(y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intercept ``b_0`` of the least-squares fit ``y ~ 1 + x`` and its variance
    ``s^2 [(A^T A)^+]_00``, ``s^2 = RSS / (n - rank A)``; y (..., n), x (..., n, p). With regressors of
    known mean 0 this is the control-variate estimate of ``E y`` (columns scaled, SVD: rank-safe)."""
    n = y.shape[-1]
    a = torch.cat([torch.ones(*y.shape, 1, dtype=DTYPE), x], -1)
    scale = a.norm(dim=-2, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    u, s, vh = torch.linalg.svd(a / scale, full_matrices=False)
    keep = s > s[..., :1] * (n * torch.finfo(DTYPE).eps)
    s_inv = torch.where(keep, 1.0 / s, torch.zeros_like(s))
    coef = vh.mT @ (s_inv[..., None] * (u.mT @ y[..., None]))
    resid = y - ((a / scale) @ coef)[..., 0]
    dof = n - keep.sum(-1)
    s2 = (resid**2).sum(-1) / dof
    root_n = math.sqrt(n)
    return coef[..., 0, 0] / root_n, s2 * ((vh[..., :, 0] * s_inv) ** 2).sum(-1) / n


def _design(xi: torch.Tensor, mc: MonteCarlo) -> torch.Tensor:
    """Outer control variates ``xi`` and ``xi^2 - 1`` (each of mean 0), as many as n allows."""
    n, d = xi.shape[-2:]
    if not mc.control_variates or n < 4 * (d + 1):
        return xi[..., :0]
    if n < 4 * (2 * d + 1):
        return xi
    return torch.cat([xi, xi**2 - 1.0], -1)


def _stratified(y: torch.Tensor, xi: torch.Tensor, pi: torch.Tensor, mc: MonteCarlo) -> tuple[float, float]:
    """``sum_k pi_k E_k y`` and its variance from values y (K, n) at the draws xi (K, n, d)."""
    if torch.isinf(y).any():
        return math.inf, 0.0
    b, var = intercept(y, _design(xi, mc))
    return float((pi * b).sum()), float((pi**2 * var).sum())




@dataclass(frozen=True)
class _NFormStats:
    """Per point means of ``psi``, ``mu2 eps``, ``eps^2 - mu2`` (``mu2 = E eps^2``) and pooled within-point cross products."""

    means: torch.Tensor  # (N, 3)
    xtx: torch.Tensor  # (2, 2)
    xty: torch.Tensor  # (2,)


def _n_form_stats(mix: WhitenedMixture, parts, mu2: torch.Tensor, z: torch.Tensor) -> _NFormStats:
    psi, eps = n_form_terms(mix, z, parts)
    # eps^3 / 6 in psi projects onto eps with a coefficient ~ E eps^4 / E eps^2 ~ mu2: scaling the
    # regressor by the point's own mu2 lets one pooled coefficient fit every point.
    cols = torch.stack([psi, eps * mu2[:, None], eps**2 - mu2[:, None]], -1)  # (N, m, 3)
    means = cols.mean(1)
    centred = (cols - means[:, None, :]).reshape(-1, 3)
    return _NFormStats(means, centred[:, 1:].T @ centred[:, 1:], centred[:, 1:].T @ centred[:, 0])


def _n_form_estimates(stats: list[_NFormStats], cv: bool) -> torch.Tensor:
    """Per point ``mean psi - b . mean (mu2 eps, eps^2 - mu2)``, ``mu2 = E eps^2``, b pooled (diagonally scaled normal
    equations, pseudo-inverse where a column vanishes)."""
    means = torch.cat([s.means for s in stats])
    if not cv:
        return means[:, 0]
    xtx = sum(s.xtx for s in stats)
    xty = sum(s.xty for s in stats)
    diag = torch.diagonal(xtx).sqrt()
    diag = torch.where(diag > 0, diag, torch.ones_like(diag))
    b = torch.linalg.pinv(xtx / diag[:, None] / diag[None, :], hermitian=True) @ (xty / diag) / diag
    return means[:, 0] - means[:, 1:] @ b




def _cross_fitted(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Control-variate estimate of ``E y`` over the last-but-one axis of y (..., m) with regressors
    x (..., m, p) of known mean 0: coefficients fitted on one half of the draws are applied to the
    other half and the two are averaged, so the estimate stays unbiased (no own-sample fit)."""
    half = y.shape[-1] // 2
    out = []
    for fit, use in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
        xf, yf = x[..., fit, :], y[..., fit]
        xc, yc = xf - xf.mean(-2, keepdim=True), yf - yf.mean(-1, keepdim=True)
        xtx = xc.mT @ xc
        diag = torch.diagonal(xtx, dim1=-2, dim2=-1).sqrt()
        diag = torch.where(diag > 0, diag, torch.ones_like(diag))
        scaled = xtx / diag[..., :, None] / diag[..., None, :]
        b = (torch.linalg.pinv(scaled, hermitian=True) @ ((xc.mT @ yc[..., None])[..., 0] / diag)[..., None])[..., 0] / diag
        out.append(y[..., use].mean(-1) - (x[..., use, :].mean(-2) * b).sum(-1))
    return 0.5 * (out[0] + out[1])


def _q_form_estimates(mix: WhitenedMixture, xi: torch.Tensor, cv: bool) -> torch.Tensor:
    """Closed form plus ``sum_k w_k`` times the estimated mean excess over the draws xi (N, K, m, d).
    Control variates: ``l_j - E_{N_k} l_j`` for every j (where j dominates, ``excess_k`` is linear in
    ``l_j - l_k``, so only the switching between modes is left), cross-fitted (:func:`_cross_fitted`);
    used when each half of the m draws has at least K + 2 of them."""
    parts, chol = mix.parts()
    closed, excess = q_form_terms(mix, xi, parts, chol)
    n, k, m, d = xi.shape
    if cv and m // 2 >= k + 2:
        z = mix.zeta[:, :, None, :] + torch.einsum("nkij,nkqj->nkqi", chol, xi)
        logs = mix.log_ratios(z.reshape(n, -1, d), parts).reshape(n, k, m, k)
        means = _cross_fitted(excess, logs - expected_log_ratios(mix, parts)[:, :, None, :])
    else:
        means = excess.mean(-1)
    return closed + (torch.exp(mix.log_weights) * means).sum(-1)


def _n_form_usable(mix: WhitenedMixture, mu2: torch.Tensor) -> torch.Tensor:
    """Where the N-form is used: ``E eps^2 <= 0.01`` (psi(eps) ~ eps^2 / 2 is then caught by the CVs;
    at 0.1 and 1 rare spikes of eps from light, far components made the standard errors too small:
    |z| ~ 3-4 at early steps of T = 32 against quadrature) and
    every eigenvalue of every ``R_k`` above -0.3 (the CV ``eps^2`` needs a finite ``E rho^4``, i.e.
    eigenvalues above -1/3, module docstring)."""
    return (mu2 <= _N_FORM_CHI_SQUARE) & (torch.linalg.eigvalsh(mix.r).amin((-1, -2)) > -0.3)


def negentropy(mixes, mc: MonteCarlo, gen: torch.Generator) -> torch.Tensor:
    """Monte Carlo J per point over a sequence of :class:`~pathkl.negentropy.WhitenedMixture` batches
    (concatenated): skipped where certified below 1e-24, N-form with CVs where its integrand is small
    (:func:`_n_form_usable`), q-form with CVs elsewhere. Draws come from ``gen`` in batch order."""
    values, n_stats, n_index = [], [], []
    offset = 0
    for mix in mixes:
        n, k, d = mix.zeta.shape
        out = torch.zeros(n, dtype=DTYPE)
        active = torch.nonzero(negentropy_bound(mix) > SKIP_BELOW).flatten()
        mix_a = mix.subset(active)
        parts, _ = mix_a.parts()
        mu2 = chi_square(mix_a, parts)
        near = _n_form_usable(mix_a, mu2)
        idx = torch.nonzero(near).flatten()
        if idx.numel():
            z = torch.randn(idx.numel(), mc.inner, d, generator=gen, dtype=DTYPE)
            sub_parts = tuple(p[idx] for p in parts)
            n_stats.append(_n_form_stats(mix_a.subset(idx), sub_parts, mu2[idx], z))
            n_index.append(active[idx] + offset)
        idx = torch.nonzero(~near).flatten()
        if idx.numel():
            xi = torch.randn(idx.numel(), k, mc.inner, d, generator=gen, dtype=DTYPE)
            out[active[idx]] = _q_form_estimates(mix_a.subset(idx), xi, mc.control_variates)
        values.append(out)
        offset += n
    out = torch.cat(values)
    if n_stats:
        out[torch.cat(n_index)] = _n_form_estimates(n_stats, mc.control_variates)
    return out




# ---- outer samples of one step -------------------------------------------------------------------


@dataclass(frozen=True)
class _Outer:
    """Stratified draws at one noise level: xi (K, n, d), x and everything at x flattened to (K n, ...)."""

    xi: torch.Tensor
    post: object
    g: torch.Tensor


def outer_draws(reference, lv: NoiseLevel, n: int, gen: torch.Generator):
    """Stratified draws of ``q_t = sum_k pi_k N(sqrt(abar) m_k, V_k)``, ``n`` per component:
    ``xi`` (K, n, d) standard normal, the points ``x = sqrt(abar) m_k + V_k^{1/2} xi`` flattened to
    (K n, d) component by component, and the stratum weights ``pi`` (K,). A Gaussian reference is one
    stratum (its basis applies ``V^{1/2}``, O(d) or O(d log d) per point for the structured ones)."""
    d = reference.dim
    if isinstance(reference, GaussianReference):
        xi = torch.randn(1, n, d, generator=gen, dtype=DTYPE)
        root = reference.marginal_eigenvalues(lv).sqrt()
        return xi, lv.abar.sqrt() * reference.mean + reference.basis.apply(root, xi[0]), torch.ones(1, dtype=DTYPE)
    xi = torch.randn(reference.size, n, d, generator=gen, dtype=DTYPE)
    nu = reference.marginal_eigenvalues(lv.abar, lv.one_minus_abar)
    x = lv.abar.sqrt() * reference.means + reference.covs.apply(nu.sqrt(), xi.transpose(0, 1))  # (n, K, d)
    return xi, x.transpose(0, 1).reshape(-1, d), reference.weights


def _outer(reference, lv: NoiseLevel, mc: MonteCarlo, gen: torch.Generator) -> _Outer:
    xi, x, _ = outer_draws(reference, lv, mc.outer, gen)
    post = reference.posterior(x, lv.abar, lv.one_minus_abar)
    return _Outer(xi, post, reference.excess(post, lv.abar))


def _take(post, sl: slice):
    return dataclasses.replace(post, log_weights=post.log_weights[sl], log_prob=post.log_prob[sl], scores=post.scores[sl])


def _kernel_batches(reference, outer: _Outer, lv: NoiseLevel, kappa: torch.Tensor, mc: MonteCarlo):
    k, d = reference.size, reference.dim
    per_point = k * k * d * d + k * k * mc.inner + k * mc.inner * d
    size = max(1, _BATCH_ELEMENTS // per_point)
    for start in range(0, outer.g.shape[0], size):
        sl = slice(start, start + size)
        yield reverse_kernel_whitened(reference, _take(outer.post, sl), lv.abar, kappa, outer.g[sl])


def _negentropy_points(reference, grid: Grid, mc: MonteCarlo) -> torch.Tensor:
    """Monte Carlo J at the outer draws of every step, (T, K n); cached per (grid, settings)."""
    key = ("mc-J", grid.schedule.name, grid.log_abar.numpy().tobytes(), grid.log_alpha.numpy().tobytes(), mc)
    if key not in reference._cache:
        rows = [torch.full((reference.size * mc.outer,), math.inf, dtype=DTYPE)] * (_first_finite_step(reference, grid) - 1)
        for t in range(_first_finite_step(reference, grid), grid.T + 1):
            lv = grid.level(t)
            outer = _outer(reference, lv, mc, _generator(mc, _OUTER, t))
            kappa = grid.beta[t - 1] / grid.alpha[t - 1]
            batches = _kernel_batches(reference, outer, lv, kappa, mc)
            rows.append(negentropy(batches, mc, _generator(mc, _INNER, t)))
        reference._cache[key] = torch.stack(rows)
    return reference._cache[key]


# ---- what MixtureReference dispatches to for d > 3 -----------------------------------------------


def _first_finite_step(reference, grid: Grid) -> int:
    """2 with point masses in the data on a grid from tau = 0 (step 1 is then +inf exactly,
    MixtureReference.has_point_masses), else 1."""
    return 2 if reference.has_point_masses and float(grid.one_minus_abar[0]) == 0.0 else 1


def step_kls(reference, grid: Grid, family, mc: MonteCarlo, *,
             mean_g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step estimates of ``E_{q_t} KL(q(.|x_t) || p(.|x_t))`` and their variances, t = 1..T.
    ``mean_g`` (T,) replaces the estimated ``E tr G / d`` when this is one block of a product."""
    j = _negentropy_points(reference, grid, mc)
    k, n, d = reference.size, mc.outer, reference.dim
    values, variances = torch.empty(grid.T, dtype=DTYPE), torch.empty(grid.T, dtype=DTYPE)
    first = _first_finite_step(reference, grid)
    values[: first - 1], variances[: first - 1] = math.inf, 0.0
    for t in range(first, grid.T + 1):
        lv = grid.level(t)
        outer = _outer(reference, lv, mc, _generator(mc, _OUTER, t))
        y = j[t - 1]
        if not family.optimal:
            if mean_g is None:
                trace = torch.diagonal(outer.g, dim1=-2, dim2=-1).sum(-1).reshape(k, n) / d
                own = torch.tensor(_stratified(trace, outer.xi, reference.weights, mc)[0], dtype=DTYPE)
            else:
                own = mean_g[t - 1]
            c = Dense(reference.posterior_cov_dense(outer.post, lv.abar, lv.one_minus_abar)) if family.uses_c else None
            step = ReverseStep.at(grid, t, g=Dense(outer.g), c=c, mean_g=own)
            y = y + family.gaussian_step_kl(step)
        values[t - 1], variances[t - 1] = _stratified(y.reshape(k, n), outer.xi, reference.weights, mc)
    return values, variances


def expected_trace_excess(reference, lv: NoiseLevel, mc: MonteCarlo) -> torch.Tensor:
    """Monte Carlo ``E_{q_t} tr G`` at levels of any shape (...); the level's flat index seeds it.
    (Used for a product's global ``E tr G / d``, whose error enters ``analytic`` at second order.)"""
    abar = torch.as_tensor(lv.abar, dtype=DTYPE)
    om = torch.as_tensor(lv.one_minus_abar, dtype=DTYPE).expand_as(abar).reshape(-1)
    out = torch.empty(abar.numel(), dtype=DTYPE)
    for i, (a, o) in enumerate(zip(abar.reshape(-1), om)):
        outer = _outer(reference, NoiseLevel(a, o), mc, _generator(mc, _TRACE, i))
        trace = torch.diagonal(outer.g, dim1=-2, dim2=-1).sum(-1).reshape(reference.size, mc.outer)
        out[i] = _stratified(trace, outer.xi, reference.weights, mc)[0]
    return out.reshape(abar.shape)


def terminal_kl(reference, lv: NoiseLevel, mc: MonteCarlo) -> Estimate:
    """``KL(q_T || N(0, I))`` with its standard error: the whitened mixture ``zeta_k = sqrt(abar) m_k``,
    (pathkl.negentropy.terminal_mixture), N-form with CVs on
    ``terminal`` draws, or the q-form with ``terminal / K`` draws per component."""
    mix = terminal_mixture(reference, lv)
    gen = _generator(mc, _TERMINAL)
    k, d = reference.size, reference.dim
    parts, chol = mix.parts()
    mu2 = chi_square(mix, parts)
    if bool(_n_form_usable(mix, mu2)[0]):
        z = torch.randn(1, mc.terminal, d, generator=gen, dtype=DTYPE)
        psi, eps = n_form_terms(mix, z, parts)
        x = torch.stack([eps[0], eps[0] ** 2 - mu2[0]], -1)
        b, var = intercept(psi[0], x if mc.control_variates else x[:, :0])
        return Estimate(float(b), stderr=math.sqrt(max(float(var), 0.0)))
    m = max(2, mc.terminal // k)
    xi = torch.randn(1, k, m, d, generator=gen, dtype=DTYPE)
    closed, excess = q_form_terms(mix, xi, parts, chol)
    w = torch.exp(mix.log_weights[0])
    value = closed[0] + (w * excess[0].mean(-1)).sum()
    return Estimate(float(value), stderr=math.sqrt(float((w**2 * excess[0].var(-1) / m).sum())))