"""Empirical data at image dimension: the GEMM-form :class:`EmpiricalReference` against the generic
mixture closed forms of :class:`MixtureReference` (per-component (n, K, d) differences, dense
covariances: code that shares nothing with the GEMM forms), and the study's empirical configuration."""

from __future__ import annotations

import math

import pytest
import torch

from pathkl.covariances import ReverseStep
from pathkl.errors import InputError
from pathkl.families import parse_family
from pathkl.matvecs import closed_form_cov_matvec
from pathkl.references import EmpiricalReference, MixtureReference
from pathkl.rules import quadrature as qr
from pathkl.sampling import sample
from pathkl.schedules import get_schedule
from studies.image_sampling import ImageSamplingConfig, empirical_points, nearest_distance, run

DT = torch.float64
SCHEDULE = get_schedule("vp-linear")


def points(k: int, d: int, seed: int) -> torch.Tensor:
    return 2.0 * torch.randn(k, d, dtype=DT, generator=torch.Generator().manual_seed(seed)) + 1.0


def level(tau: float):
    return SCHEDULE.level(torch.tensor(tau, dtype=DT))


# tau = 0.05: abar ~ 0.99, the weights are one-hot to ~1e-30 (C ~ 1e-30: relative accuracy matters);
# tau = 0.2, 0.5, 0.95: from a few to all components contributing.
@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 0.95])
def test_gemm_forms_match_the_generic_mixture_forms(tau) -> None:
    """Mean, score, log-density, C v, diag C and tr C agree with the generic forms to 1e-10 relative
    (both are backward stable; their difference is rounding, ~1e-15 relative, with margin for the
    squared distances' GEMM cancellation, ~eps |x|^2 / (1 - abar) in a log-weight)."""
    data = points(7, 6, seed=1)
    fast, generic = EmpiricalReference.from_points(data), MixtureReference.empirical(data)
    lv = level(tau)
    gen = torch.Generator().manual_seed(2)
    x = fast.sample(9, lv, generator=gen)
    v = torch.randn(9, 6, dtype=DT, generator=gen)
    cov = generic.posterior_cov(x, lv)

    def close(a, b):
        scale = b.abs().amax(-1, keepdim=True)
        return bool(((a - b).abs() <= 1e-10 * scale + 1e-300).all())

    assert close(fast.posterior_mean(x, lv), generic.posterior_mean(x, lv))
    assert close(fast.score(x, lv), generic.score(x, lv))
    assert close(fast.log_prob(x, lv)[:, None], generic.log_prob(x, lv)[:, None])
    assert close(fast.posterior_cov_matvec(x, v, lv), torch.einsum("nij,nj->ni", cov, v))
    assert close(fast.posterior_cov_diagonal(x, lv), torch.diagonal(cov, dim1=1, dim2=2))
    assert close(fast.posterior_trace(x, lv)[:, None], torch.diagonal(cov, dim1=1, dim2=2).sum(-1)[:, None])


def test_low_noise_covariance_keeps_relative_accuracy() -> None:
    """Where one weight is ~1 the covariance is tiny; the anchored form must not return the rounding
    noise of |m|^2-sized sums in its place. On rows with diag C < 1e-12 it matches the generic form
    to 1e-8 relative, where the naive ``sum_k w_k m_k^2 - mu^2`` is off by more than 100%."""
    data = points(5, 4, seed=3) + 30.0  # |m|^2 ~ 4e3: naive cancellation error ~ eps |m|^2 ~ 1e-13
    fast, generic = EmpiricalReference.from_points(data), MixtureReference.empirical(data)
    lv = level(0.12)
    x = fast.sample(40, lv, generator=torch.Generator().manual_seed(4))
    diag = torch.diagonal(generic.posterior_cov(x, lv), dim1=1, dim2=2)
    tiny = (diag.amax(-1) < 1e-12) & (diag.amin(-1) > 0)
    assert tiny.sum() >= 5  # the regime the test is about
    got = fast.posterior_cov_diagonal(x, lv)[tiny]
    assert torch.allclose(got, diag[tiny], rtol=1e-8, atol=0)
    w = fast.posterior_weights(x, lv)[tiny]
    naive = w @ data**2 - (w @ data) ** 2
    assert ((naive - diag[tiny]).abs() > diag[tiny]).any()


def test_cached_weights_follow_in_place_changes() -> None:
    fast = EmpiricalReference.from_points(points(5, 3, seed=5))
    lv = level(0.5)
    x = torch.zeros(2, 3, dtype=DT)
    v = torch.ones(2, 3, dtype=DT)
    first = fast.posterior_cov_matvec(x, v, lv)
    x += 0.7
    moved = fast.posterior_cov_matvec(x, v, lv)
    assert torch.equal(moved, fast.posterior_cov_matvec(x.clone(), v, lv))
    assert not torch.equal(moved, first)


def test_expected_trace_matches_quadrature() -> None:
    """Monte Carlo ``E tr C / d`` within 4 standard errors of the generic mixture's quadrature value
    (d = 2), through Tweedie ``tr C / d = (1 - abar)(1 + (1 - abar) E tr G / (d abar))``."""
    data = points(4, 2, seed=6)
    fast, generic = EmpiricalReference.from_points(data), MixtureReference.empirical(data)
    for tau in (0.3, 0.7):
        lv = level(tau)
        mean_g = qr.expected_excess_functional(generic, lambda g, mean: mean, lv)
        abar, om = float(lv.abar), float(lv.one_minus_abar)
        exact = om * (1.0 + om * mean_g.value / abar)
        exact_error = om * om * mean_g.error / abar  # the quadrature's own (tiny) error, propagated
        est = fast.posterior_trace_estimate(lv, samples=20000, seed=7)
        assert abs(est.value - exact) <= 4 * est.stderr + exact_error, (tau, est, exact)


def test_lanczos_noise_at_full_rank_is_the_dense_symmetric_root() -> None:
    """One reverse step: ``lanczos:d`` from the GEMM products equals ``Sigma^{1/2} z`` with Sigma built
    densely from the generic mixture covariance (eigh); ``diag`` its square-rooted diagonal."""
    data = points(6, 4, seed=8)
    fast, generic = EmpiricalReference.from_points(data), MixtureReference.empirical(data)
    step = ReverseStep.ddim(SCHEDULE.grid(10), 5)
    x = fast.sample(3, step.level, generator=torch.Generator().manual_seed(9))
    z = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(10))
    sigma = step.s2 * torch.eye(4, dtype=DT) + step.lam**2 * generic.posterior_cov(x, step.level)
    vals, vecs = torch.linalg.eigh(sigma)
    root = vecs @ torch.diag_embed(vals.sqrt()) @ vecs.transpose(1, 2)
    matvec = closed_form_cov_matvec(fast, x, step)
    got = parse_family("lanczos:4").noise(fast, x, step, matvec, z)
    assert torch.allclose(got, torch.einsum("nij,nj->ni", root, z), rtol=0, atol=1e-11)
    got = parse_family("diag").noise(fast, x, step, matvec, z)
    assert torch.allclose(got, torch.diagonal(sigma, dim1=1, dim2=2).sqrt() * z, rtol=0, atol=1e-13)


@pytest.mark.parametrize("family", ["diag", "lanczos:2"])
def test_whole_runs_match_the_generic_reference(family) -> None:
    """Seeded chains with the GEMM forms and with the generic forms give the same samples: every
    posterior mean and product along the chain agrees (differences stay at rounding level, 1e-9)."""
    data = points(5, 3, seed=11)
    grid = SCHEDULE.grid(6)
    fast = sample(EmpiricalReference.from_points(data), grid, family, n=20, seed=3).samples
    slow = sample(MixtureReference.empirical(data), grid, family, n=20, seed=3).samples
    assert torch.allclose(fast, slow, rtol=0, atol=1e-9)


def test_nearest_distance_against_brute_force() -> None:
    data = points(8, 5, seed=12)
    x = torch.cat([data[:3], data[3:6] + 0.001, torch.randn(4, 5, dtype=DT, generator=torch.Generator().manual_seed(13))])
    est, fraction = nearest_distance(x, data, radius=0.01)
    brute = torch.tensor([min(math.sqrt(float(((xi - m) ** 2).sum()) / 5) for m in data) for xi in x], dtype=DT)
    assert brute[:3].max() == 0.0  # data points are their own nearest point (no GEMM rounding)
    assert est.value == pytest.approx(float(brute.mean()), rel=1e-12)
    assert est.stderr == pytest.approx(float(brute.std() / math.sqrt(len(x))), rel=1e-12)
    assert fraction == float((brute <= 0.01).double().mean())


def test_empirical_points_structure_and_checks() -> None:
    config = ImageSamplingConfig(ref="image-3x32x32", data_points=12, data_clusters=3, data_spread=0.0)
    p = empirical_points(config)
    assert p.shape == (12, 3072) and torch.equal(p[0], p[3]) and not torch.equal(p[0], p[1])
    spread = empirical_points(ImageSamplingConfig(ref="image-3x32x32", data_points=12, data_clusters=3,
                                                  data_spread=0.05))
    rms = ((spread - p) ** 2).mean(-1).sqrt()  # each point is its centre plus 0.05 x a unit-variance field
    assert torch.all((rms > 0.03) & (rms < 0.07))
    with pytest.raises(InputError):
        empirical_points(ImageSamplingConfig(ref="image-3x32x32", data_points=4, data_clusters=5))


def test_image_study_runs_on_empirical_data() -> None:
    """The empirical configuration end to end (small): exact draws are data points (floor exactly 0),
    sampled ones carry a nearest-point distance with a standard error; no spectrum or path KL there."""
    config = ImageSamplingConfig(ref="gaussian-5d", families=("analytic", "lanczos:2"), steps=(4,), n=20,
                                 data_points=16, data_clusters=4, data_spread=0.05, device="cpu")
    rows = run(config)
    assert [(r.family, r.T) for r in rows] == [("analytic", 4), ("lanczos:2", 4)]
    for r in rows:
        assert r.nearest_floor == 0.0 and r.nearest > 0 and r.nearest_stderr > 0 and 0 <= r.near_fraction <= 1
        assert r.spectrum_error is None and r.path_kl_steps is None and r.sw_stderr > 0
