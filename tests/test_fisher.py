"""The diffusion Fisher F_t = -hess log q_t (pathkl.fisher): closed-form trace and products against
torch.func autodiff of a log-density written here (a plain logsumexp, sharing no code with the
references), and the approximate algorithms' error bounds (proofs_check.diffusion_fisher) on random
instances.

Hypothesis runs the ``ci`` profile (deterministic, a few examples each) unless ``PATHKL_PROFILE=deep``
(pathkl.testing's deep profile: many more examples, random seeds) is set.
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathkl.errors import InputError
from pathkl.fisher import (
    autodiff_fisher_matvec,
    autodiff_fisher_trace,
    fisher_matvec,
    fisher_trace,
    hutchinson_trace,
)
from pathkl.references import (
    EmpiricalReference,
    GaussianReference,
    MixtureReference,
    ProductReference,
)
from pathkl.schedules import DTYPE, NoiseLevel
from proofs_check import diffusion_fisher as df

DEEP = os.environ.get("PATHKL_PROFILE") == "deep"
PROFILE = settings(settings.get_profile("deep" if DEEP else "ci"), max_examples=500 if DEEP else 12)
#: Two float64 routes (closed form vs autodiff or a dense Hessian) through <= 12 points in <= 5-D with
#: entries of F up to ~1e3: agreement to ~1e-13 relative to the largest entry; a slip is O(1).
RTOL = 1e-10


def _level(abar: float) -> NoiseLevel:
    return NoiseLevel(torch.tensor(abar, dtype=DTYPE), torch.tensor(1.0 - abar, dtype=DTYPE))


@st.composite
def empirical_cases(draw):
    """N points in d dimensions (scale 0.1..5), a level, 3 points x from q_t and directions v."""
    n, d = draw(st.integers(1, 12)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(n, d, generator=gen, dtype=DTYPE) * draw(st.floats(0.1, 5.0))
    lv = _level(draw(st.floats(0.02, 0.98)))
    reference = EmpiricalReference.from_points(points)
    return reference, lv, reference.sample(3, lv, generator=gen), torch.randn(3, d, generator=gen, dtype=DTYPE)


@st.composite
def mixture_cases(draw):
    """K full-covariance components (eigenvalues 0.01..1) in d dimensions, a level, x from q_t, v."""
    k, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    weights = torch.softmax(torch.randn(k, generator=gen, dtype=DTYPE), 0)
    means = 2.0 * torch.randn(k, d, generator=gen, dtype=DTYPE)
    rot, _ = torch.linalg.qr(torch.randn(k, d, d, generator=gen, dtype=DTYPE))
    covs = (rot * (0.01 + torch.rand(k, 1, d, generator=gen, dtype=DTYPE))) @ rot.transpose(-1, -2)
    reference = MixtureReference.from_components(weights, means, covs=(covs + covs.transpose(-1, -2)) / 2)
    lv = _level(draw(st.floats(0.02, 0.98)))
    return reference, lv, reference.sample(3, lv, generator=gen), torch.randn(3, d, generator=gen, dtype=DTYPE)


def _plain_log_density(reference: MixtureReference, lv: NoiseLevel):
    """``log sum_k pi_k N(x; alpha m_k, abar S_k + sigma^2 I)`` by dense solves (no eigen-forms)."""
    eye = torch.eye(reference.dim, dtype=DTYPE)
    covs = lv.abar * reference.covs.dense(reference.eigenvalues) + lv.one_minus_abar * eye
    inverse, logdet = torch.linalg.inv(covs), torch.logdet(covs)
    centres = lv.abar.sqrt() * reference.means

    def log_q(x):
        r = x - centres
        quad = torch.einsum("ki,kij,kj->k", r, inverse, r)
        return torch.logsumexp(torch.log(reference.weights) - 0.5 * (quad + logdet), 0)
    return log_q


def _assert_matches_autodiff(reference, lv, x, v):
    log_q = _plain_log_density(reference, lv)
    dense = -torch.func.vmap(torch.func.hessian(log_q))(x)
    scale = float(dense.abs().max())
    closed = fisher_matvec(reference, x, v, lv)
    assert torch.allclose(closed, (dense @ v[..., None])[..., 0], rtol=RTOL, atol=RTOL * scale * float(v.abs().max()))
    assert torch.allclose(closed, autodiff_fisher_matvec(log_q, x, v), rtol=RTOL, atol=RTOL * scale * float(v.abs().max()))
    trace = fisher_trace(reference, x, lv)
    assert torch.allclose(trace, dense.diagonal(dim1=-2, dim2=-1).sum(-1), rtol=RTOL, atol=RTOL * scale * reference.dim)
    auto = autodiff_fisher_trace(log_q, x[0], chunk=3)  # chunks of 3 basis vectors: d = 4, 5 take two
    assert math.isclose(float(trace[0]), float(auto), rel_tol=RTOL, abs_tol=RTOL * scale * reference.dim)


@PROFILE
@given(empirical_cases())
def test_empirical_outer_product_forms_match_autodiff(case):
    _assert_matches_autodiff(*case)


@PROFILE
@given(mixture_cases())
def test_mixture_cumulant_forms_match_autodiff(case):
    _assert_matches_autodiff(*case)


def test_gaussian_and_product_traces_match_dense_hessians():
    gen = torch.Generator().manual_seed(4)
    gaussian = GaussianReference.from_eigenvalues(torch.tensor([0.05, 1.0, 7.0], dtype=DTYPE))
    mixture = MixtureReference.from_components([0.4, 0.6], [[-1.0, 0.0], [2.0, 1.0]], stds=[0.3, 0.8])
    product = ProductReference((gaussian, mixture))
    lv = _level(0.4)
    for reference in (gaussian, product):
        x = reference.sample(4, lv, generator=gen)
        dense = -reference.hessian(x, lv)
        assert torch.allclose(fisher_trace(reference, x, lv), dense.diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-12)


@PROFILE
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_hutchinson_moments_by_enumeration(dim, seed):
    """All 2^d Rademacher probes: the mean of v^T A v is tr A, the variance the claimed one."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=DTYPE)
    a = a + a.T
    probes = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=dim)), dtype=DTYPE)
    forms = ((probes @ a) * probes).sum(-1)
    variance = float(df.claimed_hutchinson_variance((a**2).sum(), (a.diagonal() ** 2).sum()))
    scale = float((a**2).sum())
    assert math.isclose(float(forms.mean()), float(a.trace()), abs_tol=1e-12 * math.sqrt(scale))
    assert math.isclose(float((forms**2).mean() - forms.mean() ** 2), variance, abs_tol=1e-12 * scale)


def test_hutchinson_needs_two_probes():
    with pytest.raises(InputError, match="M >= 2"):
        hutchinson_trace(lambda v: v, (1, 3), 1)


@st.composite
def posteriors(draw):
    """Posterior weights over 2..14 points in 1..5-D, as at a drawn x and noise level (spread or
    concentrated), and the level's (alpha, sigma^2)."""
    n, d = draw(st.integers(2, 14)), draw(st.integers(1, 5))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    points = torch.randn(n, d, generator=gen, dtype=DTYPE) * draw(st.floats(0.1, 4.0))
    abar = draw(st.floats(0.02, 0.98))
    alpha, var = math.sqrt(abar), 1.0 - abar
    x = alpha * points[0] + math.sqrt(var) * torch.randn(d, generator=gen, dtype=DTYPE)
    weights = torch.softmax(-((x - alpha * points) ** 2).sum(-1) / (2 * var), 0)
    return points, weights, alpha, var, gen


def _fisher(weights, points, alpha, var):
    return df.claimed_fisher(weights, points, alpha, var, torch.eye(points.shape[1], dtype=DTYPE))


@PROFILE
@given(posteriors(), st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_plugin_bound_holds(posterior, eps_mean, eps_second):
    """A mean off by at most eps_mean and a second moment off by at most eps_second (operator norm):
    the matvec error per unit |v| stays within the plug-in bound."""
    points, weights, alpha, var, gen = posterior
    d = points.shape[1]
    ybar = weights @ points
    e = torch.randn(d, generator=gen, dtype=DTYPE)
    e *= eps_mean / e.norm().clamp_min(1e-300)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    s_err = (rot * (eps_second * (2 * torch.rand(d, generator=gen, dtype=DTYPE) - 1))) @ rot.T
    second = torch.einsum("n,ni,nj->ij", weights, points, points)
    approx = torch.eye(d, dtype=DTYPE) / var - alpha**2 / var**2 * (second + s_err - torch.outer(ybar + e, ybar + e))
    error = float(torch.linalg.eigvalsh(approx - _fisher(weights, points, alpha, var)).abs().max())
    bound = df.claimed_plugin_bound(alpha, var, eps_second, eps_mean, float(ybar.norm()))
    assert error <= bound * (1 + df.BOUND_SLACK) + 1e-12 * alpha**2 / var**2 * float(second.abs().max())


@PROFILE
@given(posteriors(), st.data())
def test_topk_bound_holds(posterior, data):
    points, weights, alpha, var, _ = posterior
    k = data.draw(st.integers(1, points.shape[0] - 1))
    kept, tail = df._truncated_weights(weights, k)
    diameter = float(torch.cdist(points, points).max())
    exact, approx = _fisher(weights, points, alpha, var), _fisher(kept, points, alpha, var)
    # Rounding: the renormalisation and the dense sums, ~1e-15 of the largest entry of C.
    slack = 1e-12 * alpha**2 / var**2 * (diameter**2 + float((points**2).sum(-1).max()))
    bound = df.claimed_topk_bound(alpha, var, tail, diameter)
    assert abs(float(approx.trace() - exact.trace())) <= bound + slack
    assert float(torch.linalg.eigvalsh(approx - exact).abs().max()) <= bound + slack
    assert float((kept @ points - weights @ points).norm()) <= df.claimed_topk_mean_bound(tail, diameter) + 1e-12 * diameter
