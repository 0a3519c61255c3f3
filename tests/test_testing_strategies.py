"""The public hypothesis strategies produce what they promise (and are usable in property tests)."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathkl.testing import (
    PROFILES,
    gaussian_references,
    grids,
    noise_levels,
    orthogonal_matrices,
    rademacher_probes,
    spd_matrices,
    spectra,
)

#: Deterministic CI settings, applied per test (loading the profile would change every test).
CI = settings.get_profile("ci")
EYE_TOL = 1e-12  # Householder QR of a <= 6 x 6 matrix is orthogonal to a few ulps


def test_profiles_registered():
    assert set(PROFILES) == {"ci", "dev", "deep"}
    assert settings.get_profile("ci").derandomize is True
    assert settings.get_profile("deep").max_examples > settings.get_profile("ci").max_examples


@CI
@given(st.integers(1, 6).flatmap(orthogonal_matrices))
def test_orthogonal(q):
    eye = torch.eye(q.shape[0], dtype=torch.float64)
    assert torch.allclose(q.T @ q, eye, atol=EYE_TOL, rtol=0)


@CI
@given(st.data(), st.integers(1, 6), st.floats(1.0, 1e4))
def test_spd_with_condition_number(data, dim, kappa):
    m = data.draw(spd_matrices(dim, condition=kappa, low=1e-3, high=1e3))
    assert torch.equal(m, m.T)
    eig = torch.linalg.eigvalsh(m)
    assert eig.min() > 0
    if dim >= 2:
        # eigvalsh error ~ eps * ||m||, so the smallest eigenvalue is known to ~eps * kappa relative.
        assert abs(float(eig.max() / eig.min()) / kappa - 1) < 1e-9 * kappa


@CI
@given(st.data(), st.integers(1, 5))
def test_spd_with_prescribed_spectrum(data, dim):
    lam = data.draw(spectra(dim, low=0.1, high=10.0))
    assert torch.all(lam[1:] >= lam[:-1]) and lam.min() >= 0.1 * (1 - 1e-12) and lam.max() <= 10.0 * (1 + 1e-12)
    m = data.draw(spd_matrices(dim, eigenvalues=lam))
    assert torch.allclose(torch.linalg.eigvalsh(m), lam, rtol=1e-12, atol=1e-12 * float(lam.max()))


@CI
@given(gaussian_references(dims=(1, 4), condition=100.0), noise_levels())
def test_gaussian_reference_posterior_is_a_covariance(ref, lv):
    x = ref.sample(3, lv, generator=torch.Generator().manual_seed(0))
    cov = ref.posterior_cov(x, lv)
    assert torch.allclose(cov, cov.transpose(-1, -2), atol=1e-12)
    # Posterior covariance shrinks the prior: 0 <= Cov[x0|xt] <= Cov[x0] (Loewner order).
    prior = ref.basis.dense(ref.eigenvalues)
    assert torch.linalg.eigvalsh(cov).min() >= -1e-12
    assert torch.linalg.eigvalsh(prior - cov[0]).min() >= -1e-10 * float(ref.eigenvalues.max())


@CI
@given(grids(min_steps=2, max_steps=40))
def test_grids_are_valid(grid):
    assert float(grid.taus[0]) == 0.0 and float(grid.taus[-1]) == 1.0
    assert torch.all(grid.taus[1:] > grid.taus[:-1])
    assert torch.all(grid.beta > 0) and torch.all(grid.beta <= 1)
    assert torch.all(grid.abar[1:] < grid.abar[:-1])


@CI
@given(st.integers(1, 5), st.integers(1, 8), st.data())
def test_rademacher_probes(dim, count, data):
    v = data.draw(rademacher_probes(dim, count))
    assert v.shape == (count, dim) and torch.all(v.abs() == 1)


@CI
@given(spd_matrices(4, low=0.1, high=10.0))
def test_enumerated_rademacher_probes_are_unbiased(h):
    """A use of the strategies: E_v[v * Hv] = diag H over all 2^d probes (OCM eq. (9))."""
    probes = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=4)), dtype=torch.float64)
    mean = (probes * (probes @ h)).mean(0)
    assert torch.allclose(mean, torch.diagonal(h), rtol=0, atol=1e-13 * float(h.abs().max()))
