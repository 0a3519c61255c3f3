"""pathkl.ocm: the OCM theorems as properties of pathkl's own loss code, by exact enumeration of all
Rademacher probes and torch autograd (OCM paper, arXiv 2406.10808, Theorem 2 and eqs. (10)-(11))."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathkl.errors import InputError
from pathkl.ocm import ocm_loss, probe_products, probe_regression_loss, rademacher_probes
from pathkl.testing import spd_matrices

CI = settings.get_profile("ci")
DTYPE = torch.float64


def all_probes(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)), dtype=DTYPE)


def products(hess: torch.Tensor):
    return lambda v: v @ hess  # H symmetric


def oracle_gradient(h: torch.Tensor, hess: torch.Tensor) -> torch.Tensor:
    """Autograd of the oracle loss ``||h - diag H||^2`` (one point)."""
    h = h.clone().requires_grad_(True)
    ((h - torch.diagonal(hess)) ** 2).sum().backward()
    return h.grad


def expected_gradient(loss, h: torch.Tensor, hess: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over every tuple of m probes (all 2^(d m)) of ``loss`` and of its autograd gradient in h."""
    h = h.clone()[None].requires_grad_(True)
    tuples = list(itertools.product(all_probes(h.shape[1]), repeat=m))
    mean = sum(loss(h, products(hess), torch.stack(tup)[:, None, :]) for tup in tuples) / len(tuples)
    (grad,) = torch.autograd.grad(mean, h)
    return mean.detach(), grad[0]


def offdiagonal_sq(hess: torch.Tensor) -> float:
    return float((hess**2).sum() - (torch.diagonal(hess) ** 2).sum())


@st.composite
def instances(draw, max_dim: int = 4):
    d = draw(st.integers(1, max_dim))
    hess = draw(spd_matrices(d, low=0.1, high=10.0))
    sign = draw(st.sampled_from([1.0, -1.0]))  # Hessians of log q are often negative definite
    h = torch.tensor(draw(st.lists(st.floats(-5, 5), min_size=d, max_size=d)), dtype=DTYPE)
    return sign * hess, h


@given(instances())
@CI
def test_theorem2_ocm_gradient_is_the_oracle_gradient_in_expectation(case):
    hess, h = case
    mean, grad = expected_gradient(ocm_loss, h, hess, 1)
    tol = 1e-12 * (1 + float(hess.abs().max()) ** 2 + float(h.abs().max()) ** 2)
    assert torch.allclose(grad, oracle_gradient(h, hess), rtol=0, atol=tol)
    # ... and the loss exceeds the oracle loss by the probe variance sum_{i != j} H_ij^2, free of h.
    want = float(((h - torch.diagonal(hess)) ** 2).sum()) + offdiagonal_sq(hess)
    assert float(mean) == pytest.approx(want, rel=1e-12, abs=tol)


@given(instances(max_dim=3), st.integers(1, 3))
@CI
def test_probe_regression_redrawn_probes_is_unbiased(case, m):
    """Eq. (10) with probes redrawn per x: minimiser diag H for every M, constant (1/M) sum H_ij^2."""
    hess, h = case
    if hess.shape[0] * m > 8:
        m = 8 // hess.shape[0]
    mean, grad = expected_gradient(probe_regression_loss, h, hess, m)
    tol = 1e-12 * (1 + float(hess.abs().max()) ** 2 + float(h.abs().max()) ** 2)
    assert torch.allclose(grad, oracle_gradient(h, hess), rtol=0, atol=tol)
    want = float(((h - torch.diagonal(hess)) ** 2).sum()) + offdiagonal_sq(hess) / m
    assert float(mean) == pytest.approx(want, rel=1e-12, abs=tol)


@given(instances(), st.integers(1, 6), st.integers(0, 2**31 - 1))
@CI
def test_eq10_and_eq11_have_the_same_gradient_on_the_same_probes(case, m, seed):
    """Eq. (11) over M probes is eq. (10) plus the probes' spread (1/M) sum_m ||p_m - mean p||^2,
    free of h: autograd of both losses agree draw by draw."""
    hess, h = case
    probes = rademacher_probes(1, h.numel(), m, generator=torch.Generator().manual_seed(seed))
    grads = []
    for loss in (ocm_loss, probe_regression_loss):
        x = h.clone()[None].requires_grad_(True)
        loss(x, products(hess), probes).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12 * (1 + float(hess.abs().max())))


@pytest.mark.parametrize("m", [1, 2, 3])
def test_fixed_probes_are_minimised_by_the_probe_estimate(m):
    """Probes held fixed per x (the other reading): both losses are minimised by that x's probe
    estimate (gradient 0 there, by autograd), whose mean over all probe tuples is diag H and whose
    mean squared error is the variance (1/M) sum_{j != i} H_ij^2 per coordinate: no bias, a variance
    that no choice between eq. (10) and eq. (11) removes."""
    hess = torch.tensor([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]], dtype=DTYPE)
    estimates = []
    for tup in itertools.product(all_probes(3), repeat=m):
        probes = torch.stack(tup)[:, None, :]
        estimate = probe_products(products(hess), probes).mean(0)
        for loss in (ocm_loss, probe_regression_loss):
            x = estimate.clone().requires_grad_(True)
            loss(x, products(hess), probes).backward()
            assert x.grad.abs().max() <= 1e-14
        estimates.append(estimate[0])
    estimates = torch.stack(estimates)
    diag = torch.diagonal(hess)
    assert torch.allclose(estimates.mean(0), diag, atol=1e-14)
    variance = ((hess**2).sum(1) - diag**2) / m
    assert torch.allclose(((estimates - diag) ** 2).mean(0), variance, atol=1e-13)


def test_ocm_loss_by_hand_and_on_a_batch():
    """One point, one probe, by hand; and a batch is the mean over its points."""
    hess = torch.tensor([[1.0, 2.0], [2.0, -3.0]], dtype=DTYPE)
    v = torch.tensor([[[1.0, -1.0]]], dtype=DTYPE)
    h = torch.tensor([[0.5, 0.25]], dtype=DTYPE)
    # v * (H v) = (1 * (1 - 2), -1 * (2 + 3)) = (-1, -5)
    assert float(ocm_loss(h, products(hess), v)) == pytest.approx(1.5**2 + 5.25**2, rel=1e-15)
    probes = rademacher_probes(5, 2, 3, generator=torch.Generator().manual_seed(0))
    hs = torch.randn(5, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    each = [ocm_loss(hs[i : i + 1], products(hess), probes[:, i : i + 1]) for i in range(5)]
    assert float(ocm_loss(hs, products(hess), probes)) == pytest.approx(float(sum(each) / 5), rel=1e-14)
    assert set(probes.unique().tolist()) == {-1.0, 1.0}


def test_bad_probe_shapes_are_refused():
    h = torch.zeros(2, 3, dtype=DTYPE)
    with pytest.raises(InputError, match="probes must have shape"):
        ocm_loss(h, products(torch.eye(3, dtype=DTYPE)), torch.ones(2, 3, dtype=DTYPE))
    with pytest.raises(InputError, match="n, d, m >= 1"):
        rademacher_probes(0, 3)
