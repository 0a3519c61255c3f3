"""Lanczos process, Krylov matrix functions and the Lanczos Gaussian sampler.

Every reference value comes from an operator with a prescribed spectrum, ``A = Q diag(lam) Q^T``
with a random orthogonal ``Q`` (or ``Q = I``), so ``A^{1/2} z = Q diag(sqrt(lam)) Q^T z`` is known
without any Krylov method.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial import chebyshev

from pathkl.errors import InputError
from pathkl.lanczos import (
    convergence_rate,
    krylov_matfun,
    lanczos,
    lanczos_matfun,
    lanczos_sampler,
    sqrt_error_bound,
)

DT = torch.float64
EPS = torch.finfo(DT).eps


def dense_operator(lam: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, A^{1/2})`` with eigenvalues ``lam`` in a random orthonormal basis."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), dtype=DT, generator=gen))
    return q @ torch.diag(lam) @ q.T, q @ torch.diag(lam.sqrt()) @ q.T


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, dtype=DT, generator=torch.Generator().manual_seed(seed))


def chebyshev_spectrum(d: int, kappa: float) -> torch.Tensor:
    """Eigenvalues at Chebyshev points of [1, kappa]: the arcsine density, the worst case for sqrt."""
    j = torch.arange(d, dtype=DT)
    return 1.0 + (kappa - 1.0) * (1.0 - torch.cos(math.pi * j / (d - 1))) / 2.0


def sqrt_t(theta: torch.Tensor) -> torch.Tensor:
    return theta.clamp_min(0.0).sqrt()


# ---------------------------------------------------------------- input validation


def test_k_above_dimension_is_refused() -> None:
    with pytest.raises(InputError, match="exceed the dimension"):
        lanczos(lambda v: v, gaussian(2, 3, 0), 4)


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_nonpositive_or_fractional_k_is_refused(k) -> None:
    with pytest.raises(InputError):
        lanczos(lambda v: v, gaussian(2, 3, 0), k)
    with pytest.raises(InputError):
        lanczos_sampler(k)


def test_starting_vectors_must_be_a_batch() -> None:
    with pytest.raises(InputError, match=r"shape \(n, d\)"):
        lanczos(lambda v: v, torch.ones(3, dtype=DT), 1)


def test_bad_interval_is_refused() -> None:
    with pytest.raises(InputError):
        sqrt_error_bound(2, 0.0, 1.0)
    with pytest.raises(InputError):
        sqrt_error_bound(2, 2.0, 1.0)


# ---------------------------------------------------------------- algebraic invariants


def test_exact_for_polynomials_of_degree_below_k() -> None:
    """``||z|| V_k p(T_k) e_1 = p(A) z`` for deg p < k; here p(x) = x^2 - 3x + 2 with k = 3."""
    lam = chebyshev_spectrum(40, 50.0)
    a, _ = dense_operator(lam, 1)
    z = gaussian(5, 40, 2)
    got = lanczos_matfun(lambda v: v @ a, z, 3, lambda t: t * t - 3 * t + 2)
    want = z @ (a @ a - 3 * a + 2 * torch.eye(40, dtype=DT))
    # Rounding only: entries are O(||A||^2 ||z||) = O(2500 * 7); 1e-12 relative leaves 100x margin.
    assert torch.allclose(got, want, rtol=0, atol=1e-12 * want.abs().max())


def test_basis_orthonormal_and_tridiagonal_is_projection() -> None:
    lam = torch.logspace(0, 4, 60, dtype=DT)
    a, _ = dense_operator(lam, 3)
    z = gaussian(4, 60, 4)
    dec = lanczos(lambda v: v @ a, z, 25)
    v = dec.basis
    eye = torch.eye(25, dtype=DT)
    # Two Gram-Schmidt passes keep V^T V = I to a small multiple of eps (Giraud et al. 2005).
    assert (v @ v.transpose(1, 2) - eye).abs().max() < 100 * EPS
    projected = v @ a @ v.transpose(1, 2)
    assert (projected - dec.tridiagonal()).abs().max() < 1e-12 * lam.max()


def test_rows_with_different_operators_match_single_runs() -> None:
    """Batching is row-wise: each row may carry its own operator (e.g. Sigma*_t(x_i))."""
    lams = torch.stack([chebyshev_spectrum(30, kappa) for kappa in (2.0, 30.0, 900.0)])
    z = gaussian(3, 30, 5)
    batched = lanczos_sampler(6)(lambda v: v * lams, z).sample
    for i in range(3):
        single = lanczos_sampler(6)(lambda v, row=lams[i]: v * row, z[i : i + 1]).sample
        assert torch.allclose(batched[i], single[0], rtol=0, atol=1e-14 * single.abs().max())


def test_zero_starting_vector_gives_zero() -> None:
    z = gaussian(2, 10, 6)
    z[1] = 0.0
    out = lanczos_sampler(4)(lambda v: 3.0 * v, z)
    assert torch.equal(out.sample[1], torch.zeros(10, dtype=DT))
    assert out.size.tolist() == [1, 0]
    # A = 3 I: one step is exact, y = sqrt(3) z.
    assert torch.allclose(out.sample[0], math.sqrt(3.0) * z[0], rtol=1e-15, atol=0)


# ---------------------------------------------------------------- exactness and breakdown


@given(
    distinct=st.integers(1, 8),
    extra=st.integers(0, 4),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=30, derandomize=True, deadline=None)
def test_exact_once_k_reaches_number_of_distinct_eigenvalues(distinct: int, extra: int, seed: int) -> None:
    d = 30
    gen = torch.Generator().manual_seed(seed)
    values = torch.sort(1.0 + 999.0 * torch.rand(distinct, dtype=DT, generator=gen)).values
    lam = values[torch.arange(d) % distinct]
    a, root = dense_operator(lam, seed)
    z = gaussian(4, d, seed + 1)
    k = min(distinct + extra, d)
    out = lanczos_sampler(k)(lambda v: v @ a, z)
    exact = z @ root
    relative = (out.sample - exact).norm(dim=1) / exact.norm(dim=1)
    # kappa <= 1000: Ritz values carry absolute error ~eps*lam_max, so sqrt errs by at most
    # ~eps*sqrt(kappa)/2 ~ 4e-15 relative, times O(k) accumulation; 1e-12 is a 100x margin.
    assert relative.max() < 1e-12
    # Breakdown is detected exactly at the number of distinct eigenvalues (the Krylov dimension): the
    # dense A holds each eigenvalue only to ~eps*||A||, which leaves beta_m ~1e-12 relative (seen),
    # below the default tolerance 1e-10.
    assert out.size.tolist() == [distinct] * 4
    assert out.error_estimate.max() < 1e-12 or k == distinct


# ---------------------------------------------------------------- a priori bound


@st.composite
def spectra(draw):
    d = draw(st.integers(2, 40))
    lam_min = 10.0 ** draw(st.floats(-3, 3))
    kappa = 10.0 ** draw(st.floats(0, 6))
    lam_max = lam_min * kappa
    fractions = draw(st.lists(st.floats(0, 1), min_size=d - 2, max_size=d - 2))
    log_spaced = draw(st.booleans())
    if log_spaced:
        inner = [lam_min * kappa**f for f in fractions]
    else:
        inner = [lam_min + (lam_max - lam_min) * f for f in fractions]
    return torch.tensor([lam_min, lam_max, *inner], dtype=DT)


@given(lam=spectra(), k_fraction=st.floats(0, 1), seed=st.integers(0, 10_000))
@settings(max_examples=80, derandomize=True, deadline=None)
def test_error_never_exceeds_a_priori_bound(lam: torch.Tensor, k_fraction: float, seed: int) -> None:
    d = len(lam)
    k = 1 + int(k_fraction * (d - 1))
    a, root = dense_operator(lam, seed)
    z = gaussian(3, d, seed + 1)
    out = lanczos_sampler(k)(lambda v: v @ a, z)
    error = (out.sample - z @ root).norm(dim=1)
    lam_min, lam_max = lam.min().item(), lam.max().item()
    bound = sqrt_error_bound(k, lam_min, lam_max) * z.norm(dim=1)
    # Rounding allowance, only visible once the bound falls to rounding level: Ritz values carry
    # absolute error ~eps*lam_max, which moves sqrt by eps*lam_max/(2 sqrt(lam_min))
    # = eps*sqrt(kappa)*sqrt(lam_max)/2; 1000x that covers O(k) accumulation. A breakdown accepted at
    # beta <= tol*lam_max (tol = 1e-10, the default) makes V_k exactly invariant for a perturbation of
    # A of norm beta, which moves A^{1/2} z by at most tol*lam_max/(2 sqrt(lam_min)) ||z||.
    root_kappa = math.sqrt(lam_max / lam_min)
    slack = (1000 * EPS + 0.5e-10) * root_kappa * math.sqrt(lam_max) * z.norm(dim=1)
    assert torch.all(error <= bound + slack)


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1e4])
def test_bound_is_consistent_with_chebyshev_interpolation(kappa: float) -> None:
    """Independent check of the coefficient bound: the degree-n Chebyshev interpolant's uniform error
    is at most ``(1 + Lambda_n) E_n`` with Lebesgue constant ``Lambda_n <= 1 + (2/pi) log(n + 1)``,
    so it must lie below ``(2 + (2/pi) log(n + 1)) B_{n+1} / 2``; and the bound is not vacuous:
    within a factor 4 of that interpolation error (observed ratios 0.9 to 1.4)."""
    f = lambda x: np.sqrt((1 + kappa) / 2 + (kappa - 1) / 2 * x)
    grid = np.cos(np.linspace(0.0, np.pi, 20001))
    for n in range(1, 41):
        interp_error = np.abs(chebyshev.chebval(grid, chebyshev.chebinterpolate(f, n)) - f(grid)).max()
        if interp_error < 1e-11 * math.sqrt(kappa):
            break  # rounding level: nothing left to compare
        half_bound = sqrt_error_bound(n + 1, 1.0, kappa) / 2
        assert interp_error <= (2 + 2 / math.pi * math.log(n + 1)) * half_bound
        assert half_bound <= 4 * interp_error


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1000.0])
def test_error_decays_geometrically_at_the_predicted_rate(kappa: float) -> None:
    """Fit ``log err_k = c + k log q + p log k`` over k = 6..30 on a dense arcsine spectrum (d = 4000,
    where no discrete-spectrum superlinear effect occurs this early): the fitted q must match the
    predicted ``(sqrt(kappa) - 1)/(sqrt(kappa) + 1)``. Observed relative deviations are below 0.2%;
    1% leaves room for the Monte Carlo mean over 32 vectors while still separating e.g. the rate
    kappa-based ``(kappa - 1)/(kappa + 1)`` (off by >4% for every kappa here)."""
    lam = chebyshev_spectrum(4000, kappa)
    z = gaussian(32, 4000, 7)
    exact = z * lam.sqrt()
    ks = np.arange(6, 31)
    dec = lanczos(lambda v: v * lam, z, int(ks[-1]))
    errors = [
        ((krylov_matfun(dec, sqrt_t, k=int(k)) - exact).norm(dim=1) / z.norm(dim=1)).mean().item()
        for k in ks
    ]
    design = np.stack([np.ones(len(ks)), ks, np.log(ks)], axis=1)
    coefficients = np.linalg.lstsq(design, np.log(errors), rcond=None)[0]
    assert math.exp(coefficients[1]) == pytest.approx(convergence_rate(1.0, kappa), rel=0.01)


def test_leading_block_equals_shorter_run() -> None:
    """Using the leading k x k block of a longer run is the same as running k steps."""
    lam = chebyshev_spectrum(50, 100.0)
    z = gaussian(3, 50, 8)
    long = krylov_matfun(lanczos(lambda v: v * lam, z, 12), sqrt_t, k=5)
    short = krylov_matfun(lanczos(lambda v: v * lam, z, 5), sqrt_t)
    assert torch.allclose(long, short, rtol=0, atol=1e-14 * short.abs().max())


# ---------------------------------------------------------------- a posteriori estimate


@pytest.mark.parametrize("kappa", [4.0, 1000.0])
def test_a_posteriori_estimate_brackets_previous_error(kappa: float) -> None:
    """``||y_k - y_{k-1}||`` differs from ``err_{k-1}`` by at most ``err_k`` (triangle inequality),
    so it over-estimates ``err_k`` whenever ``err_k <= err_{k-1} / 2``: checked for kappa = 4
    (predicted rate 1/3) from k = 3 on; for kappa = 1000 (rate 0.94) it need not, and does not."""
    lam = chebyshev_spectrum(500, kappa)
    a, root = dense_operator(lam, 9)
    z = gaussian(6, 500, 10)
    exact = z @ root
    previous_error = None
    for k in range(1, 15):
        out = lanczos_sampler(k)(lambda v: v @ a, z)
        error = (out.sample - exact).norm(dim=1)
        change = out.error_estimate * out.sample.norm(dim=1)
        if previous_error is not None:
            # 1e-12 * ||y||: rounding in forming both differences.
            assert torch.all((change - previous_error).abs() <= error + 1e-12 * exact.norm(dim=1))
            if k >= 3 and convergence_rate(1.0, kappa) < 0.5:
                assert torch.all(change >= error)
        previous_error = error


# ---------------------------------------------------------------- why reorthogonalise


def test_without_reorthogonalisation_orthogonality_is_lost() -> None:
    """Log-spaced spectrum over 6 decades: the top Ritz values converge early, after which the plain
    three-term recurrence loses orthogonality (Paige), the top eigenvalue reappears as spurious
    copies ("ghosts") in T_k, and the LGS sample is several times less accurate. With the default
    (two-pass full reorthogonalisation) none of this happens."""
    lam = torch.logspace(0, 6, 200, dtype=DT)
    z = gaussian(4, 200, 11)
    exact = z * lam.sqrt()
    k = 100
    report = {}
    for reortho in (True, False):
        dec = lanczos(lambda v: v * lam, z, k, reortho=reortho)
        gram = dec.basis @ dec.basis.transpose(1, 2)
        orthogonality = (gram - torch.eye(k, dtype=DT)).abs().max().item()
        ritz = torch.linalg.eigvalsh(dec.tridiagonal())
        copies = ((ritz - lam.max()).abs() < 1e-6 * lam.max()).sum(dim=1).max().item()
        error = ((krylov_matfun(dec, sqrt_t) - exact).norm(dim=1) / exact.norm(dim=1)).max().item()
        report[reortho] = (orthogonality, copies, error)
    assert report[True][0] < 100 * EPS and report[True][1] == 1
    assert report[False][0] > 0.1 and report[False][1] >= 2
    assert report[False][2] > 3 * report[True][2]


# ---------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    lam = chebyshev_spectrum(300, 100.0)
    z = gaussian(8, 300, 12)
    cpu = lanczos_sampler(5)(lambda v: v * lam, z)
    lam_gpu = lam.cuda()
    gpu = lanczos_sampler(5)(lambda v: v * lam_gpu, z.cuda())
    assert gpu.sample.device.type == "cuda"
    assert torch.allclose(gpu.sample.cpu(), cpu.sample, rtol=0, atol=1e-12 * cpu.sample.abs().max())


# ---------------------------------------------------------------- command line


def test_cli_json_keys_are_aligned_and_errors_respect_bound(capsys) -> None:
    import json

    from pathkl.cli import main

    assert main(["lanczos", "--ref", "gaussian-5d", "--t", "0.5", "--k", "1,2,3,5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == [1, 2, 3, 5]
    assert len(out["error_mean"]) == len(out["error_max"]) == len(out["bound"]) == 4
    assert all(e <= b for e, b in zip(out["error_max"], out["bound"]))
    assert out["error_max"][-1] < 1e-12  # k = d: exact to rounding


@pytest.mark.parametrize("argv", [["--t", "0.5", "--k", "6"], ["--t", "0", "--k", "1"], ["--t", "0.5", "--k", "a"]])
def test_cli_bad_input_exits_2(argv, capsys) -> None:
    from pathkl.cli import main

    assert main(["lanczos", "--ref", "gaussian-5d", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
