"""pathkl.heads and pathkl.score_net: every covariance estimator's target and conversion against the
references' closed forms (Tweedie: ``posterior_cov_diagonal``, ``hessian``, ``expected_trace_excess``),
training against the exact diagonal, and the reverse model against the ``diag`` family's path KL."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import pathkl
from pathkl.errors import InputError
from pathkl.heads import (
    ESTIMATORS,
    Batch,
    ChainStep,
    Point,
    learned_model,
    parse_estimator,
    per_level,
    score_products,
    train_head,
    true_score,
)
from pathkl.pathspace import expected_trace_excess
from pathkl.references import GaussianReference, MixtureReference
from pathkl.schedules import DTYPE, NoiseLevel, get_schedule
from pathkl.score_net import noised, train_score_network

GRID = get_schedule("vp-linear").grid(100)
#: A correlated 2-D Gaussian (off-diagonal Hessian: probes are noisy, diag != full).
GAUSS = pathkl.load_reference("gaussian-2d")
#: The same law as a one-component mixture, whose closed forms take one level per row (fast training).
GAUSS_MIXTURE = MixtureReference.from_components([1.0], [[1.0, -1.0]], covs=[[[1.0, 0.8], [0.8, 1.0]]])


def data(reference, n: int, seed: int = 0) -> torch.Tensor:
    return reference.sample(n, generator=torch.Generator().manual_seed(seed))


def posterior_draws(reference: GaussianReference, x: torch.Tensor, lv: NoiseLevel, k: int, seed: int):
    """``k`` draws of ``x_0 ~ q(x_0 | x_t = x)`` for each row of x, from the Gaussian reference's closed
    forms (mean and dense covariance), rows repeated k times; and the implied noise ``eps``."""
    mean = reference.posterior_mean(x, lv).repeat_interleave(k, 0)
    chol = torch.linalg.cholesky(reference.posterior_cov(x[:1], lv)[0])
    z = torch.randn(mean.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))
    x0 = mean + z @ chol.T
    xt = x.repeat_interleave(k, 0)
    return x0, (xt - lv.abar.sqrt() * x0) / lv.one_minus_abar.sqrt(), xt


def minimiser(loss, rows: Batch, n: int, d: int, k: int, start: float = 0.0) -> torch.Tensor:
    """The per-point output minimising a squared loss over its k rows: one Newton step from ``start``
    (the loss is ``(1/(n k)) sum_rows ||target - out||^2``, so the Hessian in a point's output is 2/n)."""
    out = torch.full((n, d), start, dtype=DTYPE, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(out.repeat_interleave(k, 0), rows), out)
    return (out - grad * n / 2).detach()


def test_bad_estimators_and_options_are_refused_in_one_line():
    for name in ("foo", "probe", "probe:0", "rademacher:x", "ocm:2", "analytic:3"):
        with pytest.raises(InputError, match="unknown covariance estimator") as info:
            parse_estimator(name)
        assert "\n" not in str(info.value)
    x0 = data(GAUSS, 16)
    with pytest.raises(InputError, match="unknown covariance clip"):
        train_head("ocm", true_score(GAUSS), x0, GRID, steps=0, clip="sometimes")
    with pytest.raises(InputError, match="only 'ocm' takes a probe count"):
        train_head("sn_ddpm", true_score(GAUSS), x0, GRID, steps=0, probes=3)
    with pytest.raises(InputError, match="training chain must be a pathkl Grid"):
        train_head("ocm", true_score(GAUSS), x0, get_schedule("vp-linear"), steps=1)
    with pytest.raises(InputError, match=r"\(N, d\)"):
        train_score_network(torch.zeros(5), GRID, steps=1)
    assert all(parse_estimator(e.replace(":M", ":3"))[0] for e in ESTIMATORS)


def test_per_row_levels_and_the_jvp_route():
    """Grouped per-row levels equal row-by-row calls; the JVP products of a plain score function equal
    the reference's closed-form ``hvp`` (two routes, one through torch.func.jvp)."""
    t = torch.tensor([3, 50, 3, 90, 50])
    lv = NoiseLevel(GRID.abar[t], GRID.one_minus_abar[t])
    x = torch.randn(5, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    v = torch.randn(5, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    rowwise = torch.cat([GAUSS.score(x[i : i + 1], GRID.level(int(t[i]))) for i in range(5)])
    assert torch.allclose(true_score(GAUSS)(x, lv), rowwise, rtol=1e-14, atol=1e-14)
    assert torch.allclose(true_score(GAUSS_MIXTURE)(x, lv), rowwise, rtol=1e-12, atol=1e-12)
    plain = per_level(lambda y, level: GAUSS.score(y, level))
    jvp = score_products(plain, x, lv)(v)
    # (C / s) v from the closed-form posterior covariance (no Hessian, no JVP).
    closed = torch.cat([GAUSS.posterior_cov_matvec(x[i : i + 1], v[i : i + 1], GRID.level(int(t[i])))
                        for i in range(5)]) / GRID.one_minus_abar[t][:, None]
    assert torch.allclose(jvp, closed, rtol=1e-9, atol=0)
    for score in (true_score(GAUSS), true_score(GAUSS_MIXTURE)):
        assert torch.allclose(score_products(score, x, lv)(v), closed, rtol=1e-9, atol=0)


def test_chain_step_is_the_grid_step_at_its_levels():
    t = torch.arange(2, GRID.T + 1)
    chain = ChainStep.at(GRID, NoiseLevel(GRID.abar[t], GRID.one_minus_abar[t]))
    assert torch.allclose(chain.beta[:, 0], GRID.beta[t - 1], rtol=1e-11)
    assert torch.allclose(chain.beta_tilde[:, 0], GRID.beta_tilde[t - 1], rtol=1e-9)
    gamma2 = GRID.abar[t - 1] * GRID.beta[t - 1] ** 2 / GRID.one_minus_abar[t] ** 2
    assert torch.allclose(chain.gamma2[:, 0], gamma2, rtol=1e-9)


@pytest.mark.parametrize("t", [5, 40, 95])
def test_each_target_converts_to_the_exact_diagonal(t):
    """For the Gaussian reference, the minimiser of each estimator's training loss at fixed x_t (over
    x_0 ~ q(x_0 | x_t) from the closed-form posterior, or over all 2^d probes) converted by the
    estimator's own conversion equals ``posterior_cov_diagonal``: exactly (probes enumerated) or
    within 5 Monte Carlo standard errors (posterior draws)."""
    lv, n, k, d = GRID.level(t), 3, 20000, 2
    x = GAUSS.sample(n, lv, generator=torch.Generator().manual_seed(t))
    exact = GAUSS.posterior_cov_diagonal(x, lv)
    score = true_score(GAUSS)
    point = Point(x, lv, score(x, lv))
    # ocm and probe:M: every probe (tuple), so the expectation is exact.
    for name, m in (("ocm", 1), ("probe:2", 2)):
        spec, _ = parse_estimator(name)
        tuples = list(itertools.product(itertools.product((-1.0, 1.0), repeat=d), repeat=m))
        probes = torch.tensor(tuples, dtype=DTYPE).permute(1, 0, 2)  # (m, tuples, d)
        probes = probes.repeat_interleave(n, 1)  # each point sees every tuple
        xs = x.repeat(len(tuples), 1)
        lvs = NoiseLevel(lv.abar.expand(xs.shape[0]), lv.one_minus_abar.expand(xs.shape[0]))
        rows = Batch(xs, xs, xs, lvs, score(xs, lvs), score_products(score, xs, lvs), probes)
        out = torch.zeros(n, d, dtype=DTYPE, requires_grad=True)
        (grad,) = torch.autograd.grad(spec.loss(out.repeat(len(tuples), 1), rows), out)
        y = (out - grad * n / 2).detach()
        # y = (v + s H v) / a cancels to ~eps/a relative where s H ~ -I (high noise).
        tol = 64 * torch.finfo(DTYPE).eps / lv.abar * exact
        assert ((spec.covariance(y, point) - exact).abs() <= tol).all()
    x0, eps, xt = posterior_draws(GAUSS, x, lv, k, seed=t)
    rows_level = NoiseLevel(lv.abar.expand(n * k), lv.one_minus_abar.expand(n * k))
    rows = Batch(x0, eps, xt, rows_level, score(xt, rows_level), chain=ChainStep.at(GRID, rows_level))
    scale = lv.one_minus_abar / lv.abar
    for name, spread in (("sn_ddpm", eps**2), ("npr_ddpm", (eps - rows.eps_hat) ** 2)):
        spec, _ = parse_estimator(name)
        c = spec.covariance(minimiser(spec.loss, rows, n, d, k), point)
        stderr = scale * spread.reshape(n, k, d).std(1) / math.sqrt(k)
        assert ((c - exact).abs() <= 5 * stderr).all(), (name, c, exact)
    # i_ddpm: the VLB term is minimised where Sigma = beta~ + gamma^2 E[(x0 - xhat0)^2 | x_t]; the
    # loss's own gradient (autograd) vanishes at the v of that Sigma, which converts to about diag C.
    spec, _ = parse_estimator("i_ddpm")
    chain = ChainStep.at(GRID, lv)
    x0_hat = GAUSS.posterior_mean(x, lv).repeat_interleave(k, 0)
    sq = ((x0 - x0_hat) ** 2).reshape(n, k, d)
    sigma = chain.beta_tilde + chain.gamma2 * sq.mean(1)
    v = ((torch.log(sigma) - chain.log_beta_tilde) / (torch.log(chain.beta) - chain.log_beta_tilde)).requires_grad_(True)
    (grad,) = torch.autograd.grad(spec.loss(v.repeat_interleave(k, 0), rows), v)
    assert grad.abs().max() < 1e-10
    c = spec.covariance(v.detach(), Point(x, lv, point.score, chain))
    assert ((c - exact).abs() <= 5 * sq.std(1) / math.sqrt(k)).all()


@pytest.mark.parametrize("reference", ["gaussian-2d", "mog-1d"])
def test_analytic_matches_the_exact_expected_trace(reference):
    """Analytic-DPM's Monte Carlo ``E tr C / d`` against the exact ``E tr G`` of the engine's rules
    (``tr C / d = (s/a)(1 + s (E tr G / d - 1))``, Tweedie), within 4 of its standard errors."""
    ref = pathkl.load_reference(reference)
    head = train_head("analytic", true_score(ref), data(ref, 4000), GRID, steps=0, seed=3)
    for t in (2, 20, 60, 100):
        lv = GRID.level(t)
        mean_g = float(expected_trace_excess(ref, lv)) / ref.dim
        s, a = float(lv.one_minus_abar), float(lv.abar)
        exact = (s / a) * (1 + s * (mean_g - 1))
        got = head.expected_trace(lv)
        assert abs(got.value - exact) <= 4 * got.stderr, (t, got, exact)
        x = ref.sample(3, lv, generator=torch.Generator().manual_seed(t))
        assert torch.equal(head.posterior_cov_diagonal(x, lv), torch.full((3, ref.dim), got.value, dtype=DTYPE))


def test_rademacher_head_is_unbiased_with_the_probe_variance():
    """``rademacher:M`` on the correlated Gaussian: the mean of K calls is diag C within 5 standard
    errors of the estimator's variance ``(s/a)^2 s^2 sum_{j != i} H_ij^2 / M`` (docs/theory.md 7.1)."""
    m, k = 2, 4000
    head = train_head(f"rademacher:{m}", true_score(GAUSS), data(GAUSS, 16), GRID, steps=0, seed=1)
    lv = GRID.level(30)
    x = GAUSS.sample(1, lv, generator=torch.Generator().manual_seed(0))
    draws = head.posterior_cov_diagonal(x.expand(k, 2), lv)  # every row its own probes
    hess = GAUSS.hessian(x, lv)[0]
    s, ratio = lv.one_minus_abar, lv.one_minus_abar / lv.abar
    sd = ratio * s * ((hess**2).sum(1) - torch.diagonal(hess) ** 2).sqrt() / math.sqrt(m)
    assert ((draws.mean(0) - GAUSS.posterior_cov_diagonal(x, lv)[0]).abs() <= 5 * sd / math.sqrt(k)).all()
    assert torch.allclose(draws.std(0), sd, rtol=0.1)  # 4000 draws: the sd's relative error ~1/sqrt(2k)


@pytest.mark.parametrize("reference", [pathkl.load_reference("mog-1d"),
                                       GaussianReference.from_eigenvalues([0.3, 2.0], mean=[0.5, -1.0])])
def test_reverse_model_with_an_exact_head_is_the_diag_family(reference):
    """Where the Hessian is diagonal (1-D data, an axis-aligned Gaussian) every Rademacher probe gives
    ``v * (H v) = diag H`` exactly, so ``rademacher:1`` on the true score is an exact head: its reverse
    model's path KL (pathkl.model_path_kl: quadrature of the model's mean and variance) equals the
    ``diag`` family's (pathkl.path_kl, closed form or quadrature) within their errors, mean part 0."""
    grid = get_schedule("vp-linear").grid(6)
    score = true_score(reference)
    head = train_head("rademacher:1", score, data(reference, 16), grid, steps=0)
    result = pathkl.model_path_kl(reference, grid, learned_model(head), rtol=1e-8)
    diag = pathkl.path_kl(reference, grid, pathkl.get_family("diag"), rtol=1e-8)
    assert abs(result.total.value - diag.total) <= result.total.error + diag.total_error
    assert abs(result.mean.value) <= result.mean.error + 1e-14
    assert abs(result.mismatch.value) <= result.mismatch.error + 1e-14


def test_clipping_bounds():
    """``adpm`` keeps diag C in [0, min(s/a, ((b - a)/2)^2)] whatever the head says; ``ocm`` also caps
    the step-2 variance of the reverse model at ((b - a) / (255 E|eps|))^2."""
    x0 = data(GAUSS, 64)
    score = true_score(GAUSS)
    raw = train_head("sn_ddpm", score, x0, GRID, steps=0, seed=2)  # untrained: far from C
    clipped = train_head("sn_ddpm", score, x0, GRID, steps=0, seed=2, clip="adpm")
    half2 = ((x0.max(0).values - x0.min(0).values) / 2) ** 2
    for t in (1, 30, 100):
        lv = GRID.level(t)
        x = GAUSS.sample(200, lv, generator=torch.Generator().manual_seed(t))
        c, r = clipped.posterior_cov_diagonal(x, lv), raw.posterior_cov_diagonal(x, lv)
        upper = torch.minimum(half2, lv.one_minus_abar / lv.abar)
        assert (c >= 0).all() and (c <= upper).all()
        inside = (r >= 0) & (r <= upper)
        assert torch.equal(c[inside], r[inside])
    b2 = train_head("sn_ddpm", score, x0, GRID, steps=0, seed=2, clip="ocm")
    grid = get_schedule("vp-linear").grid(10)
    model = learned_model(b2)
    x = GAUSS.sample(50, grid.level(2), generator=torch.Generator().manual_seed(0))
    cap = ((x0.max(0).values - x0.min(0).values) / (255 * math.sqrt(2 / math.pi))) ** 2
    assert (model.variance(x, 2, grid) <= cap).all()
    assert torch.equal(model.variance(x, 3, grid), learned_model(clipped).variance(x, 3, grid))


def test_ocm_head_on_the_true_score_approaches_the_exact_diagonal():
    """A briefly trained OCM head (eq. (11), one probe) on the correlated Gaussian, whose probes are
    noisy (off-diagonal H): its diag C is within 10% (RMS, relative) of ``posterior_cov_diagonal`` at
    every level tested. Measured (seeds 0, 1; levels 5, 30, 60, 100): 1.3-5.4% after 300 steps, 3-10%
    after 150, 0.6-4.6% after 1200 (a floor set by the probes' noise at lr 1e-3); untrained 105%."""
    head = train_head("ocm", true_score(GAUSS_MIXTURE), data(GAUSS, 2048), GRID, steps=300, seed=0)
    for t in (5, 30, 60, 100):
        lv = GRID.level(t)
        x = GAUSS.sample(500, lv, generator=torch.Generator().manual_seed(t))
        c = GAUSS.posterior_cov_diagonal(x, lv)
        rel = float(((head.posterior_cov_diagonal(x, lv) - c) ** 2).mean().sqrt() / (c**2).mean().sqrt())
        assert rel < 0.1, (t, rel)


def test_score_network_learns_the_gaussian_score():
    """DSM on 2048 draws of the correlated Gaussian, 400 steps: the learned score is within 20% (RMS,
    relative) of the exact ``grad log q_t`` at t = 10 and 10% at t = 50, 100 (measured, seeds 0-1:
    9-12%, 3-4%, 5-7%; after 200 steps 13-20%, 3-5%, 4%; untrained about 100%)."""
    net = train_score_network(data(GAUSS, 2048), GRID, steps=400, seed=0, width=64)
    assert net.steps == 400 and net.train_seconds > 0 and len(net.losses) == 400
    for t, tol in ((10, 0.2), (50, 0.1), (100, 0.1)):
        lv = GRID.level(t)
        x = GAUSS.sample(500, lv, generator=torch.Generator().manual_seed(t))
        exact, got = GAUSS.score(x, lv), net(x, lv)
        rel = float((got - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt())
        assert rel < tol, (t, rel)


def test_noised_matches_the_forward_marginal():
    x0 = torch.ones(4, 2, dtype=DTYPE)
    eps = torch.zeros(4, 2, dtype=DTYPE)
    lv = GRID.level(50)
    assert torch.allclose(noised(x0, eps, lv), lv.abar.sqrt() * x0)


def test_a_head_is_a_posterior_for_the_sampler():
    """``pathkl.sample(head, grid, "diag")`` draws with the head's Tweedie mean and diagonal: with the
    exact head ``rademacher:1`` on 1-D data its samples equal the reference's own ``diag`` samples
    (same seed, same draws) to rounding."""
    reference = pathkl.load_reference("mog-1d")
    grid = get_schedule("vp-linear").grid(8)
    head = train_head("rademacher:1", true_score(reference), data(reference, 16), grid, steps=0)
    ours = pathkl.sample(head, grid, "diag", n=64, seed=3).samples
    exact = pathkl.sample(reference, grid, "diag", n=64, seed=3).samples
    assert torch.allclose(ours, exact, rtol=1e-9, atol=1e-9)
