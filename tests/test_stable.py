"""phi(u) = u - log1p(u), psi(e) = (1+e)log1p(e) - e and log det(I + kappa G) against 40-digit mpmath."""

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathkl.stable import (
    log_det_one_plus,
    logsumexp_last,
    one_plus_e_log_one_plus_e_minus_e,
    u_minus_log1p,
)

mp.mp.dps = 40


def _digits(x: float) -> int:
    """Working digits so that the O(x^2) result survives the O(x) cancellation at 40 digits."""
    return 40 + 2 * max(0, -int(mp.log10(abs(x)))) if x else 40


def _phi(u):
    with mp.workdps(_digits(u)):
        return float(mp.mpf(u) - mp.log1p(mp.mpf(u)))


def _psi(e):
    with mp.workdps(_digits(e)):
        e = mp.mpf(e)
        return float((1 + e) * mp.log1p(e) - e)


# Arguments over 30 decades on both sides of 0, plus the ranges where the series meets the direct form.
ARGS = sorted({float(s * 10.0**k) for k in np.linspace(-15, 2, 60) for s in (1, -1) if s * 10.0**k > -1}
              | {0.5, 0.6, 0.66, 0.67, -0.39, -0.4, -0.41, -0.9999})


@pytest.mark.parametrize("u", ARGS)
def test_phi_and_psi_match_mpmath_to_a_few_ulps(u):
    # 8 ulps: the series is a sum of two same-signed terms, each correct to ~2 ulps.
    assert float(u_minus_log1p(torch.tensor(u, dtype=torch.float64))) == pytest.approx(_phi(u), rel=8 * 2**-52)
    assert float(one_plus_e_log_one_plus_e_minus_e(torch.tensor(u, dtype=torch.float64))) == pytest.approx(
        _psi(u), rel=8 * 2**-52)


@settings(max_examples=200, derandomize=True)
@given(st.floats(min_value=-1 + 1e-12, max_value=1e6, allow_nan=False))
def test_phi_is_nonnegative_and_accurate_everywhere(u):
    got = float(u_minus_log1p(torch.tensor(u, dtype=torch.float64)))
    assert got >= 0.0
    assert got == pytest.approx(_phi(u), rel=8 * 2**-52, abs=1e-300)


def test_endpoints():
    assert float(u_minus_log1p(torch.tensor(-1.0, dtype=torch.float64))) == float("inf")
    assert float(u_minus_log1p(torch.tensor(float("inf"), dtype=torch.float64))) == float("inf")
    assert float(u_minus_log1p(torch.tensor(0.0, dtype=torch.float64))) == 0.0
    assert float(one_plus_e_log_one_plus_e_minus_e(torch.tensor(-1.0, dtype=torch.float64))) == 1.0


def test_logsumexp_last_matches_torch_including_infinities():
    """The unrolled short-axis log-sum-exp against torch.logsumexp, with -inf rows, +inf entries and
    entries 700 apart (where a naive exp overflows)."""
    gen = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 5, 8, 9):
        x = 300 * torch.randn(50, k, dtype=torch.float64, generator=gen)
        x[0] = -math.inf
        x[1, 0] = math.inf
        x[2, 0] = 700.0
        assert torch.allclose(logsumexp_last(x), torch.logsumexp(x, -1), rtol=1e-15, atol=0, equal_nan=False)


@pytest.mark.parametrize("r", [1e-300, 1e-20, 1e-12, 1e-3, 0.3])
def test_phi_near_minus_one_takes_one_plus_u_from_its_caller(r):
    """u = r - 1 rounds to an ulp of 1, so 1 + u formed from u loses r's relative precision (all of
    it below 1e-16): with ``one_plus_u`` phi(r - 1) = r - 1 - log r keeps it."""
    u = torch.tensor([r - 1.0], dtype=torch.float64)
    with mp.workdps(60):
        exact = float(mp.mpf(r) - 1 - mp.log(mp.mpf(r)))
    got = float(u_minus_log1p(u, one_plus_u=lambda: torch.tensor([r], dtype=torch.float64)))
    assert got == pytest.approx(exact, rel=8 * 2**-52)


@settings(max_examples=200, deadline=None)
@given(d=st.integers(1, 3), seed=st.integers(0, 2**31), scale=st.floats(-2.0, 2.0), shift=st.floats(0.0, 3.0),
       log_kappa=st.floats(-12.0, 0.0))
def test_log_det_one_plus_is_accurate_for_tiny_kappa(d, seed, scale, shift, log_kappa):
    """``log det(I + kappa G)`` to 8 ulps of ``kappa max |G_ij|`` (d of them) against mpmath, for
    symmetric G of either sign and kappa down to 1e-12, where the log of the determinant would keep
    only ``1e-16 / kappa`` of it; I + kappa G kept away from singular (eigenvalues >= 0.05)."""
    a = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 10.0**scale
    g = a @ a.T - shift * 10.0 ** (2 * scale) * torch.eye(d, dtype=torch.float64)
    kappa = 10.0**log_kappa
    if float(torch.linalg.eigvalsh(torch.eye(d, dtype=torch.float64) + kappa * g).min()) < 0.05:
        return
    exact = mp.log(mp.det(mp.eye(d) + mp.mpf(kappa) * mp.matrix(g.tolist())))
    value = float(log_det_one_plus(torch.tensor(kappa, dtype=torch.float64), g))
    assert abs(value - float(exact)) <= 8 * d * np.finfo(float).eps * kappa * float(g.abs().max())
