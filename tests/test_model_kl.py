"""pathkl.model_kl: the exact path KL of a Gaussian reverse model, against independent routes.

(a) oracle models (exact mean, a built-in family's covariance, built here from the exact reverse
    kernel's own moments) must give pathkl.path_kl of that family; (b) a mean error linear in x has a
    closed-form mean part on Gaussian data, and constant variances a closed-form covariance part;
    (c) the decomposition KL(q(.|x)||p) = J + KL(N*||p) against direct 2-D quadrature of the step KL
    on a 1-D mixture; (d) the claimed errors cover the true ones on random Gaussian instances
    (quadrature) and at the stated rate for Monte Carlo (many seeds); (e) dense and low-rank-plus-
    diagonal model covariances: the integrands against torch's dense Gaussian KL at the rule's own
    points, a model with the exact dense Sigma*(x) against pathkl.path_kl of ``full``, the low-rank form
    against the same covariance given densely and (zero factor) against the diagonal route, and the
    claimed errors against the dense closed form on Gaussian data.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pathkl
from pathkl.errors import InputError
from pathkl.model_kl import (
    DiagonalGaussianModel,
    FullGaussianModel,
    GaussianReverseModel,
    LowRankPlusDiagonal,
    ModelPathKL,
    model_path_kl,
    step_integrands,
)
from pathkl.pathspace import expected_trace_excess
from pathkl.references import GaussianReference, MixtureReference
from pathkl.rules import MonteCarlo
from pathkl.schedules import DTYPE, get_schedule

CI = settings.get_profile("ci")
SCHEDULE = get_schedule("vp-linear")


def mixture_1d():
    return MixtureReference.from_components([0.3, 0.7], [[-1.0], [1.5]], stds=[0.4, 0.6])


def mixture_2d():
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.6]]], dtype=DTYPE)
    return MixtureReference.from_components([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], covs=covs)


def mixture_4d():
    gen = torch.Generator().manual_seed(4)
    means = torch.randn(2, 4, generator=gen, dtype=DTYPE)
    return MixtureReference.from_components([0.5, 0.5], means, variances=torch.full((2, 4), 0.5, dtype=DTYPE))


def gaussian_3d():
    a = torch.tensor([[1.0, 0.3, 0.0], [0.2, 0.8, 0.1], [0.0, -0.4, 0.6]], dtype=DTYPE)
    return GaussianReference.from_covariance(a @ a.T + 0.1 * torch.eye(3, dtype=DTYPE), mean=[0.5, -0.2, 0.1])


def kernel_moments(reference, x, grid, t):
    """Mean and covariance diagonal of the exact kernel q(x_{t-1} | x_t = x) from the kernel object
    (its components, not the score formula pathkl.model_kl uses)."""
    kernel = reference.reverse_kernel(x, grid, t)
    if isinstance(kernel, pathkl.references.gaussian.GaussianKernel):
        return kernel.mean, torch.diagonal(kernel.covariance()).expand_as(x)
    return kernel.mean(), torch.diagonal(kernel.cov(), dim1=-2, dim2=-1)


def oracle_model(reference, family: str) -> DiagonalGaussianModel:
    """Exact mean and the covariance of ``family``: beta_t I, (E tr Sigma* / d) I or diag Sigma*(x)."""
    def mean(x, t, grid):
        return kernel_moments(reference, x, grid, t)[0]

    def variance(x, t, grid):
        beta, alpha = grid.beta[t - 1], grid.alpha[t - 1]
        if family == "beta":
            return beta
        if family == "beta_tilde":
            return grid.beta_tilde[t - 1]
        if family == "analytic":
            mean_g = expected_trace_excess(reference, grid.level(t)) / reference.dim
            return beta + beta**2 / alpha * mean_g
        return kernel_moments(reference, x, grid, t)[1]

    return DiagonalGaussianModel(mean, variance)


def agree(model: ModelPathKL, family: pathkl.PathKL) -> None:
    gap = abs(model.total.value - family.total)
    assert gap <= model.total.error + family.total_error, (gap, model.total, family.total_error)
    finite = torch.isfinite(model.per_step)
    gaps = (model.per_step - family.per_step)[finite].abs()
    assert (gaps <= (model.per_step_error + family.per_step_error)[finite]).all()


@pytest.mark.parametrize("family", ["beta", "analytic", "diag"])
@pytest.mark.parametrize("make,steps", [(mixture_1d, 6), (gaussian_3d, 8)])
def test_oracle_models_reproduce_their_family(make, steps, family):
    reference, grid = make(), SCHEDULE.grid(steps)
    result = model_path_kl(reference, grid, oracle_model(reference, family), rtol=1e-7)
    engine = pathkl.path_kl(reference, grid, pathkl.get_family(family), rtol=1e-7)
    agree(result, engine)
    assert result.met_rtol and result.total.error <= 1e-6 * result.total.value
    assert result.mean.value == pytest.approx(0.0, abs=1e-20)


def test_first_step_leaves_out_the_singular_step():
    """beta_tilde's variance is 0 at t = 1 (refused there); from t = 2 it is the family's."""
    reference, grid = mixture_1d(), SCHEDULE.grid(6)
    model = oracle_model(reference, "beta_tilde")
    with pytest.raises(InputError, match="step 1: the model's variances must be finite and > 0"):
        model_path_kl(reference, grid, model)
    result = model_path_kl(reference, grid, model, first_step=2)
    engine = pathkl.path_kl(reference, grid, pathkl.get_family("beta_tilde"), first_step=2)
    agree(result, engine)
    assert math.isnan(result.per_step[0]) and result.first_step == 2


def test_oracle_model_on_a_rotated_2d_mixture():
    reference, grid = mixture_2d(), SCHEDULE.grid(4)
    result = model_path_kl(reference, grid, oracle_model(reference, "beta"), rtol=1e-5)
    agree(result, pathkl.path_kl(reference, grid, pathkl.get_family("beta"), rtol=1e-5))
    assert result.offdiagonal.value > 0 and result.covariance.value > result.offdiagonal.value


def test_oracle_model_by_monte_carlo_in_4d():
    reference, grid = mixture_4d(), SCHEDULE.grid(3)
    rule = MonteCarlo(outer=128, inner=16, terminal=1 << 12, seed=2)
    result = model_path_kl(reference, grid, oracle_model(reference, "beta"), rule=rule)
    engine = pathkl.path_kl(reference, grid, pathkl.get_family("beta"), rule=rule)
    assert "monte carlo" in result.method and result.total.stderr > 0
    # Two 95% half-widths: the check is at about 2.8 combined standard errors (false alarm ~0.5%).
    assert abs(result.total.value - engine.total) <= result.total.error + engine.total_error


def linear_error_model(reference, a, b, variances):
    """Exact mean plus ``A x + b``; constant diagonal variances ``variances[t - 1]`` (d,)."""
    def mean(x, t, grid):
        return kernel_moments(reference, x, grid, t)[0] + x @ a.T + b

    return DiagonalGaussianModel(mean, lambda x, t, grid: variances[t - 1].expand_as(x))


def closed_form(reference: GaussianReference, grid, a, b, variances):
    """By hand, on Gaussian data ``x_t ~ N(mu, V)``, ``mu = sqrt(abar) m``, ``V = abar S + (1 - abar) I``:
    ``E (1/2)(A x + b)^T D^-1 (A x + b) = (1/2)[tr(A^T D^-1 A V) + (A mu + b)^T D^-1 (A mu + b)]``, and the
    covariance part ``(1/2)(tr(D^-1 S*) - d - log det(D^-1 S*))`` with ``S*`` the kernel's dense covariance
    (x-independent). ``variances[t - 1]``: the diagonal (d,) of D, or D itself (d, d). Returns per-step
    (mean part, covariance part) and the terminal KL, all dense."""
    d = reference.dim
    s = reference.basis.dense(reference.eigenvalues)
    eye = torch.eye(d, dtype=DTYPE)
    means, covs = [], []
    for t in range(1, grid.T + 1):
        lv = grid.level(t)
        mu = lv.abar.sqrt() * reference.mean
        v = lv.abar * s + lv.one_minus_abar * eye
        model_cov = variances[t - 1] if variances[t - 1].ndim == 2 else torch.diag(variances[t - 1])
        d_inv = torch.linalg.inv(model_cov)
        shift = a @ mu + b
        means.append(0.5 * (torch.trace(a.T @ d_inv @ a @ v) + shift @ d_inv @ shift))
        star = reference.reverse_kernel(mu[None], grid, t).covariance()
        ratio = d_inv @ star
        covs.append(0.5 * (torch.trace(ratio) - d - torch.logdet(ratio)))
    lv = grid.level(grid.T)
    v = lv.abar * s + lv.one_minus_abar * eye
    mu = lv.abar.sqrt() * reference.mean
    terminal = 0.5 * (torch.trace(v) - d - torch.logdet(v) + mu @ mu)
    return torch.stack(means), torch.stack(covs), float(terminal)


def instance(d: int, seed: int, scale: float = 0.2):
    gen = torch.Generator().manual_seed(seed)
    a = scale * torch.randn(d, d, generator=gen, dtype=DTYPE)
    b = scale * torch.randn(d, generator=gen, dtype=DTYPE)
    factors = 1.0 + 0.3 * torch.rand(d, generator=gen, dtype=DTYPE)
    return a, b, factors


def star_diagonals(reference, grid):
    x = reference.mean[None]
    return torch.stack([kernel_moments(reference, x, grid, t)[1][0] for t in range(1, grid.T + 1)])


def test_linear_mean_error_closed_form_by_quadrature():
    reference, grid = gaussian_3d(), SCHEDULE.grid(6)
    a, b, factors = instance(3, 0)
    variances = star_diagonals(reference, grid) * factors
    result = model_path_kl(reference, grid, linear_error_model(reference, a, b, variances), rtol=1e-9)
    means, covs, terminal = closed_form(reference, grid, a, b, variances)
    want_mean, want_cov = float(means.sum()), float(covs.sum())
    assert abs(result.mean.value - want_mean) <= result.mean.error + 1e-13 * want_mean
    assert result.mean.error <= 1e-8 * want_mean
    assert abs(result.covariance.value - want_cov) <= result.covariance.error + 1e-12 * want_cov
    assert abs(result.terminal.value - terminal) <= result.terminal.error + 1e-13
    assert result.full.value == 0.0  # Gaussian data: every kernel is Gaussian


def test_linear_mean_error_closed_form_by_monte_carlo_in_6d():
    eigenvalues = torch.linspace(0.2, 2.0, 6, dtype=DTYPE)
    reference = GaussianReference.from_eigenvalues(eigenvalues, mean=torch.linspace(-1, 1, 6, dtype=DTYPE))
    grid = SCHEDULE.grid(5)
    a, b, factors = instance(6, 1)
    variances = star_diagonals(reference, grid) * factors
    result = model_path_kl(reference, grid, linear_error_model(reference, a, b, variances),
                           rule=MonteCarlo(outer=2048, seed=5))
    means, covs, _ = closed_form(reference, grid, a, b, variances)
    assert result.mean.stderr > 0 and result.mean.error < 0.05 * float(means.sum())
    # Two 95% half-widths (3.9 standard errors, false alarm 1e-4); the interval's own coverage is
    # test_monte_carlo_interval_has_its_coverage.
    assert abs(result.mean.value - float(means.sum())) <= 2 * result.mean.error
    # Constant variances: the mismatch is the same at every draw, so exact up to rounding.
    assert result.covariance.value == pytest.approx(float(covs.sum()), rel=1e-12)


def test_decomposition_against_direct_quadrature_of_the_step_kl():
    """``E_x KL(q(.|x) || p(.|x))`` at one step of a 1-D mixture by a 2-D trapezoid rule on
    ``q_t(x) q(y|x) log(q(y|x) / p(y|x))``: no J, no moments, no Gaussian KL formula."""
    reference, grid, t = mixture_1d(), SCHEDULE.grid(4), 2
    a, b = torch.tensor([[0.1]], dtype=DTYPE), torch.tensor([0.05], dtype=DTYPE)

    def variance(x, t, grid):
        return 1.3 * grid.beta[t - 1] + 0.05 * torch.tanh(x)  # x-dependent, positive

    def mean(x, t, grid):
        return kernel_moments(reference, x, grid, t)[0] + x @ a.T + b

    result = model_path_kl(reference, grid, DiagonalGaussianModel(mean, variance), rtol=1e-9)
    xs = torch.linspace(-9.0, 9.0, 1601, dtype=DTYPE)
    ys = torch.linspace(-9.0, 9.0, 1601, dtype=DTYPE)
    h = float(xs[1] - xs[0])
    x = xs[:, None]
    q_x = torch.exp(reference.log_prob(x, grid.level(t)))
    log_q = reference.reverse_kernel(x, grid, t).log_prob(ys[None, :, None].expand(len(xs), -1, 1))
    m, s = mean(x, t, grid), variance(x, t, grid)
    log_p = -0.5 * ((ys[None, :] - m) ** 2 / s + torch.log(2 * math.pi * s))
    inner = (torch.exp(log_q) * (log_q - log_p)).sum(1) * h
    truth = float((q_x * inner).sum() * h)
    assert abs(float(result.per_step[t - 1]) - truth) <= float(result.per_step_error[t - 1]) + 1e-10 * truth


@given(d=st.integers(1, 2), seed=st.integers(0, 10**6), steps=st.integers(2, 6),
       scale=st.floats(0.01, 0.5))
@CI
def test_claimed_error_covers_the_true_error(d, seed, steps, scale):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    eigenvalues = 0.1 + 2.0 * torch.rand(d, generator=gen, dtype=DTYPE)
    reference = GaussianReference.from_eigenvalues(eigenvalues, mean=torch.randn(d, generator=gen, dtype=DTYPE),
                                                   basis=q)
    grid = SCHEDULE.grid(steps)
    a, b, factors = instance(d, seed + 1, scale)
    variances = star_diagonals(reference, grid) * factors
    result = model_path_kl(reference, grid, linear_error_model(reference, a, b, variances), rtol=1e-8)
    means, covs, terminal = closed_form(reference, grid, a, b, variances)
    truth = terminal + float(means.sum() + covs.sum())
    # The dense truth carries rounding of ~1e-14 relative (logdet and traces of d <= 2 matrices).
    assert abs(result.total.value - truth) <= result.total.error + 1e-13 * truth


def test_monte_carlo_interval_has_its_coverage():
    """Over 100 seeds at the default 256 draws the 95% interval of the mean part covers the closed form
    at least 89 times (binomial(100, 0.95): P(< 89) ~ 1%), and the claimed standard error matches the
    seeds' spread (its sampling error at 100 seeds is ~7%). At 64 draws the quadratic control variates
    (7 regressors) make the standard error ~13% low (docs/learned.md section 2)."""
    reference = GaussianReference.from_eigenvalues(torch.tensor([0.3, 1.0, 2.0], dtype=DTYPE))
    grid = SCHEDULE.grid(3)
    a, b, factors = instance(3, 7, 0.5)
    variances = star_diagonals(reference, grid) * factors
    model = linear_error_model(reference, a, b, variances)
    want = float(closed_form(reference, grid, a, b, variances)[0].sum())
    results = [model_path_kl(reference, grid, model, rule=MonteCarlo(seed=s)).mean for s in range(100)]
    covered = sum(abs(r.value - want) <= r.error for r in results)
    spread = torch.tensor([r.value for r in results], dtype=DTYPE).std()
    claimed = sum(r.stderr for r in results) / len(results)
    assert covered >= 89 and 0.8 <= claimed / float(spread) <= 1.25, (covered, claimed, spread)


def test_protocol_and_bad_input():
    reference, grid = gaussian_3d(), SCHEDULE.grid(3)
    model = oracle_model(reference, "beta")
    assert isinstance(model, GaussianReverseModel)
    bad = DiagonalGaussianModel(model.mean, lambda x, t, grid: -torch.ones_like(x))
    with pytest.raises(InputError, match="finite and > 0"):
        model_path_kl(reference, grid, bad)
    with pytest.raises(InputError, match="cannot integrate"):
        model_path_kl(reference, grid, model, rule="closed form")
    with pytest.raises(InputError, match="d <= 3"):
        model_path_kl(mixture_4d(), grid, model, rule="quadrature")
    out = model_path_kl(reference, grid, model).as_dict()
    assert set(out) >= {"terminal", "full", "mean", "covariance", "total", "per_step", "met_rtol"}


def test_the_docs_example_runs_and_matches_its_family(capsys):
    """docs/learned.md's example: exact mean and beta_t variance, which is the 'beta' family."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "learned.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/learned.md", "exec"), namespace)  # noqa: S102 (the page is ours)
    result, reference, grid = namespace["result"], namespace["reference"], namespace["grid"]
    agree(result, pathkl.path_kl(reference, grid, pathkl.get_family("beta")))
    assert "+-" in capsys.readouterr().out


def test_variance_shapes_broadcast_and_bad_shapes_are_refused():
    reference, grid = gaussian_3d(), SCHEDULE.grid(3)
    model = oracle_model(reference, "beta")
    shapes = [lambda x, t, g: g.beta[t - 1] * torch.ones(x.shape[0], 1, dtype=DTYPE),
              lambda x, t, g: g.beta[t - 1] * torch.ones(3, dtype=DTYPE)]
    totals = {model_path_kl(reference, grid, DiagonalGaussianModel(model.mean, v)).total.value for v in shapes}
    assert len(totals) == 1
    wrong = DiagonalGaussianModel(model.mean, lambda x, t, g: torch.ones(x.shape[0], 2, dtype=DTYPE))
    with pytest.raises(InputError, match="variance has shape"):
        model_path_kl(reference, grid, wrong)



# ---------------------------------------------------------------- dense and low-rank model covariances


def kernel_covariance(reference, x, grid, t):
    """The exact kernel's dense covariance at x (n, d, d), from the kernel object."""
    kernel = reference.reverse_kernel(x, grid, t)
    if isinstance(kernel, pathkl.references.gaussian.GaussianKernel):
        return kernel.covariance().expand(x.shape[0], -1, -1)
    return kernel.cov()


def low_rank_head(reference, rank: int, *, zero: bool = False):
    """An x-dependent low-rank-plus-diagonal covariance near the kernel's: ``s = 1.2 diag Sigma*(x)``,
    ``U = 0.3 sqrt(beta_t) [tanh(x + j)]_j`` (a smooth stand-in for a network head)."""
    def covariance(x, t, grid):
        s = 1.2 * kernel_moments(reference, x, grid, t)[1]
        shifts = torch.arange(rank, dtype=DTYPE)
        u = 0.3 * grid.beta[t - 1].sqrt() * torch.tanh(x[..., :, None] + shifts)
        return LowRankPlusDiagonal(s, 0.0 * u if zero else u)

    return covariance


def exact_mean(reference):
    return lambda x, t, grid: kernel_moments(reference, x, grid, t)[0]


def densified(covariance):
    """The same covariance as a dense matrix, formed here: diag(s) + U U^T."""
    def dense(x, t, grid):
        c = covariance(x, t, grid)
        return torch.diag_embed(c.diagonal) + c.factor @ c.factor.transpose(-2, -1)

    return dense


@pytest.mark.parametrize("make,steps", [(mixture_1d, 6), (mixture_2d, 4), (gaussian_3d, 6)])
def test_model_with_the_exact_dense_covariance_is_the_full_family(make, steps):
    reference, grid = make(), SCHEDULE.grid(steps)
    model = FullGaussianModel(exact_mean(reference), lambda x, t, g: kernel_covariance(reference, x, g, t))
    result = model_path_kl(reference, grid, model, rtol=1e-7)
    agree(result, pathkl.path_kl(reference, grid, pathkl.get_family("full"), rtol=1e-7))
    # Exact mean and covariance: both parts are rounding (u_i ~ eps, phi ~ eps^2) within their bounds.
    assert abs(result.covariance.value) <= result.covariance.error and result.covariance.error < 1e-12
    assert abs(result.mean.value) <= result.mean.error < 1e-12
    assert result.offdiagonal is None and result.mismatch is None
    assert result.as_dict()["mismatch"] is None


def recorded_points(reference, grid, t, model, rule):
    """The points at which ``rule`` evaluates step t's integrands, and the values it got there."""
    seen = []
    integrands = step_integrands(reference, model, grid, t)

    def recording(x):
        values, bounds = integrands(x)
        seen.append((x, values))
        return values, bounds

    block = (MixtureReference.from_components([1.0], reference.mean[None],
                                              covs=reference.basis.dense(reference.eigenvalues)[None])
             if isinstance(reference, GaussianReference) and not isinstance(rule, MonteCarlo) else reference)
    rule = pathkl.rules.QuadratureRule() if rule is None else rule
    rule.expectation(block, grid.level(t), recording, rtol=1e-6, key=t)
    return torch.cat([x for x, _ in seen]), torch.cat([v for _, v in seen])


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("make,rule", [(mixture_2d, None), (gaussian_3d, None), (mixture_4d, MonteCarlo(outer=64))])
def test_integrands_are_torch_gaussian_kls_at_the_rule_points(make, rule, dense):
    """At every point the rule evaluates: the mean column is KL(N(mu*, B) || N(mu_theta, B)) and the
    covariance column KL(N(0, Sigma*) || N(0, B)), both by torch.distributions (Cholesky, the plain
    trace - d - logdet formula: accurate in float64 to ~1e-14 absolute here, where the KLs are
    1e-3..1, so 1e-9 relative is a wide margin that still catches any wrong term)."""
    reference, grid, t = make(), SCHEDULE.grid(4), 2
    covariance = low_rank_head(reference, rank=2)
    mean = lambda x, t, g: exact_mean(reference)(x, t, g) + 0.1 * torch.sin(x)
    model = FullGaussianModel(mean, densified(covariance) if dense else covariance)
    x, values = recorded_points(reference, grid, t, model, rule)
    mvn = torch.distributions.MultivariateNormal
    b = densified(covariance)(x, t, grid)
    star_mean, star_cov = kernel_moments(reference, x, grid, t)[0], kernel_covariance(reference, x, grid, t)
    mean_kl = torch.distributions.kl_divergence(mvn(star_mean, b), mvn(mean(x, t, grid), b))
    zero = torch.zeros_like(x)
    cov_kl = torch.distributions.kl_divergence(mvn(zero, star_cov), mvn(zero, b))
    assert torch.allclose(values[:, 0], mean_kl, rtol=1e-9, atol=0)
    assert torch.allclose(values[:, 1], cov_kl, rtol=1e-9, atol=0)
    assert (cov_kl > 1e-4).all()  # the comparison is not at rounding level


@pytest.mark.parametrize("make,steps,rank", [(mixture_2d, 3, 1), (gaussian_3d, 3, 2), (mixture_1d, 5, 3)])
def test_low_rank_form_equals_the_dense_form(make, steps, rank):
    """Woodbury-type whitening (no d x d factorisation of Sigma_theta) against the Cholesky route on
    the same matrix formed densely: per step within the two errors, and the totals to 1e-12 relative
    (both routes are backward stable on matrices with condition number below 1e3)."""
    reference, grid = make(), SCHEDULE.grid(steps)
    covariance = low_rank_head(reference, rank)
    low = model_path_kl(reference, grid, FullGaussianModel(exact_mean(reference), covariance), rtol=1e-6)
    dense = model_path_kl(reference, grid, FullGaussianModel(exact_mean(reference), densified(covariance)), rtol=1e-6)
    gaps = (low.per_step - dense.per_step).abs()
    assert (gaps <= low.per_step_error + dense.per_step_error).all()
    assert low.total.value == pytest.approx(dense.total.value, rel=1e-12)
    assert low.covariance.value > 10 * low.covariance.error  # a real covariance part, not rounding


def test_zero_factor_is_the_diagonal_route():
    """A low-rank model with U = 0 is the diagonal model diag(s): the diagonal route (the diag
    family's path KL plus the mismatch, never forming Sigma*) against the whitened dense route (the
    full family's path KL plus KL(N(0, Sigma*) || N(0, diag s)) from eigenvalues), on a rotated mixture
    where the off-diagonal floor is not zero."""
    reference, grid = mixture_2d(), SCHEDULE.grid(4)
    covariance = low_rank_head(reference, rank=1, zero=True)
    diagonal = DiagonalGaussianModel(exact_mean(reference), lambda x, t, g: covariance(x, t, g).diagonal)
    via_diag = model_path_kl(reference, grid, diagonal, rtol=1e-7)
    via_whitening = model_path_kl(reference, grid, FullGaussianModel(exact_mean(reference), covariance), rtol=1e-7)
    assert abs(via_diag.total.value - via_whitening.total.value) <= via_diag.total.error + via_whitening.total.error
    assert via_diag.offdiagonal.value > 0
    assert abs(via_diag.covariance.value - via_whitening.covariance.value) <= (
        via_diag.covariance.error + via_whitening.covariance.error)


def spd_perturbation(d: int, seed: int, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    m = scale * torch.randn(d, d, generator=gen, dtype=DTYPE)
    return m @ m.T


@given(d=st.integers(1, 3), seed=st.integers(0, 10**6), steps=st.integers(2, 5), scale=st.floats(0.01, 0.5),
       low_rank=st.booleans())
@CI
def test_claimed_error_covers_the_true_error_for_dense_covariances(d, seed, steps, scale, low_rank):
    """Constant dense model covariances ``D_t = S*_t + beta_t P`` (P a random PSD matrix: the model is
    too wide in a rotated direction), given densely or as ``c I + U U^T`` (c half the smallest
    eigenvalue of D_t, U the Cholesky factor of the rest), with a linear mean error, on rotated
    Gaussian data, against the dense closed form."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    eigenvalues = 0.1 + 2.0 * torch.rand(d, generator=gen, dtype=DTYPE)
    reference = GaussianReference.from_eigenvalues(eigenvalues, mean=torch.randn(d, generator=gen, dtype=DTYPE),
                                                   basis=q)
    grid = SCHEDULE.grid(steps)
    a, b, _ = instance(d, seed + 1, scale)
    x0 = reference.mean[None]
    perturbation = spd_perturbation(d, seed + 2, scale)
    covs = torch.stack([kernel_covariance(reference, x0, grid, t)[0] + grid.beta[t - 1] * perturbation
                        for t in range(1, grid.T + 1)])
    if low_rank:  # D_t = diag(c) + U U^T with c = half the smallest eigenvalue, U a root of the rest
        floors = 0.5 * torch.linalg.eigvalsh(covs)[:, :1]
        roots = torch.linalg.cholesky(covs - floors[..., None] * torch.eye(d, dtype=DTYPE))
        cov_fn = lambda x, t, g: LowRankPlusDiagonal(floors[t - 1].expand(d), roots[t - 1])
    else:
        cov_fn = lambda x, t, g: covs[t - 1]
    mean = lambda x, t, g: exact_mean(reference)(x, t, g) + x @ a.T + b
    result = model_path_kl(reference, grid, FullGaussianModel(mean, cov_fn), rtol=1e-8)
    means, cov_parts, terminal = closed_form(reference, grid, a, b, covs)
    truth = terminal + float(means.sum() + cov_parts.sum())
    # The dense truth carries rounding of ~1e-14 relative (inverse, logdet and traces of d <= 3 matrices).
    assert abs(result.total.value - truth) <= result.total.error + 1e-13 * truth
    assert abs(result.covariance.value - float(cov_parts.sum())) <= result.covariance.error + 1e-13 * truth


def test_dense_covariance_by_monte_carlo_in_6d():
    """Constant dense covariance: the covariance part is the same at every draw, so Monte Carlo has it
    to rounding; the mean part within its interval (two half-widths, false alarm 1e-4)."""
    eigenvalues = torch.linspace(0.2, 2.0, 6, dtype=DTYPE)
    reference = GaussianReference.from_eigenvalues(eigenvalues, mean=torch.linspace(-1, 1, 6, dtype=DTYPE))
    grid = SCHEDULE.grid(4)
    a, b, _ = instance(6, 3)
    covs = torch.stack([kernel_covariance(reference, reference.mean[None], grid, t)[0]
                        + grid.beta[t - 1] * spd_perturbation(6, 9, 0.3) for t in range(1, grid.T + 1)])
    mean = lambda x, t, g: exact_mean(reference)(x, t, g) + x @ a.T + b
    result = model_path_kl(reference, grid, FullGaussianModel(mean, lambda x, t, g: covs[t - 1]),
                           rule=MonteCarlo(outer=1024, seed=3))
    means, cov_parts, _ = closed_form(reference, grid, a, b, covs)
    assert result.covariance.value == pytest.approx(float(cov_parts.sum()), rel=1e-12)
    assert abs(result.mean.value - float(means.sum())) <= 2 * result.mean.error


def test_bad_covariances_are_refused():
    reference, grid = gaussian_3d(), SCHEDULE.grid(3)
    mean = exact_mean(reference)
    eye = torch.eye(3, dtype=DTYPE)
    cases = {
        "symmetric": lambda x, t, g: eye + torch.triu(torch.ones(3, 3, dtype=DTYPE), 1),
        "positive definite": lambda x, t, g: eye - 2.0 * torch.ones(3, 3, dtype=DTYPE) / 3,
        "covariance has shape": lambda x, t, g: torch.ones(x.shape[0], 2, 2, dtype=DTYPE),
        "factor has shape": lambda x, t, g: LowRankPlusDiagonal(torch.ones(3, dtype=DTYPE), torch.ones(2, 1, dtype=DTYPE)),
        "finite and > 0": lambda x, t, g: LowRankPlusDiagonal(-torch.ones(3, dtype=DTYPE), torch.ones(3, 1, dtype=DTYPE)),
    }
    for message, covariance in cases.items():
        with pytest.raises(InputError, match=message):
            model_path_kl(reference, grid, FullGaussianModel(mean, covariance))

    both = type("Both", (), {"mean": staticmethod(mean), "variance": staticmethod(lambda x, t, g: g.beta[t - 1]),
                             "covariance": staticmethod(lambda x, t, g: g.beta[t - 1] * eye)})()
    for model in (both, type("MeanOnly", (), {"mean": staticmethod(mean)})()):
        with pytest.raises(InputError, match="exactly one of variance"):
            model_path_kl(reference, grid, model)


def test_low_rank_of_rank_zero_is_its_diagonal():
    reference, grid = gaussian_3d(), SCHEDULE.grid(3)
    variance = lambda x, t, g: kernel_moments(reference, x, g, t)[1] * 1.1
    diagonal = model_path_kl(reference, grid, DiagonalGaussianModel(exact_mean(reference), variance))
    empty = FullGaussianModel(exact_mean(reference),
                              lambda x, t, g: LowRankPlusDiagonal(variance(x, t, g), torch.zeros(3, 0, dtype=DTYPE)))
    result = model_path_kl(reference, grid, empty)
    assert abs(result.total.value - diagonal.total.value) <= result.total.error + diagonal.total.error
