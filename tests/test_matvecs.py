"""Covariance-vector products of the optimal reverse covariance: JVP route, closed form, Rademacher."""

from __future__ import annotations

import math

import pytest
import torch

from pathkl.covariances import ReverseStep
from pathkl.errors import InputError
from pathkl.matvecs import (
    DifferenceCovariance,
    JvpCovariance,
    closed_form_cov_matvec,
    rademacher_diagonal,
)
from pathkl.presets import PRESETS
from pathkl.schedules import get_schedule

DT = torch.float64


@pytest.fixture(scope="module")
def ref():
    return PRESETS["gaussian-5d"][1]()  # rotated basis: Sigma* is not diagonal


@pytest.fixture(scope="module")
def grid():
    return get_schedule("vp-linear").grid(10)


def points(ref, lv, n=6, seed=0):
    return ref.sample(n, lv, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t", [1, 2, 5, 10])
def test_ddpm_products_match_hessian_form(ref, grid, t) -> None:
    """Both routes equal ``(beta/alpha)(I + beta H) v`` (docs/theory.md section 2.2), formed from the reference's
    Hessian: a third, independent expression of Sigma*_t. Tolerance: a few ulps of the entries."""
    step = ReverseStep.ddim(grid, t)
    x = points(ref, step.level)
    v = torch.randn(6, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    hess = ref.hessian(x, step.level)
    sigma = (step.beta / step.alpha) * (torch.eye(5, dtype=DT) + step.beta * hess)
    want = torch.einsum("nij,nj->ni", sigma, v)
    jvp = JvpCovariance(lambda y: ref.posterior_mean(y, step.level), x, step)(v)
    closed = closed_form_cov_matvec(ref, x, step)(v)
    scale = want.abs().max()
    assert torch.allclose(jvp, want, rtol=0, atol=1e-13 * scale)
    assert torch.allclose(closed, want, rtol=0, atol=1e-13 * scale)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_products_jvp_equals_closed_form(ref, grid, eta) -> None:
    step = ReverseStep.ddim(grid, 4, eta=eta)
    x = points(ref, step.level)
    v = torch.randn(6, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    jvp = JvpCovariance(lambda y: ref.posterior_mean(y, step.level), x, step)(v)
    dense = step.s2 * torch.eye(5, dtype=DT) + step.lam**2 * ref.posterior_cov(x, step.level)
    assert torch.allclose(jvp, torch.einsum("nij,nj->ni", dense, v), rtol=0, atol=1e-13 * jvp.abs().max())


def test_jvp_also_returns_the_denoised_value(ref, grid) -> None:
    step = ReverseStep.ddim(grid, 3)
    x = points(ref, step.level)
    products = JvpCovariance(lambda y: ref.posterior_mean(y, step.level), x, step)
    products(torch.ones_like(x))
    assert torch.allclose(products.denoised(), ref.posterior_mean(x, step.level), rtol=0, atol=1e-14)


@pytest.mark.parametrize("t", [1, 3, 10])
def test_ddpm_mean_is_tweedie_mean(ref, grid, t) -> None:
    """``lam xhat_0 + kappa x = (x + beta score) / sqrt(alpha)`` (first-order Tweedie)."""
    step = ReverseStep.ddim(grid, t)
    x = points(ref, step.level)
    got = step.mean(x, ref.posterior_mean(x, step.level))
    want = (x + step.beta * ref.score(x, step.level)) / math.sqrt(step.alpha)
    assert torch.allclose(got, want, rtol=0, atol=1e-13 * want.abs().max())


def test_ddim_zero_eta_mean_is_ddim_update(ref, grid) -> None:
    """eta = 0: ``sqrt(abar_{t-1}) xhat_0 + sqrt(1 - abar_{t-1}) epshat`` (Song et al. 2021, eq. 12)."""
    t = 6
    step = ReverseStep.ddim(grid, t, eta=0.0)
    x = points(ref, step.level)
    x0 = ref.posterior_mean(x, step.level)
    abar, abar_prev = grid.abar[t], grid.abar[t - 1]
    eps_hat = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
    want = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps_hat
    assert step.s2 == 0.0
    assert torch.allclose(step.mean(x, x0), want, rtol=0, atol=1e-13 * want.abs().max())


@pytest.mark.parametrize("t", [2, 7])
def test_eta_one_special_case_is_continuous(grid, t) -> None:
    """The cancellation-free eta = 1 branch agrees with the general formula at eta -> 1."""
    exact, near = ReverseStep.ddim(grid, t), ReverseStep.ddim(grid, t, eta=1.0 - 1e-13)
    assert near.lam == pytest.approx(exact.lam, rel=1e-9)
    assert near.kappa == pytest.approx(exact.kappa, rel=1e-9)


def test_bad_step_or_eta_is_refused(grid) -> None:
    with pytest.raises(InputError):
        ReverseStep.ddim(grid, 0)
    with pytest.raises(InputError):
        ReverseStep.ddim(grid, 3, eta=1.5)
    with pytest.raises(InputError):
        rademacher_diagonal(lambda v: v, (2, 3), 1)


def test_rademacher_is_unbiased_at_rate_m_to_minus_half() -> None:
    """Exact per-entry variance of one probe: ``sum_{j != i} A_ij^2``. Over R = 400 independent
    estimates: the mean error is within 4 standard errors of 0 (unbiased), the RMS error is
    ``sqrt(sum_{j != i} A_ij^2 / M)`` to 15% (the RMS of 400 draws has ~4% relative spread), for
    M = 4 and M = 64 (so it falls as M^-1/2), and the reported stderr matches it to 15% too."""
    d, reps = 6, 400
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=DT, generator=gen))
    a = q @ torch.diag(torch.linspace(0.5, 4.0, d, dtype=DT)) @ q.T
    off_sq = (a**2).sum(1) - a.diagonal() ** 2
    for m in (4, 64):
        est = rademacher_diagonal(lambda v: v @ a, (reps, d), m, generator=gen)
        err = est.diagonal - a.diagonal()
        predicted = (off_sq / m).sqrt()
        assert torch.all(err.mean(0).abs() <= 4 * predicted / math.sqrt(reps))
        assert torch.allclose(err.square().mean(0).sqrt(), predicted, rtol=0.15)
        assert torch.allclose(est.stderr.square().mean(0).sqrt(), predicted, rtol=0.15)


def test_difference_route_matches_jvp_on_a_nonlinear_denoiser(grid) -> None:
    """Forward differences against the exact JVP for a smooth nonlinear denoiser of unit scale:
    truncation ~ h |f''| and rounding ~ eps |f| / h with h ~ sqrt(eps) (1 + |x|) / |v| give
    errors of order sqrt(eps) (1 + |x|) ~ 1e-7 here; 1e-5 relative leaves a 100x margin while
    still failing for a wrong scale or sign (those are O(1) errors)."""
    step = ReverseStep.ddim(grid, 5)
    w = torch.randn(4, 4, dtype=DT, generator=torch.Generator().manual_seed(4)) / 2
    denoiser = lambda y: torch.tanh(y @ w) @ w.T + 0.3 * y
    x = torch.randn(8, 4, dtype=DT, generator=torch.Generator().manual_seed(5))
    v = torch.randn(8, 4, dtype=DT, generator=torch.Generator().manual_seed(6))
    exact = JvpCovariance(denoiser, x, step)(v)
    approx = DifferenceCovariance(denoiser, x, step)
    assert torch.allclose(approx(v), exact, rtol=0, atol=1e-5 * exact.abs().max())
    assert torch.equal(approx.denoised(), denoiser(x))
