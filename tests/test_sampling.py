"""Ancestral DDPM/DDIM sampling with every covariance family, and the sample-quality metrics.

For a Gaussian reference every linear family makes the chain linear-Gaussian, so the law of the
samples is known exactly by propagating mean and covariance with dense matrices: the Monte Carlo
samples are checked against that propagation, which shares no code with the sampler's noise paths.
"""

from __future__ import annotations

import math

import pytest
import torch

from pathkl.covariances import ReverseStep
from pathkl.errors import InputError
from pathkl.families import parse_family
from pathkl.matvecs import closed_form_cov_matvec
from pathkl.metrics import MMD_MAX_DIM, OCM_BANDWIDTHS, mmd, sample_quality, sliced_wasserstein
from pathkl.model_kl import DiagonalGaussianModel, FullGaussianModel
from pathkl.presets import PRESETS
from pathkl.references import GaussianReference
from pathkl.refspec import load_reference
from pathkl.sampling import sample, sample_model
from pathkl.schedules import get_schedule

DT = torch.float64


@pytest.fixture(scope="module")
def ref():
    return PRESETS["gaussian-2d"][1]()  # correlated, non-zero mean


@pytest.fixture(scope="module")
def grid():
    return get_schedule("vp-linear").grid(8)


def exact_reverse_sigma(ref, step, x):
    """``s^2 I + lam^2 Cov[x_0|x_t]`` via the Hessian: Tweedie ``C = ((1-abar)/abar)(I + (1-abar) H)``."""
    abar, one_minus = step.level.abar, step.level.one_minus_abar
    c = (one_minus / abar) * (torch.eye(x.shape[1], dtype=DT) + one_minus * ref.hessian(x, step.level))
    return step.s2 * torch.eye(x.shape[1], dtype=DT) + step.lam**2 * c


# ---------------------------------------------------------------- family names


@pytest.mark.parametrize("name", ["beta", "diag", "full", "rademacher:2", "lanczos:3"])
def test_family_names_parse(name) -> None:
    parse_family(name)


@pytest.mark.parametrize("name", ["nope", "lanczos", "lanczos:0", "rademacher:1", "diag:3", "lanczos:x"])
def test_bad_family_names_are_refused(name) -> None:
    with pytest.raises(InputError):
        parse_family(name)


def test_bad_sampler_options_are_refused(ref, grid) -> None:
    with pytest.raises(InputError):
        sample(ref, grid, "beta", n=4, eta=0.5)
    with pytest.raises(InputError):
        sample(ref, grid, "diag", n=4, route="finite-differences")
    with pytest.raises(InputError, match="exceed the dimension"):
        sample(ref, grid, "lanczos:3", n=4)


# ---------------------------------------------------------------- one step's noise


@pytest.mark.parametrize("eta", [1.0, 0.4])
def test_linear_families_have_the_declared_covariance(eta) -> None:
    """Noise is ``L z`` for the deterministic families; ``L L^T`` is read off with z = columns of I."""
    ref = PRESETS["gaussian-5d"][1]()
    grid = get_schedule("vp-linear").grid(10)
    step = ReverseStep.ddim(grid, 4, eta=eta)
    x0 = ref.sample(1, step.level, generator=torch.Generator().manual_seed(0))
    x = x0.expand(5, 5)
    sigma = exact_reverse_sigma(ref, step, x0)[0]
    expected = {
        "beta_tilde": step.s2 * torch.eye(5, dtype=DT),
        "analytic": sigma.trace() / 5 * torch.eye(5, dtype=DT),  # tr Sigma does not depend on x here
        "diag": torch.diag(sigma.diagonal()),
        "full": sigma,
    }
    if eta == 1.0:
        expected["beta"] = step.beta * torch.eye(5, dtype=DT)
    matvec = closed_form_cov_matvec(ref, x, step)
    for name, want in expected.items():
        l = parse_family(name).noise(ref, x, step, matvec, torch.eye(5, dtype=DT)).T
        assert torch.allclose(l @ l.T, want, rtol=0, atol=1e-13 * want.abs().max()), name


def test_lanczos_at_full_dimension_is_the_symmetric_root() -> None:
    ref = PRESETS["gaussian-5d"][1]()
    step = ReverseStep.ddim(get_schedule("vp-linear").grid(10), 6)
    x = ref.sample(3, step.level, generator=torch.Generator().manual_seed(1))
    z = torch.randn(3, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    vals, vecs = torch.linalg.eigh(exact_reverse_sigma(ref, step, x))
    root = vecs @ torch.diag_embed(vals.sqrt()) @ vecs.transpose(1, 2)
    got = parse_family("lanczos:5").noise(ref, x, step, closed_form_cov_matvec(ref, x, step), z)
    assert torch.allclose(got, torch.einsum("nij,nj->ni", root, z), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- whole runs


def propagate(ref, grid, family: str, eta: float):
    """Exact mean and covariance of x_0 for a linear family on a Gaussian reference (dense, small d)."""
    d = ref.dim
    mean, cov = torch.zeros(d, dtype=DT), torch.eye(d, dtype=DT)
    for t in range(grid.T, 0, -1):
        step = ReverseStep.ddim(grid, t, eta=eta)
        offset = ref.posterior_mean(torch.zeros(1, d, dtype=DT), step.level)[0]
        gain = ref.posterior_mean(torch.eye(d, dtype=DT), step.level) - offset  # rows: P e_i
        a = step.lam * gain.T + step.kappa * torch.eye(d, dtype=DT)
        sigma = exact_reverse_sigma(ref, step, torch.zeros(1, d, dtype=DT))[0]
        noise = {"full": sigma, "diag": torch.diag(sigma.diagonal()),
                 "analytic": sigma.trace() / d * torch.eye(d, dtype=DT)}[family]
        mean, cov = a @ mean + step.lam * offset, a @ cov @ a.T + noise
    return mean, cov


@pytest.mark.parametrize("family,eta", [("full", 1.0), ("diag", 1.0), ("analytic", 0.5), ("lanczos:2", 1.0)])
def test_samples_follow_the_exactly_propagated_law(ref, grid, family, eta) -> None:
    """Sample mean and covariance of n = 20000 draws within 5 standard errors of the propagated ones
    (Gaussian SEs: ``sqrt(S_ii/n)`` for means, ``sqrt((S_ii S_jj + S_ij^2)/n)`` for covariances;
    5 SE over 5 statistics x 4 cases keeps the false-alarm rate below 1e-4).
    ``lanczos:2`` at d = 2 is ``full``."""
    mean, cov = propagate(ref, grid, "full" if family.startswith("lanczos") else family, eta)
    n = 20000
    x = sample(ref, grid, family, n=n, eta=eta, seed=5).samples
    se_mean = (cov.diagonal() / n).sqrt()
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert torch.all((x.mean(0) - mean).abs() <= 5 * se_mean)
    assert torch.all((torch.cov(x.T) - cov).abs() <= 5 * se_cov)


def test_full_covariance_recovers_the_reference(ref, grid) -> None:
    """With exact kernels only the terminal mismatch q_T vs N(0, I) remains (abar_T ~ 4e-5)."""
    mean, cov = propagate(ref, grid, "full", 1.0)
    assert torch.allclose(mean, ref.mean, atol=1e-3)
    assert torch.allclose(cov, ref.basis.dense(ref.eigenvalues), atol=1e-3)


def test_seeded_runs_are_reproducible_and_routes_agree(ref, grid) -> None:
    first = sample(ref, grid, "lanczos:2", n=50, seed=7).samples
    assert torch.equal(first, sample(ref, grid, "lanczos:2", n=50, seed=7).samples)
    assert not torch.equal(first, sample(ref, grid, "lanczos:2", n=50, seed=8).samples)
    jvp = sample(ref, grid, "lanczos:2", n=50, seed=7, route="jvp").samples
    assert torch.allclose(jvp, first, rtol=0, atol=1e-12)
    # Forward differences of an affine denoiser err only by rounding, ~eps/h ~ sqrt(eps) relative.
    difference = sample(ref, grid, "lanczos:2", n=50, seed=7, route="difference").samples
    assert torch.allclose(difference, first, rtol=0, atol=1e-6)


def test_cost_accounting(ref, grid) -> None:
    run = sample(ref, grid, "rademacher:3", n=4)
    assert (run.mean_evals, run.cov_products) == (grid.T, 3 * grid.T)


def _exact_mean_model(reference, eta, variance):
    """A reverse model with the exact DDIM(eta) mean ``lam xhat_0 + kappa x`` and ``variance(step, x)``,
    written from the step's coefficients and the reference's closed forms."""
    def mean(x, t, g):
        step = ReverseStep.ddim(g, t, eta=eta)
        return step.lam * reference.posterior_mean(x, step.level) + step.kappa * x

    return DiagonalGaussianModel(mean, lambda x, t, g: variance(ReverseStep.ddim(g, t, eta=eta), x))


MODEL_VARIANCES = {
    "diag": lambda reference: lambda step, x: step.s2 + step.lam**2 * reference.posterior_cov_diagonal(x, step.level),
    "beta_tilde": lambda reference: lambda step, x: step.s2,
}


@pytest.mark.parametrize("family", sorted(MODEL_VARIANCES))
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_model_sampler_draws_the_family_from_the_same_seed(family, eta) -> None:
    """A Gaussian reverse model with the exact mean and a family's variance draws, through
    ``sample_model``, the family's samples of ``sample`` from the same seed bit for bit: the same noise
    in the same order (x_T, one z per step) and the same arithmetic (mog-rotated, 6 steps, DDPM and
    DDIM; at eta = 0 ``beta_tilde``'s variance is 0, a deterministic step)."""
    reference, grid = load_reference("mog-rotated"), get_schedule("vp-linear").grid(6)
    model = _exact_mean_model(reference, eta, MODEL_VARIANCES[family](reference))
    ours = sample_model(model, grid, n=64, dim=2, seed=3)
    assert torch.equal(ours.samples, sample(reference, grid, family, n=64, eta=eta, seed=3).samples)
    assert (ours.mean_evals, ours.cov_products) == (grid.T, 0)


def test_model_sampler_refuses_negative_variances_and_dense_models(ref, grid) -> None:
    negative = _exact_mean_model(ref, 1.0, lambda step, x: step.s2 - 1.0)
    with pytest.raises(InputError, match="t = 8 is negative"):
        sample_model(negative, grid, n=4, dim=2)
    dense = FullGaussianModel(negative.mean, lambda x, t, g: torch.eye(2, dtype=DT))
    with pytest.raises(InputError, match="diagonal variance"):
        sample_model(dense, grid, n=4, dim=2)
    with pytest.raises(InputError, match=">= 1"):
        sample_model(negative, grid, n=0, dim=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_run_matches_its_law(ref, grid) -> None:
    x = sample(ref, grid, "lanczos:2", n=20000, seed=5, device="cuda").samples
    assert x.device.type == "cuda"
    mean, cov = propagate(ref, grid, "full", 1.0)
    assert torch.all((x.mean(0).cpu() - mean).abs() <= 5 * (cov.diagonal() / 20000).sqrt())


# ---------------------------------------------------------------- metrics


def exact_mmd2(m1, s1, m2, s2) -> float:
    """Closed-form MMD^2 between Gaussians for the kernel sum_b exp(-|x-y|^2 / (2 b^2)):
    ``E k = det(I + (S + S')/b^2)^(-1/2) exp(-delta^T (b^2 I + S + S')^-1 delta / 2)``."""
    d = len(m1)
    eye = torch.eye(d, dtype=DT)

    def expected_kernel(sa, sb, delta):
        total = 0.0
        for b in OCM_BANDWIDTHS:
            m = b * b * eye + sa + sb
            total += (torch.det(eye + (sa + sb) / b**2) ** -0.5 * torch.exp(-0.5 * delta @ torch.linalg.solve(m, delta))).item()
        return total

    zero = torch.zeros(d, dtype=DT)
    return expected_kernel(s1, s1, zero) + expected_kernel(s2, s2, zero) - 2 * expected_kernel(s1, s2, m1 - m2)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_mmd_matches_closed_form(shift) -> None:
    """Estimate within 4 of its standard errors of the exact MMD^2 (0 when the laws coincide)."""
    gen = torch.Generator().manual_seed(11)
    s = torch.tensor([[1.0, 0.5], [0.5, 0.8]], dtype=DT)
    chol = torch.linalg.cholesky(s)
    x = torch.randn(4000, 2, dtype=DT, generator=gen) @ chol.T
    y = torch.randn(4000, 2, dtype=DT, generator=gen) @ chol.T + torch.tensor([shift, 0.0], dtype=DT)
    est = mmd(x, y)
    exact = exact_mmd2(torch.zeros(2, dtype=DT), s, torch.tensor([shift, 0.0], dtype=DT), s)
    assert abs(est.value - exact) <= 4 * est.stderr
    if shift:
        assert est.value > 4 * est.stderr  # the shift is detected


def test_sliced_wasserstein_matches_projected_gaussians() -> None:
    """For N(0, I) vs N(mu, I) in d = 50: each projection is N(theta.mu, 1) vs N(0, 1), so
    ``SW_2^2 = |mu|^2 / d`` exactly. The finite-sample upward bias is the value for two samples of
    one law (the floor); the estimate must lie within 4 SE + floor of the exact value."""
    d, n = 50, 5000
    gen = torch.Generator().manual_seed(12)
    mu = torch.full((d,), 0.3, dtype=DT)
    x = torch.randn(n, d, dtype=DT, generator=gen)
    y = torch.randn(n, d, dtype=DT, generator=gen) + mu
    y_same = torch.randn(n, d, dtype=DT, generator=gen)
    est, floor = sliced_wasserstein(x, y), sliced_wasserstein(x, y_same)
    exact = float(mu @ mu) / d
    assert abs(est.value - exact) <= 4 * est.stderr + floor.value
    assert est.value > exact / 2 > floor.value + 4 * floor.stderr


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(InputError):
        mmd(torch.zeros(10, 2, dtype=DT), torch.zeros(10, 3, dtype=DT))
    with pytest.raises(InputError):
        sliced_wasserstein(torch.zeros(5, 2, dtype=DT), torch.zeros(5, 2, dtype=DT), blocks=10)


# ---------------------------------------------------------------- command line


def test_cli_sample_json(capsys) -> None:
    import json

    from pathkl.cli import main

    argv = ["sample", "--ref", "gaussian-2d", "--cov", "lanczos:2", "--steps", "5", "--n", "200", "--device", "cpu", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["mean_evals"], out["cov_products"], out["device"]) == (5, 10, "cpu")
    assert {"sw", "sw_floor", "mmd"} <= set(out) and out["mmd"]["stderr"] > 0


def test_cli_sample_bad_family_exits_2(capsys) -> None:
    from pathkl.cli import main

    assert main(["sample", "--ref", "gaussian-2d", "--cov", "lanczos:0"]) == 2
    assert "lanczos:k needs k" in capsys.readouterr().err  # named, not "unknown family" (issue 12)
    assert main(["sample", "--ref", "gaussian-2d", "--cov", "gamma"]) == 2
    assert "unknown covariance family" in capsys.readouterr().err


def test_posterior_cov_diagonal_matches_dense() -> None:
    """The Gaussian reference's matrix-free diagonal (used by ``diag`` at image size) equals the
    diagonal of its dense posterior covariance, for the dense and the Fourier basis."""
    for name in ("gaussian-5d", "image-3x32x32"):
        ref = PRESETS[name][1]()
        lv = get_schedule("vp-linear").level(torch.tensor(0.4, dtype=DT))
        x = torch.zeros(2, ref.dim, dtype=DT)
        dense = torch.diagonal(ref.posterior_cov(x, lv), dim1=-2, dim2=-1)
        assert torch.allclose(ref.posterior_cov_diagonal(x, lv), dense, rtol=1e-12, atol=0)


def test_image_study_runs_on_cpu() -> None:
    """The study module runs end to end on CPU with a tiny configuration (CI-free form)."""
    from studies.image_sampling import ImageSamplingConfig, run

    rows = run(ImageSamplingConfig(ref="gaussian-5d", families=("analytic", "lanczos:5"), steps=(5,), n=60,
                                   device="cpu"))
    assert [(r.family, r.T) for r in rows] == [("analytic", 5), ("lanczos:5", 5)]
    assert rows[0].path_kl_steps > 0 and rows[1].path_kl_steps is None
    assert rows[1].cov_products == 25 and rows[0].sw_stderr > 0


def test_sliced_wasserstein_is_the_full_sample_value_in_one_dimension() -> None:
    """In d = 1 every direction is +-1, so SW_2^2 of the full samples is W_2^2 between the two
    empirical laws: the optimal assignment (linear programming, not sorting) gives it exactly."""
    from scipy.optimize import linear_sum_assignment

    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 1, dtype=DT, generator=gen), 0.5 + torch.rand(300, 1, dtype=DT, generator=gen)
    cost = (x - y.T).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    assert sliced_wasserstein(x, y, projections=8).value == pytest.approx(cost[rows, cols].mean(), rel=1e-12)


def test_sliced_wasserstein_standard_error_is_calibrated() -> None:
    """Over 40 independent sample pairs (N(0, I) vs N(mu, I), d = 5, n = 400) the reported standard
    error matches the observed spread of the full-sample estimates within sampling noise."""
    d, n, mu = 5, 400, torch.full((5,), 0.4, dtype=DT)
    values, errors = [], []
    for seed in range(40):
        gen = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(n, d, dtype=DT, generator=gen)
        y = torch.randn(n, d, dtype=DT, generator=gen) + mu
        est = sliced_wasserstein(x, y, seed=seed)
        values.append(est.value)
        errors.append(est.stderr)
    spread = float(torch.tensor(values).std())
    mean_se = sum(errors) / len(errors)
    # 40 replicates: the sample std is within ~ +-25 % (2 SE) of the truth; block SEs are noisier
    assert 0.6 < mean_se / spread < 1.6


def test_sample_quality_of_exact_draws_sits_at_its_floor():
    """Exact samples are as far from fresh exact samples as two exact samples are from each other:
    ``sw`` and ``sw_floor`` agree within their standard errors; MMD^2 is unbiased, so it is 0 within
    its error; beyond MMD_MAX_DIM only the SW pair is reported."""
    reference = PRESETS["gaussian-5d"][1]()
    exact = reference.sample(2000, generator=torch.Generator().manual_seed(7))
    got = sample_quality(exact, reference, seed=3)
    assert set(got) == {"sw", "sw_floor", "mmd"}
    assert abs(got["sw"].value - got["sw_floor"].value) < 4 * math.hypot(got["sw"].stderr, got["sw_floor"].stderr)
    assert abs(got["mmd"].value) < 4 * got["mmd"].stderr
    wide = GaussianReference.from_eigenvalues(torch.linspace(0.5, 2.0, MMD_MAX_DIM + 1, dtype=torch.float64))
    assert set(sample_quality(wide.sample(200), wide)) == {"sw", "sw_floor"}
