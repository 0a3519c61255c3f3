"""Closed forms of the Gaussian reference against independent routes: autodiff of log_prob, the
conditional-Gaussian formulas of the joint (x_0, x_t), and dense circulant matrices for the FFT basis."""

import math

import pytest
import torch

from pathkl.bases import FourierBasis
from pathkl.errors import InputError
from pathkl.presets import fixed_rotation, power_law_spectrum
from pathkl.references import GaussianReference
from pathkl.schedules import NoiseLevel, VPLinear

LEVELS = [VPLinear().level(tau) for tau in (1e-4, 0.2, 0.7, 1.0)]
GEN = torch.Generator().manual_seed(0)


def _references():
    cov = torch.tensor([[2.0, 0.3, -0.4], [0.3, 0.5, 0.1], [-0.4, 0.1, 1.2]], dtype=torch.float64)
    return [
        GaussianReference.from_covariance(cov, mean=[1.0, -2.0, 0.5]),
        GaussianReference.from_eigenvalues([0.2, 3.0, 1.0, 0.05], basis=fixed_rotation(4, 3)),
        GaussianReference.image(power_law_spectrum((2, 4, 6), exponent=1.5), mean=0.25),
    ]


def _dense_cov(reference):
    return reference.basis.dense(reference.eigenvalues)


@pytest.mark.parametrize("reference", _references())
@pytest.mark.parametrize("lv", LEVELS)
def test_score_and_hessian_are_derivatives_of_log_prob(reference, lv):
    x = torch.randn(3, reference.dim, dtype=torch.float64, generator=GEN)
    x.requires_grad_(True)
    logp = reference.log_prob(x, lv)
    grad = torch.autograd.grad(logp.sum(), x)[0]
    assert torch.allclose(reference.score(x.detach(), lv), grad, rtol=1e-12, atol=1e-12)
    hess = torch.func.vmap(torch.func.hessian(lambda y: reference.log_prob(y[None], lv)[0]))(x.detach())
    assert torch.allclose(reference.hessian(x.detach(), lv), hess, rtol=1e-10, atol=1e-12)
    v = torch.randn_like(x)
    assert torch.allclose(reference.hvp(x.detach(), v, lv), (hess @ v[..., None])[..., 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reference", _references())
@pytest.mark.parametrize("lv", LEVELS[:3])
def test_log_prob_is_the_marginal_density(reference, lv):
    s = _dense_cov(reference)
    cov_t = lv.abar * s + lv.one_minus_abar * torch.eye(reference.dim, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(lv.abar.sqrt() * reference.mean, cov_t)
    x = torch.randn(4, reference.dim, dtype=torch.float64, generator=GEN)
    assert torch.allclose(reference.log_prob(x, lv), dist.log_prob(x), rtol=1e-12)


@pytest.mark.parametrize("reference", _references())
@pytest.mark.parametrize("lv", LEVELS[:3])
def test_posterior_moments_match_conditioning_of_the_joint(reference, lv):
    """E[x0|xt] and Cov[x0|xt] by Gaussian conditioning of the joint (x0, xt), independently of
    Tweedie; then Tweedie's forms (first and second order) from the score and Hessian."""
    d = reference.dim
    s, m, eye = _dense_cov(reference), reference.mean, torch.eye(d, dtype=torch.float64)
    a = lv.abar.sqrt()
    cov_t = lv.abar * s + lv.one_minus_abar * eye
    gain = a * s @ torch.linalg.inv(cov_t)
    x = torch.randn(3, d, dtype=torch.float64, generator=GEN)
    mean = m + (x - a * m) @ gain.T
    cov = s - gain @ (a * s)
    assert torch.allclose(reference.posterior_mean(x, lv), mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(reference.posterior_cov(x, lv)[0], cov, rtol=1e-10, atol=1e-12)
    v = torch.randn_like(x)
    assert torch.allclose(reference.posterior_cov_matvec(x, v, lv), v @ cov, rtol=1e-10, atol=1e-12)
    tweedie_mean = (x + lv.one_minus_abar * reference.score(x, lv)) / a
    tweedie_cov = (lv.one_minus_abar / lv.abar) * (eye + lv.one_minus_abar * reference.hessian(x, lv)[0])
    assert torch.allclose(mean, tweedie_mean, rtol=1e-9, atol=1e-11)
    assert torch.allclose(cov, tweedie_cov, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("reference", _references())
@pytest.mark.parametrize("t", [1, 4, 10])
def test_reverse_kernel_is_the_conditional_of_consecutive_levels(reference, t):
    """q(x_{t-1} | x_t) by conditioning the joint Gaussian of (x_{t-1}, x_t), where
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps: an independent route to the kernel."""
    from pathkl.schedules import Cosine

    grid = Cosine().grid(10)
    d, eye = reference.dim, torch.eye(reference.dim, dtype=torch.float64)
    prev = grid.level(t - 1)
    cov_prev = prev.abar * _dense_cov(reference) + prev.one_minus_abar * eye
    a, b = grid.alpha[t - 1].sqrt(), grid.beta[t - 1]
    cov_t = a**2 * cov_prev + b * eye
    gain = a * cov_prev @ torch.linalg.inv(cov_t)
    x = torch.randn(3, d, dtype=torch.float64, generator=GEN)
    mean = prev.abar.sqrt() * reference.mean + (x - grid.abar[t].sqrt() * reference.mean) @ gain.T
    kernel = reference.reverse_kernel(x, grid, t)
    assert torch.allclose(kernel.mean, mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(kernel.covariance(), cov_prev - gain @ (a * cov_prev), rtol=1e-9, atol=1e-13)


def test_fourier_basis_is_the_circulant_covariance():
    """The FFT basis against an explicit dense circulant: autocovariance = inverse DFT of the spectrum."""
    shape = (2, 4, 6)
    spectrum = power_law_spectrum(shape, exponent=2.5, floor=0.5)
    spectrum[1] *= 3.0
    basis = FourierBasis(shape)
    c, h, w = shape
    autocov = torch.fft.ifft2(spectrum).real
    dense = torch.zeros(c * h * w, c * h * w, dtype=torch.float64)
    for ch in range(c):
        for i in range(h * w):
            for j in range(h * w):
                di, dj = (i // w - j // w) % h, (i % w - j % w) % w
                dense[ch * h * w + i, ch * h * w + j] = autocov[ch, di, dj]
    v = torch.randn(3, c * h * w, dtype=torch.float64, generator=GEN)
    assert torch.allclose(basis.apply(spectrum.flatten(), v), v @ dense, rtol=1e-12, atol=1e-13)
    assert torch.allclose(basis.diagonal(spectrum.flatten()), torch.diagonal(dense), rtol=1e-13)
    assert torch.allclose(torch.linalg.eigvalsh(dense).sort().values, spectrum.flatten().sort().values, rtol=1e-10)


def test_samples_have_the_marginal_moments():
    reference = _references()[0]
    lv = LEVELS[1]
    n = 200_000
    x = reference.sample(n, lv, generator=torch.Generator().manual_seed(1))
    cov_t = lv.abar * _dense_cov(reference) + lv.one_minus_abar * torch.eye(3, dtype=torch.float64)
    # Sample mean and covariance entries have standard errors ~ sqrt(var / n) ~ 3e-3; 5 sigma.
    se = math.sqrt(float(cov_t.diagonal().max()) / n)
    assert torch.allclose(x.mean(0), lv.abar.sqrt() * reference.mean, atol=5 * se)
    assert torch.allclose(torch.cov(x.T), cov_t, atol=5 * math.sqrt(2) * float(cov_t.diagonal().max()) / math.sqrt(n))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: GaussianReference.from_covariance([[1.0, 0.5], [0.4, 1.0]]), "not symmetric"),
        (lambda: GaussianReference.from_covariance([[1.0, 2.0], [2.0, 1.0]]), "not positive definite"),
        (lambda: GaussianReference.from_covariance([[1.0, float("nan")], [float("nan"), 1.0]]), "NaN or inf"),
        (lambda: GaussianReference.from_eigenvalues([1.0, 0.0]), "must be > 0"),
        (lambda: GaussianReference.from_eigenvalues([1.0, -2.0]), "must be > 0"),
        (lambda: GaussianReference.from_eigenvalues([1.0, float("inf")]), "NaN or inf"),
        (lambda: GaussianReference.from_eigenvalues([1.0, 2.0], mean=[0.0]), "one length"),
        (lambda: GaussianReference.from_eigenvalues([1.0, 2.0], basis=[[1.0, 1.0], [0.0, 1.0]]), "orthonormal"),
        (lambda: GaussianReference.image(torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1),
         "symmetric under k -> -k"),
    ],
)
def test_bad_gaussians_are_refused(build, message):
    with pytest.raises(InputError, match=message):
        build()


def test_noise_level_keeps_one_minus_abar_precise():
    lv = NoiseLevel.from_log_abar(-1e-17)
    assert float(lv.one_minus_abar) == pytest.approx(1e-17, rel=1e-15)
